"""What the box answers, as typed values.

Each value keeps the box's JSON as it came (``raw``): ``appliance ... --json``
prints exactly that, and a field this client does not know yet is never
lost. The fields are read leniently (a newer box may add some), but the ones
a caller acts on (ids, statuses) must be there, or the answer is refused as
malformed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.client.errors import ClientError

# Plan and task statuses after which nothing changes any more.
PLAN_FINISHED = frozenset({"done", "denied", "failed", "expired"})
TASK_FINISHED = frozenset({"done", "denied", "failed", "expired", "question", "refused"})


def _need(raw: dict[str, Any], key: str, what: str) -> Any:
    if not isinstance(raw, dict) or key not in raw:
        raise ClientError(0, {"code": "bad_response", "reason": f"the box's {what} has no {key}"})
    return raw[key]


def press_sentence(code: str | None) -> str:
    """What a requester tells the person at the box: the code to match."""
    from appliance.approval.types import code_colour

    if not code:
        return "Press the button on the box to approve."
    return (
        f"Press the button on the box; it shows code {code} (the light blinks "
        f"{'-'.join(code)}; an RGB light is {code_colour(code)}). "
        "Approve only if the code matches."
    )


@dataclass(frozen=True)
class Health:
    """``GET /healthz``: whether privileged actions can run, and if not, why."""

    status: str
    problems: list[str]
    warnings: list[str]
    mode: str | None
    version: str | None
    api_versions: tuple[int, ...]
    raw: dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Health:
        versions = raw.get("api_versions")
        return cls(
            status=str(_need(raw, "status", "health")),
            problems=list(raw.get("problems") or []),
            warnings=list(raw.get("warnings") or []),
            mode=raw.get("mode"),
            version=raw.get("version"),
            # A box from before the contract was versioned speaks version 1.
            api_versions=tuple(int(v) for v in versions) if isinstance(versions, list) else (1,),
            raw=raw,
        )


@dataclass(frozen=True)
class Action:
    """One intent of a plan: the box's decision on it, and what became of it."""

    action_id: str
    verb: str
    resource: str
    params: dict[str, Any]
    decision: str
    risk: str
    reasons: list[str]
    status: str
    result: dict[str, Any] | None
    undoable: bool
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Action:
        return cls(
            action_id=str(_need(raw, "action_id", "action")),
            verb=str(raw.get("verb", "")),
            resource=str(raw.get("resource", "")),
            params=dict(raw.get("params") or {}),
            decision=str(raw.get("decision", "")),
            risk=str(raw.get("risk", "")),
            reasons=list(raw.get("reasons") or []),
            status=str(_need(raw, "status", "action")),
            result=raw.get("result"),
            undoable=bool(raw.get("undoable")),
            raw=raw,
        )


@dataclass(frozen=True)
class Plan:
    """A plan of intents (or of undos) as the box decided it."""

    plan_id: str
    kind: str
    status: str
    approval_id: str | None
    code: str | None
    digest: str | None
    actions: list[Action]
    error: str | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def finished(self) -> bool:
        return self.status in PLAN_FINISHED

    @property
    def waiting_for_press(self) -> bool:
        return self.status == "pending_approval"

    @property
    def reasons(self) -> list[str]:
        """Why it was decided so: the reasons of the intents that set the outcome."""
        deciding = [a for a in self.actions if a.decision == "deny"] or self.actions
        seen: list[str] = []
        for a in deciding:
            seen += [r for r in a.reasons if r not in seen]
        return seen

    def press_sentence(self) -> str:
        return press_sentence(self.code)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Plan:
        return cls(
            plan_id=str(_need(raw, "plan_id", "plan")),
            kind=str(raw.get("kind", "intents")),
            status=str(_need(raw, "status", "plan")),
            approval_id=raw.get("approval_id"),
            code=raw.get("code"),
            digest=raw.get("digest"),
            actions=[Action.from_json(a) for a in raw.get("intents") or []],
            error=raw.get("error"),
            raw=raw,
        )


@dataclass(frozen=True)
class Task:
    """A task in plain words: the box's model plans it, then it is a plan."""

    task_id: str
    status: str
    plan: Plan | None
    model: dict[str, Any] | None
    error: str | None
    events: list[dict[str, Any]]
    raw: dict[str, Any] = field(repr=False)

    @property
    def finished(self) -> bool:
        return self.status in TASK_FINISHED

    @property
    def planned(self) -> bool:
        """The model has answered: a plan exists (it may wait for a press), or the task ended."""
        return self.plan is not None or self.finished

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Task:
        plan = raw.get("plan")
        return cls(
            task_id=str(_need(raw, "task_id", "task")),
            status=str(_need(raw, "status", "task")),
            plan=Plan.from_json(plan) if isinstance(plan, dict) else None,
            model=raw.get("model"),
            error=raw.get("error"),
            events=list(raw.get("events") or []),
            raw=raw,
        )


@dataclass(frozen=True)
class Approval:
    """One request on the box's panel, as a requester sees it."""

    approval_id: str
    kind: str
    status: str
    code: str | None
    summary: str
    position: int | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def finished(self) -> bool:
        return self.status != "pending"

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Approval:
        return cls(
            approval_id=str(_need(raw, "approval_id", "approval")),
            kind=str(raw.get("kind", "")),
            status=str(_need(raw, "status", "approval")),
            code=raw.get("code"),
            summary=str(raw.get("summary", "")),
            position=raw.get("position"),
            raw=raw,
        )


@dataclass(frozen=True)
class Share:
    name: str
    resource: str
    access: str  # "read" or "read-write": what this desktop's grant lets it do
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Share:
        name = str(_need(raw, "name", "share"))
        return cls(
            name=name,
            resource=str(raw.get("resource", f"share:{name}")),
            access=str(raw.get("access", "read")),
            raw=raw,
        )


@dataclass(frozen=True)
class AuditPage:
    """Entries of the audit log, oldest first, from ``start``."""

    entries: list[dict[str, Any]]
    size: int
    start: int
    next: int | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any], start: int) -> AuditPage:
        return cls(
            entries=list(_need(raw, "entries", "audit page")),
            size=int(raw.get("size", 0)),
            start=start,
            next=raw.get("next"),
            raw=raw,
        )


@dataclass(frozen=True)
class Paired:
    """A finished pairing: this desktop's credential (shown exactly once)."""

    client_id: str
    credential: str
    code: str
    raw: dict[str, Any] = field(repr=False)
