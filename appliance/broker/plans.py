"""Plans and actions as stored in the database, and their public shape.

This module owns the ``plans`` and ``actions`` tables: every read and write
of them goes through :class:`PlanStore`, which hands out typed rows.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from appliance.broker.files.undo import UndoRecord
from appliance.db import Database
from appliance.verbs import READ_VERBS as READS

SCHEMA = """
CREATE TABLE IF NOT EXISTS plans (
    plan_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    requester TEXT NOT NULL,
    status TEXT NOT NULL,
    digest TEXT NOT NULL,
    approval_id TEXT,
    code TEXT,
    created REAL NOT NULL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS actions (
    action_id TEXT PRIMARY KEY,
    plan_id TEXT NOT NULL REFERENCES plans(plan_id),
    idx INTEGER NOT NULL,
    verb TEXT NOT NULL,
    resource TEXT NOT NULL,
    params TEXT NOT NULL,
    provenance TEXT NOT NULL,
    intent_digest TEXT NOT NULL,
    decision TEXT NOT NULL,
    risk TEXT NOT NULL,
    reasons TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT,
    snapshot_id TEXT,
    undo TEXT,
    token_id TEXT,
    undo_of TEXT,
    undone_by TEXT
);
CREATE INDEX IF NOT EXISTS actions_plan ON actions(plan_id, idx);
"""


class PlanKind(StrEnum):
    intents = "intents"  # a desktop's, a task's or a plugin's plan
    undo = "undo"  # undoing earlier actions


class PlanStatus(StrEnum):
    pending_approval = "pending_approval"
    running = "running"
    done = "done"
    denied = "denied"
    failed = "failed"
    expired = "expired"


TERMINAL = frozenset({PlanStatus.done, PlanStatus.denied, PlanStatus.failed, PlanStatus.expired})


class ActionStatus(StrEnum):
    planned = "planned"
    refused = "refused"  # its plan was denied
    running = "running"  # its token is spent: it may have begun
    done = "done"
    failed = "failed"
    skipped = "skipped"  # an earlier action failed, or the plan was not approved
    interrupted = "interrupted"  # the broker stopped while it ran; nothing took effect
    undone = "undone"


@dataclass(frozen=True)
class PlanRow:
    plan_id: str
    kind: PlanKind
    requester: str
    status: PlanStatus
    digest: str
    approval_id: str | None
    code: str | None
    created: float
    error: str | None
    compacted: int | None = None
    # Who proposed the plan for its requester: the box's model for a task
    # ({"task_id", "model_id", "model_sha256"}), a plugin ({"via"}); None: the
    # requester itself.
    origin: dict[str, Any] | None = None


@dataclass(frozen=True)
class NewAction:
    """An action as the broker decided it, before it is stored."""

    action_id: str
    verb: str
    resource: str
    params: dict[str, Any]
    provenance: dict[str, str]
    intent_digest: str
    decision: str
    risk: str
    reasons: tuple[str, ...]
    undo_of: str | None  # the action an action.undo reverses


@dataclass(frozen=True)
class ActionRow(NewAction):
    """A stored action: its decision, and what became of it."""

    plan_id: str
    idx: int
    status: ActionStatus
    result: dict[str, Any] | None
    snapshot_id: str | None
    undo: UndoRecord | None
    token_id: str | None
    undone_by: str | None

    @property
    def undoable(self) -> bool:
        return self.undo is not None and self.status is ActionStatus.done and not self.undone_by

    def public(self) -> dict[str, Any]:
        return {
            "action_id": self.action_id,
            "verb": self.verb,
            "resource": self.resource,
            "params": self.params,
            "decision": self.decision,
            "risk": self.risk,
            "reasons": list(self.reasons),
            "status": self.status.value,
            "result": self.result,
            "snapshot_id": self.snapshot_id,
            "undoable": self.undoable,
            "undone_by": self.undone_by,
            "undo_of": self.undo_of,
        }


class PlanStore:
    def __init__(self, db: Database):
        self.db = db
        db.ensure(SCHEMA)
        columns = {r["name"] for r in db.all("PRAGMA table_info(plans)")}
        if "compacted" not in columns:
            # How many read actions a read-only plan had when its rows were dropped.
            db.execute("ALTER TABLE plans ADD COLUMN compacted INTEGER")
        if "origin" not in columns:
            db.execute("ALTER TABLE plans ADD COLUMN origin TEXT")

    # -- reading --------------------------------------------------------------

    def plan_row(self, plan_id: str) -> PlanRow | None:
        row = self.db.one("SELECT * FROM plans WHERE plan_id = ?", (plan_id,))
        return _plan(dict(row)) if row else None

    def actions(self, plan_id: str) -> list[ActionRow]:
        rows = self.db.all("SELECT * FROM actions WHERE plan_id = ? ORDER BY idx", (plan_id,))
        return [_action(dict(r)) for r in rows]

    def action(self, action_id: str) -> ActionRow | None:
        row = self.db.one("SELECT * FROM actions WHERE action_id = ?", (action_id,))
        return _action(dict(row)) if row else None

    def ids_of(self, requester: str) -> set[str]:
        """The ids of ``requester``'s plans and of their approvals."""
        rows = self.db.all(
            "SELECT plan_id, approval_id FROM plans WHERE requester = ?", (requester,)
        )
        return {r["plan_id"] for r in rows} | {r["approval_id"] for r in rows if r["approval_id"]}

    def unfinished(self) -> list[PlanRow]:
        """Plans a stop interrupted: still waiting for approval, or running."""
        rows = self.db.all(
            "SELECT * FROM plans WHERE status IN (?, ?)",
            (PlanStatus.pending_approval.value, PlanStatus.running.value),
        )
        return [_plan(dict(r)) for r in rows]

    def public(self, plan_id: str) -> dict[str, Any] | None:
        """The plan as the API answers it."""
        plan = self.plan_row(plan_id)
        if plan is None:
            return None
        out: dict[str, Any] = {
            "plan_id": plan_id,
            "kind": plan.kind.value,
            "requester": plan.requester,
            "created": plan.created,
            "origin": plan.origin,
            "status": plan.status.value,
            "approval_id": plan.approval_id,
            "code": plan.code,
            "digest": plan.digest,
            "intents": [a.public() for a in self.actions(plan_id)],
        }
        if plan.error:
            out["error"] = plan.error
        if plan.compacted is not None:
            # A read-only plan past its window: what it read is in plan.read.
            out["compacted"] = plan.compacted
        return out

    def page(
        self, requester: str | None, start: int, limit: int, *, changes: bool = False
    ) -> tuple[list[str], int]:
        """Plan ids newest first (``requester``'s, or everyone's when None),
        ``limit`` of them from ``start``, and how many there are; with
        ``changes``, only plans that change something (undo plans included)."""
        where, args = ["1 = 1"], []
        if requester is not None:
            where.append("requester = ?")
            args.append(requester)
        if changes:
            reads = tuple(sorted(READS))
            where.append(
                "EXISTS (SELECT 1 FROM actions a WHERE a.plan_id = plans.plan_id"
                f" AND a.verb NOT IN ({','.join('?' * len(reads))}))"
            )
            args.extend(reads)
        cond = " AND ".join(where)
        row = self.db.one(f"SELECT COUNT(*) AS n FROM plans WHERE {cond}", tuple(args))
        total = row["n"] if row is not None else 0
        rows = self.db.all(
            f"SELECT plan_id FROM plans WHERE {cond} ORDER BY created DESC, rowid DESC"
            " LIMIT ? OFFSET ?",
            (*args, limit, start),
        )
        return [r["plan_id"] for r in rows], int(total)

    def compact(self, before: float) -> tuple[int, int]:
        """Keep what is old small. A read-only plan that ended before
        ``before`` keeps its row and the count of its actions, which go (its
        ``plan.read`` audit entry records each one); a read result of any other
        plan keeps only its content's digest and size (the content is in the
        share already). Returns (plans compacted, results shortened)."""
        reads = tuple(sorted(READS))
        marks = ",".join("?" * len(reads))
        ended = tuple(s.value for s in TERMINAL)
        rows = self.db.all(
            "SELECT p.plan_id, COUNT(a.action_id) AS n FROM plans p"
            " JOIN actions a ON a.plan_id = p.plan_id"
            f" WHERE p.created < ? AND p.compacted IS NULL AND p.status IN (?, ?, ?, ?)"
            f" GROUP BY p.plan_id HAVING SUM(a.verb NOT IN ({marks})) = 0",
            (before, *ended, *reads),
        )
        for row in rows:
            with self.db.tx(durable=False) as conn:
                conn.execute("DELETE FROM actions WHERE plan_id = ?", (row["plan_id"],))
                conn.execute(
                    "UPDATE plans SET compacted = ? WHERE plan_id = ?", (row["n"], row["plan_id"])
                )
        shortened = 0
        for action in self.db.all(
            "SELECT a.action_id, a.result FROM actions a JOIN plans p ON a.plan_id = p.plan_id"
            " WHERE p.created < ? AND a.verb = 'file.read' AND a.result LIKE '%\"content\"%'",
            (before,),
        ):
            result = json.loads(action["result"])
            content = result.pop("content", None)
            if not isinstance(content, str):
                continue
            result["content_sha256"] = hashlib.sha256(content.encode()).hexdigest()
            self.db.execute(
                "UPDATE actions SET result = ? WHERE action_id = ?",
                (json.dumps(result), action["action_id"]),
            )
            shortened += 1
        return len(rows), shortened

    # -- writing --------------------------------------------------------------

    def insert(
        self,
        *,
        plan_id: str,
        kind: PlanKind,
        requester: str,
        status: PlanStatus,
        digest: str,
        approval_id: str | None,
        code: str | None,
        actions: Iterable[NewAction],
        origin: dict[str, Any] | None = None,
    ) -> None:
        first = ActionStatus.refused if status is PlanStatus.denied else ActionStatus.planned
        # Not fsync'd: the plan's decision is already durable in the audit log.
        with self.db.tx(durable=False) as conn:
            conn.execute(
                "INSERT INTO plans (plan_id, kind, requester, status, digest, approval_id, code,"
                " created, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    plan_id,
                    kind,
                    requester,
                    status,
                    digest,
                    approval_id,
                    code,
                    time.time(),
                    json.dumps(origin) if origin else None,
                ),
            )
            for idx, a in enumerate(actions):
                conn.execute(
                    "INSERT INTO actions (action_id, plan_id, idx, verb, resource, params,"
                    " provenance, intent_digest, decision, risk, reasons, status, undo_of)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        a.action_id,
                        plan_id,
                        idx,
                        a.verb,
                        a.resource,
                        json.dumps(a.params),
                        json.dumps(a.provenance),
                        a.intent_digest,
                        a.decision,
                        a.risk,
                        json.dumps(list(a.reasons)),
                        first,
                        a.undo_of,
                    ),
                )

    def mark_running(self, conn: sqlite3.Connection, action_id: str, token_id: str) -> None:
        """Inside the token's spend transaction: the action may have begun."""
        conn.execute(
            "UPDATE actions SET status = ?, token_id = ? WHERE action_id = ?",
            (ActionStatus.running, token_id, action_id),
        )

    def set_plan(self, plan_id: str, status: PlanStatus, error: str | None = None) -> None:
        self.db.execute(
            "UPDATE plans SET status = ?, error = COALESCE(?, error) WHERE plan_id = ?",
            (status, error, plan_id),
        )

    def end_plan(self, plan_id: str, status: PlanStatus, error: str | None = None) -> None:
        """The plan will not run (denied, expired, failed before it began):
        its actions are skipped."""
        self.set_plan(plan_id, status, error)
        self.db.execute(
            "UPDATE actions SET status = ? WHERE plan_id = ?", (ActionStatus.skipped, plan_id)
        )

    def set_action(
        self,
        action_id: str,
        *,
        status: ActionStatus | None = None,
        result: dict[str, Any] | None = None,
        snapshot_id: str | None = None,
        undo: UndoRecord | None = None,
        clear_undo: bool = False,
        undone_by: str | None = None,
    ) -> None:
        """Set the fields given (None leaves a field as it is; ``clear_undo``
        removes the undo record of an action that took no effect)."""
        cols: list[str] = []
        args: list[Any] = []
        for key, value in (
            ("status", status),
            ("result", None if result is None else json.dumps(result)),
            ("snapshot_id", snapshot_id),
            ("undo", None if undo is None else json.dumps(undo.to_json())),
            ("undone_by", undone_by),
        ):
            if value is not None:
                cols.append(f"{key} = ?")
                args.append(value)
        if clear_undo:
            cols.append("undo = NULL")
        if cols:
            self.db.execute(
                f"UPDATE actions SET {', '.join(cols)} WHERE action_id = ?", (*args, action_id)
            )


def _plan(row: dict[str, Any]) -> PlanRow:
    return PlanRow(
        plan_id=row["plan_id"],
        kind=PlanKind(row["kind"]),
        requester=row["requester"],
        status=PlanStatus(row["status"]),
        digest=row["digest"],
        approval_id=row["approval_id"],
        code=row["code"],
        created=row["created"],
        error=row["error"],
        compacted=row.get("compacted"),
        origin=json.loads(row["origin"]) if row.get("origin") else None,
    )


def _action(row: dict[str, Any]) -> ActionRow:
    def load(key: str) -> Any:
        return None if row[key] is None else json.loads(row[key])

    undo = load("undo")
    return ActionRow(
        action_id=row["action_id"],
        plan_id=row["plan_id"],
        idx=row["idx"],
        verb=row["verb"],
        resource=row["resource"],
        params=load("params"),
        provenance=load("provenance"),
        intent_digest=row["intent_digest"],
        decision=row["decision"],
        risk=row["risk"],
        reasons=tuple(load("reasons")),
        status=ActionStatus(row["status"]),
        result=load("result"),
        snapshot_id=row["snapshot_id"],
        undo=None if undo is None else UndoRecord.from_json(undo),
        token_id=row["token_id"],
        undo_of=row["undo_of"],
        undone_by=row["undone_by"],
    )
