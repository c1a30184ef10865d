"""Commands on the box: run it (``up``), and reach the running broker over
its local control socket (``STATE_DIR/control.sock``, owner-only)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from appliance.cli.output import OK, REFUSED, Output, UsageError, plain
from appliance.cli.views import (
    clients_view,
    lines_view,
    panel_view,
    plugins_view,
    press_view,
    status,
    status_view,
    table,
)
from appliance.names import shown

RETRY_S = 15.0


def cmd_up(args: argparse.Namespace, out: Output) -> int:
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
        tls=args.tls,
        model=args.model,
        agent=not args.no_agent,
        retry_s=args.retry_seconds,
        advertise=not args.no_advertise,
    )
    return serve(Config(**base), options)


def _control(args: argparse.Namespace, op: str, **kw: Any) -> dict[str, Any]:
    from appliance.approval import ControlClient

    return ControlClient(args.state_dir / "control.sock").call(op, **kw)


def cmd_panel(args: argparse.Namespace, out: Output) -> int:
    shown = _control(args, "panel.show")
    current = shown.get("pending")
    if args.action == "show":
        out.result(shown, panel_view(shown))
        return OK
    if not current:
        out.error("nothing is waiting for approval")
        return REFUSED
    # The press names the digest that was displayed: if another request took
    # its place in between, the press is ignored instead of approving it.
    result = _control(args, "panel.press", decision=args.action, digest=current["digest"])
    answer = {"decision": args.action, "shown": current, "result": result}
    out.result(answer, press_view(answer))
    return OK if result.get("accepted") else REFUSED


def cmd_clients(args: argparse.Namespace, out: Output) -> int:
    if args.action == "list":
        answer = _control(args, "clients.list")
        for client in answer.get("clients", []):
            client["shown"] = shown(client["name"])  # escaped, odd names flagged
    elif not args.client_id:
        raise UsageError("clients revoke needs a CLIENT_ID")
    else:
        answer = _control(args, "clients.revoke", client_id=args.client_id)
    out.result(answer, clients_view(answer))
    return OK


def cmd_keys(args: argparse.Namespace, out: Output) -> int:
    answer = _control(args, "tokens.revoke_all")
    said = (
        f"epoch {answer['epoch']}: every boot statement and capability token minted "
        "before now is refused"
    )
    out.result(answer, lines_view([said]))
    return OK


def cmd_plugins(args: argparse.Namespace, out: Output) -> int:
    from appliance.plugins import package

    action = args.plugins_command
    answer: dict[str, Any]
    if action == "keygen":
        answer = {"publisher_key": package.keygen(args.key)}
    elif action == "sign":
        answer = package.sign(args.folder, args.key)
    elif action == "list":
        answer = _control(args, "plugins.list")
    elif action == "install":
        answer = _control(args, "plugins.install", path=str(args.folder.resolve()))
    elif action == "remove":
        answer = _control(args, "plugins.remove", name=args.name)
    else:  # verify: a folder (resolved) or an installed plugin's name
        what = args.plugin
        name = str(Path(what).resolve()) if "/" in what else what
        answer = _control(args, "plugins.verify", name=name)
    out.result(answer, plugins_view(answer))
    return OK


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    answer = _control(args, "status")
    out.result(answer, status_view(answer))
    return OK


def cmd_retention(args: argparse.Namespace, out: Output) -> int:
    """Empty the trash and the snapshot store early (each item audited)."""
    result = _control(args, "retention.purge", older_than_days=args.older_than_days)
    out.result(result, lines_view([f"purged {result.get('purged', 0)} items"], [], []))
    return OK


def cmd_audit(args: argparse.Namespace, out: Output) -> int:
    from appliance.audit import verify_log

    state = args.state_dir
    pub = (args.public_key or state / "keys" / "device.pub.pem").read_bytes()
    trusted = json.loads(args.checkpoint.read_text()) if args.checkpoint else None
    since = None
    if args.since and args.since.exists():
        since = json.loads(args.since.read_text())
    report = verify_log(state / "audit", pub, trusted_checkpoint=trusted, since=since)
    counted = f"{report.entries} entries, {report.checkpoints} checkpoints"
    if since is not None:
        counted += (
            f"; checked from entry {report.read_from} on, extending the saved checkpoint of "
            f"tree size {since.get('tree_size')}"
        )
    notes = list(report.warnings)
    if report.unsafe_signer:
        notes.append("checkpoints were signed by the UNSAFE development key")
    verdict = "audit log verifies" if report.ok else "audit log does NOT verify"
    ok = [counted] + ([verdict] if report.ok else [])
    if report.ok and report.newest is not None and args.save:
        # The next check can start here (--since): keep it where the box's
        # card cannot rewrite it, e.g. on the desktop.
        args.save.write_text(json.dumps(report.newest, sort_keys=True) + "\n")
        ok.append(
            f"saved the newest checkpoint (tree size {report.newest['tree_size']}) to {args.save}"
        )
    bad = [*report.problems] + ([] if report.ok else [verdict])
    out.result(asdict(report), lines_view(ok, notes, bad))
    return OK if report.ok else REFUSED


def cmd_receipt(args: argparse.Namespace, out: Output) -> int:
    """Check a signed approval receipt (a JSON file, or an audit entry holding one)."""
    from appliance.approval.receipts import verify_receipt

    raw = json.loads(args.file.read_text() if str(args.file) != "-" else sys.stdin.read())
    receipt = raw.get("data", raw) if isinstance(raw, dict) else raw
    pub = (args.public_key or args.state_dir / "keys" / "device.pub.pem").read_bytes()
    checked = verify_receipt(receipt, pub, approval_id=args.approval_id, request_digest=args.digest)
    said = (
        f"approval {checked.approval_id} of {checked.kind} {checked.subject_id} "
        f"(request digest {checked.digest[:16]}...) by {checked.gesture} "
        f"({checked.decided_by}), signed by device key {checked.key_id} "
        f"[{checked.signer}]; receipt digest {checked.receipt_digest}"
    )
    out.result({"ok": True, **checked.to_dict()}, lines_view([said]))
    return OK


def cmd_selftest(args: argparse.Namespace, out: Output) -> int:
    from appliance import selftest

    checks = selftest.run(
        config_path=args.config,
        state_dir=args.state_dir,
        hardware=args.hardware,
        press_timeout_s=args.press_timeout,
    )
    answer = json.loads(selftest.as_json(checks))

    def render(console: Console) -> None:
        t = table("check", "result", "detail")
        for c in checks:
            t.add_row(plain(c.name), status(c.result, c.result.upper()), plain(c.detail))
        console.print(t)
        failed = sum(c.result == "fail" for c in checks)
        console.print(
            Text("self-test passed", style="green")
            if not failed
            else Text(f"self-test FAILED: {failed} check(s) failed", style="bold red")
        )

    out.result(answer, render)
    return OK if answer["ok"] else REFUSED
