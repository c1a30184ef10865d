"""The shape of the package, checked: no import cycles, no reaching into
another package's private names, the agent depends on nothing it need not,
and modules small enough to read in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "appliance"
# One idea that reads straight through, and why it stays whole.
LONG_MODULES = {
    # The one queue a press can mean: its lock, expiry timer, lockouts and
    # pairing window act on the same state and read best together.
    "appliance/approval/queue.py": 700,
}
MAX_LINES = 550


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def parse(path: Path) -> ast.Module:
    """``ast.parse``, once more if another thread parsed at the same moment:
    CPython 3.11 before 3.11.8 (gh-106905) can raise "AST constructor
    recursion depth mismatch" then, and 3.11's tracebacks parse source too
    (a thread logging an exception is enough)."""
    try:
        return ast.parse(path.read_text())
    except SystemError:
        return ast.parse(path.read_text())


def top_level_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) a module imports at its top level, ``if
    TYPE_CHECKING`` blocks included (a cycle of types is a cycle of design);
    imports inside functions are left out."""
    tree = parse(path)
    found: list[tuple[str, list[str]]] = []
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.extend((a.name, []) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                found.append((base, [a.name for a in node.names]))
            elif isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(node.orelse)

    visit(tree.body)
    return found


def function_imports(path: Path) -> list[tuple[str, list[str]]]:
    """``from appliance... import`` statements inside functions."""
    return [
        (node.module, [a.name for a in node.names])
        for fn in ast.walk(parse(path))
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(fn)
        if isinstance(node, ast.ImportFrom) and node.module and not node.level
    ]


def resolve(module: str, names: list[str]) -> set[str]:
    """The appliance modules an import statement loads."""
    out = set()
    if module in MODULES:
        out.add(module)
    for name in names:
        if f"{module}.{name}" in MODULES:
            out.add(f"{module}.{name}")
    return out


GRAPH = {
    name: set().union(*(resolve(m, n) for m, n in top_level_imports(path))) - {name}
    for name, path in MODULES.items()
}


def test_no_import_cycles() -> None:
    # Tarjan's strongly connected components: any component of more than one
    # module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            connect(v)
    assert cycles == []


def test_no_private_names_imported_from_other_modules() -> None:
    found = []
    for name, path in MODULES.items():
        for module, names in top_level_imports(path) + function_imports(path):
            found += [
                f"{name}: {module}.{n}"
                for n in names
                if module.startswith("appliance") and n.startswith("_") and not n.endswith("__")
            ]
    assert found == []


def test_the_agent_needs_no_part_of_the_broker() -> None:
    """The least trusted process imports only what it must: the intents, the
    name rules, the errors, the configuration's limits."""
    allowed = {
        "appliance.errors",
        "appliance.intents",
        "appliance.names",
        "appliance.verbs",
        "appliance.config",
    }
    agent = {n for n in MODULES if n.startswith("appliance.agent")}
    reached: set[str] = set()
    todo = list(agent)
    while todo:
        for dep in GRAPH[todo.pop()]:
            if dep not in reached:
                reached.add(dep)
                todo.append(dep)
    assert reached - agent - {"appliance"} <= allowed


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_read_in_one_sitting(name: str) -> None:
    path = MODULES[name]
    rel = str(path.relative_to(PACKAGE.parent))
    lines = len(path.read_text().splitlines())
    assert lines <= LONG_MODULES.get(rel, MAX_LINES), f"{rel} has {lines} lines"
