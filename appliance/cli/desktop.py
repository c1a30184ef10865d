"""Commands on a desktop: pair with a box and talk to it over the LAN API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from appliance.cli.output import out


def _code(code: str | None) -> str:
    """The verification code as the box's light shows it: blink counts, and a
    colour on an RGB light."""
    from appliance.approval.types import code_colour

    if not code:
        return "code ?"
    return f"code {code} (the light blinks {'-'.join(code)}; an RGB light is {code_colour(code)})"


def cmd_pair(args: argparse.Namespace) -> int:
    from appliance.client import ApplianceClient

    client = ApplianceClient(args.url, fingerprint=args.fingerprint)
    print(f"asking {args.url} to pair as {args.name!r}...")
    grant: dict[str, Any] | None = None
    if args.read or args.write or args.audit or args.days:
        shares = {s: "read" for s in args.read or []} | {s: "read-write" for s in args.write or []}
        grant = {"shares": shares or None, "audit": args.audit}
        if args.days:
            grant["expires_in_s"] = int(args.days * 86400)
    client.pair(
        args.name,
        grant=grant,
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
    out(plan)
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
        if event["event"] == "pending_approval":
            print(f"approve on the box: {_code(event.get('code'))}", file=sys.stderr, flush=True)
    task = client.task_status(task["task_id"])
    out(task)
    return 0 if task["status"] == "done" else 1


def cmd_undo(args: argparse.Namespace) -> int:
    from appliance.client import ApplianceClient

    client = ApplianceClient.from_file(args.credentials)
    plan = client.undo(args.action_id)
    print(f"undo needs approval on the box: {_code(plan.get('code'))}", file=sys.stderr)
    while plan["status"] not in ("done", "denied", "failed", "expired"):
        plan = client.plan(plan["plan_id"], wait=30)
    out(plan)
    return 0 if plan["status"] == "done" else 1
