"""Item ids of image-hash records (the hotline's opaque id of each listed picture), as mappable arrays.

Ten million ids in a dict would cost every proxy worker over a gigabyte; here they are a sorted record
array, end offsets and one UTF-8 blob, saved as ``.npy`` files and mapped read-only, shared by workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np

from filterproxy.match.imagehash.mih import map_npy

_PARTS = ("records", "ends", "blob")


class ImageItems:
    """record → item id (``get``), like the dict it replaces; immutable once built."""

    __slots__ = ("records", "ends", "blob")

    def __init__(self, records: np.ndarray, ends: np.ndarray, blob: np.ndarray) -> None:
        self.records, self.ends, self.blob = records, ends, blob

    @classmethod
    def build(cls, pairs: Iterable[tuple[int, str]]) -> ImageItems:
        """From (record, item id) pairs; the first id of a repeated record is kept."""
        pairs = list(pairs)
        records = np.array([r for r, _ in pairs], dtype=np.int64)
        return cls.from_blocks([(records, [i for _, i in pairs])])

    @classmethod
    def from_blocks(cls, blocks: Sequence[tuple[np.ndarray, Sequence[str | None]]]) -> ImageItems:
        """From (records array, item id or None per record) blocks, without a Python object per id kept
        (ten million ids in seconds); the first id of a repeated record is kept."""
        recs, lens, blobs = [], [], []
        for records, items in blocks:
            texts = ["" if i is None else i for i in items]
            lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
            encoded = "".join(texts).encode()
            if len(encoded) != int(lengths.sum()):  # not all ASCII: byte lengths one by one
                lengths = np.fromiter((len(t.encode()) for t in texts), dtype=np.int64, count=len(texts))
            recs.append(np.asarray(records, dtype=np.int64))
            lens.append(lengths)
            blobs.append(np.frombuffer(encoded, dtype=np.uint8))
        if not recs:
            return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint8))
        records, lengths, data = np.concatenate(recs), np.concatenate(lens), np.concatenate(blobs)
        starts = np.cumsum(lengths) - lengths
        order = np.argsort(records, kind="stable")
        first = np.ones(len(order), bool)
        first[1:] = records[order][1:] != records[order][:-1]
        keep = order[first & (lengths[order] > 0)]
        if len(keep) != len(records) or (keep != np.arange(len(keep))).any():  # gather the kept spans in order
            kept = lengths[keep]
            ends = np.cumsum(kept)
            data = data[np.repeat(starts[keep] - (ends - kept), kept) + np.arange(int(kept.sum()))]
        return cls(records[keep], np.cumsum(lengths[keep]), data)

    def get(self, record: int, default: str | None = None) -> str | None:
        i = int(np.searchsorted(self.records, record))
        if i >= len(self.records) or int(self.records[i]) != record:
            return default
        start = int(self.ends[i - 1]) if i else 0
        return bytes(self.blob[start : int(self.ends[i])]).decode()

    def __len__(self) -> int:
        return len(self.records)

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        for name in _PARTS:
            np.save(os.path.join(directory, f"items.{name}.npy"), getattr(self, name))

    @classmethod
    def load(cls, directory: str) -> ImageItems:
        """Map ids saved by :meth:`save` read-only; an empty table when the folder has none."""
        paths = [os.path.join(directory, f"items.{name}.npy") for name in _PARTS]
        if not os.path.exists(paths[0]):
            return cls.build(())
        return cls(*(map_npy(p) for p in paths))
