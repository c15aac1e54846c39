"""Exact PDQ near-neighbour tables (multi-index hashing), built in memory or into files read on demand.

:class:`PdqTables` answers "every stored hash within distance d of these queries" without ever missing
one (the scheme is in its docstring). Saved as plain ``.npy`` files, the big arrays of a loaded index
are read with ``pread`` through the page cache, a few bucket and hash rows per query, and never mapped:
every proxy worker reading the same folder shares those page-cache pages, and a worker's RSS stays
its own few tens of MB. Mapping them instead costs a process the whole index within a few pictures,
since the kernel maps a file's page cache in whole large folios (``docs/decisions/imagehash-pdq-index.md``).
Needs numpy >= 2 (``np.bitwise_count``); older numpy falls back to a lookup table, several times slower.
"""

from __future__ import annotations

import errno
import itertools
import os
import weakref
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
_FILES = ("hashes", "records", "entries", "offsets")
_SEARCH_BLOCK = 512  # the elements a binary search over a file reads at once, when that close
_ENTRY = 6  # bytes per table entry: the companion half (uint16, little-endian), then the hash number (uint32)


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
    """A saved ``.npy`` file, memory-mapped read-only (small ones, which may be empty, read instead): for
    whole-array work, or as the :class:`Rows` of a file whose pages a query never touches through it."""
    if os.path.getsize(path) <= 4096:
        a: np.ndarray = np.load(path)
        return readonly(a)
    mapped: np.ndarray = np.load(path, mmap_mode="r")
    return mapped


def span_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions ``starts[i] .. starts[i] + lengths[i] - 1`` of every span, concatenated (a gather
    index for many variable-length spans at once)."""
    cum = np.cumsum(lengths)
    total = int(cum[-1]) if len(cum) else 0
    out: np.ndarray = np.repeat(starts - (cum - lengths), lengths) + np.arange(total)
    return out


class Rows:
    """An array read by rows: from memory, or with ``pread`` from its ``.npy`` file.

    ``array`` stays available for whole-array work (a read-only map for a file: building a changed index
    reads it all once, off the serving path); queries use :meth:`spans` and :meth:`take`, which read only
    the rows asked for and keep them out of the process's mappings.
    """

    __slots__ = ("array", "_row_bytes", "_fd", "_offset", "_path", "__weakref__")

    def __init__(self, array: np.ndarray, path: str | None = None) -> None:
        self.array = array
        self._row_bytes = array.itemsize * int(np.prod(array.shape[1:]))
        self._fd: int | None = None
        self._offset = 0
        self._path = path
        if path is not None and isinstance(array, np.memmap):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead: a query reads scattered rows
            self._fd, self._offset = fd, int(array.offset)
            weakref.finalize(self, os.close, fd)

    @classmethod
    def open(cls, path: str) -> Rows:
        """A saved ``.npy`` file, read by rows (a small one is simply read: see :func:`map_npy`)."""
        return cls(map_npy(path), path)

    def __len__(self) -> int:
        return len(self.array)

    def spans(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Rows ``[starts[i], ends[i])`` concatenated; spans sorted by start (touching spans are read in
        one call; a span given twice is read twice)."""
        a = self.array
        if not len(starts):
            return np.empty((0, *a.shape[1:]), a.dtype)
        if self._fd is None:
            out: np.ndarray = a[span_positions(starts, ends - starts)]
            return out
        cut = np.flatnonzero(starts[1:] != ends[:-1]) + 1
        first = np.concatenate(([0], cut))
        last = np.concatenate((cut - 1, [len(starts) - 1]))
        w, fd, base, pread = self._row_bytes, self._fd, self._offset, os.pread
        s0, e0 = starts[first], ends[last]
        data = b"".join([pread(fd, (e - s) * w, base + s * w) for s, e in zip(s0.tolist(), e0.tolist(), strict=True)])
        if len(data) != int((e0 - s0).sum()) * w:  # a file cut short under us: say so, never misread
            raise OSError(errno.EIO, f"{self._path}: file shorter than its header says (read {len(data)} bytes)")
        return np.frombuffer(data, a.dtype).reshape(-1, *a.shape[1:])

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows at sorted, distinct positions ``rows``."""
        if self._fd is None:
            out: np.ndarray = self.array[rows]
            return out
        return self.spans(rows, rows + 1)

    def searchsorted(self, value: np.generic) -> int:
        """Position of the first element >= ``value`` of a sorted 1-D array: a binary search reading one
        element a step, then the last 512 at once (``np.searchsorted`` on a map would map them all in)."""
        if self._fd is None:
            return int(np.searchsorted(self.array, value))
        lo, hi = 0, len(self.array)
        while hi - lo > _SEARCH_BLOCK:
            mid = (lo + hi) // 2
            if self.at(mid) < value:
                lo = mid + 1
            else:
                hi = mid
        return lo + int(np.searchsorted(self.spans(np.array([lo]), np.array([hi])), value))

    def at(self, i: int) -> np.ndarray:
        """Row ``i`` (one element of a 1-D array)."""
        out: np.ndarray = self.take(np.array([i]))[0]
        return out


def as_rows(a: Rows | np.ndarray) -> Rows:
    return a if isinstance(a, Rows) else Rows(a)


def _rows(directory: str, name: str) -> Rows | None:
    path = os.path.join(directory, f"pdq.{name}.npy")
    return Rows.open(path) if os.path.exists(path) else None


class _NpyWriter:
    """A ``.npy`` file written front to back with plain writes (a 10M-hash build never maps, nor holds,
    its 1.3 GB of tables at once)."""

    def __init__(self, path: str, shape: tuple[int, ...], dtype: type) -> None:
        self.f = open(path, "wb")  # noqa: SIM115 - closed by close()
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_2_0(self.f, header)

    def write(self, a: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(a).data)

    def close(self) -> None:
        self.f.close()


def _parts(a: np.ndarray | list[np.ndarray]) -> list[np.ndarray]:
    return a if isinstance(a, list) else [a]


def _entries(companion: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(len, 6) uint8 table entries: companion half, then hash number, little-endian."""
    e = np.empty((len(ids), _ENTRY), np.uint8)
    e[:, :2] = companion.astype("<u2").view(np.uint8).reshape(-1, 2)
    e[:, 2:] = ids.astype("<u4").view(np.uint8).reshape(-1, 4)
    return e


class PdqTables:
    """Exact Hamming-radius search over packed PDQ hashes (multi-index hashing, never misses a match).

    * the 256 bits are 8 words of 32 bits; if the distance is <= d, some word differs in at most
      R = d // 8 bits (pigeonhole), and within that word one 16-bit half differs in at most r = R // 2
      bits while its companion half differs in at most R minus that;
    * so there are 16 tables, one per 16-bit half, each sorted by that half: bucket offsets, and per
      entry the companion half and the hash number, side by side (one read per bucket). A query
      enumerates the half's values within r bits (17 probes for d = 31), reads those buckets, keeps the
      entries whose companion half is close enough (a few hundred per picture), and reads only those
      hashes to check the full distance;
    * d > 63 falls back to a brute-force scan, as do tables smaller than 4096 hashes.

    Files: 32 (hash) + 8 (record) + 16 × 6 (entries) = 136 bytes per hash, plus 4.2 MB of bucket
    offsets (the only array a loaded index holds in memory). Loaded from a folder, the hashes and
    entries are read row by row with ``pread`` (see :class:`Rows`).
    """

    __slots__ = ("hashes", "records", "entries", "offsets", "n")

    def __init__(self, hashes: Rows, records: Rows, entries: Rows | None, offsets: np.ndarray | None) -> None:
        self.n = len(hashes)
        self.hashes = hashes
        self.records = records
        self.entries, self.offsets = entries, offsets

    @classmethod
    def build(
        cls,
        hashes: np.ndarray | list[np.ndarray],
        records: np.ndarray | list[np.ndarray],
        directory: str | None = None,
    ) -> PdqTables:
        """Tables over (n, 32) uint8 ``hashes`` (or a list of such chunks, in order); written into
        ``directory`` and loaded back when given: chunks are then written as they are, and a table needs
        only its own two columns at a time (a 10M build never holds the hashes twice)."""
        h_parts = [np.ascontiguousarray(h, dtype=np.uint8).reshape(-1, PDQ_BYTES) for h in _parts(hashes)]
        r_parts = [np.ascontiguousarray(r, dtype=np.int64).reshape(-1) for r in _parts(records)]
        n = sum(len(h) for h in h_parts)
        if n >= 2**32:
            raise ValueError(f"{n} PDQ hashes: at most 2**32 - 1 per index")
        if directory is None and len(h_parts) != 1:
            h_parts = [np.concatenate(h_parts) if h_parts else np.empty((0, PDQ_BYTES), np.uint8)]
            r_parts = [np.concatenate(r_parts) if r_parts else np.empty(0, np.int64)]
        if directory is not None:
            os.makedirs(directory, exist_ok=True)
            for name, parts, shape in (("hashes", h_parts, (n, PDQ_BYTES)), ("records", r_parts, (n,))):
                w = _NpyWriter(
                    os.path.join(directory, f"pdq.{name}.npy"), shape, np.uint8 if name == "hashes" else np.int64
                )
                for part in parts:
                    w.write(part)
                w.close()
        entries: np.ndarray | None = None
        offsets: np.ndarray | None = None
        if n >= MIH_MIN_SIZE:

            def column(c: int) -> np.ndarray:  # half c of every hash, contiguous (bincount, argsort read it faster)
                return np.concatenate([h.view(np.uint16)[:, c] for h in h_parts])

            off_type = np.uint32 if _N_HALVES * n < 2**32 else np.int64
            offsets = np.empty(_N_HALVES * (_BUCKETS + 1), off_type)
            writer = None
            if directory is None:
                entries = np.empty((_N_HALVES * n, _ENTRY), np.uint8)
            else:
                writer = _NpyWriter(os.path.join(directory, "pdq.entries.npy"), (_N_HALVES * n, _ENTRY), np.uint8)
            for c in range(_N_HALVES):
                col = column(c)
                order = np.argsort(col, kind="stable")  # radix sort for 16-bit keys; stable keeps positions in order
                table = _entries(column(int(_COMPANION[c]))[order], order)
                if writer is not None:
                    writer.write(table)
                else:
                    assert entries is not None
                    entries[c * n : (c + 1) * n] = table
                o = offsets[c * (_BUCKETS + 1) : (c + 1) * (_BUCKETS + 1)]
                o[0] = c * n  # global positions in the flattened (16*n) entries
                o[1:] = np.cumsum(np.bincount(col, minlength=_BUCKETS)) + c * n
                del order, table
            if writer is not None:
                writer.close()
                np.save(os.path.join(directory, "pdq.offsets.npy"), offsets)  # type: ignore[arg-type]
        if directory is not None:
            return cls.load(directory)
        return cls(
            Rows(readonly(h_parts[0])),
            Rows(readonly(r_parts[0])),
            Rows(readonly(entries)) if entries is not None else None,
            readonly(offsets) if offsets is not None else None,
        )

    @classmethod
    def load(cls, directory: str) -> PdqTables:
        """Tables saved by :meth:`build` or :meth:`save`: the bucket offsets read, the hashes, records
        and entries opened for reads of the rows a query needs."""
        hashes, records = _rows(directory, "hashes"), _rows(directory, "records")
        if hashes is None or records is None:
            raise FileNotFoundError(os.path.join(directory, "pdq.hashes.npy"))
        offsets_path = os.path.join(directory, "pdq.offsets.npy")
        offsets = readonly(np.load(offsets_path)) if os.path.exists(offsets_path) else None
        entries = _rows(directory, "entries")
        if len(hashes) >= MIH_MIN_SIZE and (entries is None or offsets is None):
            raise ValueError(f"{directory}: PDQ tables missing (pdq.entries.npy, pdq.offsets.npy)")
        return cls(hashes, records, entries, offsets)

    def save(self, directory: str) -> None:
        """Write the tables as ``pdq.*.npy`` files in ``directory`` (what :meth:`load` reads)."""
        for name in _FILES:
            a = getattr(self, name)
            if a is not None:
                np.save(os.path.join(directory, f"pdq.{name}.npy"), a.array if isinstance(a, Rows) else a)

    @property
    def nbytes(self) -> int:
        parts = (self.hashes.array, self.records.array, self.entries.array if self.entries else None, self.offsets)
        return sum(p.nbytes for p in parts if p is not None)

    def all_hashes(self) -> np.ndarray:
        """Every hash, (n, 32) uint8, in position order (whole-array work: reads the file once)."""
        return np.asarray(self.hashes.array)

    def all_records(self) -> np.ndarray:
        """Every record, (n,) int64, in position order."""
        return np.asarray(self.records.array)

    def record(self, position: int) -> int:
        """The record of one position (one row read)."""
        return int(self.records.at(position))

    def hits(self, queries: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (distance, position, query row) with distance <= ``max_distance``; a position may repeat
        (found through several tables)."""
        if self.n == 0 or max_distance < 0:
            return _EMPTY_HITS
        if self.entries is None or max_distance > _MIH_MAX_DISTANCE:
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
        if self.entries is None or self.offsets is None:
            return np.unique(self._scan(queries, 0)[1])
        offsets = self.offsets
        q_halves = queries.view(np.uint16)  # (nq, 16)
        keys = q_halves.astype(np.int64) + _TABLE_BASE
        sizes = offsets[keys + 1].astype(np.int64) - offsets[keys].astype(np.int64)
        table = np.argmin(sizes, axis=1)
        rows = np.arange(len(queries))
        want = q_halves[rows, _COMPANION[table]]
        ids, qrow = self._candidates(keys[rows, table], want, np.zeros(len(rows), np.int16), rows)
        words, inv = self._words(ids)
        equal = (words[inv] == queries.view(np.uint64)[qrow]).all(axis=1)
        return np.unique(ids[equal])

    def _candidates(
        self, keys: np.ndarray, want: np.ndarray, allowed: np.ndarray, qrow: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(hash number, query row) of every entry of bucket ``keys[i]`` whose companion half is within
        ``allowed[i]`` bits of ``want[i]``: the buckets read in file order."""
        offsets = self.offsets
        assert offsets is not None and self.entries is not None
        starts = offsets[keys].astype(np.int64)
        lengths = offsets[keys + 1].astype(np.int64) - starts
        live = np.flatnonzero(lengths)
        order = live[np.argsort(keys[live], kind="stable")]  # by key = by position in the file
        if len(order) == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        # a bucket two query rows both probe is read twice (cheaper than taking the repeats out)
        raw = self.entries.spans(starts[order], (starts + lengths)[order])
        halves = raw.view("<u2")  # (rows, 3): the companion half, then the hash number's low and high halves
        companion = halves[:, 0]
        lengths = lengths[order]
        cum = np.cumsum(lengths)
        near = popcount(companion ^ np.repeat(want[order], lengths)) <= np.repeat(allowed[order], lengths)
        ok = np.flatnonzero(near)
        ids = halves[ok, 1].astype(np.int64) | (halves[ok, 2].astype(np.int64) << 16)
        return ids, qrow[order][np.searchsorted(cum, ok, side="right")]

    def _words(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The hashes of ``ids`` as (k, 4) uint64 rows, each distinct hash read once, and the index of
        each id's row."""
        unique, inverse = np.unique(ids, return_inverse=True)
        words = np.ascontiguousarray(self.hashes.take(unique)).view(np.uint64).reshape(len(unique), 4)
        return words, inverse

    def _scan(self, queries: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        block = 1 << 18  # bound the temporaries on big tables
        q_words = queries.view(np.uint64)
        for start in range(0, self.n, block):
            end = min(self.n, start + block)
            words = np.ascontiguousarray(self.hashes.spans(np.array([start]), np.array([end]))).view(np.uint64)
            for qi, q in enumerate(q_words):
                d = popcount(words ^ q).sum(axis=1, dtype=np.int32)
                k = np.flatnonzero(d <= max_distance)
                if len(k):
                    out.append((d[k], k + start, np.full(len(k), qi, np.int64)))
        if not out:
            return _EMPTY_HITS
        dist, pos, qrow = (np.concatenate(c) for c in zip(*out, strict=True))
        return dist, pos, qrow

    def _probe(self, queries: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The measured hot loop: every probed bucket of every query row read and filtered at once."""
        nq = len(queries)
        word_radius = max_distance // 8
        half_radius = word_radius // 2
        masks = _PROBE_MASKS[half_radius]
        budget = (word_radius - _PROBE_WEIGHTS[half_radius]).astype(np.int16)  # allowed companion distance
        n_probe = len(masks)
        q_halves = queries.view(np.uint16)  # (nq, 16)
        keys = ((q_halves[:, :, None] ^ masks).astype(np.int64) + _TABLE_BASE[:, None]).ravel()
        want = np.broadcast_to(q_halves[:, _COMPANION, None], (nq, _N_HALVES, n_probe)).ravel()
        allowed = np.broadcast_to(budget, (nq, _N_HALVES, n_probe)).ravel()
        qrow = np.repeat(np.arange(nq), _N_HALVES * n_probe)
        ids, qrow = self._candidates(keys, want, allowed, qrow)
        if len(ids) == 0:
            return _EMPTY_HITS
        words, inverse = self._words(ids)
        dist = popcount(words[inverse] ^ queries.view(np.uint64)[qrow]).sum(axis=1, dtype=np.int32)
        hit = np.flatnonzero(dist <= max_distance)
        return dist[hit], ids[hit], qrow[hit]
