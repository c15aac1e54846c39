"""The image-hash index of a snapshot compile: a full build, or the previous snapshot's base plus a delta.

Rebuilding the PDQ index of a 10M-hash list takes ~25 s; a hotline update adds or withdraws a few
thousand hashes. So when the previous snapshot (the cache's ``current``) has an image index, each image
list is compared with what that index's *base* (its last full build) holds for it, and the new index is
the base, shared by hard links, plus the added hashes and tombstones of the removed ones
(:meth:`~filterproxy.match.imagehash.ImageHashIndex.with_array_changes`). Records are (list, line): the
lines of the hashes kept move when lines are inserted or removed before them, so the base's records get
a *shift*, a sorted table of line runs and their offsets, applied on a match (rare), and every verdict
cites the line in the list file as it is now.

The comparison is always against the base, never against the previous delta, so a delta holds the net
changes since the last full build and never stacks. Old and new entries are aligned in line order (a
file edited in place, as hotline updates are; no sort of ten million hashes). A full build is done
instead — correctness first — when anything does not line up: no previous index, an image list added,
removed, moved or of another format, a changed hash that another list also holds (a tombstone would hide
that list's entry), a reordered file, or when the changed lines exceed :data:`DELTA_MAX_RATIO` of the
base or :data:`DELTA_MAX_GENERATIONS` deltas followed the full build (that full build is the compaction;
it runs in the compile's child process, off the serving path). What was done, why and how long it took
is kept in ``images/lineage.json`` and logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from filterproxy.lists.parsers import IMAGE_FORMATS

if TYPE_CHECKING:
    from filterproxy.lists.snapshot import Snapshot
    from filterproxy.match.imagehash import ImageHashIndex
    from filterproxy.match.imagehash.listfile import ImageHashBlock

log = logging.getLogger("filterproxy.lists")

DELTA_MAX_RATIO = 0.05  # net added + removed hashes since the full build, over the base's image entries
DELTA_MAX_GENERATIONS = 8  # delta snapshots in a row before the next compile builds (compacts) in full
LINEAGE = "lineage.json"
_LINEAGE_FORMAT = 1
_MIX = np.uint64(0x9E3779B97F4A7C15)


class _NoDelta(Exception):
    """Why the delta path does not apply (the full build is taken)."""


def build_images(
    snap: Snapshot, entries: list[tuple[int, ImageHashBlock]], previous: str | None, directory: str | None = None
) -> None:
    """Set ``snap.images``, ``snap.image_items`` and ``snap.image_update`` (the lineage written beside the
    index) from the parsed image blocks; over ``previous``'s index when only a few hashes changed. A full
    build is written into ``directory`` as it goes, when given (the snapshot's ``images/``)."""
    from filterproxy.match.imagehash.items import ImageItems, ItemTexts

    t = time.perf_counter()
    lists = _image_lists(snap)
    ix: ImageHashIndex | None = None
    why = "no previous snapshot"
    if previous is not None:
        try:
            ix, lineage = _delta(entries, lists, os.path.join(previous, "images"))
        except _NoDelta as exc:
            why = str(exc)
        except (OSError, ValueError, KeyError, TypeError) as exc:  # an unreadable previous index: build in full
            why = f"previous index unusable: {exc}"
    if ix is None:
        ix = _full(snap, entries, directory)
        lineage = {"path": "full", "why": why, "generation": 0, "changes": 0, "lists": lists}
        lineage["base_entries"] = len(ix)
    items: list[tuple[Any, ItemTexts]] = [((idx << 32) | b.lines, b.items) for idx, b in entries if b.items]
    snap.images = ix
    snap.image_items = ImageItems.from_blocks(items)
    lineage.update(format=_LINEAGE_FORMAT, seconds=round(time.perf_counter() - t, 3))
    snap.image_update = lineage
    log.info(
        "image index: %s build (%s), %d hashes, %d net changes, generation %d, %.2f s",
        lineage["path"],
        lineage.get("why", "delta over the previous base"),
        len(ix),
        lineage["changes"],
        lineage["generation"],
        lineage["seconds"],
    )


def save_lineage(lineage: dict[str, Any], directory: str) -> None:
    with open(os.path.join(directory, LINEAGE), "w") as f:
        json.dump(lineage, f)


def load_lineage(directory: str) -> dict[str, Any]:
    """The lineage of a saved image index (empty when it has none)."""
    try:
        with open(os.path.join(directory, LINEAGE)) as f:
            out: dict[str, Any] = json.load(f)
            return out
    except FileNotFoundError:
        return {}


def _full(snap: Snapshot, entries: list[tuple[int, ImageHashBlock]], directory: str | None = None) -> ImageHashIndex:
    from filterproxy.match.imagehash import ImageHashIndex

    ix = ImageHashIndex()
    # the index answers with the first record added: legal lists first, so a picture listed by several
    # lists is blocked and reported as the legal list's (reason legal), whatever the configuration order
    legal = {li.index for li in snap.lists if li.source.is_legal}
    for idx, block in sorted(entries, key=lambda e: e[0] not in legal):
        # record(idx, line) for every row; the parsed digests are not changed after: no copy of them
        ix.add_many(block.kind, block.digests, (idx << 32) | block.lines, copy=False)
    ix.freeze(directory)
    return ix


def _image_lists(snap: Snapshot) -> dict[str, dict[str, Any]]:
    """id → what the delta path compares of each image list: index, format, legal, content digest."""
    out: dict[str, dict[str, Any]] = {}
    for li in snap.lists:
        if li.source.format in IMAGE_FORMATS and li.source.path:
            with open(li.source.path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            out[li.id] = {"idx": li.index, "format": li.source.format, "legal": li.source.is_legal, "sha256": digest}
    return out


def _delta(
    entries: list[tuple[int, ImageHashBlock]], lists: dict[str, dict[str, Any]], prev_dir: str
) -> tuple[ImageHashIndex, dict[str, Any]]:
    """The previous base plus the net changes of every image list since it was built, and its lineage;
    :class:`_NoDelta` when the full build must be taken."""
    from filterproxy.match.imagehash import ImageHashIndex

    old = load_lineage(prev_dir) if os.path.isdir(prev_dir) else {}
    if old.get("format") != _LINEAGE_FORMAT:
        raise _NoDelta("the previous snapshot has no image index lineage")
    base_lists: dict[str, dict[str, Any]] = old["lists"]
    if {k: {f: v[f] for f in ("idx", "format", "legal")} for k, v in base_lists.items()} != {
        k: {f: v[f] for f in ("idx", "format", "legal")} for k, v in lists.items()
    }:
        raise _NoDelta("image lists added, removed, moved or of another format")
    built = sorted(lists.items(), key=lambda kv: (not kv[1]["legal"], kv[1]["idx"]))  # the full build's order
    order = [v["idx"] for _, v in built]
    changed = [v["idx"] for k, v in built if v["sha256"] != base_lists[k]["sha256"]]
    base = ImageHashIndex.load(prev_dir).base()
    if not changed:
        return base, {**old, "path": "delta", "generation": 0, "changes": 0, "why": "image lists unchanged"}
    generation = int(old["generation"]) + 1
    if generation > DELTA_MAX_GENERATIONS:
        raise _NoDelta(f"{DELTA_MAX_GENERATIONS} delta generations since the full build: compacting")
    limit = int(DELTA_MAX_RATIO * int(old["base_entries"]))
    news = _by_list(entries)
    added: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    removed: dict[str, list[np.ndarray]] = {}
    runs: list[tuple[np.ndarray, np.ndarray]] = []
    total = 0
    for idx in changed:
        kept_old, kept_new = [], []
        for kind in sorted(set(news.get(idx, {})) | set(_base_kinds(base, idx))):
            old_d, old_recs = _base_of(base, kind, idx)
            new = news.get(idx, {}).get(kind, _none(kind))
            d, changed_lines = _diff(base, idx, kind, (old_d, old_recs & 0xFFFFFFFF), new, limit)
            total += changed_lines
            if total > limit:
                raise _NoDelta(f"more than {limit} changes since the full build ({DELTA_MAX_RATIO:.0%} of the base)")
            added.setdefault(kind, []).append((d.added, (idx << 32) | d.added_lines))
            removed.setdefault(kind, []).append(d.removed)
            kept_old.append(d.kept_old)
            kept_new.append(d.kept_new)
        runs.append(_runs(idx, np.concatenate(kept_old), np.concatenate(kept_new), max(64, limit)))
    ix = base.with_array_changes(
        {k: (np.concatenate([a[0] for a in v]), np.concatenate([a[1] for a in v])) for k, v in added.items()},
        {k: np.concatenate(v) for k, v in removed.items()},
        shift=_join_runs(runs),
        tie_order=order,
    )
    return ix, {**old, "path": "delta", "generation": generation, "changes": total, "why": "delta over the base"}


def _by_list(entries: list[tuple[int, ImageHashBlock]]) -> dict[int, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """list index → kind → (digests, lines) of the freshly parsed blocks, in line order."""
    parts: dict[int, dict[str, list[ImageHashBlock]]] = {}
    for idx, b in entries:
        parts.setdefault(idx, {}).setdefault(b.kind, []).append(b)
    out: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for idx, kinds in parts.items():
        out[idx] = {
            k: (np.concatenate([b.digests for b in bs]), np.concatenate([b.lines for b in bs]))
            for k, bs in kinds.items()
        }
    return out


def _joined(blocks: list[ImageHashBlock]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([b.digests for b in blocks]), np.concatenate([b.lines for b in blocks])


def _none(kind: str) -> tuple[np.ndarray, np.ndarray]:
    from filterproxy.match.imagehash.kinds import HEX_LENGTHS

    return np.empty((0, HEX_LENGTHS[kind] // 2), np.uint8), np.empty(0, np.int64)


def _base_kinds(base: ImageHashIndex, idx: int) -> list[str]:
    from filterproxy.match.imagehash.kinds import KINDS

    return [k for k in KINDS if ((base.base_entries(k)[1] >> 32) == idx).any()]


def _base_of(base: ImageHashIndex, kind: str, idx: int) -> tuple[np.ndarray, np.ndarray]:
    d, r = base.base_entries(kind)
    mine = (r >> 32) == idx
    return (d, r) if mine.all() else (d[mine], r[mine])


class _Diff:
    """Changes of one list and kind against the base: digests to add and their lines, digests to remove,
    and the (old, new) lines of the hashes kept."""

    def __init__(self, added: np.ndarray, added_lines: np.ndarray, removed: np.ndarray, kept: tuple[np.ndarray, ...]):
        self.added, self.added_lines, self.removed = added, added_lines, removed
        self.kept_old, self.kept_new = kept


def _fingerprints(digests: np.ndarray) -> np.ndarray:
    """A 64-bit mix of each whole digest row (equal rows, equal fingerprints; kept rows are verified)."""
    d = np.ascontiguousarray(digests, dtype=np.uint8)
    if d.shape[1] % 8:
        d = np.pad(d, ((0, 0), (0, -d.shape[1] % 8)))
    words = d.view(np.uint64)
    fp = np.zeros(len(d), np.uint64)
    for j in range(words.shape[1]):
        fp = (fp ^ words[:, j]) * _MIX  # wraps modulo 2**64 on purpose
        fp ^= fp >> np.uint64(29)
    return fp


_WINDOWS = (1 << 10, 1 << 14, 1 << 18, 1 << 21)  # how far ahead an edit's other side is looked for


def _next_match(hay: np.ndarray, at: int, value: np.uint64, after: np.uint64 | None, width: int) -> tuple[int, int]:
    """Offsets from ``at`` of the first ``value`` in ``hay[at:at + width]`` that ``after`` follows, and of
    the first at all (-1: none): preferring the first keeps one repeated hash from derailing the alignment."""
    found = np.flatnonzero(hay[at : at + width] == value)
    if not len(found):
        return -1, -1
    nxt = np.minimum(at + found + 1, len(hay) - 1)
    followed = found[(at + found + 1 >= len(hay)) | (hay[nxt] == after)] if after is not None else found
    return (int(followed[0]) if len(followed) else -1), int(found[0])


def _nearer(p: int, q: int) -> tuple[int, int] | None:
    """(rows of a, rows of b) to skip: b[j:j+p] inserted or a[i:i+q] removed, the shorter; None if neither."""
    if p < 0 and q < 0:
        return None
    return (0, p) if q < 0 or (p >= 0 and p <= q) else (q, 0)


def _align(a: np.ndarray, b: np.ndarray, max_edits: int) -> tuple[np.ndarray, np.ndarray]:
    """Which rows of ``a`` (old fingerprints, line order) and ``b`` (new) are kept, in order: runs of
    equal rows compared a chunk at a time, and at each difference the nearer of "lines inserted" and
    "lines removed". O(n) array work plus a step per edit: a file edited in place, not sorted again, is
    aligned in well under a second per million lines; :class:`_NoDelta` past ``max_edits``."""
    n, m = len(a), len(b)
    keep_a, keep_b = np.zeros(n, bool), np.zeros(m, bool)
    i = j = edits = scanned = 0
    while i < n and j < m:
        start, step = i, 1 << 10
        while i < n and j < m:  # extend the run of equal rows
            width = min(step, n - i, m - j)
            diff = np.flatnonzero(a[i : i + width] != b[j : j + width])
            if len(diff):
                i, j = i + int(diff[0]), j + int(diff[0])
                break
            i, j, step = i + width, j + width, min(step * 4, 1 << 20)
        keep_a[start:i] = True
        keep_b[j - (i - start) : j] = True
        if i >= n or j >= m:
            break
        skip = (1, 1)  # neither side found again, or the next lines agree: one line replaced
        for width in () if i + 1 < n and j + 1 < m and a[i + 1] == b[j + 1] else _WINDOWS:
            width = min(width, max_edits - edits + 1)  # a wider edit is over the limit anyway
            scanned += 2 * width
            p = _next_match(b, j, a[i], a[i + 1] if i + 1 < n else None, width)  # b[j:j+p] inserted
            q = _next_match(a, i, b[j], b[j + 1] if j + 1 < m else None, width)  # a[i:i+q] removed
            found = _nearer(p[0], q[0]) or _nearer(p[1], q[1])
            if found is not None:
                skip = found
                break
        i, j, edits = i + skip[0], j + skip[1], edits + skip[0] + skip[1]
        if edits > max_edits:
            raise _NoDelta(f"more than {max_edits} lines changed since the full build")
        if scanned > 64 * (n + m) + (1 << 24):  # many far-apart moves: the full build is the cheaper
            raise _NoDelta("lines moved too far to align")
    return keep_a, keep_b


def _diff(
    base: ImageHashIndex,
    idx: int,
    kind: str,
    old: tuple[np.ndarray, np.ndarray],
    new: tuple[np.ndarray, np.ndarray],
    limit: int,
) -> tuple[_Diff, int]:
    """The changes of list ``idx`` in one kind, old and new (digests, lines) aligned in line order, and
    how many lines changed.

    A tombstone hides every base entry of its hash, and a hash listed twice answers with its first line:
    so a changed hash that is also on a kept line is *re-listed* (tombstoned, and all its new lines
    added), and one that another list also holds gives up the delta (:class:`_NoDelta`)."""
    (old_d, old_lines), (new_d, new_lines) = old, new
    if len(old_lines) > 1 and (np.diff(old_lines) < 0).any():  # the base's exact sets are in key order
        by_line = np.argsort(old_lines, kind="stable")
        old_d, old_lines = old_d[by_line], old_lines[by_line]
    keep_a, keep_b = _align(_fingerprints(old_d), _fingerprints(new_d), limit)
    if not np.array_equal(old_d[keep_a], new_d[keep_b]):  # byte for byte: fingerprints may collide
        raise _NoDelta("hash fingerprint collision")
    changed = len(keep_a) - int(keep_a.sum()) + len(keep_b) - int(keep_b.sum())
    records = base.base_records(kind, np.concatenate([old_d[~keep_a], new_d[~keep_b]]))
    if ((records >> 32) != idx).any():
        raise _NoDelta("a changed hash is also in another list")
    also_kept = np.zeros(int(old_lines.max()) + 1 if len(old_lines) else 0, bool)
    also_kept[records & 0xFFFFFFFF] = True
    also_kept[old_lines[~keep_a]] = False  # lines of changed hashes that stay: re-listed
    if also_kept.any():
        ia, ib = np.flatnonzero(keep_a), np.flatnonzero(keep_b)
        again = also_kept[old_lines[ia]]
        keep_a[ia[again]] = False
        keep_b[ib[again]] = False
    kept = (old_lines[keep_a], new_lines[keep_b])
    return _Diff(new_d[~keep_b], new_lines[~keep_b], old_d[~keep_a], kept), changed


def _runs(idx: int, old: np.ndarray, new: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The shift of list ``idx``: (record starts, additions) over its kept hashes in old line order,
    ending with a run back to zero at the next list. Lines are unique and dense: put in order by a
    scatter, not a sort."""
    at = np.full(int(old.max()) + 1 if len(old) else 0, -1, np.int64)
    at[old] = new
    old = np.flatnonzero(at >= 0)
    off = at[old] - old
    first = np.ones(len(off), bool)
    first[1:] = off[1:] != off[:-1]
    if int(first.sum()) > limit or (len(off) > 1 and (np.diff(old + off) <= 0).any()):
        raise _NoDelta(f"lines reordered ({int(first.sum())} runs of lines moved)")
    starts, add = old[first], off[first]
    if len(starts):
        starts[0] = 0  # lines above the first kept hash belong to the first run (tombstones only)
    starts = np.append((idx << 32) + starts, (idx + 1) << 32)
    return starts.astype(np.int64), np.append(add, 0).astype(np.int64)


def _join_runs(runs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """One sorted shift table from the lists' runs (a list's closing run gives way to the next list's)."""
    runs = sorted(runs, key=lambda r: int(r[0][0]))
    starts = np.concatenate([r[0] for r in runs]) if runs else np.empty(0, np.int64)
    add = np.concatenate([r[1] for r in runs]) if runs else np.empty(0, np.int64)
    keep = np.ones(len(starts), bool)
    keep[:-1] = starts[1:] != starts[:-1]  # the later of two equal starts is the next list's first run
    return starts[keep], add[keep]
