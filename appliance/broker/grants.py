"""What a paired desktop may do: its grant, asked for at pairing, shown on the
panel with the request, and approved (or not) by the press.

A grant names the shares the desktop may read and those it may change
(changing still waits for a press where policy says so), whether it may read
everyone's plans, tasks and the whole audit log (``audit``), whether it is
the box's own console (``owner``), and when it ends. A credential carries
nothing more: the policy engine checks the grant on every file request and
every read of the API, below any rule an owner can edit (it can only
tighten), and gives it to Cedar as the principal's attributes so an owner's
own rules can use it (``principal.name``, ``principal.write``...).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import ApplianceError
from appliance.names import SHARE_NAME

READ = "read"
READ_WRITE = "read-write"
# The longest a pairing may last when it asks for an end (ten years: "for good"
# is no end at all).
MAX_EXPIRES_S = 10 * 365 * 86400


class GrantError(ApplianceError):
    status = 422
    code = "invalid_grant"


@dataclass(frozen=True)
class Grant:
    read: frozenset[str] = field(default_factory=frozenset)  # shares it may read
    write: frozenset[str] = field(default_factory=frozenset)  # shares it may change
    audit: bool = False  # may read everyone's plans, tasks, approvals and the whole log
    owner: bool = False  # the box's own console
    expires: float | None = None  # unix time; None: until revoked

    def reads(self, share: str | None) -> bool:
        return share is not None and (share in self.read or share in self.write)

    def writes(self, share: str | None) -> bool:
        return share is not None and share in self.write

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and (time.time() if now is None else now) >= self.expires

    @property
    def sees_all(self) -> bool:
        return self.audit or self.owner

    def to_json(self) -> dict[str, Any]:
        shares = {s: READ for s in sorted(self.read - self.write)}
        shares |= {s: READ_WRITE for s in sorted(self.write)}
        return {"shares": shares, "audit": self.audit, "owner": self.owner, "expires": self.expires}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Grant:
        shares = raw.get("shares", {})
        return cls(
            read=frozenset(shares),
            write=frozenset(s for s, how in shares.items() if how == READ_WRITE),
            audit=bool(raw.get("audit", False)),
            owner=bool(raw.get("owner", False)),
            expires=raw.get("expires"),
        )

    def describe(self) -> str:
        """One line a person reads on the panel before pressing."""
        parts = []
        if self.owner:
            parts.append("as the box's OWNER console (sees and may undo everything)")
        changes = sorted(self.write)
        reads = sorted(self.read - self.write)
        if changes:
            parts.append("read and change " + ", ".join(changes))
        if reads:
            parts.append("read " + ", ".join(reads))
        if not changes and not reads:
            parts.append("no share")
        if self.audit and not self.owner:
            parts.append("read everyone's history and the whole audit log")
        if self.expires is not None:
            parts.append("until " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.expires)))
        return "; ".join(parts)

    def principal(self, name: str) -> dict[str, Any]:
        """The attributes Cedar sees of the requester."""
        return {
            "name": name,
            "read": sorted(self.read | self.write),
            "write": sorted(self.write),
            "audit": self.audit,
            "owner": self.owner,
        }


# A desktop that asks for nothing in particular may read every share, and
# change none: least privilege, and the panel says so before the press.
def default_grant(shares: list[str]) -> Grant:
    return Grant(read=frozenset(shares))


def requested_grant(
    raw: object, shares: list[str], *, now: float | None = None, owner_allowed: bool = False
) -> Grant:
    """The grant a pairing request asks for, checked; GrantError says what is wrong.

    ``{"shares": {"docs": "read" | "read-write", ...}, "audit": false,
    "expires_in_s": 86400}``; every field optional (default: read every share)."""
    if raw is None:
        return default_grant(shares)
    if not isinstance(raw, dict):
        raise GrantError("grant must be an object: {shares, audit, expires_in_s}")
    unknown = set(raw) - {"shares", "audit", "owner", "expires_in_s"}
    if unknown:
        raise GrantError(f"grant takes no field {sorted(unknown)}")
    wanted = raw.get("shares")
    if wanted is None:
        wanted = {s: READ for s in shares}
    if not isinstance(wanted, dict):
        raise GrantError('grant.shares must map share names to "read" or "read-write"')
    for share, how in wanted.items():
        if not isinstance(share, str) or not SHARE_NAME.fullmatch(share):
            raise GrantError(f"grant.shares: {str(share)[:64]!r} is not a share name")
        if share not in shares:
            raise GrantError(
                f"grant.shares: this box has no share {share!r}", code="no_such_share", status=404
            )
        if how not in (READ, READ_WRITE):
            raise GrantError(f'grant.shares.{share} must be "read" or "read-write"')
    audit, owner = raw.get("audit", False), raw.get("owner", False)
    if not isinstance(audit, bool) or not isinstance(owner, bool):
        raise GrantError("grant.audit and grant.owner are true or false")
    if owner and not owner_allowed:
        raise GrantError(
            "an owner grant is given only to the box's own console", code="owner_refused"
        )
    expires: float | None = None
    if raw.get("expires_in_s") is not None:
        seconds = raw["expires_in_s"]
        if isinstance(seconds, bool) or not isinstance(seconds, int):
            raise GrantError("grant.expires_in_s is a whole number of seconds")
        if not 60 <= seconds <= MAX_EXPIRES_S:
            raise GrantError(f"grant.expires_in_s is 60 to {MAX_EXPIRES_S} seconds")
        expires = (time.time() if now is None else now) + seconds
    return Grant(
        read=frozenset(wanted),
        write=frozenset(s for s, how in wanted.items() if how == READ_WRITE),
        audit=audit,
        owner=owner,
        expires=expires,
    )
