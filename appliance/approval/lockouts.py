"""Lockouts: against approval fatigue, but protecting the owner, not the attacker.

A requester whose requests the owner keeps denying (or ignoring) is either
broken or hostile, and its next prompt is the one the owner approves by
reflex: ``lockout_after`` denied or expired requests within
``lockout_window_s`` lock it out for ``lockout_s``.

Two things keep the lockout from turning against the owner:

* a request that does not ``count`` (a plan the box's own model proposed for
  the requester) is never held against it: an injected file that keeps the
  model proposing junk must not lock the owner's own desktop out;
* the owner's console can lift a lockout (:meth:`Lockouts.lift`).

Not thread-safe by itself: the approval queue calls it with its lock held,
on the queue's clock.
"""

from __future__ import annotations

import builtins
from collections import deque
from collections.abc import Callable
from typing import Any

from appliance.config import ApprovalSettings


class Lockouts:
    def __init__(self, settings: ApprovalSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self._clock = clock
        # Per requester: when its requests were denied or expired (recent
        # ones), and until when it is locked out.
        self._refusals: dict[str, deque[float]] = {}
        self._locked: dict[str, float] = {}

    def refused(self, requester: str) -> dict[str, Any] | None:
        """One more denied or expired request of ``requester``; the lockout
        it caused (for the audit log), or None."""
        s = self.settings
        if s.lockout_after <= 0 or self.left(requester):
            return None
        now = self._clock()
        recent = self._refusals.setdefault(requester, deque())
        recent.append(now)
        while recent and now - recent[0] > s.lockout_window_s:
            recent.popleft()
        if len(recent) < s.lockout_after:
            return None
        del self._refusals[requester]
        self._locked[requester] = now + s.lockout_s
        return {
            "requester": requester,
            "refusals": s.lockout_after,
            "window_s": s.lockout_window_s,
            "lockout_s": s.lockout_s,
        }

    def left(self, requester: str) -> float:
        """Seconds ``requester`` stays locked out (0: it is not)."""
        until = self._locked.get(requester)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._locked[requester]
            return 0.0
        return left

    def lift(self, requester: str) -> bool:
        """End ``requester``'s lockout now and forget its refusals; False
        when it was not locked out."""
        locked = self.left(requester) > 0
        self._locked.pop(requester, None)
        self._refusals.pop(requester, None)
        return locked

    def reason(self) -> str:
        s = self.settings
        return (
            f"{s.lockout_after} requests denied or unanswered within "
            f"{s.lockout_window_s / 60:g} minutes"
        )

    def one(self, requester: str) -> dict[str, Any] | None:
        left = self.left(requester)
        if not left:
            return None
        return {"requester": requester, "seconds_left": round(left, 1), "reason": self.reason()}

    def list(self) -> builtins.list[dict[str, Any]]:
        return [lockout for r in sorted(self._locked) if (lockout := self.one(r)) is not None]
