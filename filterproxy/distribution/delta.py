"""Delta segments of big lists: canonical form, diff of two versions, and reconstruction on a gateway.

A delta list is kept in canonical form: its non-blank lines, stripped, sorted by bytes and unique (so
order carries no meaning: only for formats where it has none, :data:`DELTA_FORMATS`). Version N+1 is
published as two gzip segments against N, the lines added and the lines removed; a gateway at N
applies them to its file in one streaming merge, so memory stays proportional to the segments, not to
the list (10 M hashes). Sorting big files uses ``sort`` in the C locale (same order as bytes).
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator

#: Formats whose lines are independent rules, so a sorted, unique copy means the same list.
DELTA_FORMATS = frozenset({"domains", "hosts", "urlhash", "imagehash"})
CHUNK = 1 << 20


def _lines(path: str) -> Iterator[bytes]:
    """The lines of a (possibly gzip) file without their end of line."""
    with open(path, "rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    with gzip.open(path, "rb") if gz else open(path, "rb") as f:
        for line in f:
            yield line.rstrip(b"\r\n")


def canonicalise(src: str, dst: str) -> None:
    """Write ``src`` as stripped, non-blank, byte-sorted, unique lines to ``dst``."""
    fd, tmp = tempfile.mkstemp(prefix=".canon-", dir=os.path.dirname(os.path.abspath(dst)))
    try:
        with os.fdopen(fd, "wb") as out:
            for line in _lines(src):
                line = line.strip()
                if line:
                    out.write(line + b"\n")
        env = {**os.environ, "LC_ALL": "C"}
        subprocess.run(["sort", "-u", "-S", "25%", "-o", dst, tmp], check=True, env=env)
    finally:
        os.unlink(tmp)


def diff_sorted(old: str, new: str) -> tuple[list[bytes], list[bytes]]:
    """(added, removed) lines between two canonical files, in one streaming pass."""
    added: list[bytes] = []
    removed: list[bytes] = []
    a, b = _lines(old), _lines(new)
    x, y = next(a, None), next(b, None)
    while x is not None or y is not None:
        if y is None or (x is not None and x < y):
            removed.append(x)  # type: ignore[arg-type]
            x = next(a, None)
        elif x is None or y < x:
            added.append(y)
            y = next(b, None)
        else:
            x, y = next(a, None), next(b, None)
    return added, removed


def write_gzip(path: str, lines: Iterable[bytes]) -> None:
    """A reproducible gzip file (no name, no time) of ``lines``."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        for line in lines:
            gz.write(line + b"\n")


def gzip_file(src: str, dst: str) -> None:
    """A reproducible gzip copy of ``src``."""
    with (
        open(src, "rb") as f,
        open(dst, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
    ):
        shutil.copyfileobj(f, gz, CHUNK)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fold(segments: Iterable[tuple[str, str]]) -> tuple[set[bytes], set[bytes]]:
    """Net (adds, removes) of ``(kind, path)`` segments taken in version order (kind add | remove)."""
    adds: set[bytes] = set()
    removes: set[bytes] = set()
    for kind, path in segments:
        for line in _lines(path):
            if not line:
                continue
            if kind == "add":
                removes.discard(line)
                adds.add(line)
            else:
                adds.discard(line)
                removes.add(line)
    return adds, removes


def apply(current: str, adds: set[bytes], removes: set[bytes], dst: str) -> str:
    """Write ``current`` (canonical, plain or gzip) with ``removes`` dropped and ``adds`` merged in to
    ``dst``; the sha256 of what was written. One streaming pass; the result is canonical again."""
    kept = (line for line in _lines(current) if line and line not in removes)
    h = hashlib.sha256()
    last: bytes | None = None
    with open(dst, "wb") as out:
        for line in heapq.merge(kept, sorted(adds)):
            if line == last:
                continue
            last = line
            out.write(line + b"\n")
            h.update(line + b"\n")
    return h.hexdigest()
