"""``appliance``: run the box (``up``) and talk to it (the rest).

Commands on the box reach the running broker over its local control socket
(``STATE_DIR/control.sock``, owner-only); desktop commands use the LAN API.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

RETRY_S = 15.0
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "qwen2.5-coder-1.5b-instruct.toml"
DEFAULT_STATE = Path(os.environ.get("APPLIANCE_STATE_DIR", "/var/lib/appliance"))
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def _share(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError("--share takes NAME=PATH")
    return name, Path(path)


def _state(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE,
        help=f"the broker's state directory (default {DEFAULT_STATE})",
    )


def _out(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


# ---------------------------------------------------------------------- up
def cmd_up(args: argparse.Namespace) -> int:
    import uvicorn

    from appliance.api.app import create_app
    from appliance.api.degraded import Switch, unavailable_app
    from appliance.api.tls import ensure_certificate
    from appliance.approval import ControlServer
    from appliance.broker.control import control_handler
    from appliance.broker.service import Broker
    from appliance.config import Config, load_toml
    from appliance.errors import ApplianceError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    base: dict[str, Any] = load_toml(args.config) if args.config else {}
    shares = dict(base.get("shares", {}))
    shares.update(dict(args.share or []))
    base.update(
        state_dir=args.state_dir.resolve(),
        shares={n: p.resolve() for n, p in shares.items()},
        dev=args.dev or base.get("dev", False),
    )
    if args.host:
        base["host"] = args.host
    if args.port:
        base["port"] = args.port
    if args.keystore:
        base["keystore"] = args.keystore
    if args.tpm_tcti:
        base["tpm_tcti"] = args.tpm_tcti
    config = Config(**base)
    use_tls = args.tls or not config.dev or config.host not in LOOPBACK
    switch = Switch(None)  # type: ignore[arg-type]
    started: list[Any] = []

    panels: list[Any] = []  # opened once: the pins stay claimed across retries

    def start_broker() -> str | None:
        """Start the broker and its control socket; the reason if it cannot."""
        from appliance.approval.gpio import make_panel

        try:
            if not panels:
                panels.append(make_panel(config.panel, dev=config.dev))
        except Exception as e:  # noqa: BLE001 - no GPIO, pin busy: fail closed, say why
            return f"the approval panel is unavailable ({type(e).__name__}: {e})"
        try:
            broker = Broker(config, panel=panels[0])
        except ApplianceError as e:
            if hasattr(panels[0], "set_fault"):
                panels[0].set_fault(e.reason)  # the LED says nothing can run
            return e.reason
        try:
            control = ControlServer(config.control_socket, control_handler(broker)).start()
        except ApplianceError as e:
            broker.close()
            return e.reason
        started.extend([broker, control])
        switch.app = create_app(broker)
        if broker.keystore.unsafe:
            print(
                "WARNING: UNSAFE development keys (not in a TPM). Do not use for real data.",
                flush=True,
            )
        return None

    reason = start_broker()
    agent = None
    if reason is None and config.dev and not args.no_agent:
        agent = start_agent(config, args.model)
    kwargs: dict[str, Any] = {}
    scheme = "https" if use_tls else "http"
    server: uvicorn.Server | None = None
    if reason is not None:
        if config.dev:
            print(f"appliance: cannot start: {reason}", file=sys.stderr)
            return 2
        # Production: serve the reason (healthz and every call answer 503) over
        # a temporary certificate, and retry; once the broker can start (the TPM
        # is back), exit with 75 so the service manager restarts it with the
        # device certificate, whose key only the TPM can unlock.
        print(
            f"appliance: not serving ({reason}); retrying every {args.retry_seconds:g} s",
            flush=True,
        )
        switch.app = unavailable_app(reason)
        temp = Path(tempfile.mkdtemp(prefix="appliance-tls-"))
        cert, key, fp = ensure_certificate(temp, [config.host, "localhost"])
        kwargs.update(ssl_certfile=str(cert), ssl_keyfile=str(key))
        print(f"temporary TLS certificate while unavailable: {fp}", flush=True)

        def retry() -> None:
            while True:
                time.sleep(args.retry_seconds)
                why = start_broker()
                if why is None:
                    print("appliance: the broker can start now; restarting", flush=True)
                    if server is not None:
                        server.should_exit = True
                    return
                switch.app = unavailable_app(why)

        threading.Thread(target=retry, daemon=True, name="broker-retry").start()
    elif use_tls:
        password = started[0].keystore.secret("tls_key_password").hex()
        cert, key, fp = ensure_certificate(
            config.state_dir / "tls", [config.host, "localhost"], password.encode()
        )
        kwargs.update(ssl_certfile=str(cert), ssl_keyfile=str(key), ssl_keyfile_password=password)
        print(f"TLS certificate fingerprint (pin this on desktops): {fp}", flush=True)
    else:
        print("development mode: plain HTTP on loopback only", flush=True)
    print(f"appliance listening on {scheme}://{config.host}:{config.port}", flush=True)
    server = uvicorn.Server(
        uvicorn.Config(switch, host=config.host, port=config.port, log_level="warning", **kwargs)
    )
    try:
        server.run()
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=10)
        if started:
            broker, control = started
            control.stop()
            broker.close()
    return 75 if reason is not None and started else 0


def start_agent(config: Any, model: Path) -> subprocess.Popen[bytes]:
    """Development: run the model agent as a child process on the broker's
    agent socket (on the box it is its own service and user). It stops with
    the broker, even when the broker is killed."""
    from appliance.issuer.swtpm import _die_with_parent

    print(f"starting the model agent ({model.name}) on {config.agent_socket_path}", flush=True)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "appliance.agent",
            "--socket",
            str(config.agent_socket_path),
            "--model",
            str(model),
        ],
        preexec_fn=_die_with_parent,
    )


# ---------------------------------------------------------------------- box-side commands
def _control(args: argparse.Namespace, op: str, **kw: Any) -> dict[str, Any]:
    from appliance.approval import ControlClient

    return ControlClient(args.state_dir / "control.sock").call(op, **kw)


def cmd_panel(args: argparse.Namespace) -> int:
    shown = _control(args, "panel.show")
    current = shown.get("pending")
    if args.action == "show":
        if args.json:
            _out(shown)
        elif not current:
            print("nothing is waiting for approval")
        else:
            print(f"shown:   {current['summary']}")
            print(f"code:    {current['code']}   (the requester sees the same code)")
            print(f"expires: in {current.get('expires_in_s', 0):.0f} s")
            for w in shown.get("waiting", []):
                print(f"waiting: {w['summary']} (code {w['code']})")
        return 0
    if not current:
        print("nothing is waiting for approval", file=sys.stderr)
        return 1
    print(f"{args.action}: {current['summary']}  (code {current['code']})")
    # The press names the digest that was displayed: if another request took
    # its place in between, the press is ignored instead of approving it.
    result = _control(args, "panel.press", decision=args.action, digest=current["digest"])
    print(result["reason"] if result.get("accepted") else f"ignored: {result['reason']}")
    return 0 if result.get("accepted") else 1


def cmd_clients(args: argparse.Namespace) -> int:
    if args.action == "list":
        _out(_control(args, "clients.list"))
    else:
        _out(_control(args, "clients.revoke", client_id=args.client_id))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    _out(_control(args, "tokens.revoke_all"))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from appliance.plugins import package

    action = args.plugins_command
    if action == "keygen":
        print(json.dumps({"publisher_key": package.keygen(args.key)}))
        return 0
    if action == "sign":
        _out(package.sign(args.folder, args.key))
        return 0
    if action == "list":
        _out(_control(args, "plugins.list"))
    elif action == "install":
        _out(_control(args, "plugins.install", path=str(args.folder.resolve())))
    elif action == "remove":
        _out(_control(args, "plugins.remove", name=args.name))
    else:  # verify: a folder (resolved) or an installed plugin's name
        what = args.plugin
        _out(
            _control(
                args, "plugins.verify", name=str(Path(what).resolve()) if "/" in what else what
            )
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    _out(_control(args, "status"))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from appliance.audit import verify_log

    state = args.state_dir
    pub = (args.public_key or state / "keys" / "device.pub.pem").read_bytes()
    trusted = json.loads(args.checkpoint.read_text()) if args.checkpoint else None
    report = verify_log(state / "audit", pub, trusted_checkpoint=trusted)
    print(f"entries: {report.entries}, checkpoints: {report.checkpoints}")
    if report.unsafe_signer:
        print("note: checkpoints were signed by the UNSAFE development key")
    for warning in report.warnings:
        print(f"warning: {warning}")
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    print("audit log verifies" if report.ok else "audit log does NOT verify")
    return 0 if report.ok else 1


def cmd_receipt(args: argparse.Namespace) -> int:
    """Check a signed approval receipt (a JSON file, or an audit entry holding one)."""
    from appliance.approval.receipts import verify_receipt

    raw = json.loads(args.file.read_text() if str(args.file) != "-" else sys.stdin.read())
    receipt = raw.get("data", raw) if isinstance(raw, dict) else raw
    pub = (args.public_key or args.state_dir / "keys" / "device.pub.pem").read_bytes()
    checked = verify_receipt(receipt, pub, approval_id=args.approval_id, request_digest=args.digest)
    print(
        f"ok: approval {checked['approval_id']} of {checked['kind']} {checked['subject_id']} "
        f"(request digest {checked['digest'][:16]}...) by {checked['gesture']} "
        f"({checked['decided_by']}), signed by device key {checked['key_id']} "
        f"[{checked['signer']}]; receipt digest {checked['receipt_digest']}"
    )
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    from appliance import selftest

    checks = selftest.run(
        config_path=args.config,
        state_dir=args.state_dir,
        hardware=args.hardware,
        press_timeout_s=args.press_timeout,
    )
    print(selftest.as_json(checks) if args.json else selftest.table(checks))
    return 1 if any(c.result == "fail" for c in checks) else 0


# ---------------------------------------------------------------------- desktop commands
def _code(code: str | None) -> str:
    """The verification code as the box's light shows it: blink counts, and a
    colour on an RGB light."""
    from appliance.approval.panel import code_colour

    if not code:
        return "code ?"
    return f"code {code} (the light blinks {'-'.join(code)}; an RGB light is {code_colour(code)})"


def cmd_pair(args: argparse.Namespace) -> int:
    from appliance.client import ApplianceClient

    client = ApplianceClient(args.url, fingerprint=args.fingerprint)
    print(f"asking {args.url} to pair as {args.name!r}...")
    client.pair(
        args.name,
        timeout=args.timeout,
        on_code=lambda code: print(
            f"verification {_code(code)}: approve on the box (hold the button for a second, "
            "or `appliance panel approve` in development) if it shows the same code; "
            "a box with a button listens only after a 5-second hold opened its pairing window",
            flush=True,
        ),
    )
    client.pin_device()
    client.save(args.credentials, fingerprint=args.fingerprint)
    print(f"paired; credential and the box's device key saved to {args.credentials}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from appliance.client import ApplianceClient

    client = ApplianceClient.from_file(args.credentials)
    body = json.loads(Path(args.plan).read_text() if args.plan != "-" else sys.stdin.read())
    intents = body["intents"] if isinstance(body, dict) else body
    plan = client.submit(intents)
    if plan["status"] == "pending_approval":
        print(f"waiting for approval on the box: {_code(plan['code'])}", file=sys.stderr)
        while plan["status"] not in ("done", "denied", "failed", "expired"):
            plan = client.plan(plan["plan_id"], wait=30)
    _out(plan)
    return 0 if plan["status"] == "done" else 1


def cmd_verify(args: argparse.Namespace) -> int:
    """Check that the box is the one paired with, and say what that proved."""
    from appliance.client import ApplianceClient

    client = ApplianceClient.from_file(args.credentials)
    keys = client.keys()
    for line in client.verify_keys(keys):
        print(f"ok: {line}")
    if keys["unsafe"]:
        print("note: the box runs on the UNSAFE development key: no TPM vouches for it")
    else:
        for line in client.verify_attestation():
            print(f"ok: {line}")
    print(
        "not proved: that the code the box runs is good; only that it is the box you "
        "paired with, that its keys are in its TPM, and the values of its PCRs"
    )
    client.save(
        args.credentials, fingerprint=json.loads(args.credentials.read_text()).get("fingerprint")
    )
    return 0


def cmd_task(args: argparse.Namespace) -> int:
    """Send a task in plain words; show the plan's progress as the box reports it."""
    from appliance.client import ApplianceClient

    client = ApplianceClient.from_file(args.credentials)
    from_content = None
    if args.from_content:
        field, _, kind = args.from_content.partition(":")
        from_content = {"field": field, "type": kind or "string"}
    task = client.task(args.text, from_content)
    for event in client.task_events(task["task_id"]):
        detail = {k: v for k, v in event.items() if k not in ("event", "time") and v}
        print(
            f"{event['event']}: {json.dumps(detail)}" if detail else event["event"],
            file=sys.stderr,
            flush=True,
        )
        if event["event"] in ("planned", "question", "refused"):
            print(_proposal(event), file=sys.stderr, flush=True)
        if event["event"] == "pending_approval":
            plan = client.task_status(task["task_id"])["plan"] or {}
            for intent in plan.get("intents", []):
                to = intent.get("params", {}).get("to") or intent.get("params", {}).get("name")
                line = f"  {intent['verb']} {intent['resource']}" + (f" -> {to}" if to else "")
                print(line, file=sys.stderr, flush=True)
            print(f"approve on the box: {_code(event.get('code'))}", file=sys.stderr, flush=True)
    task = client.task_status(task["task_id"])
    _out(task)
    return 0 if task["status"] == "done" else 1


def _proposal(event: dict[str, Any]) -> str:
    """The model's words on a task: its explanation (or question, or reason),
    its confidence, and the compact plan it wrote (expanded below it)."""
    conf = event.get("confidence")
    sure = f" (confidence {conf:.2f})" if isinstance(conf, int | float) else ""
    label = {"question": "the box asks", "refused": "the box cannot"}.get(event["event"], "plan")
    lines = [f"{label}{sure}: {event.get('explanation', '')}"]
    if event["event"] == "planned":
        lines += [f"  | {line}" for line in str(event.get("compact", "")).splitlines()[2:]]
    return "\n".join(lines)


def cmd_undo(args: argparse.Namespace) -> int:
    from appliance.client import ApplianceClient

    client = ApplianceClient.from_file(args.credentials)
    plan = client.undo(args.action_id)
    print(f"undo needs approval on the box: {_code(plan.get('code'))}", file=sys.stderr)
    while plan["status"] not in ("done", "denied", "failed", "expired"):
        plan = client.plan(plan["plan_id"], wait=30)
    _out(plan)
    return 0 if plan["status"] == "done" else 1


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("appliance")
    except PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    from appliance.client import DEFAULT_CREDENTIALS

    parser = argparse.ArgumentParser(
        prog="appliance",
        description="Run the appliance (up) and talk to it: box-side commands use the local "
        "control socket, desktop commands (pair, submit, undo) the LAN API.",
    )
    parser.add_argument("--version", action="version", version=f"appliance {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

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
    panel.add_argument("--json", action="store_true", help="show: print JSON")
    _state(panel)
    panel.set_defaults(func=cmd_panel)

    clients = sub.add_parser("clients", help="paired desktops")
    clients.add_argument("action", choices=["list", "revoke"])
    clients.add_argument("client_id", nargs="?")
    _state(clients)
    clients.set_defaults(func=cmd_clients)

    keys = sub.add_parser("keys", help="the box's keys")
    keys.add_argument(
        "action",
        choices=["revoke-all"],
        help="revoke-all: bump the TPM epoch counter; every earlier boot statement and "
        "capability token is refused",
    )
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
    plugins.set_defaults(func=cmd_plugins)

    status = sub.add_parser("status", help="the running broker's state")
    _state(status)
    status.set_defaults(func=cmd_status)

    audit = sub.add_parser("audit", help="the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the log end to end")
    _state(verify)
    verify.add_argument("--public-key", type=Path, help="device public key PEM")
    verify.add_argument(
        "--checkpoint", type=Path, help="a checkpoint saved earlier (JSON) the log must extend"
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
    selftest.add_argument("--json", action="store_true", help="machine-readable output")
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

    def desktop(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--credentials",
            type=Path,
            default=DEFAULT_CREDENTIALS,
            help=f"where the credential is kept (default {DEFAULT_CREDENTIALS})",
        )

    pair = sub.add_parser("pair", help="pair this desktop with a box")
    pair.add_argument("--url", required=True, help="e.g. https://box.local:8443")
    pair.add_argument("--name", default=os.uname().nodename, help="this desktop's name")
    pair.add_argument("--fingerprint", help="the box's TLS certificate fingerprint")
    pair.add_argument("--timeout", type=float, default=180.0)
    desktop(pair)
    pair.set_defaults(func=cmd_pair)

    submit = sub.add_parser("submit", help="send a plan (JSON file, or - for stdin)")
    submit.add_argument("plan")
    desktop(submit)
    submit.set_defaults(func=cmd_submit)

    task = sub.add_parser("task", help="ask in plain words; the box's model plans it")
    task.add_argument("text")
    task.add_argument(
        "--from-content",
        metavar="FIELD:TYPE",
        help="name each destination folder after a value read inside the file, e.g. year:integer",
    )
    desktop(task)
    task.set_defaults(func=cmd_task)

    # Listed for --help; `main` hands `appliance agent ...` to the agent's own parser.
    sub.add_parser("agent", help="run the model agent (its own process; `appliance agent -h`)")

    verify = sub.add_parser("verify", help="check the box is the one paired with")
    desktop(verify)
    verify.set_defaults(func=cmd_verify)

    undo = sub.add_parser("undo", help="undo an action (needs approval on the box)")
    undo.add_argument("action_id")
    desktop(undo)
    undo.set_defaults(func=cmd_undo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["agent"]:
        # The agent has its own command line (and its own process and user).
        from appliance.agent.__main__ import main as agent_main

        return agent_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "clients" and args.action == "revoke" and not args.client_id:
        print("clients revoke needs a CLIENT_ID", file=sys.stderr)
        return 2
    from appliance.client import ClientError
    from appliance.errors import ApplianceError

    try:
        return int(args.func(args))
    except ApplianceError as e:
        print(f"appliance: {e.reason}", file=sys.stderr)
        return 1
    except ClientError as e:
        print(f"appliance: refused: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
