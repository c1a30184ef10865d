"""The approval room's values: what the queue, the panels and the broker say
to one another. A neutral module, so the queue and the panels need not import
each other's internals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

PanelState = Literal[
    "idle", "pending", "console", "pairing", "approved", "denied", "expired", "fault"
]
PANEL_STATES: tuple[str, ...] = PanelState.__args__  # type: ignore[attr-defined]

Kind = Literal["plan", "pairing", "undo"]
Status = Literal["waiting", "pending", "approved", "denied", "expired", "cancelled"]
Decision = Literal["approve", "deny"]

KINDS: tuple[str, ...] = Kind.__args__  # type: ignore[attr-defined]
DECIDED: frozenset[str] = frozenset({"approved", "denied", "expired", "cancelled"})

# The colours an RGB LED shows a pending request in, one per verification
# code: easy to name, far apart on the colour wheel.
CODE_COLOURS = ("red", "green", "blue", "yellow", "cyan", "magenta")


def code_colour(code: str) -> str:
    """The colour an RGB panel breathes in for ``code``; the requester sees
    its name beside the code (number matching with a colour)."""
    return CODE_COLOURS[int(code) % len(CODE_COLOURS)]


@dataclass
class ApprovalRequest:
    """One thing a person is asked to approve (a plan, a pairing, an undo).

    Times (``created``, ``shown_at``, ``deadline``) are on the queue's clock
    (monotonic by default), not wall-clock time.
    """

    approval_id: str
    kind: str
    subject_id: str
    requester: str
    summary: str
    digest: str
    code: str
    created: float
    shown_at: float | None = None
    deadline: float | None = None
    status: Status = "waiting"
    decided_by: str | None = None
    gesture: str | None = None  # how it was decided: "hold", "double-tap", "timeout", "cli"...
    # Trusted arming: why a press counts only once the owner's console has
    # shown this digest (empty: it does not need the console), and when the
    # console showed it.
    console: tuple[str, ...] = ()
    seen_at: float | None = None
    # Whether a denial counts toward locking the requester out (not for a
    # plan the box's own model proposed for it).
    counts: bool = True

    @property
    def waits_for_console(self) -> bool:
        """A press cannot approve it yet: the console has not shown it."""
        return bool(self.console) and self.seen_at is None

    @property
    def decided(self) -> bool:
        return self.status in DECIDED

    def to_public(self, *, now: float | None = None, position: int | None = None) -> dict[str, Any]:
        """The view the API and the CLI show.

        The API's status vocabulary is pending | approved | denied | expired:
        a request waiting behind the shown one is "pending" with a
        ``position`` > 0 (0 = shown on the panel now), and a cancelled one is
        "denied" (nothing may proceed) with ``state`` saying "cancelled".
        """
        if self.status in ("waiting", "pending"):
            status = "pending"
        elif self.status == "cancelled":
            status = "denied"
        else:
            status = self.status
        out: dict[str, Any] = {
            "approval_id": self.approval_id,
            "kind": self.kind,
            "subject_id": self.subject_id,
            "plan_id": self.subject_id if self.kind in ("plan", "undo") else None,
            "pairing_id": self.subject_id if self.kind == "pairing" else None,
            "status": status,
            "state": self.status,
            "position": position,
            "code": self.code,
            "colour": code_colour(self.code),
            "digest": self.digest,
            "summary": self.summary,
            "requester": self.requester,
            "deadline": self.deadline,
            "decided_by": self.decided_by,
            "gesture": self.gesture,
            "needs_console": list(self.console),
            "seen_on_console": self.seen_at is not None,
            "counts_toward_lockout": self.counts,
        }
        if now is not None and self.deadline is not None and not self.decided:
            out["expires_in_s"] = round(max(0.0, self.deadline - now), 3)
        return out


@dataclass(frozen=True)
class PressResult:
    """What became of one press: ``accepted`` or ignored, and why."""

    accepted: bool
    approval_id: str | None
    reason: str


class PanelQueue(Protocol):
    """What a panel may ask of the approval queue it is connected to."""

    def press(
        self,
        decision: Decision,
        *,
        digest: str | None = None,
        source: str,
        held_for: float = 0.0,
        gesture: str | None = None,
    ) -> PressResult: ...

    def report(self, gesture: str, reason: str, *, source: str) -> None: ...

    def open_pairing_window(self, *, source: str) -> bool: ...

    def current(self) -> ApprovalRequest | None: ...
