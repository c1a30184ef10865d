"""Commands on the box: run it (``up``), and reach the running broker over
its local control socket (``STATE_DIR/control.sock``, owner-only)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from appliance.cli.output import out
from appliance.names import shown

RETRY_S = 15.0


def cmd_up(args: argparse.Namespace) -> int:
    from appliance.config import Config, load_toml
    from appliance.serve import ServeOptions, serve

    base: dict[str, Any] = load_toml(args.config) if args.config else {}
    shares = dict(base.get("shares", {}))
    shares.update(dict(args.share or []))
    base.update(
        state_dir=args.state_dir.resolve(),
        shares={n: p.resolve() for n, p in shares.items()},
        dev=args.dev or base.get("dev", False),
    )
    for key in ("host", "port", "keystore", "tpm_tcti"):
        if getattr(args, key):
            base[key] = getattr(args, key)
    options = ServeOptions(
        tls=args.tls, model=args.model, agent=not args.no_agent, retry_s=args.retry_seconds
    )
    return serve(Config(**base), options)


def _control(args: argparse.Namespace, op: str, **kw: Any) -> dict[str, Any]:
    from appliance.approval import ControlClient

    return ControlClient(args.state_dir / "control.sock").call(op, **kw)


def cmd_panel(args: argparse.Namespace) -> int:
    shown = _control(args, "panel.show")
    current = shown.get("pending")
    if args.action == "show":
        if args.json:
            out(shown)
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
        listed = _control(args, "clients.list")
        for client in listed.get("clients", []):
            client["shown"] = shown(client["name"])  # escaped, odd names flagged
        out(listed)
    else:
        out(_control(args, "clients.revoke", client_id=args.client_id))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    out(_control(args, "tokens.revoke_all"))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from appliance.plugins import package

    action = args.plugins_command
    if action == "keygen":
        print(json.dumps({"publisher_key": package.keygen(args.key)}))
        return 0
    if action == "sign":
        out(package.sign(args.folder, args.key))
        return 0
    if action == "list":
        out(_control(args, "plugins.list"))
    elif action == "install":
        out(_control(args, "plugins.install", path=str(args.folder.resolve())))
    elif action == "remove":
        out(_control(args, "plugins.remove", name=args.name))
    else:  # verify: a folder (resolved) or an installed plugin's name
        what = args.plugin
        out(
            _control(
                args, "plugins.verify", name=str(Path(what).resolve()) if "/" in what else what
            )
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    out(_control(args, "status"))
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
        f"ok: approval {checked.approval_id} of {checked.kind} {checked.subject_id} "
        f"(request digest {checked.digest[:16]}...) by {checked.gesture} "
        f"({checked.decided_by}), signed by device key {checked.key_id} "
        f"[{checked.signer}]; receipt digest {checked.receipt_digest}"
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
