"""Meta tests: every document the repository points to exists in the repository (CONTRIBUTING.md rule 8).

1. Every relative markdown link (``[text](path)``, ``![alt](path)``) in a ``*.md`` file resolves to a file
   or folder, relative to the file that links.
2. Every document name (``<name>.md``) in a ``.py``, ``.md``, ``.yaml``/``.yml``, ``.toml`` or ``.sh`` file
   resolves: relative to that file's folder or one of its parent folders up to the repository root.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = {".py", ".md", ".yaml", ".yml", ".toml", ".sh"}
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", "build", "dist", ".mypy_cache", ".ruff_cache"}
# Files that name documents relative to a folder of their own choosing: file → extra base folders.
EXTRA_BASES = {
    "tests/test_deploy.py": ["deploy"],  # GUIDES names the deploy guides relative to DEPLOY
}
MD_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXT = "md"  # spelled apart so this file does not cite a document itself
MD_NAME = re.compile(r"(?<![\w./:-])([\w][\w./-]*\." + EXT + r")\b")
FENCE = re.compile(r"^(```|~~~)")


def _repo_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
        files = [REPO / p for p in out if p]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in REPO.rglob("*") if p.is_file()]
    return sorted(p for p in files if p.is_file() and not SKIP_DIRS & set(p.relative_to(REPO).parts))


FILES = _repo_files()


def _links(text: str) -> list[tuple[int, str]]:
    """Markdown link targets outside fenced code blocks, with their line numbers."""
    out: list[tuple[int, str]] = []
    fenced = False
    for n, line in enumerate(text.split("\n"), 1):
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.extend((n, m.group(1)) for m in MD_LINK.finditer(line))
    return out


def _is_external(target: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)) or target.startswith(("#", "//"))


def _bases(path: Path) -> list[Path]:
    rel = path.relative_to(REPO).as_posix()
    bases = [path.parent, *[p for p in path.parent.parents if REPO in (p, *p.parents)]]
    return bases + [REPO / extra for extra in EXTRA_BASES.get(rel, [])]


def test_relative_markdown_links_resolve() -> None:
    broken = []
    docs = [p for p in FILES if p.suffix == ".md"]
    assert docs, "no markdown files found"
    for doc in docs:
        for line, target in _links(doc.read_text(encoding="utf-8")):
            if _is_external(target):
                continue
            path = target.split("#", 1)[0]
            if path and not (doc.parent / path).exists():
                broken.append(f"{doc.relative_to(REPO)}:{line}: {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_cited_documents_exist() -> None:
    missing = []
    for f in FILES:
        if f.suffix not in SCANNED:
            continue
        for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").split("\n"), 1):
            for m in MD_NAME.finditer(line):
                name = m.group(1)
                if not any((base / name).exists() for base in _bases(f)):
                    missing.append(f"{f.relative_to(REPO)}:{n}: {name}")
    assert not missing, "files cite documents that are not in the repository:\n" + "\n".join(missing)


@pytest.mark.parametrize(
    "text,expected",
    [  # "{md}" stands for the extension (see EXT)
        ("see [the guide](deploy/x.{md}#part) and ![pic](docs/a.png)", ["deploy/x.{md}#part", "docs/a.png"]),
        ("[ext](https://example.org/a.{md}) [mail](mailto:a@b)", ["https://example.org/a.{md}", "mailto:a@b"]),
        ("```\n[not a link](nowhere.{md})\n```\n[link](here.{md})", ["here.{md}"]),
    ],
)
def test_link_extraction(text: str, expected: list[str]) -> None:
    assert [t for _, t in _links(text.format(md=EXT))] == [e.format(md=EXT) for e in expected]


def test_citation_scan_catches_a_missing_document() -> None:
    """The scan finds names in prose and comments, and ignores URLs."""
    line = "# see docs/nothing-here." + EXT + " (https://example.org/README." + EXT + ")"
    assert [m.group(1) for m in MD_NAME.finditer(line)] == ["docs/nothing-here." + EXT]
    assert not (REPO / ("docs/nothing-here." + EXT)).exists()
