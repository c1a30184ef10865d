"""The compact plan language as a GBNF grammar over one listing: llama.cpp
can write no path that is not listed, no verb that is not known, no more
steps than announced (see :mod:`appliance.agent.compact`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from appliance.agent.compact import MAX_STEPS, TEMPLATES, Names


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
