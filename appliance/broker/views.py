"""What a desktop may read through the API: its own plans, actions, tasks,
approvals and the audit entries about them, or everyone's when its grant
says ``audit`` (or it is the box's console). Each read is a question to the
policy (``view.*``, with ``mine``), so an owner's rule can narrow it, and
the engine refuses another desktop's records to a grant without ``audit``
whatever the rules say.

A record the requester may not see answers exactly as one that does not
exist (404): nothing tells a desktop what others are doing.
"""

from __future__ import annotations

import json
from typing import Any

from appliance.approval import ApprovalQueue
from appliance.audit import AuditLog
from appliance.broker.evaluate import Evaluator
from appliance.broker.plans import PlanStore
from appliance.broker.taskrunner import TaskRunner
from appliance.errors import NotFound

SEARCH_SCAN = 20_000  # audit entries one search reads at most (then it says where it stopped)
# Audit entry fields that name who or what an entry is about.
_OWNER_FIELDS = ("requester", "client_id")
_RECORD_FIELDS = ("plan_id", "task_id", "approval_id", "subject_id")


class Views:
    def __init__(
        self,
        *,
        evaluator: Evaluator,
        plans: PlanStore,
        tasks: TaskRunner,
        approvals: ApprovalQueue,
        audit: AuditLog,
    ) -> None:
        self.evaluator = evaluator
        self.plans = plans
        self.tasks = tasks
        self.approvals = approvals
        self.audit = audit

    def _may(self, requester: str, what: str, record_id: str, owner: str | None) -> bool:
        return owner is not None and self.evaluator.may_view(
            requester, what, record_id, mine=owner == requester
        )

    def plan(self, requester: str, plan_id: str) -> dict[str, Any]:
        row = self.plans.plan_row(plan_id)
        if row is None or not self._may(requester, "plan", plan_id, row.requester):
            raise NotFound(f"no plan {plan_id!r}")
        out = self.plans.public(plan_id)
        assert out is not None
        return out

    def action(self, requester: str, action_id: str) -> dict[str, Any]:
        row = self.plans.action(action_id)
        plan = self.plans.plan_row(row.plan_id) if row else None
        if (
            row is None
            or plan is None
            or not self._may(requester, "plan", plan.plan_id, plan.requester)
        ):
            raise NotFound(f"no action {action_id!r}")
        return {**row.public(), "plan_id": row.plan_id}

    def task(self, requester: str, task_id: str) -> dict[str, Any]:
        row = self.tasks.tasks.row(task_id)
        if row is None or not self._may(requester, "task", task_id, row["requester"]):
            raise NotFound(f"no task {task_id!r}")
        return self.tasks.public(task_id)

    def approval(self, requester: str, approval_id: str) -> dict[str, Any]:
        public = self.approvals.public(approval_id)  # NotFound when unknown
        if not self._may(requester, "approval", approval_id, public["requester"]):
            raise NotFound(f"no approval request {approval_id!r} (unknown or long forgotten)")
        return public

    def approvals_of(self, requester: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.approvals.public_list()
            if self._may(requester, "approval", a["approval_id"], a["requester"])
        ]

    def approvals_recent(self, requester: str, n: int = 5) -> list[dict[str, Any]]:
        """The requests decided last that the requester may see, newest first,
        each with its plan's status now (what became of the press)."""
        out = []
        for a in self.approvals.recent(n * 4):
            if not self._may(requester, "approval", a["approval_id"], a["requester"]):
                continue
            plan = self.plans.plan_row(a["plan_id"]) if a["plan_id"] else None
            out.append({**a, "plan_status": plan.status.value if plan else None})
            if len(out) >= n:
                break
        return out

    def plans_page(
        self, requester: str, start: int, limit: int, *, changes: bool = False
    ) -> dict[str, Any]:
        """Plans newest first: everyone's with an ``audit`` grant (or the
        console's), else the requester's own."""
        everyone = self.evaluator.may_view(requester, "plan", "*", mine=False)
        ids, total = self.plans.page(None if everyone else requester, start, limit, changes=changes)
        plans = [p for i in ids if (p := self.plans.public(i)) is not None]
        nxt = start + len(ids)
        return {"plans": plans, "total": total, "next": nxt if nxt < total else None}

    def audit_search(
        self,
        requester: str,
        *,
        q: str = "",
        kind: str = "",
        before: int | None = None,
        limit: int = 50,
    ) -> dict[str, Any]:
        """Audit entries the requester may read, newest first, whose kind
        starts with ``kind`` and whose JSON contains ``q`` (case-insensitive),
        from just before entry ``before``; ``next_before`` continues the
        search (it stops after reading SEARCH_SCAN entries, and says where)."""
        pos = self.audit.size if before is None else max(0, min(before, self.audit.size))
        needle = q.lower()
        found: list[dict[str, Any]] = []
        scanned = 0
        while pos > 0 and len(found) < limit and scanned < SEARCH_SCAN:
            lo = max(0, pos - 500)
            entries = self.audit_entries(requester, lo, pos - lo)
            scanned += pos - lo
            for entry in reversed(entries):
                if entry["kind"].startswith(kind) and (
                    not needle or needle in json.dumps(entry, ensure_ascii=False).lower()
                ):
                    found.append(entry)
                    if len(found) >= limit:
                        pos = entry["index"]  # the next page starts before this one
                        break
            else:
                pos = lo
        return {"entries": found, "size": self.audit.size, "next_before": pos or None}

    def audit_entries(self, requester: str, start: int, limit: int) -> list[dict[str, Any]]:
        """A page of the log: all of it with an ``audit`` grant, else only the
        entries about the requester (its plans, tasks, approvals, pairing)."""
        entries = self.audit.entries(start, limit)
        if self.evaluator.may_view(requester, "audit", "audit", mine=False):
            return entries
        if not self.evaluator.may_view(requester, "audit", "audit", mine=True):
            return []
        mine = self.plans.ids_of(requester) | self.tasks.tasks.ids_of(requester)
        return [e for e in entries if _about(e["data"], requester, mine)]


def _about(data: dict[str, Any], requester: str, mine: set[str]) -> bool:
    if any(data.get(f) == requester for f in _OWNER_FIELDS):
        return True
    return any(isinstance(data.get(f), str) and data[f] in mine for f in _RECORD_FIELDS)
