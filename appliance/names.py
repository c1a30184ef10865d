"""Names in the shares: the lexical rules the broker and the agent share.

A resource is written ``share:NAME/relative/path``. These rules never touch
the file system, so the least trusted process (the model agent) can check its
own output against them without importing the broker; the broker's scope
resolution (``appliance.broker.scope``) applies the same rules and then walks
the path race-safely.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from appliance.config import Limits
from appliance.errors import ScopeError

PREFIX = "share:"
# Names the broker uses for its own temporary files and directories inside a
# share (write-then-link, directory restore, directory delete). Reserving the
# prefix means no intent can address, overwrite or race with them.
RESERVED_PREFIX = ".appliance-"
SHARE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# Bidirectional-text controls: legal in file names but they make a name shown
# on the approval page read differently from what it is ("Trojan Source").
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@dataclass(frozen=True)
class Target:
    """A lexically checked location: a share name and its path components.

    ``parts == ()`` is the share root, written canonically ``share:NAME/``.
    """

    share: str
    parts: tuple[str, ...]

    @property
    def canonical(self) -> str:
        return f"{PREFIX}{self.share}/" + "/".join(self.parts)

    @property
    def is_root(self) -> bool:
        return not self.parts

    @property
    def name(self) -> str:
        """The last component ("" for the share root)."""
        return self.parts[-1] if self.parts else ""

    def parent(self) -> Target:
        return Target(self.share, self.parts[:-1])

    def child(self, name: str) -> Target:
        """A child target; the caller must have checked ``name`` (see ``check_name``)."""
        return Target(self.share, (*self.parts, name))

    def contains(self, other: Target) -> bool:
        """True when ``other`` is this target or lies below it."""
        return self.share == other.share and other.parts[: len(self.parts)] == self.parts

    def __str__(self) -> str:
        return self.canonical


def check_name(name: str, limits: Limits) -> None:
    """Refuse a single path component that is not a plain, displayable name."""
    if name == "":
        raise ScopeError("empty path component (double or trailing slash)")
    if name in (".", ".."):
        raise ScopeError(f"'{name}' components are not allowed; write the path plainly")
    if "\x00" in name:
        raise ScopeError("NUL byte in path")
    if "/" in name:
        raise ScopeError("a name cannot contain '/'")
    if "\\" in name:
        # Literal on Linux, but a separator to the Windows desktops that see
        # the share over SMB: "a\..\b" must not mean two things.
        raise ScopeError("backslash in path")
    for ch in name:
        if unicodedata.category(ch) == "Cc":
            raise ScopeError(f"control character U+{ord(ch):04X} in path")
        if ch in _BIDI:
            raise ScopeError(f"bidirectional control U+{ord(ch):04X} in path")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ScopeError("path component is not valid UTF-8") from None
    if size > limits.name_bytes:
        raise ScopeError(f"path component of {size} bytes is over the {limits.name_bytes} limit")
    if name.startswith(RESERVED_PREFIX):
        raise ScopeError(f"names starting with {RESERVED_PREFIX!r} are reserved for the broker")


def name_ok(name: str, limits: Limits) -> bool:
    """``check_name`` as a predicate (used to skip unaddressable entries in listings)."""
    try:
        check_name(name, limits)
    except ScopeError:
        return False
    return True
