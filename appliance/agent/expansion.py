"""Expanding a compact plan into intents, deterministically, against the
listing: every pattern and template names each listed file once (see
:mod:`appliance.agent.compact`)."""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from appliance.agent.compact import (
    TEMPLATES,
    VERBS,
    YEAR,
    Answer,
    Names,
    Step,
    basename,
    parent_of,
    resource,
)

_WORD = re.compile(r"[a-z]+|[0-9]+")  # a request's words
_YEARLY = re.compile(r"(?:19|20)[0-9]{2}")  # a year folder's name


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
            m = YEAR.search(name)
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
        ensure(parent_of(folder))
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
                folder = _fill(step.target, basename(src))
                if folder is None:
                    skipped.append(f"{src}: no year or month in its name")
                    continue
                if (
                    src.endswith("/")
                    and folder == parent_of(folder) + basename(src) + "/"
                    and not names.is_folder(folder)
                    and folder not in made
                ):
                    folder = parent_of(folder)  # "move docs:Scans/ > archive:Scans/"
                if folder == parent_of(src):
                    continue  # already there
                if src.endswith("/") and folder.startswith(src):
                    skipped.append(f"{src} cannot go into itself")
                    continue
                ensure(folder)
                intent["params"]["to"] = resource(folder + basename(src))
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
    share, _, rel = parent_of(path).partition(":")
    return {share.lower(), *(p.lower() for p in rel.split("/") if p)}


def unsaid_choice(answer: Answer, names: Names, request: str) -> tuple[str, str] | None:
    """A step that picks one of two listed entries of the same name, when the
    request names it but says nothing that tells the chosen one from the
    other (its share, its folder): ``(chosen, other)``, to be asked about
    rather than guessed. Picking the plainer of the two (``docs:a.txt`` over
    ``docs:Old/a.txt``) is fine unless the request says the other's place."""
    words = request.lower()
    for source in (src for step in answer.steps for src in step.sources):
        if "*" in source or basename(source).lower() not in words:
            continue
        for other in names.shown:
            if other == source or basename(other) != basename(source):
                continue
            own, theirs = _marks(source), _marks(other)
            said_own = any(m in words for m in own - theirs)
            said_theirs = any(m in words for m in theirs - own)
            if not said_own and (own - theirs or said_theirs):
                return source, other
    return None


def placed(answer: Answer, names: Names, request: str) -> Answer:
    """The answer with a source the request places elsewhere put there: when
    a step picks one of two listed entries of the same name and the request
    says the other's place (its share, its folder) but not the chosen one's
    ("read notes.txt on the family share" planned as ``docs:notes.txt``),
    the step takes the one the request placed (exactly one such: else as
    written, and :func:`unsaid_choice` asks). And a move or copy into a
    listed folder the request never names, on a share it does name ("to the
    backup share" planned as ``backup:Old/``), goes to that share's top. A
    sort into year folders inside its own source folder, which the request
    names only as the source, goes "next to" it when the request says so, or
    into the year folders that exist already (in one place of that share),
    as the prompt asks."""
    words = request.lower()

    def place(source: str, dest: set[str]) -> str:
        if "*" in source or basename(source).lower() not in words:
            return source
        own = _marks(source)
        there = [
            other
            for other in names.shown
            if other != source
            and basename(other) == basename(source)
            and other.endswith("/") == source.endswith("/")
            and any(m in words for m in _marks(other) - own - dest)
            and not any(m in words for m in own - _marks(other))
        ]
        return there[0] if len(there) == 1 else source

    said = _WORD.findall(words)

    def destination(target: str) -> str:
        share = target.partition(":")[0]
        if names.is_entry(target) and share.lower() in said:
            folders = [p for p in _marks(target + "x") if p != share.lower()]
            if not any(_said(p, words, said) for p in folders):
                return share + ":"
        return target

    def year_home(template: str, source: str) -> str:
        t = next(t for t in TEMPLATES if template.endswith(t))
        base = template[: -len(t)]
        if base != source.partition("*")[0] or base.endswith(":"):
            return template  # only the model's easy guess: the source itself
        name = re.escape(basename(base).lower())
        if re.search(rf"\b(next to|beside) (the )?{name}\b", words):
            return parent_of(base) + t
        if len(re.findall(rf"\b{name}\b", words)) > 1 or not t.startswith("{year}"):
            return template  # named as the place too ("...inside Scans")
        homes = {
            parent_of(f)
            for f in names.folders
            if _YEARLY.fullmatch(basename(f)) and f.partition(":")[0] == base.partition(":")[0]
        }
        return homes.pop() + t if len(homes) == 1 and base not in homes else template

    steps = []
    for step in answer.steps:
        target = step.target
        if step.verb in ("move", "copy") and target is not None:
            target = destination(target)
        if step.verb == "sort" and target is not None:
            target = year_home(target, step.source)
        # The words of a destination ("into Old") place the destination.
        dest = _marks(target + "x") if target and ":" in target else set()
        first, *more = (place(s, dest) for s in step.sources)
        steps.append(replace(step, source=first, target=target, more=tuple(more)))
    return replace(answer, steps=tuple(steps))


def _matched(stem: str, said: list[str]) -> set[str]:
    """The words of a name's ``stem`` that the request's words ``said`` speak
    of: a number said as it is, a word of three letters or more (from four,
    its plural or a typo too: "train tickets" are train-ticket-1.pdf,
    "shoping list" is shopping-list.txt)."""
    out: set[str] = set()
    for w in _WORD.findall(stem):
        if w.isdigit():
            if w in said:
                out.add(w)
        elif len(w) >= 3 and (
            w in said
            or (
                len(w) >= 4
                and (
                    any(x.startswith(w) for x in said) or difflib.get_close_matches(w, said, 1, 0.8)
                )
            )
        ):
            out.add(w)
    return out


def _named(name: str, words: str, said: list[str]) -> bool:
    """Does the request (``words``, lower case; ``said``, its words) say the
    name ``name`` itself, or its stem?"""
    name = name.lower()
    whole = re.compile(rf"(?<![a-z0-9]){re.escape(name)}(?![a-z0-9])")
    return bool(whole.search(words)) or os.path.splitext(name)[0] in said


def _said(name: str, words: str, said: list[str]) -> bool:
    """Does the request speak of the file or folder ``name``: the name, its
    stem, or a word of it (see :func:`_matched`)?"""
    return _named(name, words, said) or bool(_matched(_stem(name), said))


def unnamed_pick(answer: Answer, names: Names, request: str) -> list[str] | None:
    """A step on one file that the request does not single out, the only one
    of its kind (same folder, same extension) the plan names, while its
    folder holds others of that kind that it might as well mean: those files
    (the chosen one first), to be asked about rather than guessed. A file is
    singled out by its name, or by words of its name that no other file of
    its kind has all of ("the school letter" is letter-school.pdf beside
    letter-bank.pdf; "the invoice" beside invoice-march.pdf and
    invoice-april.pdf is not)."""
    words = request.lower()
    said = _WORD.findall(words)
    chosen = {src for step in answer.steps for src in step.sources}
    for step in answer.steps:
        if step.verb in ("mkdir", "write", "sort"):
            continue
        for source in step.sources:
            if "*" in source or not names.is_file(source):
                continue
            if _named(basename(source), words, said):
                continue
            ext = os.path.splitext(source)[1].lower()
            kind = [
                f
                for f in names.files_in(parent_of(source))
                if os.path.splitext(f)[1].lower() == ext
            ]
            alike = [f for f in kind if f not in chosen]
            # One of them picked: which one? (Several picked: a group was
            # meant, "the PDFs", and the others are the model's to leave.)
            if not alike or len(kind) - len(alike) != 1:
                continue
            mine = _matched(_stem(source), said)
            if mine:
                # Words of its name were said: ask only when another has them too.
                alike = [f for f in alike if mine <= _matched(_stem(f), said)]
            if alike:
                return [source, *alike]
    return None


def _stem(path: str) -> str:
    return os.path.splitext(basename(path).lower())[0]


def render(lines: Iterable[str]) -> str:
    """The compact form as kept with the plan (what was asked, in short)."""
    return "\n".join(lines)
