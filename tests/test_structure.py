"""Meta tests of the code's shape (CONTRIBUTING.md): small modules with one job, short functions.

A module over 600 lines or a function over 80 lines is doing several jobs. The exceptions are
named: ``dns/wire.py`` (the wire codec, one table-driven job) and functions whose docstring says
they are a measured "hot loop" (inlined on purpose; see docs/performance.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "filterproxy"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
LONG_MODULES = {"dns/wire.py"}


def _modules() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def test_modules_are_small() -> None:
    big = {}
    for path in _modules():
        rel = path.relative_to(PKG).as_posix()
        n = len(path.read_text().splitlines())
        if n > MAX_MODULE_LINES and rel not in LONG_MODULES:
            big[rel] = n
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def _long_functions(tree: ast.AST) -> list[tuple[str, int, int]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            n = (node.end_lineno or node.lineno) - node.lineno + 1
            doc = ast.get_docstring(node) or ""
            if n > MAX_FUNCTION_LINES and "hot loop" not in doc.lower():
                out.append((node.name, node.lineno, n))
    return out


def test_functions_are_short() -> None:
    long = {}
    for path in _modules():
        found = _long_functions(ast.parse(path.read_text(), str(path)))
        if found:
            long[path.relative_to(PKG).as_posix()] = found
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (name, line, length): {long}"


@pytest.mark.parametrize(
    "src,expected",
    [
        ("def f():\n" + "    x = 1\n" * 90, ["f"]),
        ('def f():\n    """The measured hot loop."""\n' + "    x = 1\n" * 90, []),
        ("def f():\n" + "    x = 1\n" * 10, []),
    ],
)
def test_the_length_check_itself(src: str, expected: list[str]) -> None:
    assert [name for name, _, _ in _long_functions(ast.parse(src))] == expected
