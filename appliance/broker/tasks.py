"""Tasks: free text from a paired desktop, planned by the box's model.

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

import base64
import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from appliance.agent.client import AgentClient
from appliance.audit import AuditLog
from appliance.broker.files import FileOps
from appliance.broker.plans import TERMINAL as PLAN_TERMINAL
from appliance.broker.plans import PlanStore
from appliance.broker.scope import Shares, Target
from appliance.db import Database
from appliance.errors import ApplianceError, NotFound
from appliance.intents import Intent, Provenance

log = logging.getLogger("appliance.broker")

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

# planning -> planned -> (the plan's own statuses) ; or failed
TERMINAL = frozenset({"done", "denied", "failed", "expired"})
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


def _event(kind: str, **detail: Any) -> dict[str, Any]:
    return {"event": kind, "time": time.time(), **detail}


# What the runner hands a plan to: the broker's submit (scope, policy, approval).
Submit = Callable[[str, list[Intent]], dict[str, Any]]


class TaskRunner:
    """Runs each task in its own thread: list the names, ask the agent, fill
    values from content if asked, submit the plan, follow it to its end."""

    def __init__(
        self,
        *,
        tasks: TaskStore,
        plans: PlanStore,
        shares: Shares,
        files: FileOps,
        audit: AuditLog,
        agent: Callable[[], AgentClient],
        submit: Submit,
    ) -> None:
        self.tasks = tasks
        self.plans = plans
        self.shares = shares
        self.files = files
        self.audit = audit
        self.agent = agent
        self.submit = submit

    def start(
        self, requester: str, text: str, from_content: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Free text from a paired desktop: the agent plans it in the background.

        ``from_content`` ({"field": "year", "type": "integer"}) asks for each
        planned move's destination folder to be a value found *inside* the file
        (see :meth:`fill_from_content`)."""
        if from_content is not None:
            check_from_content(from_content)
        if not text.strip() or len(text) > TEXT_MAX:
            raise ApplianceError(
                f"a task is 1 to {TEXT_MAX} characters of text", code="invalid_request", status=422
            )
        text_sha256 = hashlib.sha256(text.encode()).hexdigest()
        task_id = self.tasks.create(requester, text_sha256)
        # The words themselves are not kept: the log holds their hash.
        self.audit.append(
            "task.received",
            {"task_id": task_id, "requester": requester, "text_sha256": text_sha256},
        )
        threading.Thread(
            target=self._run,
            args=(task_id, requester, text, from_content),
            daemon=True,
            name=task_id,
        ).start()
        return self.public(task_id)

    def _run(
        self, task_id: str, requester: str, text: str, from_content: dict[str, str] | None
    ) -> None:
        try:
            result = self.agent().plan(text, self.listing())
            try:
                intents = [Intent.model_validate(i) for i in result["intents"]]
                if from_content is not None:
                    intents = self.fill_from_content(task_id, intents, from_content)
                if not intents:
                    raise ValueError("the plan is empty")
            except (ValueError, TypeError, KeyError) as e:
                raise ApplianceError(
                    f"the model's plan is not a valid plan of intents ({e})",
                    code="agent_invalid_plan",
                    status=502,
                ) from None
            model = {"model_id": result["model_id"], "model_sha256": result["model_sha256"]}
            self.audit.append(
                "task.planned",
                {
                    "task_id": task_id,
                    **model,
                    "seconds": result.get("seconds"),
                    "tokens": result.get("tokens"),
                    "intents": [i.model_dump(mode="json") for i in intents],
                },
            )
            self.tasks.update(
                task_id,
                "planned",
                status="planned",
                time_to_plan_s=result.get("seconds"),
                detail={**model, "intents": len(intents)},
                **model,
            )
            plan = self.submit(requester, intents)
        except ApplianceError as e:
            self.audit.append_quietly("task.failed", {"task_id": task_id, "error": e.to_dict()})
            self.tasks.update(
                task_id, "failed", status="failed", error=e.reason, detail=e.to_dict()
            )
            return
        except Exception as e:  # noqa: BLE001 - a bug must still end the task
            log.exception("task %s crashed", task_id)
            self.tasks.update(
                task_id, "failed", status="failed", error=f"internal error: {type(e).__name__}"
            )
            return
        self._follow(task_id, plan)

    def _follow(self, task_id: str, plan: dict[str, Any]) -> None:
        """Report the plan's progress on the task until it ends."""
        status = plan["status"]
        self.tasks.update(
            task_id,
            status,
            status=status,
            plan_id=plan["plan_id"],
            detail={
                "plan_id": plan["plan_id"],
                "approval_id": plan["approval_id"],
                "code": plan["code"],
            },
        )
        while status not in PLAN_TERMINAL:
            time.sleep(0.1)
            now = self.plans.plan_row(plan["plan_id"])
            if now is None or now.status == status:
                continue
            status = now.status
            self.tasks.update(task_id, status, status=status, detail={"error": now.error})

    def fill_from_content(
        self, task_id: str, intents: list[Intent], spec: dict[str, str]
    ) -> list[Intent]:
        """The quarantined step: the plan was made from names only; now each
        moved file's content is read (bounded) and given to the agent's
        extractor, which returns one value, as data. That value may only become
        the name of the destination folder (one path component, checked) beside
        the one the plan chose; it is tagged ``provenance: content``, so policy
        never plainly allows the move, and it can add no verb and no target
        outside the plan. A file whose value is missing or unusable is left out.
        """
        agent = self.agent()
        field, kind = spec["field"], spec["type"]
        moves: list[Intent] = []
        folders: dict[str, Target] = {}
        for intent in intents:
            if intent.verb != "file.move":
                continue
            src = self.shares.parse(intent.resource)
            dest = self.shares.parse(intent.params["to"])
            read = self.files.execute("file.read", src, {"max_bytes": CONTENT_MAX})
            content = read.result["content"]
            if read.result.get("encoding") == "base64":
                content = base64.b64decode(content).decode("utf-8", "replace")
            value = agent.extract(content, {field: kind})["values"][field]
            folder = str(value).strip() if value is not None else ""
            if not FOLDER_NAME.fullmatch(folder) or len(dest.parts) < 2:
                self.tasks.update(task_id, "extract_skipped", detail={"resource": src.canonical})
                continue
            folder_target = Target(dest.share, (*dest.parts[:-2], folder))
            folders[folder_target.canonical] = folder_target
            moves.append(
                Intent(
                    verb="file.move",
                    resource=src.canonical,
                    params={"to": folder_target.child(dest.parts[-1]).canonical},
                    provenance={"params.to": Provenance.content},
                )
            )
            self.tasks.update(
                task_id, "extracted", detail={"resource": src.canonical, "folder": folder}
            )
        mkdirs = [
            Intent(verb="file.mkdir", resource=name, provenance={"resource": Provenance.content})
            for name, target in sorted(folders.items())
            if self.shares.inspect(target) is None
        ]
        # Kept: what the plan did besides moves (minus folders it made for them).
        others = [i for i in intents if i.verb not in ("file.move", "file.mkdir")]
        return others + mkdirs + moves

    def listing(self, max_entries: int = 500, max_depth: int = 4) -> dict[str, list[str]]:
        """The names in each share (directories end with "/"), bounded: all
        the planner ever sees of the files."""
        out: dict[str, list[str]] = {}
        for share in self.shares.names:
            names: list[str] = []
            queue: list[tuple[str, ...]] = [()]
            while queue and len(names) < max_entries:
                parts = queue.pop(0)
                try:
                    listed = self.files.execute("file.list", Target(share, parts), {})
                except ApplianceError:
                    continue
                for entry in sorted(listed.result["entries"], key=lambda e: e["name"]):
                    rel = "/".join((*parts, entry["name"]))
                    if entry["type"] == "dir":
                        names.append(rel + "/")
                        if len(parts) + 1 < max_depth:
                            queue.append((*parts, entry["name"]))
                    elif entry["type"] == "file":
                        names.append(rel)
            out[share] = names[:max_entries]
        return out

    def public(self, task_id: str) -> dict[str, Any]:
        row = self.tasks.row(task_id)
        if row is None:
            raise NotFound(f"no task {task_id!r}")
        return {
            "task_id": task_id,
            "status": row["status"],
            "plan_id": row["plan_id"],
            "plan": self.plans.public(row["plan_id"]) if row["plan_id"] else None,
            "model": {"id": row["model_id"], "sha256": row["model_sha256"]}
            if row["model_id"]
            else None,
            "time_to_plan_s": row["time_to_plan_s"],
            "error": row["error"],
            "events": row["events"],
        }
