"""Match index over image hashes: exact MD5/SHA-1/SHA-256 sets and an exact PDQ near-neighbour search.

Built once from the loaded lists, then frozen and shared read-only by all request handlers. Entries
hold numpy arrays only (no Python object per hash), so millions of hashes fit on a small gateway;
each keeps an opaque int record that the caller maps back to (list, item). PDQ search is multi-index
hashing that never misses a hash within the distance (see :class:`_PdqIndex`); why not faiss or a
brute-force scan: docs/decisions/imagehash-pdq-index.md. Needs numpy >= 2 (``np.bitwise_count``);
older numpy falls back to a lookup table, several times slower.
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

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

if TYPE_CHECKING:
    from filterproxy.match.imagehash.hashing import ImageHashes


@dataclass(frozen=True, slots=True)
class ImageMatch:
    """A hit: ``kind`` md5/sha1/sha256/pdq, Hamming ``distance`` (0 for exact), the caller's ``record``,
    and for PDQ which dihedral ``variant`` of the image matched (see :data:`DIHEDRAL_NAMES`)."""

    kind: str
    distance: int
    record: int
    variant: str | None = None


_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount_table(a: np.ndarray) -> np.ndarray:
    """Bits set per element, for numpy 1.x (no ``np.bitwise_count``)."""
    a = np.ascontiguousarray(a)
    counts: np.ndarray = _POP8[a.view(np.uint8)].reshape(*a.shape, a.itemsize).sum(axis=-1, dtype=np.uint8)
    return counts


_popcount: Callable[[np.ndarray], np.ndarray] = getattr(np, "bitwise_count", _popcount_table)


_N_HALVES = 16  # 16-bit halves of the 8 32-bit words
_BUCKETS = 1 << 16
_MIH_MIN_SIZE = 4096  # below this a brute-force scan is as fast and needs no tables
_MIH_MAX_DISTANCE = 63  # R = 7, r = 3: 697 probes per table; above that scan everything


def _masks(radius: int) -> np.ndarray:
    out = [0]
    for k in range(1, radius + 1):
        out.extend(sum(1 << b for b in bits) for bits in itertools.combinations(range(16), k))
    return np.array(out, dtype=np.uint16)


_PROBE_MASKS = tuple(_masks(r) for r in range(4))
_PROBE_WEIGHTS = tuple(_popcount(m).astype(np.int16) for m in _PROBE_MASKS)
_COMPANION = np.arange(_N_HALVES) ^ 1  # halves 2w and 2w+1 form word w
_TABLE_BASE = np.arange(_N_HALVES, dtype=np.int64) * (_BUCKETS + 1)


class _ExactSet:
    """Sorted digests of one length: 8-byte big-endian key, full digest and record, in key order."""

    __slots__ = ("keys", "digests", "records")

    def __init__(self, digests: np.ndarray, records: np.ndarray) -> None:
        keys = digests[:, :8].copy().view(">u8").ravel().astype(np.uint64)
        order = np.argsort(keys, kind="stable")  # stable: the first added record wins on duplicates
        self.keys = _readonly(keys[order])
        self.digests = _readonly(digests[order])
        self.records = _readonly(records[order])

    def get(self, digest: bytes) -> int | None:
        key = np.uint64(int.from_bytes(digest[:8], "big"))  # a numpy scalar: no slow object comparison
        i = int(np.searchsorted(self.keys, key))
        n = len(self.keys)
        while i < n and self.keys[i] == key:
            if self.digests[i].tobytes() == digest:
                return int(self.records[i])
            i += 1
        return None

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.digests.nbytes + self.records.nbytes


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


class _PdqIndex:
    """Exact Hamming-radius search over packed PDQ hashes (multi-index hashing, never misses a match).

    * the 256 bits are 8 words of 32 bits; if the distance is <= d, some word differs in at most
      R = d // 8 bits (pigeonhole), and within that word one 16-bit half differs in at most r = R // 2
      bits while its companion half differs in at most R minus that;
    * so there are 16 tables, one per 16-bit half, each sorted by that half (bucket offsets, the
      companion half, and the hash number in that order). A query enumerates the half's values within
      r bits (17 probes for d = 31), filters every bucket entry by its companion half in one vectorised
      step (which drops most candidates, reading each bucket contiguously), and checks the few
      survivors against the full hashes;
    * d > 63 falls back to a vectorised brute-force scan, as do indexes smaller than 4096 hashes.

    Memory: 32 (hash) + 16 × (2 + 4) (companion + hash number) + 8 (record) = 136 bytes per hash,
    plus 4.2 MB of bucket offsets.
    """

    __slots__ = ("hashes", "words", "records", "perm", "companion", "offsets", "n")

    def __init__(self, hashes: np.ndarray, records: np.ndarray) -> None:
        self.n = n = len(hashes)
        self.hashes = _readonly(np.ascontiguousarray(hashes, dtype=np.uint8))
        self.words = self.hashes.view(np.uint64)  # (n, 4), for the final distance
        self.records = _readonly(records)
        self.perm = self.companion = self.offsets = None
        if n < _MIH_MIN_SIZE:
            return
        halves = self.hashes.view(np.uint16)  # (n, 16); byte order is irrelevant as queries use the same view
        id_type = np.uint32 if n < 2**32 else np.uint64
        perm = np.empty((_N_HALVES, n), dtype=id_type)
        companion = np.empty((_N_HALVES, n), dtype=np.uint16)
        offsets = np.empty((_N_HALVES, _BUCKETS + 1), dtype=np.uint32 if _N_HALVES * n < 2**32 else np.int64)
        for c in range(_N_HALVES):
            col = halves[:, c]
            order = np.argsort(col, kind="stable")  # radix sort for 16-bit keys
            perm[c] = order
            companion[c] = halves[order, _COMPANION[c]]
            offsets[c, 0] = c * n  # global positions in the flattened (16*n) arrays
            offsets[c, 1:] = np.cumsum(np.bincount(col, minlength=_BUCKETS)) + c * n
            del order
        self.perm = _readonly(perm.reshape(-1))
        self.companion = _readonly(companion.reshape(-1))
        self.offsets = _readonly(offsets.reshape(-1))

    @property
    def nbytes(self) -> int:
        parts = (self.hashes, self.records, self.perm, self.companion, self.offsets)
        return sum(p.nbytes for p in parts if p is not None)

    def search(self, queries: np.ndarray, max_distance: int) -> tuple[int, int, int] | None:
        """Nearest hash within ``max_distance`` of any query row: (distance, position, query row) or None.

        Ties go to the lowest position (the first added), then the lowest query row.
        """
        if self.n == 0 or max_distance < 0:
            return None
        if self.perm is None or max_distance > _MIH_MAX_DISTANCE:
            return self._scan(queries, max_distance)
        return self._probe(queries, max_distance)

    def _scan(self, queries: np.ndarray, max_distance: int) -> tuple[int, int, int] | None:
        best: tuple[int, int, int] | None = None
        block = 1 << 18  # bound the temporaries on big indexes
        for qi, q in enumerate(queries.view(np.uint64)):
            for start in range(0, self.n, block):
                d = _popcount(self.words[start : start + block] ^ q).sum(axis=1, dtype=np.int32)
                k = int(np.argmin(d))
                cand = (int(d[k]), start + k, qi)
                if cand[0] <= max_distance and (best is None or cand < best):
                    best = cand
        return best

    def _probe(self, queries: np.ndarray, max_distance: int) -> tuple[int, int, int] | None:
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
            return None
        starts = starts[nonempty]
        lengths = lengths[nonempty]
        total = int(lengths.sum())
        # positions of every entry of every probed bucket, concatenated
        ends = np.cumsum(lengths)
        pos = np.repeat(starts - (ends - lengths), lengths) + np.arange(total)
        want = np.broadcast_to(q_halves[:, _COMPANION, None], (nq, _N_HALVES, n_probe)).ravel()[nonempty]
        allowed = np.broadcast_to(budget, (nq, _N_HALVES, n_probe)).ravel()[nonempty]
        ok = np.flatnonzero(_popcount(companion[pos] ^ np.repeat(want, lengths)) <= np.repeat(allowed, lengths))
        if len(ok) == 0:
            return None
        ids = perm[pos[ok]].astype(np.int64)
        qrow = np.repeat(nonempty // (_N_HALVES * n_probe), lengths)[ok]
        dist = _popcount(self.words[ids] ^ queries.view(np.uint64)[qrow]).sum(axis=1, dtype=np.int32)
        hit = np.flatnonzero(dist <= max_distance)
        if len(hit) == 0:
            return None
        k = hit[np.lexsort((qrow[hit], ids[hit], dist[hit]))[0]]
        return int(dist[k]), int(ids[k]), int(qrow[k])


class ImageHashIndex:
    """Exact (md5/sha1/sha256) sets + PDQ near-neighbour index; each entry keeps only an opaque record.

    Build with :meth:`add` (or :meth:`add_many`), then :meth:`freeze` once; after that the index is
    immutable, safe to share between threads, and only then can it be queried. The record is whatever
    int the caller uses to find (list id, item id) — the index never stores list or image data.
    Duplicate hashes keep all records; lookups return the first one added.
    """

    def __init__(self) -> None:
        # per kind: hashes added one by one (bytes + records) and the finished chunks, in insertion order
        self._pending: dict[str, tuple[bytearray, array[int]]] | None = {k: (bytearray(), array("q")) for k in KINDS}
        self._chunks: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {k: [] for k in KINDS}
        self._exact: dict[str, _ExactSet] = {}
        self._pdq: _PdqIndex | None = None
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

    def add_many(self, kind: str, digests: np.ndarray, records: np.ndarray | Sequence[int]) -> None:
        """Bulk add: ``digests`` is an (n, hash bytes) uint8 array, ``records`` n ints."""
        kind, _ = self._building(kind)
        width = HEX_LENGTHS[kind] // 2
        d = np.array(digests, dtype=np.uint8, order="C")  # a copy: the caller may reuse its array
        r = np.array(records, dtype=np.int64)
        if d.ndim != 2 or d.shape[1] != width or r.shape != (len(d),):
            raise ValueError(f"expected ({len(r)}, {width}) uint8 digests for {kind}, got shape {d.shape}")
        self._flush(kind)
        self._chunks[kind].append((d, r))
        self._count += len(d)

    def _building(self, kind: str) -> tuple[str, tuple[bytearray, array[int]]]:
        if self._pending is None:
            raise RuntimeError("ImageHashIndex is frozen; build a new one to change it")
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

    def freeze(self) -> None:
        """Compile the added hashes into the lookup structures (≈2 s per million PDQ hashes)."""
        if self._pending is None:
            return
        for kind in KINDS:
            self._flush(kind)
            chunks = self._chunks[kind]
            width = HEX_LENGTHS[kind] // 2
            digests = np.concatenate([c[0] for c in chunks]) if chunks else np.empty((0, width), np.uint8)
            records = np.concatenate([c[1] for c in chunks]) if chunks else np.empty(0, np.int64)
            chunks.clear()
            if kind == "pdq":
                self._pdq = _PdqIndex(digests, records)
            elif len(digests):
                self._exact[kind] = _ExactSet(digests, records)
        self._pending = None

    # ---- queries

    def match(
        self, h: ImageHashes, *, max_distance: int = DEFAULT_MAX_DISTANCE, min_quality: int = DEFAULT_MIN_QUALITY
    ) -> ImageMatch | None:
        """Exact hashes first, then PDQ over all 8 dihedral variants (only if quality >= ``min_quality``)."""
        self._check_frozen()
        for kind in EXACT_KINDS:
            table = self._exact.get(kind)
            if table is not None:
                rec = table.get(bytes.fromhex(getattr(h, kind)))
                if rec is not None:
                    return ImageMatch(kind, 0, rec)
        if h.pdq is None or self._pdq is None or self._pdq.n == 0:
            return None
        if h.quality is None or h.quality < min_quality:
            return None
        variants = h.pdq_dihedral or (h.pdq,)
        queries = np.frombuffer(bytes.fromhex("".join(variants)), dtype=np.uint8).reshape(-1, PDQ_BYTES)
        found = self._pdq.search(queries, max_distance)
        if found is None:
            return None
        dist, pos, row = found
        name = DIHEDRAL_NAMES[row] if len(variants) == len(DIHEDRAL_NAMES) else None
        return ImageMatch("pdq", dist, int(self._pdq.records[pos]), name)

    def nearest(
        self, pdq_hex_or_bytes: str | bytes, max_distance: int = DEFAULT_MAX_DISTANCE
    ) -> tuple[int, int] | None:
        """(distance, record) of the closest PDQ hash within ``max_distance`` of one hash, or None."""
        self._check_frozen()
        if self._pdq is None:
            return None
        query = np.frombuffer(pdq_bytes(pdq_hex_or_bytes), dtype=np.uint8).reshape(1, PDQ_BYTES)
        found = self._pdq.search(query, max_distance)
        if found is None:
            return None
        return found[0], int(self._pdq.records[found[1]])

    def _check_frozen(self) -> None:
        if self._pending is not None:
            raise RuntimeError("ImageHashIndex.freeze() must be called before lookups")

    def __len__(self) -> int:
        return self._count

    def stats(self) -> dict[str, int | float]:
        """Entries per kind, total bytes, and bytes per PDQ hash (for logs and the bench)."""
        out: dict[str, int | float] = {k: 0 for k in KINDS}
        total = 0
        for kind, t in self._exact.items():
            out[kind] = len(t.keys)
            total += t.nbytes
        if self._pdq is not None:
            out["pdq"] = self._pdq.n
            total += self._pdq.nbytes
            out["pdq_bytes_per_hash"] = round(self._pdq.nbytes / self._pdq.n, 1) if self._pdq.n else 0.0
        out["bytes"] = total
        return out
