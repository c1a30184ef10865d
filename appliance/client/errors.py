"""What can go wrong when a desktop talks to its box, each with a reason.

``ClientError`` is the box's own refusal (``status``, ``code``, ``reason``
as the LAN API answered them). Its subclasses are what this side found
(``status`` 0): the box could not be reached, it is not the box this
desktop paired with, it speaks no contract version in common, this desktop
is not paired.
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """The box refused (``status`` is its HTTP status; 0: this side refused)."""

    def __init__(self, status: int, body: dict[str, Any]):
        self.status = status
        self.body = body
        self.code = str(body.get("code") or "error")
        self.reason = str(body.get("reason") or "no reason given")
        super().__init__(f"{status} {self.code}: {self.reason}" if status else self.reason)


class LocalError(ClientError):
    """A refusal this side made; ``code`` names its kind."""

    kind = "error"

    def __init__(self, reason: str):
        super().__init__(0, {"code": self.kind, "reason": reason})


class Unreachable(LocalError):
    """No answer: the box is off, elsewhere, or the network is in the way."""

    kind = "unreachable"


class NotTheBox(LocalError, ValueError):
    """The box answered with another certificate or key than the one pinned:
    it is not the box this desktop paired with (or meant to pair with)."""

    kind = "not_the_box"


class Incompatible(LocalError):
    """The box speaks no version of the LAN contract this client speaks."""

    kind = "incompatible"


class NotPaired(LocalError):
    """This desktop holds no credential for a box."""

    kind = "not_paired"
