"""The import graph of the four packages: aifeedback <- labelers <- trainers <- flows, no cycles, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

LAYERS = {"aifeedback": 0, "labelers": 1, "trainers": 2, "flows": 3}
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:`` (imports for annotations only, never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo.extend(child.orelse)
                continue
            todo.append(child)


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """Module -> the project modules it imports (absolute and relative, at any depth in the file: lazy imports count too)."""
    modules = {_module_name(p): p for pkg in LAYERS for p in (root / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:  # the longest project module the name lies in
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out




def _upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Every import of a higher layer than the importer's."""
    return [(a, b) for a, deps in graph.items() for b in deps if LAYERS[b.split(".")[0]] > LAYERS[a.split(".")[0]]]


def test_no_module_imports_a_higher_layer():
    upward = _upward(import_graph())
    assert not upward, f"upward imports (aifeedback <- labelers <- trainers <- flows): {upward}"


def test_no_import_cycles():
    graph = import_graph()
    # a package's __init__ that imports its own submodules is not a cycle with them: drop parent -> child edges
    acyclic = {a: {b for b in deps if not b.startswith(a + ".")} for a, deps in graph.items()}
    assert not _cycles(acyclic), f"import cycles: {_cycles(acyclic)}"


def test_no_module_over_400_lines():
    big = {str(p.relative_to(REPO)): n for pkg in LAYERS for p in (REPO / pkg).rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (one concept per file): {big}"


def test_the_checks_find_what_they_look_for():
    """Known answers: an upward import and a cycle in a tiny tree are found."""
    graph = {"aifeedback.a": {"labelers.b"}, "labelers.b": {"aifeedback.a"}, "flows.c": {"aifeedback.a"}}
    assert _cycles(graph) == [["aifeedback.a", "labelers.b"]]
    assert _upward(graph) == [("aifeedback.a", "labelers.b")]
    real = import_graph()
    assert "aifeedback.stage" in real["labelers.stage"] and "aifeedback.batches" in real["aifeedback.stage"]
