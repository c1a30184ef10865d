"""Names as a person may safely read them on the box's own screens.

File names are text anyone who can write into a share chooses: a name with
a right-to-left override reads backwards, a zero-width space makes two
different names look alike, a Cyrillic "а" in "pаypal" passes for Latin.
Everything the console, the panel's summaries and the review show of a name
goes through :func:`shown` (every hidden character escaped, what is odd
said in brackets) or :func:`name_warnings` (what to flag beside it).

This is the console's own small version; when the appliance grows one
shared safe-display function for names (``appliance.names``), this module
should become an import of it.
"""

from __future__ import annotations

import unicodedata

# Bidirectional controls: they make a name read differently from what it is.
BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Zero-width characters people cannot see.
ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff\u180e")
# Controls, format characters, surrogates, private use, line/paragraph separators.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
# Writing systems that are used together (Unicode TS 39, "highly restrictive").
_USUAL_MIXES = (frozenset({"Latin", "Han"}), frozenset({"Latin", "Han", "Hangul"}))


def hidden(ch: str) -> bool:
    """A character that must not appear unescaped where a person reads."""
    return unicodedata.category(ch) in _HIDDEN


def _script(ch: str) -> str | None:
    if not unicodedata.category(ch).startswith("L"):
        return None
    word = unicodedata.name(ch, "UNKNOWN").split(" ", 1)[0]
    if word in ("CJK", "HIRAGANA", "KATAKANA", "BOPOMOFO", "IDEOGRAPHIC"):
        return "Han"
    return word.capitalize()


def scripts(name: str) -> list[str]:
    """The writing systems of the letters in ``name``, sorted."""
    return sorted({s for s in map(_script, name) if s is not None})


def name_warnings(name: str) -> list[str]:
    """What a person should be told before trusting ``name``."""
    warnings = []
    if any(ch in BIDI for ch in name):
        warnings.append("bidirectional controls")
    if any(ch in ZERO_WIDTH for ch in name):
        warnings.append("zero-width characters")
    if any(hidden(ch) and ch not in BIDI and ch not in ZERO_WIDTH for ch in name):
        warnings.append("control characters")
    mixed = scripts(name)
    if len(mixed) > 1 and not any(set(mixed) <= ok for ok in _USUAL_MIXES):
        warnings.append("mixed scripts: " + "+".join(mixed))
    return warnings


def escaped(text: str, *, keep: str = "") -> str:
    """``text`` with every hidden character (but those in ``keep``, such as a
    text's newlines) written as an escape, and a backslash doubled so no
    name can fake one."""
    return "".join(
        ch.encode("unicode_escape").decode("ascii")
        if (hidden(ch) and ch not in keep) or ch == "\\"
        else ch
        for ch in text
    )


def shown(name: str, *, quote: bool = False, limit: int = 120) -> str:
    """``name`` as a person may safely read it: hidden characters escaped,
    cut at ``limit`` characters, in quotes if asked, and what is odd about it
    in brackets: ``'pаypal' [mixed scripts: Cyrillic+Latin]``."""
    text = escaped(name[:limit]) + ("…" if len(name) > limit else "")
    if quote:
        text = f"'{text}'"
    warnings = name_warnings(name)
    return f"{text} [{'; '.join(warnings)}]" if warnings else text
