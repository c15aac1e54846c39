"""Exact digests (MD5, SHA-1, SHA-256) of an :class:`~filterproxy.match.imagehash.index.ImageHashIndex`: one
sorted table per digest length, and the helpers the index uses for (digests, records) arrays."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from filterproxy.match.imagehash.kinds import HEX_LENGTHS
from filterproxy.match.imagehash.mih import Rows, as_rows, readonly


class ExactSet:
    """Sorted digests of one length: 8-byte big-endian key, full digest and record, in key order.

    Loaded from files (:meth:`load`), a lookup reads the few keys of its binary search, then the digest
    and record of a hit, with ``pread`` (:class:`~.mih.Rows`): a 10M-digest list never ends up in a
    process's mappings.
    """

    __slots__ = ("_keys", "_digests", "_records")

    def __init__(self, keys: Rows | np.ndarray, digests: Rows | np.ndarray, records: Rows | np.ndarray) -> None:
        self._keys, self._digests, self._records = as_rows(keys), as_rows(digests), as_rows(records)

    @classmethod
    def load(cls, paths: tuple[str, str, str]) -> ExactSet:
        """The table saved as ``paths`` (keys, digests, records ``.npy`` files)."""
        return cls(*(Rows.open(p) for p in paths))

    @property
    def keys(self) -> np.ndarray:
        return self._keys.array

    @property
    def digests(self) -> np.ndarray:
        return self._digests.array

    @property
    def records(self) -> np.ndarray:
        return self._records.array

    def _first(self, key: np.uint64) -> int:
        """Position of the first key >= ``key``."""
        return self._keys.searchsorted(key)

    def _at(self, i: int) -> tuple[int, bytes]:
        """(key, digest) at position ``i``."""
        return int(self._keys.at(i)), self._digests.at(i).tobytes()

    def _record(self, i: int) -> int:
        return int(self._records.at(i))

    def _equal(self, digest: bytes) -> list[int]:
        """Positions of the entries holding ``digest``."""
        key = np.uint64(int.from_bytes(digest[:8], "big"))  # a numpy scalar: no slow object comparison
        out, i, n = [], self._first(key), len(self.keys)
        while i < n:
            k, d = self._at(i)
            if k != key:
                break
            if d == digest:
                out.append(i)
            i += 1
        return out

    @classmethod
    def build(cls, digests: np.ndarray, records: np.ndarray) -> ExactSet:
        keys = digests[:, :8].copy().view(">u8").ravel().astype(np.uint64)
        order = np.argsort(keys, kind="stable")  # stable: the first added record wins on duplicates
        return cls(readonly(keys[order]), readonly(digests[order]), readonly(records[order]))

    def get(self, digest: bytes) -> int | None:
        found = self._equal(digest)
        return self._record(found[0]) if found else None

    def positions(self, digests: Iterable[bytes]) -> np.ndarray:
        """Positions (in key order) of every entry equal to one of ``digests``: a search per digest, not a
        pass over the table (a tombstone set is small, the table may hold millions)."""
        return np.array([i for digest in digests for i in self._equal(digest)], dtype=np.int64)

    def entries(self) -> tuple[np.ndarray, np.ndarray]:
        """(digests, records) in insertion order (the sort was stable on insertion order per key)."""
        return np.asarray(self.digests), np.asarray(self.records)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.digests.nbytes + self.records.nbytes


Entries = dict[str, tuple[np.ndarray, np.ndarray]]  # kind → (digests, records), insertion order


def empty(kind: str) -> tuple[np.ndarray, np.ndarray]:
    return np.empty((0, HEX_LENGTHS[kind] // 2), np.uint8), np.empty(0, np.int64)


def concat(parts: list[tuple[np.ndarray, np.ndarray]], kind: str) -> tuple[np.ndarray, np.ndarray]:
    parts = [p for p in parts if len(p[1])]
    if not parts:
        return empty(kind)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def row_keys(digests: np.ndarray) -> np.ndarray:
    """Each digest row as one opaque scalar, for set operations on whole rows."""
    d = np.ascontiguousarray(digests)
    return d.view(f"V{d.shape[1]}").ravel() if len(d) else np.empty(0, "V1")


def digest_rows(kind: str, digests: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, HEX_LENGTHS[kind] // 2)
