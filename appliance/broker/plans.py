"""Plans and actions as stored in the database, and their public shape."""

from __future__ import annotations

import json
from typing import Any

from appliance.db import Database

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

TERMINAL = frozenset({"done", "denied", "failed", "expired"})


class PlanStore:
    def __init__(self, db: Database):
        self.db = db
        db.ensure(SCHEMA)

    def plan_row(self, plan_id: str) -> dict[str, Any] | None:
        row = self.db.one("SELECT * FROM plans WHERE plan_id = ?", (plan_id,))
        return dict(row) if row else None

    def actions(self, plan_id: str) -> list[dict[str, Any]]:
        rows = self.db.all("SELECT * FROM actions WHERE plan_id = ? ORDER BY idx", (plan_id,))
        return [_decode(dict(r)) for r in rows]

    def action(self, action_id: str) -> dict[str, Any] | None:
        row = self.db.one("SELECT * FROM actions WHERE action_id = ?", (action_id,))
        return _decode(dict(row)) if row else None

    def set_plan(self, plan_id: str, status: str, error: str | None = None) -> None:
        self.db.execute(
            "UPDATE plans SET status = ?, error = COALESCE(?, error) WHERE plan_id = ?",
            (status, error, plan_id),
        )

    def set_action(self, action_id: str, **fields: Any) -> None:
        cols = []
        args: list[Any] = []
        for key, value in fields.items():
            cols.append(f"{key} = ?")
            is_json = key in ("result", "undo") and value is not None
            args.append(json.dumps(value) if is_json else value)
        args.append(action_id)
        self.db.execute(f"UPDATE actions SET {', '.join(cols)} WHERE action_id = ?", tuple(args))

    def public(self, plan_id: str) -> dict[str, Any] | None:
        """The plan as the API answers it."""
        plan = self.plan_row(plan_id)
        if plan is None:
            return None
        out: dict[str, Any] = {
            "plan_id": plan_id,
            "kind": plan["kind"],
            "status": plan["status"],
            "approval_id": plan["approval_id"],
            "code": plan["code"],
            "digest": plan["digest"],
            "intents": [public_action(a) for a in self.actions(plan_id)],
        }
        if plan["error"]:
            out["error"] = plan["error"]
        return out


def public_action(a: dict[str, Any]) -> dict[str, Any]:
    return {
        "action_id": a["action_id"],
        "verb": a["verb"],
        "resource": a["resource"],
        "params": a["params"],
        "decision": a["decision"],
        "risk": a["risk"],
        "reasons": a["reasons"],
        "status": a["status"],
        "result": a["result"],
        "snapshot_id": a["snapshot_id"],
        "undoable": bool(a["undo"]) and a["status"] == "done" and not a["undone_by"],
        "undone_by": a["undone_by"],
        "undo_of": a["undo_of"],
    }


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("params", "provenance", "reasons", "result", "undo"):
        if row.get(key) is not None:
            row[key] = json.loads(row[key])
    return row
