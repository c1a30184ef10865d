"""When a press counts: the rules that bind a press to the one request it
means, as pure functions of the request shown, the press and the time.

* **Arming delay.** A press that *began* within ``arming_delay_s`` of the
  request being shown (or of the console showing it) is ignored: a press
  meant for the previous request must not approve the next one.
* **Digest binding.** A press that carries a digest counts only for the
  request with that digest (the virtual panel and the button send the one
  they displayed).
* **Trusted arming.** A risky request (``ApprovalRequest.console``) is
  approved by no press until the owner's console has shown its digest: the
  desktop that asked may be the attacker, and it chooses what its own screen
  says, so only what the box itself rendered can tell the owner what a press
  would do. Denying needs no console.
"""

from __future__ import annotations

from .types import ApprovalRequest, Decision


def armed_from(req: ApprovalRequest) -> float:
    """Where the arming delay runs from: the request being shown, or, for a
    request that needs the console, the console showing it (on the queue's
    clock)."""
    assert req.shown_at is not None
    if req.console and req.seen_at is not None:
        return max(req.shown_at, req.seen_at)
    return req.shown_at


def armed_in(req: ApprovalRequest, now: float, delay: float) -> float | None:
    """Seconds until a press may approve ``req`` (None: not before the
    console has shown it)."""
    if req.waits_for_console:
        return None
    return round(max(0.0, armed_from(req) + delay - now), 3)


def refusal(
    shown: ApprovalRequest | None,
    decision: Decision,
    digest: str | None,
    began: float,
    delay: float,
) -> str | None:
    """Why a press that began at ``began`` is ignored, or None when it counts."""
    if shown is None or shown.shown_at is None:
        return "ignored: nothing is pending"
    if decision == "approve" and shown.waits_for_console:
        return (
            "ignored: this request needs the console ("
            + "; ".join(shown.console)
            + "): open the box's console, read what it would do, then press again"
        )
    if began - armed_from(shown) < delay:
        return (
            f"ignored: pressed {began - armed_from(shown):.2f}s after the request was shown, "
            f"within the {delay:g}s arming delay; check what is shown and press again"
        )
    if digest is not None and (not isinstance(digest, str) or digest.lower() != shown.digest):
        return (
            "ignored: the digest pressed for is not the digest of the request "
            "shown (it changed since it was displayed)"
        )
    return None
