"""Tasks: free text from a paired desktop, planned by the box's model; the
task store. (``taskrunner.py`` runs them.)

The broker hands the agent the requester's words and the *names* in the
shares (never contents); the agent answers a plan of intents; the plan then
takes exactly the path of ``POST /v1/intents`` (scope, policy, approval,
token, executor, audit). Nothing the model says is trusted: its intents are
validated like a desktop's, and any failure of the agent (not running, hung,
crashed, garbage) ends the task with the reason and changes nothing.

Progress is a list of events (planning, planned, decided, pending approval,
done/failed) kept with the task, for ``GET /v1/tasks/{id}`` and its SSE
stream.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from typing import Any

from appliance.db import Database
from appliance.errors import ApplianceError
from appliance.names import shown

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    text_sha256 TEXT NOT NULL,
    status TEXT NOT NULL,
    plan_id TEXT,
    model_id TEXT,
    model_sha256 TEXT,
    time_to_plan_s REAL,
    error TEXT,
    events TEXT NOT NULL,
    created REAL NOT NULL
);
"""

# planning -> planned -> (the plan's own statuses) ; or failed; or, with no
# plan proposed, question (the request is ambiguous, or the model was not sure
# enough) or refused (no file action can do it)
TERMINAL = frozenset({"done", "denied", "failed", "expired", "question", "refused"})
# The agent's answer kinds that propose nothing, and the task status each ends in.
NO_PLAN = {"question": "question", "refusal": "refused"}
TEXT_MAX = 4000  # characters of a task's text
CONTENT_MAX = 64 * 1024  # bytes of a file the extractor may see
# What a value found in a file may become: one folder name, nothing more.
FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _-]{0,63}")
FIELD_TYPES = ("integer", "string", "date")


def check_from_content(spec: object) -> None:
    """``{"field": NAME, "type": "integer" | "string" | "date"}``, or a clear refusal."""
    ok = (
        isinstance(spec, dict)
        and set(spec) == {"field", "type"}
        and isinstance(spec["field"], str)
        and re.fullmatch(r"[a-z][a-z0-9_]{0,31}", spec["field"]) is not None
        and spec["type"] in FIELD_TYPES
    )
    if not ok:
        raise ApplianceError(
            'from_content must be {"field": a lower-case name, "type": one of '
            f"{', '.join(FIELD_TYPES)}}}",
            code="invalid_request",
            status=422,
        )


class TaskStore:
    def __init__(self, db: Database):
        self.db = db
        db.ensure(SCHEMA)
        self._changed = threading.Condition()

    def create(self, requester: str, text_sha256: str) -> str:
        task_id = "task_" + secrets.token_hex(8)
        self.db.execute(
            "INSERT INTO tasks (task_id, requester, text_sha256, status, events, created)"
            " VALUES (?, ?, ?, 'planning', ?, ?)",
            (task_id, requester, text_sha256, json.dumps([_event("planning")]), time.time()),
        )
        return task_id

    def row(self, task_id: str) -> dict[str, Any] | None:
        row = self.db.one("SELECT * FROM tasks WHERE task_id = ?", (task_id,))
        if row is None:
            return None
        out = dict(row)
        out["events"] = json.loads(out["events"])
        return out

    def unfinished(self) -> list[dict[str, Any]]:
        """Tasks not ended (after a restart: planning, or following a plan)."""
        marks = ", ".join("?" * len(TERMINAL))
        rows = self.db.all(
            f"SELECT task_id, requester, status, plan_id FROM tasks WHERE status NOT IN ({marks})",
            tuple(sorted(TERMINAL)),
        )
        return [dict(r) for r in rows]

    def ids_of(self, requester: str) -> set[str]:
        rows = self.db.all("SELECT task_id FROM tasks WHERE requester = ?", (requester,))
        return {r["task_id"] for r in rows}

    def update(self, task_id: str, event: str, **fields: Any) -> None:
        """Record a step: set ``fields`` and append an event carrying them."""
        with self._changed:
            row = self.row(task_id)
            if row is None:
                return
            events = row["events"] + [_event(event, **fields.pop("detail", {}))]
            cols = ", ".join(f"{k} = ?" for k in fields)
            sets = f"{cols}, events = ?" if cols else "events = ?"
            self.db.execute(
                f"UPDATE tasks SET {sets} WHERE task_id = ?",
                (*fields.values(), json.dumps(events), task_id),
            )
            self._changed.notify_all()

    def wait_change(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait(timeout)


def proposal(result: dict[str, Any]) -> dict[str, Any]:
    """What the requester is shown beside a model's plan, from the agent's
    answer: its one-line explanation (the model's own words), its confidence
    (None: the backend gives none) and the compact form it wrote; kept with
    the task, audited with ``task.planned``."""
    return {
        "kind": result.get("kind", "plan"),
        "explanation": result.get("explanation", ""),
        "confidence": result.get("confidence"),
        "compact": result.get("compact", ""),
    }


def approval_note(result: dict[str, Any]) -> str:
    """The approval summary's prefix for a model's plan: the explanation is
    marked as the model's words (the actions that follow it are what runs),
    and shown safely (the model may have copied a hostile file name)."""
    conf = result.get("confidence")
    sure = f", confidence {conf:.2f}" if isinstance(conf, int | float) else ""
    words = shown(str(result.get("explanation", "")), quote=True, limit=400)
    return f"the box's model{sure}: {words}"


def _event(name: str, /, **detail: Any) -> dict[str, Any]:
    # Positional-only: a detail may itself be called "kind" (the plan's kind).
    return {"event": name, "time": time.time(), **detail}
