"""The package's import graph has no cycles, and package code never imports the entry points.

The graph is built with ``ast`` from every module of filterproxy/: module-level and function-level
``import`` / ``from`` of filterproxy modules count; imports under ``if TYPE_CHECKING:`` do not.
``from filterproxy.x import y`` is an edge to ``filterproxy.x.y`` when ``y`` is a submodule, else to
``filterproxy.x``. A parent package being imported implicitly is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "filterproxy"
ENTRY_POINTS = {"filterproxy.cli", "filterproxy.runner"}
ALLOWED_ENTRY_IMPORTERS = {"filterproxy.__main__", "filterproxy.cli", "filterproxy.runner"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_pkg: bool) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every import outside ``if TYPE_CHECKING:`` blocks."""
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            found.append((base, [a.name for a in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for target, names in _imports(tree, mod, path.name == "__init__.py"):
            if not target.startswith("filterproxy"):
                continue
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]
            plain = [n for n in names if f"{target}.{n}" not in mods]
            edges = subs + ([target] if plain or not names else [])
            graph[mod].update(e for e in edges if e in mods and e != mod)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module, each as one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[set[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return [_cycle_in(graph, comp) for comp in comps]


def _cycle_in(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest cycle through the first module of ``comp`` (breadth-first inside the component)."""
    start = min(comp)
    prev: dict[str, str] = {}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & comp):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, v, start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return sorted(comp)


def test_graph_sees_known_edges():
    graph = import_graph()
    assert "filterproxy.vocabulary" in graph["filterproxy.config.loader"]
    assert "filterproxy.lists.snapshot" in graph["filterproxy.lists.store"]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_package_code_never_imports_cli_or_runner():
    bad = sorted(
        f"{mod} imports {target}"
        for mod, targets in import_graph().items()
        for target in targets
        if target in ENTRY_POINTS and mod not in ALLOWED_ENTRY_IMPORTERS
    )
    assert not bad, "\n".join(bad)
