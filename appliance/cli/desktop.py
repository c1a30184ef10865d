"""Commands on a desktop: talk to the paired box over the LAN API
(pairing and discovery are in ``pairing.py``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from appliance.cli.output import OK, REFUSED, WAITING, Output, UsageError
from appliance.cli.views import (
    event_line,
    lines_view,
    plan_lines,
    plan_view,
    proposal_lines,
    task_view,
)
from appliance.client import ApplianceClient, Plan, Task, press_sentence


def plan_exit(plan: Plan) -> int:
    if plan.status == "done":
        return OK
    return WAITING if not plan.finished else REFUSED


def _client(args: argparse.Namespace) -> ApplianceClient:
    return ApplianceClient.from_file(args.credentials)


def _read_intents(source: str) -> list[dict[str, Any]]:
    try:
        text = Path(source).read_text() if source != "-" else sys.stdin.read()
        body = json.loads(text)
    except OSError as e:
        raise UsageError(f"cannot read the plan {source}: {e.strerror or e}") from None
    except ValueError as e:
        raise UsageError(f"the plan {source} is not JSON: {e}") from None
    intents = body.get("intents") if isinstance(body, dict) else body
    if not isinstance(intents, list) or not all(isinstance(i, dict) for i in intents):
        raise UsageError('a plan is {"intents": [...]} or a list of intents')
    return intents


def wait_for_press(client: ApplianceClient, plan: Plan, out: Output, timeout: float) -> Plan:
    """Show the whole plan and the code, then wait (a spinner on a terminal)
    until the press decided and the plan ran, or ``timeout`` ran out."""
    if plan.finished:
        return plan
    if plan.waiting_for_press:
        plan_lines(plan, out.err)  # what a press would do, before the code
        out.say(f"plan {plan.plan_id}: {press_sentence(plan.code)}")
    code = plan.code
    with out.waiting(f"waiting for the press on the box (code {code})") as update:
        plan = client.wait_plan(
            plan.plan_id,
            timeout,
            on_update=lambda p: update(f"{p.status.replace('_', ' ')} (code {code})"),
        )
    return plan


def cmd_submit(args: argparse.Namespace, out: Output) -> int:
    intents = _read_intents(args.plan)
    client = _client(args)
    plan = wait_for_press(client, client.submit(intents), out, args.timeout)
    out.result(plan.raw, plan_view(plan))
    return plan_exit(plan)


def cmd_plan(args: argparse.Namespace, out: Output) -> int:
    client = _client(args)
    plan = client.plan(args.plan_id)
    if args.wait:
        plan = wait_for_press(client, plan, out, args.wait)
    out.result(plan.raw, plan_view(plan))
    return plan_exit(plan)


def cmd_undo(args: argparse.Namespace, out: Output) -> int:
    client = _client(args)
    target = args.id
    plan = client.undo_plan(target) if target.startswith("plan_") else client.undo(target)
    plan = wait_for_press(client, plan, out, args.timeout)
    out.result(plan.raw, plan_view(plan))
    return plan_exit(plan)


def cmd_task(args: argparse.Namespace, out: Output) -> int:
    """Send a task in plain words; show the plan's progress as the box reports it."""
    client = _client(args)
    from_content = None
    if args.from_content:
        field, _, kind = args.from_content.partition(":")
        from_content = {"field": field, "type": kind or "string"}
    task = client.task(args.text, from_content)
    shown = 0
    asked: set[str] = set()
    with out.waiting("the box's model is planning") as update:

        def progress(now: Task) -> None:
            nonlocal shown
            for event in now.events[shown:]:
                out.say(event_line(event))
                if event.get("event") in ("planned", "question", "refused"):
                    out.say(proposal_lines(event))
            shown = len(now.events)
            plan = now.plan
            if plan is not None and plan.waiting_for_press and plan.plan_id not in asked:
                asked.add(plan.plan_id)
                plan_lines(plan, out.err)  # what a press would do, before the code
                out.say(f"plan {plan.plan_id}: {press_sentence(plan.code)}")
                update(f"waiting for the press on the box (code {plan.code})")

        task = client.wait_task(task.task_id, args.timeout, on_update=progress)
    out.result(task.raw, task_view(task))
    if task.plan is not None and task.status not in ("failed",):
        return plan_exit(task.plan)
    return OK if task.status == "done" else (WAITING if not task.finished else REFUSED)


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    """Check that the box is the one paired with, and say what that proved."""
    client = _client(args)
    keys = client.keys()
    proved = client.verify_keys(keys)
    notes = []
    if keys["unsafe"]:
        notes.append("the box runs on the UNSAFE development key: no TPM vouches for it")
    else:
        proved += client.verify_attestation()
    not_proved = (
        "that the code the box runs is good; only that it is the box you paired with, "
        "that its keys are in its TPM, and the values of its PCRs"
    )
    client.save(args.credentials, name=_saved_name(args.credentials))  # the newest epoch seen
    answer = {"ok": True, "proved": proved, "unsafe": keys["unsafe"], "not_proved": not_proved}
    out.result(answer, lines_view(proved, [*notes, f"not proved: {not_proved}"]))
    return OK


def _saved_name(path: Path) -> str | None:
    from appliance.client import Credentials

    return Credentials.load(path).name


def cmd_mcp(args: argparse.Namespace, out: Output) -> int:
    from appliance.mcp.stdio import serve_stdio

    return serve_stdio(args.credentials)
