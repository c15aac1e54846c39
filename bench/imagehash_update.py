"""The list-update part of bench/bench_imagehash.py (``--update``): a hotline update compiled as a delta.

A generated PDQ list of N hashes (bench/pdq_corpus.py, clustered, a few listed twice) is compiled like
the server does (``compile_snapshot``: a child process) and marked current; then 10,000 new lines are
inserted at random places and 1,000 random lines removed, and the list is compiled again: the image
index is the previous base plus a delta (filterproxy/lists/snapshot_images.py). The same edited list
compiled into an empty cache gives the full build's time in the same run. Checked on a sample: added
hashes match at distance 0 with their new line, kept ones with their new line, removed ones no longer
match as themselves.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np
import pdq_corpus

from filterproxy.lists.snapshot import ListSource, load_snapshot, unpack
from filterproxy.lists.snapshot_cache import compile_snapshot, mark_current
from filterproxy.match.imagehash import ImageHashes

_ROW = 80  # bytes of one ``pdq:<64 hex>,i<9 digits>\n`` line


def _source(path: str) -> ListSource:
    return ListSource(id="hotline", category="illegal", format="imagehash", path=path, hashed=True, legal=True)


def _query(hexhash: str) -> ImageHashes:
    return ImageHashes("0" * 32, "0" * 40, "0" * 64, hexhash, 100, (hexhash,))


def _edit(path: str, add: int, remove: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Remove ``remove`` random lines and insert ``add`` new ones (uniform random hashes); returns the new
    body rows, the removed rows and the added rows."""
    data = open(path, "rb").read()
    cut = data.index(b"\n") + 1
    body = np.frombuffer(data, np.uint8, offset=cut).reshape(-1, _ROW)
    gone = np.zeros(len(body), bool)
    gone[rng.choice(len(body), remove, replace=False)] = True
    removed, kept = body[gone], body[~gone]
    new = np.frombuffer(b"".join(b"pdq:%s,u%09d\n" % (rng.bytes(32).hex().encode(), i) for i in range(add)), np.uint8)
    new = new.reshape(-1, _ROW)
    at = np.sort(rng.integers(0, len(kept) + 1, add))
    rows = np.insert(kept, at, new, axis=0)
    with open(path, "wb") as f:
        f.write(data[:cut])
        f.write(rows.tobytes())
    return rows, removed, new


def _check(
    folder: str, rows: np.ndarray, removed: np.ndarray, added: np.ndarray, rng: np.random.Generator
) -> dict[str, int]:
    """Wrong answers on a sample of 300 added, kept and removed hashes each; all 0 is right. A hash's line is the first
    line listing it (line 1 is the comment)."""
    snap = load_snapshot(folder)
    assert snap.images is not None
    keys = np.ascontiguousarray(rows[:, 4:12]).view(np.uint64).ravel()
    order = np.argsort(keys, kind="stable")
    keys = keys[order]

    def first_line(r: np.ndarray) -> int | None:
        key = np.ascontiguousarray(r[4:12]).view(np.uint64)[0]
        lo, hi = np.searchsorted(keys, key), np.searchsorted(keys, key, side="right")
        same = [int(i) for i in order[lo:hi] if (rows[i, 4:68] == r[4:68]).all()]
        return min(same) + 2 if same else None

    wrong = {"added": 0, "kept": 0, "removed": 0}
    for name, sample in (("added", added[:300]), ("kept", rows[rng.choice(len(rows), 300, replace=False)])):
        for r in sample:
            m = snap.images.match(_query(r[4:68].tobytes().decode()), max_distance=0)
            wrong[name] += m is None or unpack(m.record)[1] != first_line(r)
    for r in removed[:300]:
        m = snap.images.match(_query(r[4:68].tobytes().decode()), max_distance=0)
        wrong["removed"] += m is not None and first_line(r) is None
    return wrong


def bench_update(n: int, workdir: str | None = None, add: int = 10_000, remove: int = 1_000) -> dict:
    """Full compile, then the edited list compiled as a delta, then the same list compiled in full."""
    work = workdir or tempfile.mkdtemp(prefix="bench-imagehash-update-")
    path = os.path.join(work, f"update-{n}.txt")
    pdq_corpus.write_list(path, pdq_corpus.make_corpus(n, seed=5))
    roots = [os.path.join(work, f"update-{n}-{name}") for name in ("delta", "full")]
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    mark_current(roots[0], compile_snapshot([_source(path)], roots[0]))
    first_s = time.perf_counter() - t
    rng = np.random.default_rng(6)
    rows, removed, added = _edit(path, add, remove, rng)
    t = time.perf_counter()
    folder = compile_snapshot([_source(path)], roots[0])
    delta_s = time.perf_counter() - t
    lineage = load_snapshot(folder).image_update
    t = time.perf_counter()
    compile_snapshot([_source(path)], roots[1])
    full_s = time.perf_counter() - t
    wrong = _check(folder, rows, removed, added, rng)
    if not workdir:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "hashes": n,
        "added": add,
        "removed": remove,
        "first_compile_s": round(first_s, 2),
        "delta_compile_s": round(delta_s, 2),
        "full_compile_s": round(full_s, 2),
        "index_s": lineage.get("seconds"),
        "path": lineage.get("path"),
        "why": lineage.get("why"),
        "wrong": wrong,
    }


def print_row(r: dict) -> None:
    print(
        f"  {r['hashes']:>10,} hashes, +{r['added']:,} −{r['removed']:,} lines: compile {r['delta_compile_s']:6.2f} s "
        f"({r['path']}; image index {r['index_s']:.2f} s) vs full {r['full_compile_s']:6.2f} s "
        f"= {r['full_compile_s'] / r['delta_compile_s']:.1f}×   wrong answers {sum(r['wrong'].values())}"
    )
