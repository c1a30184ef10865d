"""The approval queue: one request shown at a time, a bounded line behind it.

The physical button can only say "yes" or "no"; it cannot say *to what*. So
the queue makes sure there is only ever one thing a press can mean:

* one request is **shown** (status ``pending``) at a time; the rest **wait**
  in a bounded FIFO, and a flood beyond ``queue_size`` is refused (429), not
  queued, so nobody can bury the owner in prompts (approval fatigue);
  pairing requests wait in a short line of their own (``pairing_queue``, one
  per address) and are shown only when no paired desktop's request waits;
* a press within ``arming_delay_s`` of a request being shown is ignored, so a
  press meant for the previous request cannot approve the next one;
* a press may carry the digest the presser saw (the virtual panel and the
  local page do); a different digest is ignored, so a swap between display
  and press cannot approve the wrong request;
* trusted arming: a request marked ``console`` (a risky plan) is approved
  by no press until the owner's console has shown its digest (:meth:`seen`,
  ``arming.py``); until then the LED says "needs the console";
* silence is a denial: ``timeout_s`` after being shown, a request expires,
  even if nobody calls anything (a daemon timer thread does it);
* a requester whose requests were denied or expired ``lockout_after`` times
  within ``lockout_window_s`` is locked out for ``lockout_s``: its open
  requests are cancelled and new ones refused (429 ``locked_out``); a
  request that does not ``count`` (the box's model proposed it) is never
  held against its requester, and the console can lift a lockout
  (``lockouts.py``);
* a pairing window (opened by a long hold on the idle button) is the only
  time a physical panel accepts pairing requests; it closes by itself.

Every press, accepted or not, is reported through ``on_event`` so the broker
can audit it. Callbacks run outside the queue's lock.
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from appliance.config import ApprovalSettings
from appliance.errors import ApplianceError, LockedOut, NotFound, QueueFull, Unavailable
from appliance.intents import verification_code

from .arming import armed_in, refusal
from .lockouts import Lockouts
from .panel import Panel
from .types import KINDS, ApprovalRequest, Decision, PanelState, PressResult, Status

log = logging.getLogger(__name__)

# Decided requests stay readable through get() so a requester polling late
# still learns the outcome; beyond this many the oldest are forgotten.
KEEP_DECIDED = 1000
# The summary is shown on small screens and in the audit log: keep it short.
SUMMARY_CHARS = 2000
# The expiry thread sleeps at most this long, so an injected clock that jumps
# ahead is noticed even without a wake-up.
_MAX_TIMER_SLEEP = 1.0
_HEX = re.compile(r"(?:[0-9a-f]{2}){4,64}")


class _Effects:
    """Callbacks collected under the lock and run after it is released."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.decided: list[ApprovalRequest] = []

    def event(self, name: str, payload: dict[str, Any]) -> None:
        self.events.append((name, payload))

    def __bool__(self) -> bool:
        return bool(self.events or self.decided)


class ApprovalQueue:
    """The broker's single line of requests in front of the approval panel.

    ``panel`` is told what to show (``show``) and what the LED means
    (``indicate``); a physical panel calls :meth:`press` from its button
    callbacks. ``on_event(name, payload)`` sees every press (and submissions,
    decisions and panel faults) for the audit log; ``on_decided(request)`` is
    called once per request when it is approved, denied, expired or
    cancelled. Both run outside the lock; an exception in them is logged and
    does not stop the queue. All methods are thread-safe.
    """

    def __init__(
        self,
        settings: ApprovalSettings,
        panel: Panel,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        on_decided: Callable[[ApprovalRequest], None] | None = None,
    ) -> None:
        if settings.queue_size < 0 or settings.timeout_s <= 0 or settings.arming_delay_s < 0:
            raise ValueError(f"unusable approval settings: {settings}")
        self.settings = settings
        self.panel = panel
        self._clock = clock
        self._on_event = on_event
        self._on_decided = on_decided
        # Re-entrant so a panel that reads the queue from show() cannot deadlock.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._shown: ApprovalRequest | None = None
        self._waiting: deque[ApprovalRequest] = deque()
        self._requests: dict[str, ApprovalRequest] = {}
        self._decided_order: deque[str] = deque()
        self._closed = False
        self._lockouts = Lockouts(settings, clock)  # against approval fatigue
        self._pairing_until: float | None = None
        with self._lock:
            self._tell_panel(_Effects(), None, "idle")
        self._timer = threading.Thread(target=self._run_timer, name="approval-expiry", daemon=True)
        self._timer.start()

    # -- public API ---------------------------------------------------------

    def submit(
        self,
        kind: str,
        subject_id: str,
        requester: str,
        summary: str,
        digest: str,
        *,
        console: tuple[str, ...] = (),
        counts: bool = True,
    ) -> ApprovalRequest:
        """Queue a request for approval; shown at once if nothing else is.

        ``console``: why a press may approve it only once the owner's console
        has shown it (trusted arming; empty: a press is enough). ``counts``:
        whether its denial counts toward locking ``requester`` out.

        Raises QueueFull (nothing queued) when ``queue_size`` requests already
        wait, and Unavailable (nothing queued) when the queue is closed or the
        panel cannot show the request.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown approval kind {kind!r}; expected one of {KINDS}")
        digest = digest.lower() if isinstance(digest, str) else ""
        if not _HEX.fullmatch(digest):
            raise ValueError("digest must be a hex string of 8 to 128 characters")
        if len(summary) > SUMMARY_CHARS:
            summary = summary[: SUMMARY_CHARS - 1] + "…"
        effects = _Effects()
        try:
            with self._lock:
                if self._closed:
                    raise Unavailable("the approval queue is shut down")
                self._expire_due(effects)
                left = self._lockouts.left(requester)
                if left:
                    raise LockedOut(
                        f"{requester} is locked out of approvals for {left:.0f} more seconds: "
                        f"{self.settings.lockout_after} of its requests were denied or went "
                        f"unanswered within {self.settings.lockout_window_s / 60:g} minutes"
                    )
                pairings = sum(1 for r in self._waiting if r.kind == "pairing")
                if self._shown is not None and kind == "pairing":
                    if pairings >= self.settings.pairing_queue:
                        raise QueueFull(
                            f"{pairings} pairing requests are already waiting "
                            f"(limit {self.settings.pairing_queue}); try again in a minute"
                        )
                elif (
                    self._shown is not None
                    and len(self._waiting) - pairings >= self.settings.queue_size
                ):
                    raise QueueFull(
                        f"{len(self._waiting) - pairings} approval requests are already waiting "
                        f"behind the one on the panel (limit {self.settings.queue_size}); "
                        "try again once they are answered"
                    )
                mine = sum(1 for r in self._open() if r.requester == requester)
                limit = 1 if kind == "pairing" else self.settings.per_requester
                if mine >= limit:
                    # One requester must not crowd out everyone else's requests.
                    raise QueueFull(
                        f"{requester} already has {mine} approval requests open "
                        f"(limit {limit}); wait for them to be answered"
                    )
                req = ApprovalRequest(
                    approval_id="apr_" + secrets.token_hex(8),
                    kind=kind,
                    subject_id=subject_id,
                    requester=requester,
                    summary=summary,
                    digest=digest,
                    code=verification_code(digest),
                    created=self._clock(),
                    console=tuple(console),
                    counts=counts,
                )
                if self._shown is None:
                    if not self._show(req, effects):
                        self._shown = None
                        self._tell_panel(effects, None, "fault")
                        raise Unavailable(
                            "the approval panel failed to show the request; nothing was queued"
                        )
                else:
                    self._waiting.append(req)
                self._requests[req.approval_id] = req
                effects.event("approval.submitted", self._public(req))
                self._cond.notify_all()
                snapshot = dataclasses.replace(req)
        finally:
            self._dispatch(effects)
        return snapshot

    def press(
        self,
        decision: Decision,
        *,
        digest: str | None = None,
        source: str,
        held_for: float = 0.0,
        gesture: str | None = None,
    ) -> PressResult:
        """A button press (or its virtual twin) for the request shown now.

        ``held_for`` is how long ago the gesture began (a hold is reported a
        second after the finger went down): the arming delay is measured to
        when it *began*, so a press that started before the request appeared
        never counts. Ignored, with a reason (``arming.refusal``), when
        nothing is shown, when it began within the arming delay, when
        ``digest`` is not the shown request's, or when it would approve a
        request that waits for the console.
        """
        if decision not in ("approve", "deny"):
            raise ApplianceError(f"decision must be 'approve' or 'deny', not {decision!r}")
        effects = _Effects()
        try:
            with self._lock:
                self._expire_due(effects)
                shown = self._shown
                now = self._clock()
                began = now - max(0.0, held_for)
                refused = (
                    "ignored: the approval queue is shut down"
                    if self._closed
                    else refusal(shown, decision, digest, began, self.settings.arming_delay_s)
                )
                accepted = refused is None
                reason = refused or ("approved" if decision == "approve" else "denied")
                result = PressResult(accepted, shown.approval_id if shown else None, reason)
                effects.event(
                    "approval.press",
                    {
                        "decision": decision,
                        "gesture": gesture,
                        "held_for_s": round(held_for, 3),
                        "source": source,
                        "accepted": accepted,
                        "reason": reason,
                        "approval_id": result.approval_id,
                        "digest": digest,
                        "shown_digest": shown.digest if shown else None,
                    },
                )
                if accepted:
                    assert shown is not None
                    shown.gesture = gesture or source
                    status: Status = "approved" if decision == "approve" else "denied"
                    self._decide_shown(status, source, effects)
        finally:
            self._dispatch(effects)
        return result

    def report(self, gesture: str, reason: str, *, source: str) -> None:
        """A gesture that decides nothing (a tap alone, an ambiguous one),
        put on the record like an ignored press."""
        effects = _Effects()
        try:
            with self._lock:
                self._expire_due(effects)
                shown = self._shown
                effects.event(
                    "approval.press",
                    {
                        "decision": None,
                        "gesture": gesture,
                        "source": source,
                        "accepted": False,
                        "reason": reason,
                        "approval_id": shown.approval_id if shown else None,
                        "digest": None,
                        "shown_digest": shown.digest if shown else None,
                    },
                )
        finally:
            self._dispatch(effects)

    def seen(self, approval_id: str, digest: str, *, by: str) -> ApprovalRequest:
        """The owner's console showed the request on the panel, with this
        digest (trusted arming): a press may approve it after a fresh arming
        delay. NotFound for any other request or digest (it was replaced)."""
        effects = _Effects()
        try:
            with self._lock:
                self._expire_due(effects)
                shown = self._shown
                if (
                    shown is None
                    or shown.approval_id != approval_id
                    or not isinstance(digest, str)
                    or digest.lower() != shown.digest
                ):
                    raise NotFound(
                        f"approval request {approval_id!r} with that digest is not the one "
                        "on the panel now"
                    )
                if shown.seen_at is None:
                    shown.seen_at = self._clock()
                    effects.event(
                        "approval.seen",
                        {"approval_id": approval_id, "digest": shown.digest, "by": by},
                    )
                    if shown.console:
                        # The light now shows the code: the press may follow.
                        self._tell_panel(effects, shown, "pending")
                    self._cond.notify_all()
                snapshot = dataclasses.replace(shown)
        finally:
            self._dispatch(effects)
        return snapshot

    def recent(self, n: int = 5) -> builtins.list[dict[str, Any]]:
        """The public view of the ``n`` requests decided last, newest first."""
        with self._guard():
            ids = [i for i in reversed(self._decided_order) if i in self._requests][:n]
            return [self._public(self._requests[i]) for i in ids]

    # -- the pairing window ---------------------------------------------------

    def open_pairing_window(self, *, source: str) -> bool:
        """Open the pairing window for ``pairing_window_s`` (a long hold on the
        idle button). Refused (False) while a request is shown or waiting:
        the hold must not be mistaken for an answer to it."""
        effects = _Effects()
        try:
            with self._lock:
                self._expire_due(effects)
                if self._closed or self._open():
                    return False
                self._pairing_until = self._clock() + self.settings.pairing_window_s
                self._tell_panel(effects, None, "pairing")
                effects.event(
                    "approval.pairing_window",
                    {"open": True, "seconds": self.settings.pairing_window_s, "source": source},
                )
                self._cond.notify_all()
                return True
        finally:
            self._dispatch(effects)

    def pairing_window(self) -> float | None:
        """Seconds the pairing window stays open, or None when it is closed."""
        with self._guard():
            if self._pairing_until is None:
                return None
            return max(0.0, self._pairing_until - self._clock())

    def close_pairing_window(self, *, why: str = "closed") -> None:
        effects = _Effects()
        try:
            with self._lock:
                self._close_pairing(effects, why)
        finally:
            self._dispatch(effects)

    # -- lockouts ----------------------------------------------------------------

    def lockouts(self) -> builtins.list[dict[str, Any]]:
        """Requesters locked out now, and for how much longer."""
        with self._guard():
            return self._lockouts.list()

    def lockout(self, requester: str) -> dict[str, Any] | None:
        """This requester's lockout, if any (what the API tells a client)."""
        with self._guard():
            return self._lockouts.one(requester)

    def lift_lockout(self, requester: str, *, by: str) -> bool:
        """The owner lifts ``requester``'s lockout (from the console); False
        when it was not locked out."""
        effects = _Effects()
        try:
            with self._lock:
                lifted = self._lockouts.lift(requester)
                if lifted:
                    effects.event("approval.lockout_lifted", {"requester": requester, "by": by})
                return lifted
        finally:
            self._dispatch(effects)

    def current(self) -> ApprovalRequest | None:
        """The request shown on the panel now, if any (a copy)."""
        with self._guard():
            return dataclasses.replace(self._shown) if self._shown else None

    def get(self, approval_id: str) -> ApprovalRequest:
        """A copy of one request, open or recently decided; NotFound otherwise."""
        with self._guard():
            return dataclasses.replace(self._get(approval_id))

    def list(self) -> builtins.list[ApprovalRequest]:
        """Open requests: the shown one first, then the waiting ones in order."""
        with self._guard():
            return [dataclasses.replace(r) for r in self._open()]

    def public(self, approval_id: str) -> dict[str, Any]:
        """:meth:`ApprovalRequest.to_public` with position and time left filled in."""
        with self._guard():
            return self._public(self._get(approval_id))

    def public_list(self) -> builtins.list[dict[str, Any]]:
        """The public view of every open request, shown one first."""
        with self._guard():
            return [self._public(r) for r in self._open()]

    def cancel(self, approval_id: str, *, by: str = "requester") -> ApprovalRequest:
        """Withdraw an open request (e.g. its requester went away).

        A request already decided is returned unchanged: a cancel never turns
        an approval into anything else after the fact, nor the reverse.
        """
        effects = _Effects()
        try:
            with self._lock:
                self._expire_due(effects)
                req = self._get(approval_id)
                if req is self._shown:
                    self._decide_shown("cancelled", by, effects)
                elif not req.decided:
                    self._waiting.remove(req)
                    self._finish(req, "cancelled", by, effects)
                snapshot = dataclasses.replace(req)
        finally:
            self._dispatch(effects)
        return snapshot

    def cancel_requester(self, requester: str, *, by: str) -> int:
        """Withdraw every open request of ``requester`` (it was revoked);
        returns how many."""
        with self._guard():
            mine = [r.approval_id for r in self._open() if r.requester == requester]
        for approval_id in mine:
            self.cancel(approval_id, by=by)
        return len(mine)

    def wait(self, approval_id: str, timeout: float) -> ApprovalRequest:
        """Block until the request is decided or ``timeout`` seconds (real
        time) pass; return a copy of it either way."""
        self.poll()
        with self._lock:
            req = self._get(approval_id)
            self._cond.wait_for(lambda: req.decided, timeout=max(0.0, timeout))
            return dataclasses.replace(req)

    def poll(self) -> None:
        """Expire the shown request if its deadline passed. The timer thread
        does this on its own; tests with an injected clock call it directly."""
        with self._guard():
            pass

    def close(self) -> None:
        """Stop the timer; open requests are cancelled ("shutdown") so no
        waiter hangs and nothing stays approvable."""
        effects = _Effects()
        try:
            with self._lock:
                if self._closed:
                    return
                self._closed = True
                if self._shown is not None:
                    self._finish(self._shown, "cancelled", "shutdown", effects)
                    self._shown = None
                while self._waiting:
                    self._finish(self._waiting.popleft(), "cancelled", "shutdown", effects)
                self._tell_panel(effects, None, "idle")
                self._cond.notify_all()
        finally:
            self._dispatch(effects)
        if self._timer is not threading.current_thread():
            self._timer.join(timeout=5)

    def listen(
        self,
        on_event: Callable[[str, dict[str, Any]], None],
        on_decided: Callable[[ApprovalRequest], None],
    ) -> None:
        """Who hears what the queue did (the broker, once it is built around
        the queue): every event for the audit log, each request once decided."""
        with self._lock:
            self._on_event, self._on_decided = on_event, on_decided

    def __enter__(self) -> ApprovalQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals (call with the lock held) ---------------------------------

    def _guard(self) -> _Guard:
        return _Guard(self)

    def _get(self, approval_id: str) -> ApprovalRequest:
        req = self._requests.get(approval_id)
        if req is None:
            raise NotFound(f"no approval request {approval_id!r} (unknown or long forgotten)")
        return req

    def _open(self) -> builtins.list[ApprovalRequest]:
        return ([self._shown] if self._shown else []) + list(self._waiting)

    def _public(self, req: ApprovalRequest) -> dict[str, Any]:
        if req is self._shown:
            position: int | None = 0
        elif req.status == "waiting":
            position = 1 + self._waiting.index(req)
        else:
            position = None
        now = self._clock()
        out = req.to_public(now=now, position=position)
        if req is self._shown and req.shown_at is not None:
            # When a press may count (the console's page counts it down).
            out["armed_in_s"] = armed_in(req, now, self.settings.arming_delay_s)
        return out

    def _show(self, req: ApprovalRequest, effects: _Effects) -> bool:
        """Make ``req`` the shown request; False if the panel failed."""
        now = self._clock()
        req.status = "pending"
        req.shown_at = now  # the arming delay and the deadline start now
        req.deadline = now + self.settings.timeout_s
        self._shown = req
        state: PanelState = "pairing" if req.kind == "pairing" else "pending"
        ok = self._tell_panel(effects, req, "console" if req.waits_for_console else state)
        if ok:
            effects.event("approval.shown", self._public(req))
        return ok

    def _tell_panel(
        self, effects: _Effects, request: ApprovalRequest | None, state: PanelState
    ) -> bool:
        # Show first, then indicate: the LED never claims something is
        # pending before the panel knows what.
        try:
            self.panel.show(dataclasses.replace(request) if request else None)
            self.panel.indicate(state)
        except Exception as exc:
            log.exception("approval panel %s failed", self.panel.name)
            effects.event(
                "approval.panel_fault",
                {"panel": self.panel.name, "error": repr(exc)[:200]},
            )
            return False
        return True

    def _finish(self, req: ApprovalRequest, status: Status, by: str, effects: _Effects) -> None:
        req.status = status
        req.decided_by = by
        if status == "expired":
            req.gesture = "timeout"
        self._decided_order.append(req.approval_id)
        while len(self._decided_order) > KEEP_DECIDED:
            self._requests.pop(self._decided_order.popleft(), None)
        effects.decided.append(dataclasses.replace(req))
        effects.event("approval.decided", req.to_public())
        self._cond.notify_all()
        if status in ("denied", "expired") and req.counts:
            lockout = self._lockouts.refused(req.requester)
            if lockout is not None:
                effects.event("approval.lockout", lockout)
                # Its other open requests go too: nothing of it stays on the panel.
                for other in [r for r in self._waiting if r.requester == req.requester]:
                    self._waiting.remove(other)
                    self._finish(other, "cancelled", "lockout", effects)

    def _close_pairing(self, effects: _Effects, why: str) -> None:
        if self._pairing_until is None:
            return
        self._pairing_until = None
        effects.event("approval.pairing_window", {"open": False, "why": why})
        if self._shown is None:
            try:
                self.panel.indicate("idle")
            except Exception:
                log.exception("approval panel failed to indicate idle")

    def _decide_shown(self, status: Status, by: str, effects: _Effects) -> None:
        req = self._shown
        assert req is not None
        self._finish(req, status, by, effects)
        self._shown = None
        outcome: PanelState = "idle" if status == "cancelled" else status  # type: ignore[assignment]
        try:
            self.panel.indicate(outcome)
        except Exception:
            log.exception("approval panel failed to indicate %s", outcome)
        if req.kind == "pairing" and status == "approved":
            self._close_pairing(effects, "a desktop was paired")  # one pairing per window
        # The next in line is shown; its own arming delay and deadline start now.
        while self._waiting:
            # A paired desktop's request goes before any pairing request.
            nxt = next((r for r in self._waiting if r.kind != "pairing"), self._waiting[0])
            self._waiting.remove(nxt)
            if self._show(nxt, effects):
                return
            # Fail closed: a request the panel cannot show is denied, never
            # left approvable by a blind press.
            self._shown = None
            self._finish(nxt, "denied", "panel-fault", effects)
        try:
            self.panel.show(None)
            if self._pairing_until is not None:
                self.panel.indicate("pairing")
        except Exception:
            log.exception("approval panel failed to clear")

    def _expire_due(self, effects: _Effects) -> None:
        if self._pairing_until is not None and self._clock() >= self._pairing_until:
            self._close_pairing(effects, "timed out")
        while (
            self._shown is not None
            and self._shown.deadline is not None
            and self._clock() >= self._shown.deadline
        ):
            self._decide_shown("expired", "timeout", effects)

    def _dispatch(self, effects: _Effects) -> None:
        for name, payload in effects.events:
            if self._on_event is not None:
                try:
                    self._on_event(name, payload)
                except Exception:
                    log.exception("approval on_event callback failed for %s", name)
        for req in effects.decided:
            if self._on_decided is not None:
                try:
                    self._on_decided(req)
                except Exception:
                    log.exception("approval on_decided callback failed for %s", req.approval_id)

    def _run_timer(self) -> None:
        # Expiry must not depend on anyone calling the queue: this thread
        # sleeps until the shown request's deadline (or a change) and expires it.
        while True:
            effects = _Effects()
            with self._lock:
                if self._closed:
                    return
                self._expire_due(effects)
                if not effects:
                    sleep = _MAX_TIMER_SLEEP
                    if self._shown is not None and self._shown.deadline is not None:
                        sleep = min(sleep, max(0.0, self._shown.deadline - self._clock()))
                    if self._pairing_until is not None:
                        sleep = min(sleep, max(0.0, self._pairing_until - self._clock()))
                    self._cond.wait(timeout=sleep)
            self._dispatch(effects)


class _Guard:
    """``with queue._guard():`` holds the lock after expiring what is due, and
    runs the collected callbacks once the lock is released."""

    def __init__(self, queue: ApprovalQueue) -> None:
        self._queue = queue
        self._effects = _Effects()

    def __enter__(self) -> _Guard:
        self._queue._lock.acquire()
        try:
            self._queue._expire_due(self._effects)
        except BaseException:
            self._queue._lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue._lock.release()
        self._queue._dispatch(self._effects)
