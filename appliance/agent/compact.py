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

Nothing here widens what a plan may name: :func:`grammar` builds a GBNF
grammar whose only paths are the listed ones (llama.cpp cannot write anything
else), :func:`parse` accepts only listed paths, patterns over listed folders and
new plain names inside listed folders (backends without a grammar are checked
with it and repaired once), and :func:`expand` turns steps into intents over
the listed names only.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

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
_YEAR = re.compile(r"(?<![0-9])((?:19|20)[0-9]{2})(?:[-_. ]?(0[1-9]|1[0-2])(?![0-9]))?")
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
        return sorted(f for f in self.files if _parent(f) == folder)

    def extensions(self) -> list[str]:
        found = {os.path.splitext(f)[1] for f in self.files}
        return sorted(e for e in found if _EXT.fullmatch(e))


def _parent(path: str) -> str:
    """``docs:A/b.pdf`` -> ``docs:A/``; ``docs:A/`` -> ``docs:``."""
    body = path[:-1] if path.endswith("/") else path
    cut = body.rfind("/")
    return body[: cut + 1] if cut != -1 else body[: body.index(":") + 1]


def _basename(path: str) -> str:
    """``docs:A/b.pdf`` -> ``b.pdf``; ``docs:A/`` -> ``A``; ``docs:`` -> ``""``
    (only the first ":" ends the share: a name may hold one)."""
    body = path[:-1] if path.endswith("/") else path
    return body.partition(":")[2].rsplit("/", 1)[-1]


def resource(path: str) -> str:
    """``docs:`` -> ``share:docs/``; ``docs:Inbox/`` -> ``share:docs/Inbox``."""
    share, _, rel = path.partition(":")
    return f"share:{share}/{rel.rstrip('/')}"


# ---------------------------------------------------------------- the grammar
def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _trie(name: str, words: Iterable[str], rules: list[str]) -> str:
    """Rules matching exactly ``words``, as a radix tree: few grammar stacks
    are alive at any point however many names are listed. Returns ``name``."""
    counter = iter(range(1 << 30))

    def build(rule: str, suffixes: list[str]) -> None:
        groups: dict[str, list[str]] = {}
        for w in suffixes:
            if w:
                groups.setdefault(w[0], []).append(w)
        alts = []
        for _, ws in sorted(groups.items()):
            prefix = os.path.commonprefix(ws)
            rest = [w[len(prefix) :] for w in ws]
            if rest == [""]:
                alts.append(_literal(prefix))
            else:
                child = f"{name}-{next(counter)}"
                build(child, rest)
                alts.append(f"{_literal(prefix)} {child}")
        body = " | ".join(alts) if alts else '""'
        if "" in suffixes and alts:
            body = f"( {body} )?"
        rules.append(f"{rule} ::= {body}")

    build(name, sorted(set(words)))
    return name


def _slashless(paths: Iterable[str]) -> list[str]:
    out = list(paths)
    return out + [p[:-1] for p in out if p.endswith("/")]


def grammar(names: Names, max_steps: int = MAX_STEPS) -> str:
    """The GBNF grammar of every answer over ``names``."""
    rules: list[str] = []
    entries = [p for p in names.shown if names.is_entry(p)]
    # As a whole argument a folder may be written without its trailing "/"
    # (parse puts it back); as the start of something longer (a pattern, a
    # template, a new name) it keeps it.
    _trie("dir", names.folders, rules)
    _trie("folder", _slashless(names.folders), rules)
    _trie("path", _slashless(names.shown), rules)
    exts = names.extensions()
    ext = f" ( {' | '.join(_literal(e) for e in exts)} )?" if exts else ""
    template = " | ".join(_literal(t) for t in TEMPLATES)
    verbs = ["list", "stat", "mkdir", "write"]
    if entries:
        _trie("entry", _slashless(entries), rules)
        verbs += ["delete", "move", "rename"]
        rules += [
            'delete ::= "delete " src ( ", " src )*',
            'move ::= "move " src ( ", " src )* " > " dest',
            "src ::= entry | pattern",
            'rename ::= "rename " entry " > " dir? newname "/"?',
        ]
    if names.files:
        _trie("file", names.files, rules)
        verbs += ["read", "copy", "sort"]
        rules += [
            'read ::= "read " file',
            'copy ::= "copy " fsrc ( ", " fsrc )* " > " dest',
            "fsrc ::= file | pattern",
            'sort ::= "sort " pattern " > " dir template',
            'write ::= "write " ( file | dir newname ) " " string',
        ]
    else:
        rules.append('write ::= "write " dir newname " " string')
    # The kind first ("plan", "ask", "no"), then the model's one line, then
    # the plan's length, then exactly that many steps, separated by newlines;
    # the last may end the answer without one (the model's end of turn).
    counts = " | ".join(
        '"steps: " verb'
        + ' ", " verb' * (n - 1)
        + ' "\\n" '
        + ' "\\n" '.join(["step"] * n)
        + ' "\\n"?'
        for n in range(1, max_steps + 1)
    )
    rules += [
        f'root ::= "plan: " text "\\n" ( {counts} ) | "ask: " text "\\n"? | "no: " text "\\n"?',
        "text ::= [^\\n]+",
        f"step ::= {' | '.join(verbs)}",
        f"verb ::= {' | '.join(_literal(v) for v in verbs)}",
        'list ::= "list " folder',
        'stat ::= "stat " path',
        'mkdir ::= "mkdir " newfolder',
        f'pattern ::= dir "*"{ext}',
        'newfolder ::= dir foldername "/"?',
        f"template ::= {template}",
        'dest ::= folder | dir ( foldername "/"? | template )',
        "foldername ::= [A-Za-z0-9] [A-Za-z0-9 _-]*",
        "newname ::= [A-Za-z0-9] [A-Za-z0-9 _.-]*",
        'string ::= "\\"" ( [^"\\\\\\n] | "\\\\" ["\\\\nt] )* "\\""',
    ]
    return "\n".join(rules) + "\n"


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
    name = _basename(text)
    return (
        bool(NEW_FOLDER.fullmatch(name))
        and len(name) <= NAME_MAX
        and names.is_folder(_parent(text))
        and _parent(text) + name + "/" == text
    )


def _new_file(text: str, names: Names) -> bool:
    name = _basename(text)
    return (
        not text.endswith("/")
        and bool(NEW_FILE.fullmatch(name))
        and len(name) <= NAME_MAX
        and names.is_folder(_parent(text))
        and _parent(text) + name == text
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
            name = b.removeprefix(_parent(src)) if b.startswith(_parent(src)) else b
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
        return grammar(self.names)

    def problems(self, text: str) -> list[str]:
        try:
            parse(text, self.names)
        except CompactError as e:
            return e.problems
        return []

    def stop(self, text: str) -> bool:
        return stop_here(text)


# ---------------------------------------------------------------- expansion
@dataclass
class Expansion:
    """The intents of a plan, with what expansion left out and why."""

    intents: list[dict[str, Any]]
    skipped: list[str]  # e.g. names without a year for a {year} template


def _fill(template_dest: str, name: str) -> str | None:
    """The folder a template names for a file called ``name`` (None: the name
    has no year, or no month where one is needed)."""
    for t in TEMPLATES:
        if template_dest.endswith(t):
            base = template_dest[: -len(t)]
            m = _YEAR.search(name)
            if m is None:
                return None
            year, month = m.group(1), m.group(2)
            if "{month}" in t and month is None:
                return None
            return base + t.replace("{year}", year).replace("{month}", month or "")
    return template_dest


def _sources(step: Step, names: Names) -> list[str]:
    out: list[str] = []
    for source in step.sources:
        if "*" not in source:
            out.append(source)
            continue
        folder, _, ext = source.partition("*")
        out += [f for f in names.files_in(folder) if not ext or f.lower().endswith(ext.lower())]
    return out


def expand(answer: Answer, names: Names) -> Expansion:
    """Steps to intents over the listing: a folder that a move or copy goes
    into and that does not exist yet gets a ``file.mkdir`` first (and its
    parents made by the plan); patterns and templates become one move or copy
    per file; a step on something an earlier step moved, renamed or deleted
    away, and exact repeats, are left out."""
    intents: list[dict[str, Any]] = []
    skipped: list[str] = []
    made: set[str] = set()
    gone: set[str] = set()
    keys: set[str] = set()

    def add(intent: dict[str, Any]) -> None:
        key = json.dumps(intent, sort_keys=True)
        if key not in keys:
            keys.add(key)
            intents.append(intent)

    def ensure(folder: str) -> None:
        if names.is_folder(folder) or folder in made:
            return
        ensure(_parent(folder))
        made.add(folder)
        add({"verb": "file.mkdir", "resource": resource(folder), "params": {}})

    def is_gone(path: str) -> bool:
        return any(path == g or path.startswith(g if g.endswith("/") else g + "/") for g in gone)

    for step in answer.steps:
        verb = VERBS[step.verb]
        if step.verb == "mkdir":
            ensure(step.source)
            continue
        sources = _sources(step, names)
        if not sources:
            skipped.append(f"{', '.join(step.sources)} matches no listed file")
        for src in sources:
            if is_gone(src):
                skipped.append(f"{src} was already moved, renamed or deleted by the plan")
                continue
            intent: dict[str, Any] = {"verb": verb, "resource": resource(src), "params": {}}
            if step.verb in ("move", "copy", "sort"):
                assert step.target is not None
                folder = _fill(step.target, _basename(src))
                if folder is None:
                    skipped.append(f"{src}: no year or month in its name")
                    continue
                if folder == _parent(src):
                    continue  # already there
                if src.endswith("/") and folder.startswith(src):
                    skipped.append(f"{src} cannot go into itself")
                    continue
                ensure(folder)
                intent["params"]["to"] = resource(folder + _basename(src))
                if step.verb != "copy":
                    gone.add(src)
            elif step.verb == "rename":
                assert step.target is not None
                intent["params"]["name"] = step.target
                gone.add(src)
            elif step.verb == "write":
                intent["params"]["content"] = step.content or ""
            elif step.verb == "delete":
                gone.add(src)
            add(intent)
    return Expansion(intents, skipped)


def _marks(path: str) -> set[str]:
    """What tells a place apart in words: its share's name and its folders'."""
    share, _, rel = _parent(path).partition(":")
    return {share.lower(), *(p.lower() for p in rel.split("/") if p)}


def unsaid_choice(answer: Answer, names: Names, request: str) -> tuple[str, str] | None:
    """A step that picks one of two listed entries of the same name, when the
    request names it but says nothing that tells the chosen one from the
    other (its share, its folder): ``(chosen, other)``, to be asked about
    rather than guessed. Picking the plainer of the two (``docs:a.txt`` over
    ``docs:Old/a.txt``) is fine unless the request says the other's place."""
    words = request.lower()
    for source in (src for step in answer.steps for src in step.sources):
        if "*" in source or _basename(source).lower() not in words:
            continue
        for other in names.shown:
            if other == source or _basename(other) != _basename(source):
                continue
            own, theirs = _marks(source), _marks(other)
            said_own = any(m in words for m in own - theirs)
            said_theirs = any(m in words for m in theirs - own)
            if not said_own and (own - theirs or said_theirs):
                return source, other
    return None


def render(lines: Iterable[str]) -> str:
    """The compact form as kept with the plan (what was asked, in short)."""
    return "\n".join(lines)
