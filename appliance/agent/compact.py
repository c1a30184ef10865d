"""The compact plan language: what the model writes, and how it becomes intents.

The model says *what* in few tokens; the planner expands *how*, deterministically,
against the listing. An answer is one of:

    plan: ONE LINE SAYING WHAT THE PLAN DOES
    steps: VERB, VERB, ...        (the plan's length: one word per step)
    ...exactly that many steps, one per line...

    ask: A QUESTION FOR THE REQUESTER      (the request is ambiguous)
    no: WHY NOT                            (no file action can do it)

A step is one line. Paths are written ``SHARE:relative/path`` (``docs:`` is the
top of the share ``docs``; folders end with ``/``), so a share can never be
mistaken for a folder:

    list FOLDER             stat PATH               read FILE
    delete PATH|PATTERN     mkdir NEW_FOLDER/       rename PATH > NEW_NAME
    move PATH|PATTERN[, ...] > DESTINATION
    copy FILE|PATTERN[, ...] > DESTINATION
    sort PATTERN > TEMPLATE                 (a move, said as what it is)
    write FILE "TEXT"

A PATTERN is ``FOLDER*`` or ``FOLDER*.EXT``: the files directly in that listed
folder (with that extension). A DESTINATION is a folder, a new folder inside a
listed one, or a template ``FOLDER{year}/``, ``FOLDER{year}/{month}/``,
``FOLDER{year}-{month}/`` or ``FOLDER{month}/``, filled from each file's *name*
(the first 19xx/20xx year in it, and the month right after it). So "sort the
PDFs in Inbox into year folders inside Archive" is one step:
``sort docs:Inbox/*.pdf > docs:Archive/{year}/``, and its expansion names every
file once.

Nothing here widens what a plan may name:
:func:`~appliance.agent.compact_grammar.grammar` builds a GBNF grammar whose
only paths are the listed ones (llama.cpp cannot write anything else),
:func:`parse` accepts only listed paths, patterns over listed folders and new
plain names inside listed folders (backends without a grammar are checked
with it and repaired once), and :func:`~appliance.agent.expansion.expand`
turns steps into intents over the listed names only.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

MAX_STEPS = 12  # steps a plan may announce
SAY_MAX = 200  # characters of an explanation, a question or a reason
NAME_MAX = 100  # characters of a name the model makes
WRITE_MAX = 2000  # characters of text a planned file.write may carry
LINE_MAX = 600  # characters of any line of an answer: longer is babbling
# New names the model may make: a folder starts with a letter or digit, then
# letters, digits, space, "_" or "-" (no dots at all: never "." or "..", never
# hidden, never the broker's reserved ".appliance-" prefix); a file name may
# hold dots after its first character.
NEW_FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _-]*")
NEW_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]*")
_EXT = re.compile(r"\.[A-Za-z0-9]{1,10}")
TEMPLATES = ("{year}/", "{year}/{month}/", "{year}-{month}/", "{month}/")
YEAR = re.compile(r"(?<![0-9])((?:19|20)[0-9]{2})(?:[-_. ]?(0[1-9]|1[0-2])(?![0-9]))?")
VERBS = {
    "list": "file.list",
    "stat": "file.stat",
    "read": "file.read",
    "delete": "file.delete",
    "mkdir": "file.mkdir",
    "move": "file.move",
    "sort": "file.move",  # a move of a pattern into a template: the sort macro
    "copy": "file.copy",
    "rename": "file.rename",
    "write": "file.write",
}


class CompactError(ValueError):
    """An answer that is not a plan over these names; ``problems`` say why, in
    words the one repair prompt quotes back to the model."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


# ---------------------------------------------------------------- the names
@dataclass(frozen=True)
class Names:
    """The listing as the model sees it: ``SHARE:rel`` paths, folders ending
    with "/", each share's top as ``SHARE:``."""

    shares: tuple[str, ...]
    files: tuple[str, ...]
    folders: tuple[str, ...]  # share tops first
    left_out: int = 0
    _files: frozenset[str] = field(init=False, repr=False, compare=False)
    _folders: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_files", frozenset(self.files))
        object.__setattr__(self, "_folders", frozenset(self.folders))

    @property
    def shown(self) -> list[str]:
        """Every name, grouped by share, each share's top first."""
        return sorted(set(self.files) | set(self.folders), key=lambda p: (p.split(":")[0], p))

    def canon(self, path: str) -> str:
        """``docs:Inbox`` -> ``docs:Inbox/`` when that is a listed folder;
        anything else as it is."""
        if path not in self._files and path + "/" in self._folders:
            return path + "/"
        return path

    def is_file(self, path: str) -> bool:
        return path in self._files

    def is_folder(self, path: str) -> bool:
        return path in self._folders

    def is_entry(self, path: str) -> bool:
        """A listed file or folder other than a share's top."""
        return path in self._files or (path in self._folders and not path.endswith(":"))

    def exists(self, path: str) -> bool:
        return path in self._files or path in self._folders

    def files_in(self, folder: str) -> list[str]:
        """The listed files directly inside ``folder``."""
        return sorted(f for f in self.files if parent_of(f) == folder)

    def extensions(self) -> list[str]:
        found = {os.path.splitext(f)[1] for f in self.files}
        return sorted(e for e in found if _EXT.fullmatch(e))


def parent_of(path: str) -> str:
    """``docs:A/b.pdf`` -> ``docs:A/``; ``docs:A/`` -> ``docs:``."""
    body = path[:-1] if path.endswith("/") else path
    cut = body.rfind("/")
    return body[: cut + 1] if cut != -1 else body[: body.index(":") + 1]


def basename(path: str) -> str:
    """``docs:A/b.pdf`` -> ``b.pdf``; ``docs:A/`` -> ``A``; ``docs:`` -> ``""``
    (only the first ":" ends the share: a name may hold one)."""
    body = path[:-1] if path.endswith("/") else path
    return body.partition(":")[2].rsplit("/", 1)[-1]


def resource(path: str) -> str:
    """``docs:`` -> ``share:docs/``; ``docs:Inbox/`` -> ``share:docs/Inbox``."""
    share, _, rel = path.partition(":")
    return f"share:{share}/{rel.rstrip('/')}"


# ---------------------------------------------------------------- parsing
@dataclass(frozen=True)
class Step:
    """One parsed step: ``source`` is a listed path or a pattern (``FOLDER*``,
    ``FOLDER*.EXT``), ``more`` further ones (``move A, B > F/``); ``target`` a
    destination, a new name or None."""

    verb: str  # the compact word: "move", "list", ...
    source: str
    target: str | None = None
    content: str | None = None
    line: str = ""
    more: tuple[str, ...] = ()

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.source, *self.more)


@dataclass(frozen=True)
class Answer:
    """A parsed answer: a plan (``steps``), a question or a refusal."""

    kind: str  # "plan" | "question" | "refusal"
    say: str  # the explanation, the question or the reason
    steps: tuple[Step, ...] = ()
    lines: tuple[str, ...] = ()  # the compact form as written (header and steps)
    stopped_at_repeat: bool = False


_HEAD = re.compile(r"(?i)plan\s*:\s*(.*)")
_COUNT = re.compile(r"(?i)steps\s*:\s*([a-z]+(?:\s*,\s*[a-z]+)*)")


def _count(line: str) -> int | None:
    """The plan's length from its ``steps: move, move`` line (None: not one)."""
    match = _COUNT.fullmatch(line)
    return None if match is None else len(match.group(1).split(","))


_ASK = re.compile(r"(?i)(ask|no)\s*:\s*(.*)")


# Control and bidirectional-text characters: never in text shown to a person.
_UNSHOWN = re.compile("[\x00-\x1f\x7f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _clean(text: str) -> str:
    """Model text shown to a person: one line, no control or bidi characters."""
    return " ".join(_UNSHOWN.sub(" ", text).split())[:SAY_MAX]


def _pattern(text: str, names: Names) -> bool:
    folder, star, ext = text.partition("*")
    return bool(star) and names.is_folder(folder) and (not ext or bool(_EXT.fullmatch(ext)))


def _destination(text: str, names: Names) -> bool:
    if names.is_folder(text):
        return True
    for t in TEMPLATES:
        if text.endswith(t) and names.is_folder(text[: -len(t)]):
            return True
    return _new_folder(text, names)


def _new_folder(text: str, names: Names) -> bool:
    if not text.endswith("/"):
        return False
    name = basename(text)
    return (
        bool(NEW_FOLDER.fullmatch(name))
        and len(name) <= NAME_MAX
        and names.is_folder(parent_of(text))
        and parent_of(text) + name + "/" == text
    )


def _new_file(text: str, names: Names) -> bool:
    name = basename(text)
    return (
        not text.endswith("/")
        and bool(NEW_FILE.fullmatch(name))
        and len(name) <= NAME_MAX
        and names.is_folder(parent_of(text))
        and parent_of(text) + name == text
    )


def _split(
    rest: str, sep: str, left: Callable[[str], str | None], right: Callable[[str, str], str | None]
) -> list[tuple[str, str]]:
    """Every way to cut ``rest`` at ``sep`` with both sides acceptable (each
    side as ``left``/``right`` make it canonical, or None): a name may itself
    hold the separator, so the listing decides."""
    out = []
    start = 0
    while (i := rest.find(sep, start)) != -1:
        a = left(rest[:i])
        b = right(a, rest[i + len(sep) :]) if a is not None else None
        if a is not None and b is not None:
            out.append((a, b))
        start = i + 1
    return out


def _sources_of(text: str, ok: Callable[[str], bool], names: Names) -> list[str] | None:
    """``text`` as one or more sources joined by ", " (each made canonical and
    ``ok``), when it reads exactly one way; else None."""
    readings: list[list[str]] = []

    def walk(rest: str, got: list[str]) -> None:
        if len(readings) > 1:
            return
        whole = names.canon(rest)
        if ok(whole):
            readings.append([*got, whole])
        start = 0
        while (i := rest.find(", ", start)) != -1:
            head = names.canon(rest[:i])
            if ok(head):
                walk(rest[i + 2 :], [*got, head])
            start = i + 1

    walk(text, [])
    return readings[0] if len(readings) == 1 else None


def _one(line: str, cuts: list[tuple[str, str]], usage: str) -> tuple[str, str]:
    if len(cuts) != 1:
        raise ValueError(f"{line!r}: {usage}" + (" (it reads more than one way)" if cuts else ""))
    return cuts[0]


def parse_step(line: str, names: Names) -> Step:
    """One step line, checked against the names; ValueError says why not. A
    listed folder may be written without its trailing "/"."""
    word, _, rest = line.partition(" ")
    word = word.lower()
    if word not in VERBS:
        raise ValueError(f"{line!r}: a step starts with one of {', '.join(VERBS)}")
    path = names.canon(rest)
    if word == "list":
        if not names.is_folder(path):
            raise ValueError(f"{line!r}: list takes a listed folder")
        return Step(word, path, line=line)
    if word == "stat":
        if not names.exists(path):
            raise ValueError(f"{line!r}: stat takes a listed path")
        return Step(word, path, line=line)
    if word == "read":
        if not names.is_file(path):
            raise ValueError(f"{line!r}: read takes a listed file")
        return Step(word, path, line=line)
    if word == "delete":
        doomed = _sources_of(rest, lambda a: names.is_entry(a) or _pattern(a, names), names)
        if doomed is None:
            raise ValueError(f"{line!r}: delete takes listed paths or FOLDER*.EXT")
        return Step(word, doomed[0], line=line, more=tuple(doomed[1:]))
    if word == "mkdir":
        path = path if path.endswith("/") else path + "/"
        if not _new_folder(path, names) and not names.is_folder(path):
            raise ValueError(f"{line!r}: mkdir takes a listed folder plus a new name and '/'")
        return Step(word, path, line=line)
    if word == "sort":

        def pattern(a: str) -> str | None:
            return a if _pattern(a, names) else None

        def template(_: str, b: str) -> str | None:
            b = b if b.endswith("/") else b + "/"
            for t in TEMPLATES:
                if b.endswith(t) and names.is_folder(b[: -len(t)]):
                    return b
            return None

        src, dest = _one(
            line,
            _split(rest, " > ", pattern, template),
            "sort takes FOLDER* or FOLDER*.EXT, ' > ', and FOLDER{year}/ (or {year}/{month}/)",
        )
        return Step(word, src, dest, line=line)
    if word in ("move", "copy"):
        source_ok = names.is_entry if word == "move" else names.is_file

        def source(a: str) -> str | None:
            found = _sources_of(a, lambda p: source_ok(p) or _pattern(p, names), names)
            return None if found is None else "\n".join(found)

        def destination(_: str, b: str) -> str | None:
            for d in (names.canon(b), b + "/"):
                if _destination(d, names):
                    return d
            return None

        what = "a listed file" if word == "copy" else "a listed path"
        src, dest = _one(
            line,
            _split(rest, " > ", source, destination),
            f"{word} takes {what} or FOLDER*.EXT (or several, with ', '), ' > ', and a "
            "listed folder, a new folder or a FOLDER{year}/ template",
        )
        first, *more = src.split("\n")
        return Step(word, first, dest, line=line, more=tuple(more))
    if word == "rename":

        def entry(a: str) -> str | None:
            a = names.canon(a)
            return a if names.is_entry(a) else None

        def new_name(src: str, b: str) -> str | None:
            # A bare name, or the same folder written again with the new name.
            b = b.removesuffix("/")
            name = b.removeprefix(parent_of(src)) if b.startswith(parent_of(src)) else b
            ok = NEW_FILE.fullmatch(name) and len(name) <= NAME_MAX
            return name if ok else None

        src, name = _one(
            line,
            _split(rest, " > ", entry, new_name),
            "rename takes a listed path, ' > ' and a new name in the same folder",
        )
        return Step(word, src, name, line=line)
    # write PATH "TEXT"
    found: list[tuple[str, str]] = []
    start = 0
    while (i := rest.find(' "', start)) != -1:
        target, quoted = rest[:i], rest[i + 1 :]
        start = i + 1
        if not (names.is_file(target) or _new_file(target, names)):
            continue
        try:
            text = json.loads(quoted)
        except ValueError:
            continue
        if isinstance(text, str):
            found.append((target, text))
    if len(found) != 1:
        raise ValueError(f'{line!r}: write takes a listed file or a new file name and "TEXT"')
    if len(found[0][1]) > WRITE_MAX:
        raise ValueError(f"{line!r}: a write carries at most {WRITE_MAX} characters")
    return Step(word, found[0][0], content=found[0][1], line=line)


def _lines(text: str) -> list[str]:
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    lines = [ln.strip() for ln in text.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("```")]


def _header(lines: list[str]) -> int | None:
    return next(
        (i for i, ln in enumerate(lines) if _HEAD.fullmatch(ln) or _ASK.fullmatch(ln)), None
    )


def parse(text: str, names: Names) -> Answer:
    """The model's answer as an :class:`Answer`, or :class:`CompactError`.

    Read from its first header line (``plan:``, ``ask:``, ``no:``; a thought,
    prose or a code fence before it is skipped, as a chatty model without a
    grammar writes them). A plan's length (``steps: VERB, ...``, one word per
    step) is decided before
    its steps, so the N lines after it are the plan and anything after them
    is not read. A plan stops at its first repeated step (a model that loops
    repeats its plan): the steps before it are the plan."""
    lines = _lines(text)
    if any(len(ln) > LINE_MAX for ln in lines):
        raise CompactError([f"a line of the answer is over {LINE_MAX} characters"])
    start = _header(lines)
    if start is None:
        raise CompactError(["the answer starts with 'plan: ...', 'ask: ...' or 'no: ...'"])
    head, lines = lines[start], lines[start + 1 :]
    asked = _ASK.fullmatch(head)
    if asked:
        say = _clean(asked.group(2))
        if not say:
            raise CompactError([f"{asked.group(1).lower()}: needs a sentence"])
        kind = "question" if asked.group(1).lower() == "ask" else "refusal"
        return Answer(kind, say, lines=(head,))
    match = _HEAD.fullmatch(head)
    assert match is not None
    count = _count(lines[0]) if lines else None
    if count is None:
        raise CompactError(
            ["after 'plan: ...' comes 'steps: ' with one word per step, then the steps"]
        )
    if not 1 <= count <= MAX_STEPS:
        raise CompactError([f"a plan has 1 to {MAX_STEPS} steps"])
    body: list[str] = []
    repeated = False
    for ln in lines[1 : count + 1]:
        if ln in body:
            repeated = True
            break
        body.append(ln)
    if not repeated and len(body) != count:
        raise CompactError([f"the plan announces {count} steps but has {len(body)}"])
    steps: list[Step] = []
    problems: list[str] = []
    for ln in body:
        try:
            steps.append(parse_step(ln, names))
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise CompactError(problems)
    return Answer(
        "plan",
        _clean(match.group(1)),
        tuple(steps),
        (head, lines[0], *body),
        stopped_at_repeat=repeated,
    )


def stop_here(text: str) -> bool:
    """Should a streamed answer stop now? When its announced steps are all
    written, at the first complete step line that repeats an earlier one (a
    model looping on its plan), after a whole question or refusal, or at a
    line past LINE_MAX characters (babbling). :func:`parse` reads the rest."""
    *done, partial = text.split("\n")
    if len(partial) > LINE_MAX or any(len(ln) > LINE_MAX for ln in done):
        return True
    lines = _lines("\n".join(done))
    start = _header(lines)
    if start is None:
        return False
    if _HEAD.fullmatch(lines[start]) is None:
        return True  # a whole question or refusal
    count = _count(lines[start + 1]) if len(lines) > start + 1 else None
    if count is None:
        return len(lines) > start + 1  # no length where it belongs: nothing to wait for
    steps = lines[start + 2 :]
    return len(steps) >= count or len(steps) != len(set(steps))


@dataclass(frozen=True)
class Form:
    """The compact language over one listing, as backends use it: the grammar
    (llama.cpp), the check that one repair quotes (Hailo, Ollama), and where a
    streamed answer stops (a repeated step, a babbling line)."""

    names: Names

    @cached_property
    def gbnf(self) -> str:
        from appliance.agent.compact_grammar import grammar

        return grammar(self.names)

    def problems(self, text: str) -> list[str]:
        try:
            parse(text, self.names)
        except CompactError as e:
            return e.problems
        return []

    def stop(self, text: str) -> bool:
        return stop_here(text)
