"""Names in the shares: the lexical rules the broker and the agent share.

A resource is written ``share:NAME/relative/path``. These rules never touch
the file system, so the least trusted process (the model agent) can check its
own output against them without importing the broker; the broker's scope
resolution (``appliance.broker.scope``) applies the same rules and then walks
the path race-safely.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

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
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


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
        if ch in BIDI_CONTROLS:
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


# ---------------------------------------------------------------- shown to a person
# Characters a name shown to a person may not hold: controls (C0, DEL, C1),
# format characters (bidirectional controls, zero-width joiners and spaces,
# the byte-order mark, tag characters), lone surrogates, private-use
# characters, and line or paragraph separators. Each makes a name read
# differently from what it is, or not at all.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
# Zero-width characters people cannot see (all of category Cf but one).
ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff\u180e")
CLIENT_NAME_MAX = 64  # characters of a paired desktop's name


def hidden(ch: str) -> bool:
    """True for a character that must not appear unescaped where a person reads."""
    return unicodedata.category(ch) in _HIDDEN_CATEGORIES


def class_of(chars: Iterable[str], *, negate: bool = False) -> str:
    """A regular-expression character class of ``chars``, as ranges, written
    the same for Python's ``re``, ECMA-262 and JSON Schema's ``pattern``:
    ``\\uXXXX`` escapes in the basic plane, literal characters above it."""
    ranges: list[list[int]] = []
    for cp in sorted(map(ord, set(chars))):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    body = "".join(_literal(a) if a == b else f"{_literal(a)}-{_literal(b)}" for a, b in ranges)
    return f"[{'^' if negate else ''}{body}]"


def _literal(cp: int) -> str:
    if cp > 0xFFFF:
        return chr(cp)
    if chr(cp).isalnum() or chr(cp) in " _.,:;!?'\"#%&/@~`<>=+*(){}|$":
        return chr(cp)
    return f"\\u{cp:04x}"


def _script(ch: str) -> str | None:
    """The writing system of a letter, from its Unicode name ("LATIN SMALL
    LETTER A" -> "Latin"); None for anything that is not a letter."""
    if not unicodedata.category(ch).startswith("L"):
        return None
    word = unicodedata.name(ch, "UNKNOWN").split(" ", 1)[0]
    if word in ("CJK", "HIRAGANA", "KATAKANA", "BOPOMOFO", "IDEOGRAPHIC"):
        return "Han"  # one writing system in practice: Japanese mixes these freely
    return word.capitalize()


# Writing systems that are used together (Unicode TS 39, "highly
# restrictive"): Latin with the scripts of Chinese, Japanese and Korean.
_USUAL_MIXES = (frozenset({"Latin", "Han"}), frozenset({"Latin", "Han", "Hangul"}))


def scripts(name: str) -> list[str]:
    """The writing systems of the letters in ``name``, sorted."""
    return sorted({s for s in map(_script, name) if s is not None})


def name_warnings(name: str) -> list[str]:
    """What a person should be told before trusting ``name``: invisible or
    direction-changing characters, letters from more than one writing system
    (a Cyrillic "а" in "pаypal"), characters with no place in a name."""
    warnings = []
    if any(ch in BIDI_CONTROLS for ch in name):
        warnings.append("bidirectional controls")
    if any(ch in ZERO_WIDTH for ch in name):
        warnings.append("zero-width characters")
    if any(hidden(ch) and ch not in BIDI_CONTROLS and ch not in ZERO_WIDTH for ch in name):
        warnings.append("control characters")
    mixed = scripts(name)
    if len(mixed) > 1 and not any(set(mixed) <= ok for ok in _USUAL_MIXES):
        warnings.append("mixed scripts: " + "+".join(mixed))
    return warnings


def escaped(text: str, *, keep: str = "") -> str:
    """``text`` with every hidden character (but those in ``keep``, such as a
    text's newlines) written as an escape, and a backslash doubled so no
    name can fake one; nothing added, nothing cut (:func:`shown` adds both)."""
    return "".join(
        ch.encode("unicode_escape", "backslashreplace").decode("ascii")
        if (hidden(ch) and ch not in keep) or ch == "\\"
        else ch
        for ch in text
    )


def shown(name: str, *, quote: bool = False, limit: int = 120) -> str:
    """``name`` as a person may safely read it: every hidden character
    escaped (``\\u202e``, and a backslash doubled so no name can fake an
    escape), cut at ``limit`` characters, in quotes if asked, and what is odd
    about it said in brackets: ``'pаypal' [mixed scripts: Cyrillic+Latin]``.

    The panel's summaries, the CLI and the console show names through this."""
    text = escaped(name[:limit]) + ("…" if len(name) > limit else "")
    if quote:
        text = f"'{text}'"
    warnings = name_warnings(name)
    return f"{text} [{'; '.join(warnings)}]" if warnings else text


def check_client_name(name: str) -> str:
    """A paired desktop's name, or a clear refusal (ValueError): 1 to
    ``CLIENT_NAME_MAX`` characters, not all spaces, and nothing hidden.
    Returns it without surrounding spaces. Letters from several writing
    systems are allowed (names are written in every language) but flagged
    wherever the name is shown (:func:`shown`)."""
    if not name.strip():
        raise ValueError("a name needs at least one visible character")
    if len(name) > CLIENT_NAME_MAX:
        raise ValueError(f"a name is at most {CLIENT_NAME_MAX} characters")
    for i, ch in enumerate(name):
        if hidden(ch):
            kind = (
                "a bidirectional control"
                if ch in BIDI_CONTROLS
                else "a zero-width character"
                if ch in ZERO_WIDTH
                else "a lone surrogate (not valid Unicode)"
                if unicodedata.category(ch) == "Cs"
                else "a control character"
                if unicodedata.category(ch) == "Cc"
                else "an invisible or private-use character"
            )
            raise ValueError(
                f"a name cannot hold {kind}: U+{ord(ch):04X} at position {i}; "
                "use letters, digits, spaces and punctuation"
            )
    return name.strip()


@functools.cache
def client_name_pattern() -> str:
    """:func:`check_client_name` as a JSON Schema pattern, for the OpenAPI
    document: optional spaces, then a character that is neither a space nor
    hidden, then no hidden character. Lone surrogates are left out of it (no
    two regular-expression engines agree on them; the API refuses them in
    any request). Built on first use: it scans every code point once."""
    shut = {
        c
        for c in map(chr, range(sys.maxunicode + 1))
        if hidden(c) and unicodedata.category(c) != "Cs"
    }
    spaces = {c for c in map(chr, range(0x3001)) if c.isspace()}
    space = class_of(spaces - shut)
    first = class_of(shut | spaces, negate=True)
    rest = class_of(shut, negate=True)
    return f"^{space}*{first}{rest}*$"


_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(value: Any) -> str | None:
    """Where the first string holding a lone surrogate is in a parsed JSON
    value (keys included), and which; None when every string is proper text.

    JSON may spell half of a UTF-16 pair (``"\\udcae"``), which is no
    character: Python's JSON reader lets it through, and the first thing that
    encodes the string (a digest, the audit log, an answer) fails."""
    todo: list[tuple[str, Any]] = [("", value)]
    while todo:
        where, item = todo.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found:
                return f"{where or 'the value'} holds a lone surrogate U+{ord(found[0]):04X}"
        elif isinstance(item, dict):
            for key in item:
                if _SURROGATE.search(key):
                    return f"a field name in {where or 'the value'} holds a lone surrogate"
            todo.extend((_join(where, k), v) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            todo.extend((_join(where, i), v) for i, v in reversed(list(enumerate(item))))
    return None


def _join(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)
