"""After a crash or a restart, before anything new may run.

Approvals live in memory, so a plan still waiting for one expires. An action
that was running is settled: its token stays spent, and the executor's
ordering means no file was lost. A move, rename or delete recorded its undo
before it changed anything, so it is brought to exactly "before" or exactly
"after"; after counts as done and stays undoable. The hidden names an
interrupted action can leave beside its targets are swept. What an action
that did not take effect recorded as kept for its undo (a trash item, a
snapshot) is released. Each settled action is recorded in
``action.interrupted``.
"""

from __future__ import annotations

import contextlib

from appliance.audit import AuditLog
from appliance.broker.files import FileOps
from appliance.broker.plans import ActionRow, ActionStatus, PlanStatus, PlanStore
from appliance.broker.retention import Retention
from appliance.broker.scope import Shares, Target
from appliance.errors import ApplianceError
from appliance.verbs import UNDO_VERB


def recover(
    plans: PlanStore, files: FileOps, shares: Shares, audit: AuditLog, retention: Retention
) -> None:
    for plan in plans.unfinished():
        if plan.status is PlanStatus.pending_approval:
            plans.end_plan(plan.plan_id, PlanStatus.expired, "the broker restarted before approval")
            audit.append("plan.expired", {"plan_id": plan.plan_id, "reason": "restart"})
            continue
        for action in plans.actions(plan.plan_id):
            if action.status is ActionStatus.running:
                _settle(plans, files, shares, audit, retention, action)
            elif action.status is ActionStatus.planned:
                plans.set_action(action.action_id, status=ActionStatus.skipped)
        plans.set_plan(plan.plan_id, PlanStatus.failed, "the broker stopped while the plan ran")


def _settle(
    plans: PlanStore,
    files: FileOps,
    shares: Shares,
    audit: AuditLog,
    retention: Retention,
    action: ActionRow,
) -> None:
    undo = action.undo
    took = undo is not None and action.verb != UNDO_VERB and files.settle_interrupted(undo)
    if not took and action.verb != UNDO_VERB:
        # It did not take effect: what it recorded as kept was never put away.
        # (An interrupted undo may have put a file in the trash: that stays
        # kept, and is purged with the rest.)
        retention.release(action.action_id, "the action was interrupted before it took effect")
    if took:
        plans.set_action(
            action.action_id,
            status=ActionStatus.done,
            result={"recovered": "the action had taken effect when the broker stopped"},
        )
    else:
        plans.set_action(action.action_id, status=ActionStatus.interrupted, clear_undo=True)
    leftovers = files.sweep_leftovers(_touched(plans, shares, action))
    audit.append(
        "action.interrupted",
        {
            "plan_id": action.plan_id,
            "action_id": action.action_id,
            "verb": action.verb,
            "resource": action.resource,
            "token_id": action.token_id,
            "snapshot_id": action.snapshot_id,
            "took_effect": took,
            "leftovers_removed": leftovers,
        },
    )


def _touched(plans: PlanStore, shares: Shares, action: ActionRow) -> list[Target]:
    """The targets an action (or the action an undo reverses) worked on."""
    if action.verb == UNDO_VERB:
        original = plans.action(str(action.params.get("action_id", "")))
        if original is None:
            return []
        action = original
    found = []
    for resource in (action.resource, action.params.get("to")):
        if isinstance(resource, str):
            with contextlib.suppress(ApplianceError):
                found.append(shares.parse(resource))
    return found
