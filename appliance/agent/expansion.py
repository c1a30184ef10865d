"""Expanding a compact plan into intents, deterministically, against the
listing: every pattern and template names each listed file once (see
:mod:`appliance.agent.compact`)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
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


def render(lines: Iterable[str]) -> str:
    """The compact form as kept with the plan (what was asked, in short)."""
    return "\n".join(lines)
