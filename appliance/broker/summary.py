"""What the person at the box is told about a plan before pressing: the
panel's one-line summary, and whether the plan needs the owner's console
first (trusted arming).

The summary is short (a panel, a log line), so it cannot list everything;
but it never hides a delete, a change derived from file content or a
network call behind "+N more": those steps come first, every one of them,
then the counts per verb, then as many of the rest as fit. The whole plan,
step by step, is on the console (``appliance.console.review``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from appliance.broker.evaluate import Evaluated
from appliance.config import ApprovalSettings
from appliance.names import shown
from appliance.policy.engine import RISKS
from appliance.verbs import ResourceKind, spec

OTHERS_SHOWN = 3  # steps beyond the risky ones the summary names


def risky_kind(verb: str, derived: Sequence[str]) -> str | None:
    """Why a step (``verb``, with fields ``derived`` from file content) must
    never be hidden from the person pressing, or None."""
    if verb == "file.delete":
        return "delete"
    if spec(verb).changes and derived:
        return "derived from file content"
    if spec(verb).resource is ResourceKind.host:
        return "network"
    return None


def risky(e: Evaluated) -> str | None:
    return risky_kind(e.intent.verb, e.intent.derived_fields())


def step(e: Evaluated) -> str:
    to = e.params.get("to") or e.params.get("name")
    target = f" -> {shown(str(to))}" if to else ""
    tag = risky(e)
    return f"{e.intent.verb} {shown(e.resource)}{target}" + (f" [{tag}]" if tag else "")


def counts(verbs: Sequence[str]) -> str:
    return ", ".join(f"{n} × {verb}" for verb, n in Counter(verbs).most_common())


def plan_summary(who: str, evaluated: Sequence[Evaluated]) -> str:
    """``who wants to: 2 × file.move, 1 × file.delete: file.delete X [delete];
    file.move A -> B; (+1 more)``: every risky step, then the rest that fit."""
    first = [e for e in evaluated if risky(e)]
    rest = [e for e in evaluated if not risky(e)]
    named = first + rest[:OTHERS_SHOWN]
    more = len(evaluated) - len(named)
    tail = f" (+{more} more: {counts([e.intent.verb for e in rest[OTHERS_SHOWN:]])})"
    return (
        f"{who} wants to: {counts([e.intent.verb for e in evaluated])}: "
        + "; ".join(step(e) for e in named)
        + (tail if more else "")
    )


def needs_console(settings: ApprovalSettings, evaluated: Sequence[Evaluated]) -> tuple[str, ...]:
    """Why this plan may be approved only once the owner's console has shown
    it (trusted arming), from the ``console_*`` settings; empty: a press is
    enough."""
    why: list[str] = []
    kinds = Counter(risky(e) for e in evaluated)
    if settings.console_deletes and kinds["delete"]:
        why.append(f"it deletes ({kinds['delete']})")
    if settings.console_content and kinds["derived from file content"]:
        why.append(f"details came from file content ({kinds['derived from file content']})")
    if settings.console_network and kinds["network"]:
        why.append(f"it sends data off the box ({kinds['network']})")
    if settings.console_steps and len(evaluated) > settings.console_steps:
        why.append(f"it has {len(evaluated)} steps (more than {settings.console_steps})")
    if settings.console_risk in RISKS and any(
        RISKS.index(e.decision.risk) >= RISKS.index(settings.console_risk) for e in evaluated
    ):
        why.append(f"a step is of {settings.console_risk} risk")
    return tuple(why)


def origin_label(origin: dict[str, Any] | None) -> str:
    """Who proposed a plan for its requester, as the summary starts."""
    if not origin:
        return ""
    if origin.get("task_id"):
        note = f"{origin['note']} — " if origin.get("note") else ""
        return f"[the box's model {shown(str(origin.get('model_id')))}, for a task] {note}"
    if origin.get("via"):
        return f"[{origin['via']}] "
    return ""
