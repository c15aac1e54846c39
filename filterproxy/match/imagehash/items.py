"""Item ids of image-hash records (the hotline's opaque id of each listed picture), as arrays in files.

Ten million ids in a dict would cost every proxy worker over a gigabyte; here they are a sorted record
array, end offsets and one UTF-8 blob, saved as ``.npy`` files and read on a match with ``pread`` (the
page cache shares them between workers). :class:`ItemTexts` carries a list block's ids the same way
from the parser.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from filterproxy.match.imagehash.mih import Rows, as_rows, span_positions

_PARTS = ("records", "ends", "blob")
_STRIP = np.zeros(256, bool)
_STRIP[list(b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f")] = True  # what str.strip() removes from ASCII text


class ItemTexts:
    """The item ids of a block of list rows, in row order: one UTF-8 blob and each row's end offset (an
    empty id is None). Ten million ids as Python strings would cost ~0.7 GB while a list compiles."""

    __slots__ = ("blob", "ends")

    def __init__(self, blob: np.ndarray, ends: np.ndarray) -> None:
        self.blob, self.ends = blob, ends

    @classmethod
    def of(cls, texts: Sequence[str | None]) -> ItemTexts:
        encoded = [(t or "").encode() for t in texts]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        return cls(np.frombuffer(b"".join(encoded), np.uint8), np.cumsum(lengths))

    @classmethod
    def none(cls, n: int) -> ItemTexts:
        return cls(np.empty(0, np.uint8), np.zeros(n, np.int64))

    @classmethod
    def spans(cls, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[ItemTexts, np.ndarray]:
        """The ids at ``buf[starts[i]:ends[i]]``, stripped as ``str.strip`` does, and which are UTF-8
        (an id that is not is left empty); vectorised, but for the rare ids with non-ASCII bytes."""
        if not len(starts):
            return cls.none(0), np.ones(0, bool)
        starts = starts.astype(np.int64)
        ends = np.maximum(ends.astype(np.int64), starts)  # a row without an id: an empty span
        while len(m := np.flatnonzero((starts < ends) & _STRIP[buf[np.minimum(starts, len(buf) - 1)]])):
            starts[m] += 1
        while len(m := np.flatnonzero((ends > starts) & _STRIP[buf[np.maximum(ends - 1, 0)]])):
            ends[m] -= 1
        lengths = ends - starts
        high = buf >= 0x80
        bounds = np.empty(2 * len(starts), np.int64)
        bounds[0::2], bounds[1::2] = starts, ends
        non_ascii = np.flatnonzero(np.add.reduceat(high, np.minimum(bounds, len(buf) - 1), dtype=np.int64)[0::2] > 0)
        non_ascii = non_ascii[lengths[non_ascii] > 0]
        utf8 = np.ones(len(starts), bool)
        for i in non_ascii.tolist():  # validate (and strip as str does) the few non-ASCII ids one by one
            try:
                text = buf[starts[i] : ends[i]].tobytes().decode("utf-8").strip().encode()
            except UnicodeDecodeError:
                utf8[i], lengths[i] = False, 0
                continue
            offset = buf[starts[i] : ends[i]].tobytes().find(text) if text else 0
            starts[i] += offset
            lengths[i] = len(text)
        return cls(buf[span_positions(starts, lengths)], np.cumsum(lengths)), utf8

    @classmethod
    def concat(cls, parts: Sequence[ItemTexts]) -> ItemTexts:
        if not parts:
            return cls.none(0)
        ends, base = [], 0
        for p in parts:
            ends.append(p.ends + base)
            base += len(p.blob)
        return cls(np.concatenate([p.blob for p in parts]), np.concatenate(ends))

    def lengths(self) -> np.ndarray:
        out: np.ndarray = np.diff(self.ends, prepend=0)
        return out

    def take(self, rows: np.ndarray) -> ItemTexts:
        """The ids of ``rows``, in that order."""
        lengths = self.lengths()[rows]
        return ItemTexts(self.blob[span_positions(self.ends[rows] - lengths, lengths)], np.cumsum(lengths))

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> str | None:
        start = int(self.ends[i - 1]) if i else 0
        return bytes(self.blob[start : int(self.ends[i])]).decode() or None

    def __iter__(self) -> Iterator[str | None]:
        for i in range(len(self.ends)):
            yield self[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ItemTexts):
            return np.array_equal(self.blob, other.blob) and np.array_equal(self.ends, other.ends)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ItemTexts({list(self)!r})"


class ImageItems:
    """record → item id (``get``), like the dict it replaces; immutable once built. Loaded from files, a
    lookup reads its binary search and the id with ``pread`` (nothing of a 10M-id table is mapped in)."""

    __slots__ = ("_records", "_ends", "_blob")

    def __init__(self, records: Rows | np.ndarray, ends: Rows | np.ndarray, blob: Rows | np.ndarray) -> None:
        self._records, self._ends, self._blob = as_rows(records), as_rows(ends), as_rows(blob)

    @property
    def records(self) -> np.ndarray:
        return self._records.array

    @property
    def ends(self) -> np.ndarray:
        return self._ends.array

    @property
    def blob(self) -> np.ndarray:
        return self._blob.array

    @classmethod
    def build(cls, pairs: Iterable[tuple[int, str]]) -> ImageItems:
        """From (record, item id) pairs; the first id of a repeated record is kept."""
        pairs = list(pairs)
        records = np.array([r for r, _ in pairs], dtype=np.int64)
        return cls.from_blocks([(records, [i for _, i in pairs])])

    @classmethod
    def from_blocks(cls, blocks: Sequence[tuple[np.ndarray, ItemTexts | Sequence[str | None]]]) -> ImageItems:
        """From (records array, item ids by record) blocks, without a Python object per id (ten million
        ids in seconds); the first id of a repeated record is kept."""
        recs, lens, blobs = [], [], []
        for records, items in blocks:
            texts = items if isinstance(items, ItemTexts) else ItemTexts.of(items)
            recs.append(np.asarray(records, dtype=np.int64))
            lens.append(texts.lengths())
            blobs.append(texts.blob)
        if not recs:
            return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint8))
        records, lengths, data = np.concatenate(recs), np.concatenate(lens), np.concatenate(blobs)
        if (records[1:] > records[:-1]).all() and (lengths > 0).all():  # a list's rows: in order, all with ids
            return cls(records, np.cumsum(lengths), data)
        starts = np.cumsum(lengths) - lengths
        order = np.argsort(records, kind="stable")
        first = np.ones(len(order), bool)
        first[1:] = records[order][1:] != records[order][:-1]
        keep = order[first & (lengths[order] > 0)]
        if len(keep) != len(records) or (keep != np.arange(len(keep))).any():  # gather the kept spans in order
            data = data[span_positions(starts[keep], lengths[keep])]
        return cls(records[keep], np.cumsum(lengths[keep]), data)

    def get(self, record: int, default: str | None = None) -> str | None:
        records, ends, blob = self._records, self._ends, self._blob
        i = records.searchsorted(np.int64(record))
        if i >= len(self.records) or int(records.at(i)) != record:
            return default
        start = int(ends.at(i - 1)) if i else 0
        return blob.spans(np.array([start]), np.array([int(ends.at(i))])).tobytes().decode()

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
        return cls(*(Rows.open(p) for p in paths))
