"""Exact PDQ near-neighbour tables (multi-index hashing), built in memory or into memory-mapped files.

:class:`PdqTables` answers "every stored hash within distance d of these queries" without ever missing
one (the scheme is in its docstring). Saved as plain ``.npy`` files and opened with
``np.load(mmap_mode="r")``, the tables of ten million hashes cost a process only the pages its queries
touch, and every proxy worker mapping the same folder shares those pages through the page cache.
Needs numpy >= 2 (``np.bitwise_count``); older numpy falls back to a lookup table, several times slower.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

import numpy as np

PDQ_BYTES = 32
_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount_table(a: np.ndarray) -> np.ndarray:
    """Bits set per element, for numpy 1.x (no ``np.bitwise_count``)."""
    a = np.ascontiguousarray(a)
    counts: np.ndarray = _POP8[a.view(np.uint8)].reshape(*a.shape, a.itemsize).sum(axis=-1, dtype=np.uint8)
    return counts


popcount: Callable[[np.ndarray], np.ndarray] = getattr(np, "bitwise_count", _popcount_table)

_N_HALVES = 16  # 16-bit halves of the 8 32-bit words
_BUCKETS = 1 << 16
MIH_MIN_SIZE = 4096  # below this a brute-force scan is as fast and needs no tables
_MIH_MAX_DISTANCE = 63  # R = 7, r = 3: 697 probes per table; above that scan everything
_FILES = ("hashes", "records", "perm", "companion", "offsets")


def _masks(radius: int) -> np.ndarray:
    out = [0]
    for k in range(1, radius + 1):
        out.extend(sum(1 << b for b in bits) for bits in itertools.combinations(range(16), k))
    return np.array(out, dtype=np.uint16)


_PROBE_MASKS = tuple(_masks(r) for r in range(4))
_PROBE_WEIGHTS = tuple(popcount(m).astype(np.int16) for m in _PROBE_MASKS)
_COMPANION = np.arange(_N_HALVES) ^ 1  # halves 2w and 2w+1 form word w
_TABLE_BASE = np.arange(_N_HALVES, dtype=np.int64) * (_BUCKETS + 1)
_EMPTY_HITS = (np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.int64))


def readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def map_npy(path: str) -> np.ndarray:
    """A saved ``.npy`` file, memory-mapped read-only (small ones, which may be empty, read instead)."""
    if os.path.getsize(path) <= 4096:
        a: np.ndarray = np.load(path)
        return readonly(a)
    mapped: np.ndarray = np.load(path, mmap_mode="r")
    return mapped


def _array(directory: str | None, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """A new array: in memory, or a ``.npy`` file in ``directory`` being written (built in place, so a
    10M-hash build never holds the tables twice)."""
    if directory is None or 0 in shape:  # an empty file cannot be mapped: np.save writes it at the end
        return np.empty(shape, dtype=dtype)
    path = os.path.join(directory, f"pdq.{name}.npy")
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


class PdqTables:
    """Exact Hamming-radius search over packed PDQ hashes (multi-index hashing, never misses a match).

    * the 256 bits are 8 words of 32 bits; if the distance is <= d, some word differs in at most
      R = d // 8 bits (pigeonhole), and within that word one 16-bit half differs in at most r = R // 2
      bits while its companion half differs in at most R minus that;
    * so there are 16 tables, one per 16-bit half, each sorted by that half (bucket offsets, the
      companion half, and the hash number in that order). A query enumerates the half's values within
      r bits (17 probes for d = 31), filters every bucket entry by its companion half in one vectorised
      step (which drops most candidates, reading each bucket contiguously), and checks the few
      survivors against the full hashes;
    * d > 63 falls back to a vectorised brute-force scan, as do tables smaller than 4096 hashes.

    Memory: 32 (hash) + 16 × (2 + 4) (companion + hash number) + 8 (record) = 136 bytes per hash,
    plus 4.2 MB of bucket offsets; memory-mapped, a process holds only the pages it touched.
    """

    __slots__ = ("hashes", "words", "records", "perm", "companion", "offsets", "n")

    def __init__(
        self,
        hashes: np.ndarray,
        records: np.ndarray,
        perm: np.ndarray | None = None,
        companion: np.ndarray | None = None,
        offsets: np.ndarray | None = None,
    ) -> None:
        self.n = len(hashes)
        self.hashes = hashes
        self.words = hashes.view(np.uint64)  # (n, 4), for the final distance
        self.records = records
        self.perm, self.companion, self.offsets = perm, companion, offsets

    @classmethod
    def build(cls, hashes: np.ndarray, records: np.ndarray, directory: str | None = None) -> PdqTables:
        """Tables over (n, 32) uint8 ``hashes``; written into ``directory`` and mapped back when given."""
        n = len(hashes)
        if directory is not None:
            os.makedirs(directory, exist_ok=True)
        h = _array(directory, "hashes", (n, PDQ_BYTES), np.uint8)
        h[:] = hashes
        r = _array(directory, "records", (n,), np.int64)
        r[:] = records
        parts: dict[str, np.ndarray] = {"hashes": h, "records": r}
        if n >= MIH_MIN_SIZE:
            halves = np.ascontiguousarray(hashes, dtype=np.uint8).view(np.uint16)  # (n, 16), native order
            id_type = np.uint32 if n < 2**32 else np.uint64
            perm = parts["perm"] = _array(directory, "perm", (_N_HALVES * n,), id_type)
            companion = parts["companion"] = _array(directory, "companion", (_N_HALVES * n,), np.uint16)
            off_type = np.uint32 if _N_HALVES * n < 2**32 else np.int64
            offsets = parts["offsets"] = _array(directory, "offsets", (_N_HALVES * (_BUCKETS + 1),), off_type)
            for c in range(_N_HALVES):
                col = np.ascontiguousarray(halves[:, c])  # bincount and argsort read it faster than strided
                order = np.argsort(col, kind="stable")  # radix sort for 16-bit keys; stable keeps positions in order
                perm[c * n : (c + 1) * n] = order
                companion[c * n : (c + 1) * n] = np.ascontiguousarray(halves[:, _COMPANION[c]])[order]  # 20 MB, not 320
                o = offsets[c * (_BUCKETS + 1) : (c + 1) * (_BUCKETS + 1)]
                o[0] = c * n  # global positions in the flattened (16*n) arrays
                o[1:] = np.cumsum(np.bincount(col, minlength=_BUCKETS)) + c * n
                del order
        if directory is None:
            return cls(*(readonly(parts[k]) if k in parts else None for k in _FILES))  # type: ignore[arg-type]
        for name, a in parts.items():
            if isinstance(a, np.memmap):
                a.flush()
            else:
                np.save(os.path.join(directory, f"pdq.{name}.npy"), a)
        del parts, h, r
        return cls.load(directory)

    @classmethod
    def load(cls, directory: str) -> PdqTables:
        """Map tables saved by :meth:`build` read-only (``np.load(mmap_mode="r")``)."""
        arrays: list[np.ndarray | None] = []
        for name in _FILES:
            path = os.path.join(directory, f"pdq.{name}.npy")
            arrays.append(map_npy(path) if os.path.exists(path) else None)
        hashes, records, perm, companion, offsets = arrays
        if hashes is None or records is None:
            raise FileNotFoundError(os.path.join(directory, "pdq.hashes.npy"))
        return cls(hashes, records, perm, companion, offsets)

    def save(self, directory: str) -> None:
        """Write the tables as ``pdq.*.npy`` files in ``directory`` (what :meth:`load` maps)."""
        for name in _FILES:
            a = getattr(self, name)
            if a is not None:
                np.save(os.path.join(directory, f"pdq.{name}.npy"), a)

    @property
    def nbytes(self) -> int:
        parts = (self.hashes, self.records, self.perm, self.companion, self.offsets)
        return sum(p.nbytes for p in parts if p is not None)

    def hits(self, queries: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (distance, position, query row) with distance <= ``max_distance``; a position may repeat
        (found through several tables)."""
        if self.n == 0 or max_distance < 0:
            return _EMPTY_HITS
        if self.perm is None or max_distance > _MIH_MAX_DISTANCE:
            return self._scan(queries, max_distance)
        return self._probe(queries, max_distance)

    def search(
        self, queries: np.ndarray, max_distance: int, dead: np.ndarray | None = None
    ) -> tuple[int, int, int] | None:
        """Nearest hash within ``max_distance`` of any query row: (distance, position, query row) or None.

        Positions in the sorted array ``dead`` (tombstones) are skipped. Ties go to the lowest position
        (the first added), then the lowest query row.
        """
        dist, pos, qrow = self.hits(queries, max_distance)
        if dead is not None and len(dead) and len(pos):
            keep = ~np.isin(pos, dead)
            dist, pos, qrow = dist[keep], pos[keep], qrow[keep]
        if len(pos) == 0:
            return None
        k = np.lexsort((qrow, pos, dist))[0]
        return int(dist[k]), int(pos[k]), int(qrow[k])

    def find_exact(self, queries: np.ndarray) -> np.ndarray:
        """Sorted positions of every stored hash equal to one of the query rows. Each query reads only
        its least crowded bucket (near-duplicate families make some buckets big)."""
        if self.n == 0 or len(queries) == 0:
            return np.empty(0, np.int64)
        if self.perm is None:
            return np.unique(self._scan(queries, 0)[1])
        offsets, companion, perm = self.offsets, self.companion, self.perm
        assert offsets is not None and companion is not None and perm is not None
        q_halves = queries.view(np.uint16)  # (nq, 16)
        keys = q_halves.astype(np.int64) + _TABLE_BASE
        sizes = offsets[keys + 1].astype(np.int64) - offsets[keys].astype(np.int64)
        table = np.argmin(sizes, axis=1)
        rows = np.arange(len(queries))
        key = keys[rows, table]
        starts = offsets[key].astype(np.int64)
        lengths = sizes[rows, table]
        total = int(lengths.sum())
        if total == 0:
            return np.empty(0, np.int64)
        ends = np.cumsum(lengths)
        pos = np.repeat(starts - (ends - lengths), lengths) + np.arange(total)
        qrow = np.repeat(rows, lengths)
        same = companion[pos] == q_halves[qrow, _COMPANION[table][qrow]]
        ids = perm[pos[same]].astype(np.int64)
        qrow = qrow[same]
        equal = (self.words[ids] == queries.view(np.uint64)[qrow]).all(axis=1)
        return np.unique(ids[equal])

    def _scan(self, queries: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        block = 1 << 18  # bound the temporaries on big tables
        for qi, q in enumerate(queries.view(np.uint64)):
            for start in range(0, self.n, block):
                d = popcount(self.words[start : start + block] ^ q).sum(axis=1, dtype=np.int32)
                k = np.flatnonzero(d <= max_distance)
                if len(k):
                    out.append((d[k], k + start, np.full(len(k), qi, np.int64)))
        if not out:
            return _EMPTY_HITS
        dist, pos, qrow = (np.concatenate(c) for c in zip(*out, strict=True))
        return dist, pos, qrow

    def _probe(self, queries: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The measured hot loop (one vectorised pass over all probed buckets of all query rows)."""
        offsets, companion, perm = self.offsets, self.companion, self.perm
        assert offsets is not None and companion is not None and perm is not None
        nq = len(queries)
        word_radius = max_distance // 8
        half_radius = word_radius // 2
        masks = _PROBE_MASKS[half_radius]
        budget = (word_radius - _PROBE_WEIGHTS[half_radius]).astype(np.int16)  # allowed companion distance
        n_probe = len(masks)
        q_halves = queries.view(np.uint16)  # (nq, 16)
        keys = ((q_halves[:, :, None] ^ masks).astype(np.int64) + _TABLE_BASE[:, None]).ravel()
        starts = offsets[keys].astype(np.int64)
        lengths = offsets[keys + 1].astype(np.int64) - starts
        nonempty = np.flatnonzero(lengths)
        if len(nonempty) == 0:
            return _EMPTY_HITS
        starts = starts[nonempty]
        lengths = lengths[nonempty]
        total = int(lengths.sum())
        # positions of every entry of every probed bucket, concatenated
        ends = np.cumsum(lengths)
        pos = np.repeat(starts - (ends - lengths), lengths) + np.arange(total)
        want = np.broadcast_to(q_halves[:, _COMPANION, None], (nq, _N_HALVES, n_probe)).ravel()[nonempty]
        allowed = np.broadcast_to(budget, (nq, _N_HALVES, n_probe)).ravel()[nonempty]
        ok = np.flatnonzero(popcount(companion[pos] ^ np.repeat(want, lengths)) <= np.repeat(allowed, lengths))
        if len(ok) == 0:
            return _EMPTY_HITS
        ids = perm[pos[ok]].astype(np.int64)
        qrow = np.repeat(nonempty // (_N_HALVES * n_probe), lengths)[ok]
        dist = popcount(self.words[ids] ^ queries.view(np.uint64)[qrow]).sum(axis=1, dtype=np.int32)
        hit = np.flatnonzero(dist <= max_distance)
        return dist[hit], ids[hit], qrow[hit]
