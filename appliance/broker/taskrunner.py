"""Running tasks: free text from a paired desktop, planned by the box's model.

Each task waits in its requester's line; one worker takes the next task
from the requester it served longest ago, so one desktop's many tasks never
starve another's, and each desktop has at most ``tasks_per_client`` open at
once. For a task the worker:

1. lists the names the requester may read (only the shares its grant
   includes), as read-only plans: evaluated and audited like any request;
2. hands the words and the names to the agent, and validates its plan like a
   desktop's; every field of it is marked ``provenance: model`` (file names
   are text anyone who can write into a share chooses), so no rule allows a
   change of it without a press unless the rule says so;
3. when asked for values from inside the files (``from_content``), reads
   them as one read-only plan under the requester's grant, and lets the
   agent's extractor name the destination folder (``provenance: content``);
4. submits the plan (scope, policy, approval, token, executor, audit), its
   approval's summary opening with the model's explanation and confidence
   (escaped, marked as the model's words), and follows it to its end. A
   model that answers with a question or a refusal proposes nothing: the
   task ends as ``question`` or ``refused`` with its words.

Nothing the model says is trusted; any failure of the agent ends the task
with a fixed message for its code (its own words may quote a file), and
nothing runs.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.agent.client import AgentClient
from appliance.audit import AuditLog
from appliance.broker.clients import ClientRecord
from appliance.broker.plans import TERMINAL as PLAN_TERMINAL
from appliance.broker.plans import PlanStore
from appliance.broker.scope import Shares, Target
from appliance.broker.tasks import (
    CONTENT_MAX,
    FOLDER_NAME,
    NO_PLAN,
    TEXT_MAX,
    TaskStore,
    approval_note,
    check_from_content,
    proposal,
)
from appliance.config import Limits
from appliance.errors import ApplianceError, NotFound
from appliance.intents import Intent, Provenance

log = logging.getLogger("appliance.broker")

INTERRUPTED = "the box restarted while its model was planning this task; ask again"

# What the requester is told when the agent fails: a fixed message per code,
# never the agent's own words (a compromised agent could quote a file).
AGENT_MESSAGES = {
    "agent_unavailable": "the box's model is not running; try again in a minute",
    "agent_timeout": "the box's model took too long to answer",
    "agent_failed": "the box's model could not plan this request",
    "model_error": "the box's model could not plan this request",
    "agent_invalid_plan": "the box's model answered with something that is not a valid plan",
}
LIST_DEPTH = 4  # levels of folders the planner sees
LIST_NAMES = 500  # names per share the planner sees
LIST_PER_PLAN = 64  # folders listed by one read-only plan

# Submit a plan for a requester: the broker's ``submit`` (evaluate, decide,
# approve, execute), with what proposed it for the approval's summary.
Submit = Callable[..., dict[str, Any]]


@dataclass
class _Job:
    task_id: str
    requester: str
    text: str
    from_content: dict[str, str] | None


class TaskRunner:
    def __init__(
        self,
        *,
        tasks: TaskStore,
        plans: PlanStore,
        shares: Shares,
        audit: AuditLog,
        limits: Limits,
        agent: Callable[[], AgentClient],
        requester: Callable[[str], ClientRecord | None],
        submit: Submit,
    ) -> None:
        self.tasks = tasks
        self.plans = plans
        self.shares = shares
        self.audit = audit
        self.limits = limits
        self.agent = agent
        self.requester = requester
        self.submit = submit
        self._cond = threading.Condition()
        self._lines: dict[str, deque[_Job]] = {}  # requester -> its waiting tasks
        self._served: dict[str, int] = {}  # requester -> when it was last served
        self._turn = 0
        self._open: dict[str, set[str]] = {}  # requester -> its tasks not ended
        # The words of each task not ended, so the owner's console can show
        # what the model was asked while its plan waits; only their hash is
        # kept once the task ends.
        self._words: dict[str, str] = {}
        self._cancelled: set[str] = set()
        self._worker: threading.Thread | None = None
        self._closing = threading.Event()  # the broker is closing: stop following plans
        self._followers: set[threading.Thread] = set()

    # -- the line -----------------------------------------------------------------

    def start(
        self, requester: str, text: str, from_content: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Free text from a paired desktop: queued for the box's model.

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
        with self._cond:
            open_now = len(self._open.get(requester, ()))
            if open_now >= self.limits.tasks_per_client:
                raise ApplianceError(
                    f"{requester} already has {open_now} tasks open (limit "
                    f"{self.limits.tasks_per_client}); wait for one to end",
                    code="task_quota",
                    status=429,
                )
            if sum(len(line) for line in self._lines.values()) >= self.limits.task_queue:
                raise ApplianceError(
                    f"the box's model has {self.limits.task_queue} tasks waiting; try again later",
                    code="tasks_busy",
                    status=429,
                )
            task_id = self.tasks.create(requester, text_sha256)
            self._open.setdefault(requester, set()).add(task_id)
            self._words[task_id] = text
            self._lines.setdefault(requester, deque()).append(
                _Job(task_id, requester, text, from_content)
            )
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="tasks", daemon=True)
                self._worker.start()
            self._cond.notify_all()
        # The words themselves are not kept: the log holds their hash.
        self.audit.append(
            "task.received",
            {"task_id": task_id, "requester": requester, "text_sha256": text_sha256},
        )
        return self.public(task_id)

    def _next(self) -> _Job | None:
        """The next task: of the requester served longest ago (never: first);
        None once the broker is closing."""
        with self._cond:
            while not self._lines and not self._closing.is_set():
                self._cond.wait()
            if self._closing.is_set():
                return None
            requester = min(self._lines, key=lambda r: self._served.get(r, -1))
            line = self._lines[requester]
            job = line.popleft()
            if not line:
                del self._lines[requester]
            self._turn += 1
            self._served[requester] = self._turn
            if len(self._served) > 10_000:  # bounded, as every per-client table
                self._served.clear()
            return job

    def _work(self) -> None:
        while (job := self._next()) is not None:
            try:
                plan = self._run(job)
            except Exception:  # noqa: BLE001 - the line must keep moving
                if self._closing.is_set():
                    return  # the broker closed under the task: a restart reports it
                log.exception("task %s crashed", job.task_id)
                plan = None
                self.tasks.update(job.task_id, "failed", status="failed", error="internal error")
            if plan is None:
                self._ended(job)
                continue
            self._start_following(job, plan, (plan["plan_id"], plan["status"]))

    def close(self) -> None:
        """Stop taking tasks and following plans (their records stay; a
        restarted box reports them)."""
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
            threads = [*self._followers, *([self._worker] if self._worker else [])]
        for thread in threads:
            thread.join(timeout=2)

    def _ended(self, job: _Job) -> None:
        with self._cond:
            self._open.get(job.requester, set()).discard(job.task_id)
            self._cancelled.discard(job.task_id)
            self._words.pop(job.task_id, None)

    def words(self, task_id: str) -> str | None:
        """What the task asked, in its requester's words, while it is open."""
        with self._cond:
            return self._words.get(task_id)

    def cancel_requester(self, requester: str) -> int:
        """End every task of ``requester`` (it was revoked): waiting ones now,
        a running one before it submits anything. Returns how many."""
        with self._cond:
            waiting = list(self._lines.pop(requester, ()))
            open_now = set(self._open.get(requester, ()))
            self._cancelled |= open_now
        for job in waiting:
            self._fail(job.task_id, "cancelled", "the desktop was revoked")
            self._ended(job)
        return len(open_now)

    # -- one task -------------------------------------------------------------------

    def _run(self, job: _Job) -> dict[str, Any] | None:
        """Plan and submit one task; its plan, or None when it ended here."""
        if job.task_id in self._cancelled:
            self._fail(job.task_id, "cancelled", "the desktop was revoked")
            return None
        try:
            result = self.agent().plan(job.text, self.listing(job.requester))
            if result.get("kind") in NO_PLAN:
                self._answered(job, result)
                return None
            intents = self._proposed(job, result)
            if job.task_id in self._cancelled:
                self._fail(job.task_id, "cancelled", "the desktop was revoked")
                return None
            confidence = result.get("confidence")
            origin = {
                "task_id": job.task_id,
                "model_id": result["model_id"],
                "model_sha256": result["model_sha256"],
                # The model's explanation and confidence: for the console, and
                # for the summary marked as its words.
                "explanation": str(result.get("explanation", "")),
                "confidence": confidence if isinstance(confidence, int | float) else None,
                "note": approval_note(result),
            }
            return self.submit(job.requester, intents, origin=origin)
        except ApplianceError as e:
            code = e.code if e.code in AGENT_MESSAGES else None
            if code is not None:
                # The agent's own words stay in the broker's log; the requester
                # and the audit log get the code and a fixed message.
                log.warning("task %s: %s: %s", job.task_id, e.code, e.reason[:500])
                self._fail(job.task_id, code, AGENT_MESSAGES[code], e.reason)
            else:
                self._fail(job.task_id, e.code, e.reason, e.reason)
            return None

    def _answered(self, job: _Job, result: dict[str, Any]) -> None:
        """Nothing is proposed: the task ends with the model's question or
        reason, and the requester asks again."""
        status = NO_PLAN[result["kind"]]
        model = {"model_id": result["model_id"], "model_sha256": result["model_sha256"]}
        said = {**model, **proposal(result)}
        self.audit.append("task.planned", {"task_id": job.task_id, **said})
        self.tasks.update(job.task_id, status, status=status, detail=said, **model)

    def _proposed(self, job: _Job, result: dict[str, Any]) -> list[Intent]:
        """The agent's plan as intents, every field marked as the model's."""
        try:
            intents = [_as_model(Intent.model_validate(i)) for i in result["intents"]]
            if job.from_content is not None:
                intents = self.fill_from_content(
                    job.task_id, job.requester, intents, job.from_content
                )
            if not intents:
                raise ValueError("the plan is empty")
        except (ValueError, TypeError, KeyError):
            raise ApplianceError(
                "the model's plan is not a valid plan of intents",
                code="agent_invalid_plan",
                status=502,
            ) from None
        model = {"model_id": result["model_id"], "model_sha256": result["model_sha256"]}
        self.audit.append(
            "task.planned",
            {
                "task_id": job.task_id,
                **model,
                "seconds": result.get("seconds"),
                "tokens": result.get("tokens"),
                "intents": [i.model_dump(mode="json") for i in intents],
                **proposal(result),
            },
        )
        self.tasks.update(
            job.task_id,
            "planned",
            status="planned",
            time_to_plan_s=result.get("seconds"),
            detail={**model, "intents": len(intents), **proposal(result)},
            **model,
        )
        return intents

    def _fail(self, task_id: str, code: str, message: str, reason: str | None = None) -> None:
        error = {"code": code, "reason": message}
        audited: dict[str, Any] = {"task_id": task_id, "error": error}
        if reason is not None and reason != message:
            audited["reason_sha256"] = hashlib.sha256(reason.encode()).hexdigest()
        self.audit.append_quietly("task.failed", audited)
        self.tasks.update(task_id, "failed", status="failed", error=message, detail=error)

    def _follow(self, job: _Job, plan: dict[str, Any] | None, watched: tuple[str, str]) -> None:
        """Report the plan ``watched`` (its id, its status now) on the task
        until it ends; ``plan``: the plan as just submitted, recorded first."""
        plan_id, status = watched
        try:
            if plan is not None:
                self.tasks.update(
                    job.task_id,
                    status,
                    status=status,
                    plan_id=plan_id,
                    detail={
                        "plan_id": plan_id,
                        "approval_id": plan["approval_id"],
                        "code": plan["code"],
                    },
                )
            while status not in PLAN_TERMINAL and not self._closing.wait(0.1):
                now = self.plans.plan_row(plan_id)
                if now is None or now.status == status:
                    continue
                status = now.status
                self.tasks.update(job.task_id, status, status=status, detail={"error": now.error})
        finally:
            self._ended(job)
            with self._cond:
                self._followers.discard(threading.current_thread())

    def _start_following(
        self, job: _Job, plan: dict[str, Any] | None, watched: tuple[str, str]
    ) -> None:
        follower = threading.Thread(
            target=self._follow,
            args=(job, plan, watched),
            name=f"follow-{job.task_id}",
            daemon=True,
        )
        with self._cond:
            self._followers.add(follower)
            self._open.setdefault(job.requester, set()).add(job.task_id)
        follower.start()

    def resume(self) -> None:
        """After a restart: a task its model was planning ends ``failed`` (its
        words were never kept: the desktop asks again); a task whose plan was
        proposed is followed again to the plan's end."""
        for row in self.tasks.unfinished():
            job = _Job(row["task_id"], row["requester"], "", None)
            if row["plan_id"] is None:
                self._fail(job.task_id, "interrupted", INTERRUPTED)
            else:
                self._start_following(job, None, (row["plan_id"], row["status"]))

    # -- reads on the requester's behalf, each a read-only plan under its grant ----------

    def _read_plan(self, requester: str, intents: list[Intent], via: str) -> list[dict[str, Any]]:
        """Run reads for ``requester`` through the gate; the done ones' results."""
        if not intents:
            return []
        plan = self.submit(requester, intents, via=via)
        return [i for i in plan["intents"] if i["status"] == "done"]

    def listing(self, requester: str) -> dict[str, list[str]]:
        """The names in each share the requester may read (directories end
        with "/"), bounded: all the planner ever sees of the files."""
        client = self.requester(requester)
        out: dict[str, list[str]] = {}
        for share in self.shares.names:
            if client is None or not client.grant.reads(share):
                continue
            names: list[str] = []
            level: list[tuple[str, ...]] = [()]
            for depth in range(LIST_DEPTH):
                nxt: list[tuple[str, ...]] = []
                for start in range(0, len(level), LIST_PER_PLAN):
                    batch = level[start : start + LIST_PER_PLAN]
                    intents = [
                        Intent(verb="file.list", resource=Target(share, p).canonical) for p in batch
                    ]
                    for done in self._read_plan(requester, intents, "the box's model's listing"):
                        parts = self.shares.parse(done["resource"]).parts
                        for entry in sorted(done["result"]["entries"], key=lambda e: e["name"]):
                            rel = "/".join((*parts, entry["name"]))
                            if entry["type"] == "dir":
                                names.append(rel + "/")
                                if depth + 1 < LIST_DEPTH:
                                    nxt.append((*parts, entry["name"]))
                            elif entry["type"] == "file":
                                names.append(rel)
                    if len(names) >= LIST_NAMES:
                        break
                level = nxt
                if not level or len(names) >= LIST_NAMES:
                    break
            out[share] = names[:LIST_NAMES]
        return out

    def fill_from_content(
        self, task_id: str, requester: str, intents: list[Intent], spec: dict[str, str]
    ) -> list[Intent]:
        """The quarantined step: the plan was made from names only; now each
        moved file's content is read (bounded, as one read-only plan under the
        requester's grant) and given to the agent's extractor, which returns
        one value, as data. That value may only become the name of the
        destination folder (one path component, checked) beside the one the
        plan chose; it is tagged ``provenance: content``, so policy never
        plainly allows the move, and it can add no verb and no target outside
        the plan. A file whose value is missing or unusable is left out."""
        field, kind = spec["field"], spec["type"]
        moves = [i for i in intents if i.verb == "file.move"]
        reads = [
            Intent(verb="file.read", resource=i.resource, params={"max_bytes": CONTENT_MAX})
            for i in moves
        ]
        contents = {
            r["resource"]: r["result"]
            for r in self._read_plan(requester, reads, "a task's reading of its files")
        }
        agent = self.agent()
        filled: list[Intent] = []
        folders: dict[str, Target] = {}
        for intent in moves:
            src = self.shares.parse(intent.resource)
            dest = self.shares.parse(intent.params["to"])
            read = contents.get(src.canonical)
            value = None
            if read is not None:
                content = read["content"]
                if read.get("encoding") == "base64":
                    content = base64.b64decode(content).decode("utf-8", "replace")
                value = agent.extract(content, {field: kind})["values"][field]
            folder = str(value).strip() if value is not None else ""
            if not FOLDER_NAME.fullmatch(folder) or len(dest.parts) < 2:
                self.tasks.update(task_id, "extract_skipped", detail={"resource": src.canonical})
                continue
            folder_target = Target(dest.share, (*dest.parts[:-2], folder))
            folders[folder_target.canonical] = folder_target
            filled.append(
                Intent(
                    verb="file.move",
                    resource=src.canonical,
                    params={"to": folder_target.child(dest.parts[-1]).canonical},
                    provenance={"resource": Provenance.model, "params.to": Provenance.content},
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
        return others + mkdirs + filled

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


def _as_model(intent: Intent) -> Intent:
    """The intent with every field marked as the model's, whatever it said."""
    return intent.model_copy(update={"provenance": {f: Provenance.model for f in intent.fields()}})
