"""Errors are values with reasons a user can act on.

Every refusal in the appliance is an :class:`ApplianceError` carrying a
machine-readable ``code``, a human ``reason`` and the HTTP status the LAN API
answers with. The API turns them into JSON bodies; nothing else leaks out.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """A refusal with a reason. ``status`` is the HTTP status the API uses."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, reason: str, *, code: str | None = None, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "reason": self.reason}


class InvalidIntent(ApplianceError):
    status = 422
    code = "invalid_intent"


class ScopeError(ApplianceError):
    """A resource could not be resolved safely inside a share."""

    status = 403
    code = "out_of_scope"


class PolicyUnavailable(ApplianceError):
    status = 503
    code = "policy_unavailable"


class TokenError(ApplianceError):
    """A capability token was refused (expired, replayed, forged, mismatched...)."""

    status = 403
    code = "token_refused"


class NotFound(ApplianceError):
    status = 404
    code = "not_found"


class QueueFull(ApplianceError):
    status = 429
    code = "approval_queue_full"


class LockedOut(ApplianceError):
    """A requester sent too many requests that were denied or went unanswered."""

    status = 429
    code = "locked_out"


class Unauthorized(ApplianceError):
    status = 401
    code = "unauthorized"


class ExecutionError(ApplianceError):
    """The action itself failed (the file vanished, the target exists...)."""

    status = 409
    code = "execution_failed"


class Unavailable(ApplianceError):
    """A safety part (audit log, key, panel) is unavailable: fail closed."""

    status = 503
    code = "unavailable"


class InsufficientStorage(ApplianceError):
    """No room for a change: a full disk, or the retention budget for the
    trash and snapshots. Refused before anything changed; reads go on."""

    status = 507
    code = "insufficient_storage"
