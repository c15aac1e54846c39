"""Match index over image hashes: exact MD5/SHA-1/SHA-256 sets and an exact PDQ near-neighbour search.

Built once from the loaded lists, then frozen and shared read-only by all request handlers. Entries
hold numpy arrays only (no Python object per hash), so ten million hashes fit on a small gateway;
each keeps an opaque int record that the caller maps back to (list, item). PDQ search is multi-index
hashing that never misses a hash within the distance (:class:`~.mih.PdqTables`); why not faiss or a
brute-force scan: docs/decisions/imagehash-pdq-index.md.

Files and sharing. :meth:`ImageHashIndex.save` writes plain ``.npy`` files into a folder;
:meth:`ImageHashIndex.load` opens them read-only and a lookup reads only the rows it needs with ``pread``
(:class:`~.mih.Rows`), so every proxy worker reading the same snapshot folder shares one copy of the pages
in the page cache, and none maps the whole index into its own memory.

Changes without a rebuild. An index is a *base* (the big tables in files) plus a small *delta* of added
hashes and *tombstones* of removed ones, both consulted at query time:

* ``ix.with_changes(added=[(kind, hex, record), ...], removed=[(kind, hex), ...])`` returns a new frozen
  index sharing the base (seconds for 10,000 changes against 10M hashes); removals apply to what the
  index held before, so a hash removed and added again in one call is listed with its new record;
* ``ix.compacted(folder)`` rebuilds base + delta − tombstones into one new base (written into ``folder``
  when given). Run it off the serving path (a child process:
  :func:`filterproxy.match.imagehash.compact.compact_in_child`) and swap the reference in; same answers;
* ``ix.save(folder)`` writes the delta and tombstones too, and hard-links the base files when the base is
  already loaded from another folder on the same disk, so a new snapshot of a changed list costs its delta;
* ``ix.base().with_array_changes(added, removed, shift=..., tie_order=...)`` is what a snapshot compile
  uses (:mod:`filterproxy.lists.snapshot_images`): array changes against the base, a *shift* that moves the
  base's records to the lines of the edited list file, and the full build's list order for PDQ ties.

Lookups answer with the first record added (base before delta). Needs numpy >= 2 (``np.bitwise_count``);
older numpy falls back to a lookup table, several times slower.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from filterproxy.match.imagehash.exact import Entries, ExactSet, concat, digest_rows, empty, row_keys
from filterproxy.match.imagehash.kinds import (
    DEFAULT_MAX_DISTANCE,
    DEFAULT_MIN_QUALITY,
    DIHEDRAL_NAMES,
    EXACT_KINDS,
    HEX_LENGTHS,
    KINDS,
    PDQ_BYTES,
    check_hex,
    pdq_bytes,
)
from filterproxy.match.imagehash.mih import PdqTables, readonly
from filterproxy.match.imagehash.mih import _popcount_table as _popcount_table  # re-exported for tests

if TYPE_CHECKING:
    from filterproxy.match.imagehash.hashing import ImageHashes

# 1 and 2: PDQ tables as pdq.perm.npy + pdq.companion.npy (no longer read: a previous snapshot of that
# format is not reused as a base, its lists are built in full); 3: pdq.entries.npy (mih.PdqTables)
_INDEX_FORMAT = 3
_INDEX_FORMAT_SHIFT = 4  # format 3 plus the base records' shift (shift.*.npy)


@dataclass(frozen=True, slots=True)
class ImageMatch:
    """A hit: ``kind`` md5/sha1/sha256/pdq, Hamming ``distance`` (0 for exact), the caller's ``record``,
    and for PDQ which dihedral ``variant`` of the image matched (see :data:`DIHEDRAL_NAMES`)."""

    kind: str
    distance: int
    record: int
    variant: str | None = None


class ImageHashIndex:
    """Exact (md5/sha1/sha256) sets + PDQ near-neighbour index; each entry keeps only an opaque record.

    Build with :meth:`add` (or :meth:`add_many`), then :meth:`freeze` once; after that the index is
    immutable, safe to share between threads, and only then can it be queried. The record is whatever
    int the caller uses to find (list id, item id) — the index never stores list or image data.
    Duplicate hashes keep all records; lookups return the first one added. Changes after freezing:
    :meth:`with_changes` and :meth:`compacted` (see the module docstring).
    """

    def __init__(self) -> None:
        # per kind: hashes added one by one (bytes + records) and the finished chunks, in insertion order
        self._pending: dict[str, tuple[bytearray, array[int]]] | None = {k: (bytearray(), array("q")) for k in KINDS}
        self._chunks: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {k: [] for k in KINDS}
        self._exact: dict[str, ExactSet] = {}
        self._pdq: PdqTables | None = None
        # changes on top of the base: added entries (their own small tables), removed base entries
        self._added: Entries = {}
        self._exact_delta: dict[str, ExactSet] = {}
        self._pdq_delta: PdqTables | None = None
        self._dead_exact: dict[str, frozenset[bytes]] = {}
        self._dead_pdq = np.empty(0, np.int64)  # sorted base positions
        self._base_dir: str | None = None  # the folder the base is loaded from
        self._shift: tuple[np.ndarray, np.ndarray] | None = None  # base record translation (with_array_changes)
        self._tie_order: tuple[int, ...] | None = None  # record high words in build order (with_array_changes)
        self._count = 0

    # ---- building

    def add(self, kind: str, hexhash: str, record: int) -> None:
        """Add one hash (``kind`` md5/sha1/sha256/pdq, hex of the right length) with its record."""
        kind, store = self._building(kind)
        problem = check_hex(kind, hexhash)
        if problem:
            raise ValueError(problem)
        store[0].extend(bytes.fromhex(hexhash))
        store[1].append(record)
        self._count += 1

    def add_many(
        self, kind: str, digests: np.ndarray, records: np.ndarray | Sequence[int], *, copy: bool = True
    ) -> None:
        """Bulk add: ``digests`` is an (n, hash bytes) uint8 array, ``records`` n ints. ``copy=False``
        keeps the caller's array when it fits (the caller then must not change it)."""
        kind, _ = self._building(kind)
        width = HEX_LENGTHS[kind] // 2
        d = np.array(digests, dtype=np.uint8, order="C", copy=copy or None)  # the caller may reuse its array
        r = np.array(records, dtype=np.int64)
        if d.ndim != 2 or d.shape[1] != width or r.shape != (len(d),):
            raise ValueError(f"expected ({len(r)}, {width}) uint8 digests for {kind}, got shape {d.shape}")
        self._flush(kind)
        self._chunks[kind].append((d, r))
        self._count += len(d)

    def _building(self, kind: str) -> tuple[str, tuple[bytearray, array[int]]]:
        if self._pending is None:
            raise RuntimeError("ImageHashIndex is frozen; use with_changes() or build a new one")
        key = kind.lower() if isinstance(kind, str) else ""
        store = self._pending.get(key)
        if store is None:
            raise ValueError(f"unknown hash kind {kind!r} (expected one of {', '.join(KINDS)})")
        return key, store

    def _flush(self, kind: str) -> None:
        """Move the one-by-one additions of ``kind`` into a chunk, keeping insertion order."""
        assert self._pending is not None
        raw, recs = self._pending[kind]
        if recs:
            width = HEX_LENGTHS[kind] // 2
            self._chunks[kind].append(
                (np.frombuffer(bytes(raw), dtype=np.uint8).reshape(-1, width).copy(), np.array(recs, dtype=np.int64))
            )
            self._pending[kind] = (bytearray(), array("q"))

    def freeze(self, directory: str | None = None) -> None:
        """Compile the added hashes into the lookup structures (≈1.2 s per million PDQ hashes); with
        ``directory``, the index is written there (as by :meth:`save`) and its PDQ tables loaded back."""
        if self._pending is None:
            return
        entries: Entries = {}
        pdq_parts: list[tuple[np.ndarray, np.ndarray]] = []
        for kind in KINDS:
            self._flush(kind)
            if kind == "pdq" and directory is not None:  # written to the files chunk by chunk, never joined
                pdq_parts = [p for p in self._chunks[kind] if len(p[1])]
                entries[kind] = empty(kind)
            else:
                entries[kind] = concat(self._chunks[kind], kind)
            self._chunks[kind].clear()
        self._pending = None
        self._set_base(entries, directory, pdq_parts)

    def _set_base(
        self, entries: Entries, directory: str | None, pdq_parts: list[tuple[np.ndarray, np.ndarray]] | None = None
    ) -> None:
        for kind in EXACT_KINDS:
            if len(entries[kind][1]):
                self._exact[kind] = ExactSet.build(*entries[kind])
        if pdq_parts:
            self._pdq = PdqTables.build([d for d, _ in pdq_parts], [r for _, r in pdq_parts], directory=directory)
        else:
            self._pdq = PdqTables.build(*entries["pdq"], directory=directory)
        self._base_dir = directory
        self._count = sum(len(e[1]) for k, e in entries.items() if k != "pdq") + self._pdq.n
        if directory is not None:
            self.save(directory)  # the exact sets and index.json beside the tables: loadable as it is

    # ---- changes on a frozen index

    def with_changes(
        self,
        added: Iterable[tuple[str, str, int]] = (),
        removed: Iterable[tuple[str, str]] = (),
        *,
        shift: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> ImageHashIndex:
        """A new frozen index: this one without the ``removed`` (kind, hex) hashes (every record of
        each), plus the ``added`` (kind, hex, record) entries. The base tables are shared, not copied.
        ``shift`` replaces the base records' translation (see :meth:`with_array_changes`)."""
        self._check_frozen()
        gone: dict[str, list[bytes]] = {k: [] for k in KINDS}
        for kind, hexhash in removed:
            kind = kind.lower()
            problem = check_hex(kind, hexhash) if kind in HEX_LENGTHS else f"unknown hash kind {kind!r}"
            if problem:
                raise ValueError(problem)
            gone[kind].append(bytes.fromhex(hexhash))
        new = ImageHashIndex()
        for kind, hexhash, rec in added:
            new.add(kind, hexhash, rec)
        for kind in KINDS:
            new._flush(kind)
        fresh = {k: concat(new._chunks[k], k) for k in KINDS}
        dead = {k: digest_rows(k, v) for k, v in gone.items() if v}
        return self.with_array_changes(fresh, dead, shift=shift)

    def with_array_changes(
        self,
        added: Mapping[str, tuple[np.ndarray, np.ndarray]],
        removed: Mapping[str, np.ndarray],
        *,
        shift: tuple[np.ndarray, np.ndarray] | None = None,
        tie_order: Sequence[int] | None = None,
    ) -> ImageHashIndex:
        """:meth:`with_changes` on arrays: ``added`` kind → ((n, bytes) uint8 digests, n records),
        ``removed`` kind → (m, bytes) digests. ``shift`` (sorted record starts, int64 additions) makes a
        base record ``r`` answer as ``r + add[i]`` for ``starts[i] <= r < starts[i + 1]`` (unchanged below
        ``starts[0]``): the base's records follow the lines of a list file that changed around them.

        ``tie_order`` (the records' high 32 bits, i.e. list indices, in the order a full build adds them)
        settles a PDQ tie between a base and an added hash at the same distance as a full build would:
        the earlier (list, line) wins. Without it the base wins ties."""
        self._check_frozen()
        new = ImageHashIndex()
        new._pending = None
        new._exact, new._pdq, new._base_dir = self._exact, self._pdq, self._base_dir
        new._shift = self._shift if shift is None else _check_shift(shift)
        new._tie_order = self._tie_order if tie_order is None else tuple(int(i) for i in tie_order)
        gone = {k: np.asarray(removed.get(k, empty(k)[0]), np.uint8).reshape(-1, HEX_LENGTHS[k] // 2) for k in KINDS}
        new._dead_exact = {
            k: self._dead_exact.get(k, frozenset()) | {row.tobytes() for row in gone[k]} for k in EXACT_KINDS
        }
        new._dead_pdq = self._dead_pdq
        if len(gone["pdq"]) and self._pdq is not None:
            pos = self._pdq.find_exact(np.ascontiguousarray(gone["pdq"]))
            new._dead_pdq = readonly(np.union1d(self._dead_pdq, pos).astype(np.int64))
        merged: Entries = {}
        for kind in KINDS:
            d, r = self._added.get(kind, empty(kind))
            if len(gone[kind]) and len(r):
                keep = ~np.isin(row_keys(d), row_keys(gone[kind]))
                d, r = d[keep], r[keep]
            fd, fr = added.get(kind, empty(kind))
            fresh = (np.asarray(fd, np.uint8).reshape(-1, HEX_LENGTHS[kind] // 2), np.asarray(fr, np.int64))
            merged[kind] = concat([(d, r), fresh], kind)
        new._added = merged
        new._build_delta()
        return new

    def base(self) -> ImageHashIndex:
        """This index without its changes: the shared base alone (no delta, tombstones nor shift)."""
        self._check_frozen()
        new = ImageHashIndex()
        new._pending = None
        new._exact, new._pdq, new._base_dir = self._exact, self._pdq, self._base_dir
        new._added = {k: empty(k) for k in KINDS}
        new._build_delta()
        return new

    def base_entries(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(digests, records) of the base's ``kind`` entries as built (tombstones and shift not applied)."""
        self._check_frozen()
        if kind == "pdq":
            return (self._pdq.all_hashes(), self._pdq.all_records()) if self._pdq else empty(kind)
        table = self._exact.get(kind)
        return table.entries() if table is not None else empty(kind)

    def base_records(self, kind: str, digests: np.ndarray) -> np.ndarray:
        """The records (as built: no shift) of every base entry, tombstoned or not, holding one of
        ``digests``, (m, bytes) uint8: a search per distinct digest, not a pass over the base."""
        self._check_frozen()
        d = np.unique(row_keys(np.asarray(digests, np.uint8))) if len(digests) else np.empty(0, "V1")
        if not len(d):
            return np.empty(0, np.int64)
        rows = np.frombuffer(d.tobytes(), np.uint8).reshape(len(d), -1)
        if kind == "pdq":
            if self._pdq is None:
                return np.empty(0, np.int64)
            out: np.ndarray = self._pdq.all_records()[self._pdq.find_exact(rows)]
            return out
        table = self._exact.get(kind)
        if table is None:
            return np.empty(0, np.int64)
        found: np.ndarray = np.asarray(table.records)[table.positions(r.tobytes() for r in rows)]
        return found

    def _shifted(self, records: np.ndarray) -> np.ndarray:
        """Base records as they answer (the ``shift`` applied)."""
        if self._shift is None or not len(records):
            return records
        starts, add = self._shift
        i = np.searchsorted(starts, records, side="right") - 1
        return np.where(i >= 0, records + add[np.maximum(i, 0)], records)

    def _shifted_one(self, record: int) -> int:
        return record if self._shift is None else int(self._shifted(np.array([record], np.int64))[0])

    def _build_delta(self) -> None:
        self._exact_delta = {k: ExactSet.build(*self._added[k]) for k in EXACT_KINDS if len(self._added[k][1])}
        d, r = self._added["pdq"]
        self._pdq_delta = PdqTables.build(d, r) if len(r) else None
        base = sum(len(t.keys) for t in self._exact.values()) + (self._pdq.n if self._pdq else 0)
        dead = sum(self._dead_count(k) for k in KINDS)
        self._count = base - dead + sum(len(v[1]) for v in self._added.values())

    def _dead_count(self, kind: str) -> int:
        if kind == "pdq":
            return len(self._dead_pdq)
        table, dead = self._exact.get(kind), self._dead_exact.get(kind)
        if table is None or not dead:
            return 0
        return len(table.positions(dead))

    def live_entries(self) -> Entries:
        """Every live entry per kind, (digests, records) in lookup order: base minus tombstones, then delta."""
        self._check_frozen()
        out: Entries = {}
        for kind in KINDS:
            if kind == "pdq":
                base = empty(kind)
                if self._pdq is not None:
                    keep = np.ones(self._pdq.n, bool)
                    keep[self._dead_pdq] = False
                    base = (self._pdq.all_hashes()[keep], self._pdq.all_records()[keep])
                base = (base[0], self._shifted(base[1]))
            else:
                table = self._exact.get(kind)
                base = table.entries() if table is not None else empty(kind)
                dead = self._dead_exact.get(kind)
                if dead and table is not None:
                    keep = np.ones(len(base[1]), bool)
                    keep[table.positions(dead)] = False
                    base = (base[0][keep], base[1][keep])
                base = (base[0], self._shifted(base[1]))
            out[kind] = concat([base, self._added.get(kind, empty(kind))], kind)
        return out

    def compacted(self, directory: str | None = None) -> ImageHashIndex:
        """A new index whose base holds every live entry (no delta, no tombstones), same answers; slow
        (a full build): run it off the serving path, then swap the reference in."""
        new = ImageHashIndex()
        new._pending = None
        new._set_base(self.live_entries(), directory)
        return new

    @property
    def pending_changes(self) -> int:
        """Entries in the delta plus tombstoned base positions: when to compact."""
        return (
            sum(len(v[1]) for v in self._added.values())
            + len(self._dead_pdq)
            + sum(len(v) for v in self._dead_exact.values())
        )

    # ---- files

    def save(self, directory: str) -> None:
        """Write the index into ``directory`` (created): the base tables (hard links to the files of a
        base loaded from another folder, when possible), the exact sets, the delta and the tombstones."""
        self._check_frozen()
        os.makedirs(directory, exist_ok=True)
        if self._pdq is not None:
            _save_pdq_base(self._pdq, self._base_dir, directory)
        for kind, table in self._exact.items():
            for part in _EXACT_PARTS:
                name = f"{kind}.{part}.npy"
                if not _link(self._base_dir, directory, name):
                    np.save(os.path.join(directory, name), np.asarray(getattr(table, part)))
        for kind, (d, r) in self._added.items():
            if len(r):
                np.save(os.path.join(directory, f"delta.{kind}.digests.npy"), d)
                np.save(os.path.join(directory, f"delta.{kind}.records.npy"), r)
        np.save(os.path.join(directory, "dead.pdq.npy"), self._dead_pdq)
        dead = {k: sorted(v.hex() for v in s) for k, s in self._dead_exact.items() if s}
        meta = {"format": _INDEX_FORMAT, "exact": sorted(self._exact), "dead": dead}
        if self._shift is not None or self._tie_order is not None:  # format 2: unknown to format-1 readers
            meta["format"] = _INDEX_FORMAT_SHIFT
            meta["tie_order"] = list(self._tie_order) if self._tie_order is not None else None
        if self._shift is not None:
            np.save(os.path.join(directory, "shift.starts.npy"), self._shift[0])
            np.save(os.path.join(directory, "shift.add.npy"), self._shift[1])
        with open(os.path.join(directory, "index.json"), "w") as f:
            json.dump(meta, f)

    @classmethod
    def load(cls, directory: str) -> ImageHashIndex:
        """Open an index written by :meth:`save` (or by :meth:`freeze` with a folder) read-only."""
        with open(os.path.join(directory, "index.json")) as f:
            meta = json.load(f)
        if meta.get("format") not in (_INDEX_FORMAT, _INDEX_FORMAT_SHIFT):
            raise ValueError(f"{directory}: image index format {meta.get('format')} (expected {_INDEX_FORMAT})")
        ix = cls()
        ix._pending = None
        ix._pdq = PdqTables.load(directory)
        ix._base_dir = directory
        for kind in meta["exact"]:
            paths = tuple(os.path.join(directory, f"{kind}.{p}.npy") for p in _EXACT_PARTS)
            ix._exact[kind] = ExactSet.load(paths)  # type: ignore[arg-type]
        ix._dead_pdq = np.load(os.path.join(directory, "dead.pdq.npy"))
        if meta.get("tie_order") is not None:
            ix._tie_order = tuple(meta["tie_order"])
        if os.path.exists(os.path.join(directory, "shift.starts.npy")):
            ix._shift = (
                np.load(os.path.join(directory, "shift.starts.npy")),
                np.load(os.path.join(directory, "shift.add.npy")),
            )
        ix._dead_exact = {k: frozenset(bytes.fromhex(h) for h in v) for k, v in meta["dead"].items()}
        for kind in KINDS:
            path = os.path.join(directory, f"delta.{kind}.digests.npy")
            ix._added[kind] = (
                (np.load(path), np.load(os.path.join(directory, f"delta.{kind}.records.npy")))
                if os.path.exists(path)
                else empty(kind)
            )
        ix._build_delta()
        return ix

    # ---- queries

    def match(
        self, h: ImageHashes, *, max_distance: int = DEFAULT_MAX_DISTANCE, min_quality: int = DEFAULT_MIN_QUALITY
    ) -> ImageMatch | None:
        """Exact hashes first, then PDQ over all 8 dihedral variants (only if quality >= ``min_quality``)."""
        self._check_frozen()
        for kind in EXACT_KINDS:
            rec = self._exact_get(kind, bytes.fromhex(getattr(h, kind)))
            if rec is not None:
                return ImageMatch(kind, 0, rec)
        if h.pdq is None or (self._pdq is None and self._pdq_delta is None):
            return None
        if h.quality is None or h.quality < min_quality:
            return None
        variants = h.pdq_dihedral or (h.pdq,)
        queries = np.frombuffer(bytes.fromhex("".join(variants)), dtype=np.uint8).reshape(-1, PDQ_BYTES)
        found = self._pdq_search(queries, max_distance)
        if found is None:
            return None
        dist, rec, row = found
        name = DIHEDRAL_NAMES[row] if len(variants) == len(DIHEDRAL_NAMES) else None
        return ImageMatch("pdq", dist, rec, name)

    def nearest(
        self, pdq_hex_or_bytes: str | bytes, max_distance: int = DEFAULT_MAX_DISTANCE
    ) -> tuple[int, int] | None:
        """(distance, record) of the closest PDQ hash within ``max_distance`` of one hash, or None."""
        self._check_frozen()
        query = np.frombuffer(pdq_bytes(pdq_hex_or_bytes), dtype=np.uint8).reshape(1, PDQ_BYTES)
        found = self._pdq_search(query, max_distance)
        return None if found is None else (found[0], found[1])

    def _exact_get(self, kind: str, digest: bytes) -> int | None:
        table = self._exact.get(kind)
        dead = self._dead_exact.get(kind)
        if table is not None and not (dead and digest in dead):
            rec = table.get(digest)
            if rec is not None:
                return self._shifted_one(rec)
        delta = self._exact_delta.get(kind)
        return delta.get(digest) if delta is not None else None

    def _pdq_search(self, queries: np.ndarray, max_distance: int) -> tuple[int, int, int] | None:
        """(distance, record, query row) of the nearest live PDQ hash; base wins ties (added first)."""
        best: tuple[int, int, int] | None = None
        if self._pdq is not None:
            found = self._pdq.search(queries, max_distance, self._dead_pdq)
            if found is not None:
                best = (found[0], self._shifted_one(self._pdq.record(found[1])), found[2])
        if self._pdq_delta is not None:
            ties = self._tie_order is not None
            found = self._pdq_delta.search(queries, best[0] - (not ties) if best else max_distance)
            if found is not None:
                added = (found[0], self._pdq_delta.record(found[1]), found[2])
                if best is None or added[0] < best[0] or self._added_first(added[1], best[1]):
                    best = added
        return best

    def _added_first(self, added: int, base: int) -> bool:
        """Whether an added record comes before a base one in the full build's order (``tie_order``)."""
        order = self._tie_order
        if order is None or (added >> 32) not in order or (base >> 32) not in order:
            return False
        a, b = order.index(added >> 32), order.index(base >> 32)
        return (a, added & 0xFFFFFFFF) < (b, base & 0xFFFFFFFF)

    def _check_frozen(self) -> None:
        if self._pending is not None:
            raise RuntimeError("ImageHashIndex.freeze() must be called before lookups")

    def __len__(self) -> int:
        return self._count

    def stats(self) -> dict[str, int | float]:
        """Live entries per kind, total bytes, bytes per PDQ hash and pending changes (logs, the bench)."""
        out: dict[str, int | float] = {k: 0 for k in KINDS}
        total = 0
        for kind, t in self._exact.items():
            out[kind] = len(t.keys) - self._dead_count(kind)
            total += t.nbytes
        for kind, t in self._exact_delta.items():
            out[kind] += len(t.keys)
            total += t.nbytes
        n_pdq = 0
        for tables in (self._pdq, self._pdq_delta):
            if tables is not None:
                n_pdq += tables.n
                total += tables.nbytes
        out["pdq"] = n_pdq - len(self._dead_pdq)
        out["pdq_bytes_per_hash"] = round(total / n_pdq, 1) if n_pdq else 0.0
        out["bytes"] = total
        out["pending_changes"] = self.pending_changes
        return out


_EXACT_PARTS = ("keys", "digests", "records")


def _check_shift(shift: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    starts, add = (readonly(np.asarray(a, dtype=np.int64)) for a in shift)
    if starts.shape != add.shape or starts.ndim != 1 or (len(starts) > 1 and (np.diff(starts) <= 0).any()):
        raise ValueError("shift: expected two int64 arrays of one length, starts strictly increasing")
    return (starts, add) if len(starts) else None


def _link(base_dir: str | None, directory: str, name: str) -> bool:
    """Hard-link a base file of ``base_dir`` into ``directory`` (True), unless it is the same folder, has
    no such file or is on another file system (False: the caller writes it)."""
    if base_dir is None or os.path.realpath(base_dir) == os.path.realpath(directory):
        return False
    try:
        os.link(os.path.join(base_dir, name), os.path.join(directory, name))
    except OSError:
        return False
    return True


def _save_pdq_base(tables: PdqTables, base_dir: str | None, directory: str) -> None:
    """The base's ``pdq.*.npy`` files in ``directory``: hard links when loaded from another folder (no
    copy; the page cache stays shared), otherwise written."""
    if base_dir is not None and os.path.realpath(base_dir) == os.path.realpath(directory):
        return
    names = [n for n in os.listdir(base_dir) if n.startswith("pdq.")] if base_dir is not None else []
    try:
        for name in names:
            os.link(os.path.join(base_dir, name), os.path.join(directory, name))  # type: ignore[arg-type]
        if names:
            return
    except OSError:  # another file system: write them instead
        pass
    tables.save(directory)
