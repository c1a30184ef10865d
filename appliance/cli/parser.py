"""The ``appliance`` command line: every command, its flags, its help."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from appliance.cli.box import (
    RETRY_S,
    cmd_audit,
    cmd_clients,
    cmd_keys,
    cmd_panel,
    cmd_plugins,
    cmd_receipt,
    cmd_retention,
    cmd_selftest,
    cmd_status,
    cmd_up,
)
from appliance.cli.desktop import cmd_mcp, cmd_plan, cmd_submit, cmd_task, cmd_undo, cmd_verify
from appliance.cli.output import EXIT_CODES
from appliance.cli.pairing import cmd_discover, cmd_pair
from appliance.client import DEFAULT_CREDENTIALS

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "qwen2.5-coder-1.5b-instruct.toml"
DEFAULT_STATE = Path(os.environ.get("APPLIANCE_STATE_DIR", "/var/lib/appliance"))
WAIT_S = 300.0


def _share(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError("--share takes NAME=PATH")
    return name, Path(path)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("appliance")
    except PackageNotFoundError:
        return "(not installed)"


def _state(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE,
        help=f"the broker's state directory (default {DEFAULT_STATE})",
    )


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print exact JSON (for scripts)")


def _desktop(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--credentials",
        type=Path,
        default=DEFAULT_CREDENTIALS,
        help=f"where the credential is kept (default {DEFAULT_CREDENTIALS})",
    )
    _json(p)


def _waits(p: argparse.ArgumentParser, what: str = "the press on the box") -> None:
    p.add_argument(
        "--timeout",
        type=float,
        default=WAIT_S,
        help=f"seconds to wait for {what} (default {WAIT_S:g}; then exit code 5)",
    )


def _box_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser("up", help="run the broker")
    up.add_argument(
        "--dev",
        action="store_true",
        help="development mode: unsafe software keys, virtual panel, "
        "plain HTTP allowed on loopback",
    )
    _state(up)
    up.add_argument(
        "--share", type=_share, action="append", metavar="NAME=PATH", help="a share (repeatable)"
    )
    up.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    up.add_argument("--port", type=int, help="port (default 8443)")
    up.add_argument("--tls", action="store_true", help="use TLS even on loopback in dev mode")
    up.add_argument("--config", type=Path, help="a TOML configuration file")
    up.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        help="development: the model manifest the agent runs "
        "(default: Qwen2.5-Coder-1.5B-Instruct on the CPU)",
    )
    up.add_argument(
        "--no-agent", action="store_true", help="development: do not start the model agent"
    )
    up.add_argument(
        "--no-advertise",
        action="store_true",
        help="do not announce the box by mDNS (it does when it serves TLS on a LAN address)",
    )
    up.add_argument(
        "--retry-seconds",
        type=float,
        default=RETRY_S,
        help="production: how often to retry starting while the TPM (or another safety "
        "part) is unavailable",
    )
    up.add_argument(
        "--keystore",
        choices=["auto", "tpm", "dev"],
        help="where the keys live (default auto: production always TPM; development uses "
        "the TPM, or a swtpm it starts, else the UNSAFE development key)",
    )
    up.add_argument(
        "--tpm-tcti",
        help="TPM connection, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321",
    )
    up.set_defaults(func=cmd_up)

    panel = sub.add_parser("panel", help="the virtual approval panel (development)")
    panel.add_argument("action", choices=["show", "approve", "deny"])
    _json(panel)
    _state(panel)
    panel.set_defaults(func=cmd_panel)

    clients = sub.add_parser("clients", help="paired desktops")
    clients.add_argument("action", choices=["list", "revoke"])
    clients.add_argument("client_id", nargs="?")
    _json(clients)
    _state(clients)
    clients.set_defaults(func=cmd_clients)

    keys = sub.add_parser("keys", help="the box's keys")
    keys.add_argument(
        "action",
        choices=["revoke-all"],
        help="revoke-all: bump the TPM epoch counter; every earlier boot statement and "
        "capability token is refused",
    )
    _json(keys)
    _state(keys)
    keys.set_defaults(func=cmd_keys)

    plugins = sub.add_parser("plugins", help="WebAssembly plugins (docs/plugins.md)")
    plugins_sub = plugins.add_subparsers(dest="plugins_command", required=True)
    p_install = plugins_sub.add_parser(
        "install", help="check a plugin folder against the pinned publishers and install it"
    )
    p_install.add_argument("folder", type=Path)
    p_list = plugins_sub.add_parser("list", help="installed plugins, each checked again")
    p_remove = plugins_sub.add_parser("remove", help="uninstall a plugin")
    p_remove.add_argument("name")
    p_verify = plugins_sub.add_parser(
        "verify", help="check an installed plugin (NAME) or a folder (PATH/) without installing"
    )
    p_verify.add_argument("plugin")
    for p in (p_install, p_list, p_remove, p_verify):
        _state(p)
    p_keygen = plugins_sub.add_parser("keygen", help="publisher: make a signing key")
    p_keygen.add_argument("key", type=Path, help="where to write the private key (0600)")
    p_sign = plugins_sub.add_parser("sign", help="publisher: hash the module, sign the manifest")
    p_sign.add_argument("folder", type=Path)
    p_sign.add_argument("--key", type=Path, required=True)
    for p in (p_install, p_list, p_remove, p_verify, p_keygen, p_sign):
        _json(p)
    plugins.set_defaults(func=cmd_plugins)

    status = sub.add_parser("status", help="the running broker's state")
    _json(status)
    _state(status)
    status.set_defaults(func=cmd_status)

    retention = sub.add_parser("retention", help="the trash and snapshots kept for undo")
    retention_sub = retention.add_subparsers(dest="retention_command", required=True)
    purge = retention_sub.add_parser(
        "purge", help="remove what is kept for undo now (those undos then say why they cannot)"
    )
    purge.add_argument(
        "--older-than-days", type=float, default=0.0, help="only items kept longer (default: all)"
    )
    _state(purge)
    _json(purge)
    purge.set_defaults(func=cmd_retention)

    audit = sub.add_parser("audit", help="the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the log end to end")
    _state(verify)
    _json(verify)
    verify.add_argument("--public-key", type=Path, help="device public key PEM")
    verify.add_argument(
        "--checkpoint", type=Path, help="a checkpoint saved earlier (JSON) the log must extend"
    )
    verify.add_argument(
        "--since",
        type=Path,
        help="a checkpoint saved by an earlier check (--save): the log must extend it, and only "
        "what came after it is read again (a missing file: a full check)",
    )
    verify.add_argument(
        "--save", type=Path, help="write the newest checkpoint here when the log verifies"
    )
    verify.set_defaults(func=cmd_audit)

    receipt = sub.add_parser("receipt", help="signed approval receipts")
    receipt_sub = receipt.add_subparsers(dest="receipt_command", required=True)
    rverify = receipt_sub.add_parser(
        "verify", help="check a receipt (JSON file or audit entry; - for stdin)"
    )
    rverify.add_argument("file", type=Path)
    rverify.add_argument("--public-key", type=Path, help="device public key PEM")
    rverify.add_argument("--approval-id", help="the approval it must be for")
    rverify.add_argument("--digest", help="the request digest it must approve")
    _json(rverify)
    _state(rverify)
    rverify.set_defaults(func=cmd_receipt)

    selftest = sub.add_parser(
        "selftest",
        help="check the install (packages, config, policy, models, audit log); "
        "--hardware: the button, LED, TPM and Hailo too",
    )
    selftest.add_argument(
        "--hardware",
        action="store_true",
        help="also blink the LED and wait for a press, check the TPM, the Hailo device and "
        "that a model file is installed (on the box, with the broker stopped)",
    )
    _json(selftest)
    selftest.add_argument(
        "--config",
        type=Path,
        help="the configuration file (default $APPLIANCE_CONFIG or /etc/appliance/appliance.toml)",
    )
    selftest.add_argument(
        "--press-timeout", type=float, default=30.0, help="--hardware: seconds to wait for a press"
    )
    _state(selftest)
    selftest.set_defaults(func=cmd_selftest)

    from appliance import update

    update.register(sub)


def _desktop_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    discover = sub.add_parser(
        "discover", help="list the boxes on this network (mDNS), each checked by connecting"
    )
    discover.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to listen (default 3)"
    )
    _json(discover)
    discover.set_defaults(func=cmd_discover)

    pair = sub.add_parser(
        "pair", help="pair this desktop with a box (found on the network, or at --url)"
    )
    pair.add_argument(
        "--url", help="the box's address, e.g. https://box.local:8443 (default: find it by mDNS)"
    )
    pair.add_argument(
        "--fingerprint",
        help="the box's TLS certificate fingerprint (needed with an https --url; "
        "without --url, only a box with this fingerprint is accepted)",
    )
    pair.add_argument("--box", help="without --url: the box's name or fingerprint, if several")
    pair.add_argument(
        "--listen", type=float, default=3.0, help="without --url: seconds to listen (default 3)"
    )
    pair.add_argument("--name", default=os.uname().nodename, help="this desktop's name")
    pair.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the press")
    pair.add_argument(
        "--read", action="append", metavar="SHARE", help="a share this desktop may read"
    )
    pair.add_argument(
        "--write",
        action="append",
        metavar="SHARE",
        help="a share this desktop may read and change (changes still wait for a press); "
        "without --read/--write the desktop may read every share and change none",
    )
    pair.add_argument(
        "--audit", action="store_true", help="may read everyone's history and the whole log"
    )
    pair.add_argument("--days", type=float, help="the pairing ends after this many days")
    _desktop(pair)
    pair.set_defaults(func=cmd_pair)

    submit = sub.add_parser("submit", help="send a plan (JSON file, or - for stdin)")
    submit.add_argument("plan")
    _waits(submit)
    _desktop(submit)
    submit.set_defaults(func=cmd_submit)

    plan = sub.add_parser("plan", help="a plan's state (--wait: until the press decided)")
    plan.add_argument("plan_id")
    plan.add_argument("--wait", type=float, default=0.0, help="seconds to wait for it to finish")
    _desktop(plan)
    plan.set_defaults(func=cmd_plan)

    task = sub.add_parser("task", help="ask in plain words; the box's model plans it")
    task.add_argument("text")
    task.add_argument(
        "--from-content",
        metavar="FIELD:TYPE",
        help="name each destination folder after a value read inside the file, e.g. year:integer",
    )
    _waits(task, "the model and the press")
    _desktop(task)
    task.set_defaults(func=cmd_task)

    verify = sub.add_parser("verify", help="check the box is the one paired with")
    _desktop(verify)
    verify.set_defaults(func=cmd_verify)

    undo = sub.add_parser(
        "undo", help="undo an action (ACTION_ID) or a whole plan (PLAN_ID); needs a press"
    )
    undo.add_argument("id", metavar="ACTION_ID|PLAN_ID")
    _waits(undo)
    _desktop(undo)
    undo.set_defaults(func=cmd_undo)

    mcp = sub.add_parser(
        "mcp",
        help="serve the box's tools to a desktop agent over MCP (stdio; docs/mcp.md)",
    )
    mcp.add_argument(
        "--credentials",
        type=Path,
        default=DEFAULT_CREDENTIALS,
        help=f"the pairing to use (default {DEFAULT_CREDENTIALS})",
    )
    mcp.set_defaults(func=cmd_mcp)


def build_parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {code:>3}  {what}" for code, what in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="Run the appliance (up) and talk to it: box-side commands use the local "
        "control socket, desktop commands (discover, pair, submit, task, undo, mcp) the LAN API. "
        "Output is for people; --json prints exact JSON.",
        epilog=f"exit codes:\n{codes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"appliance {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _box_commands(sub)
    _desktop_commands(sub)
    # Listed for --help; `main` hands `appliance agent ...` to the agent's own parser.
    sub.add_parser("agent", help="run the model agent (its own process; `appliance agent -h`)")
    return parser
