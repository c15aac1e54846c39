"""Image hashes: exact (MD5/SHA-1/SHA-256 of the bytes) and perceptual (PDQ), lists of them, and an index.

Hashing (:func:`hash_image_bytes`)
    The exact hashes are of the bytes as received. PDQ is of the decoded picture: Pillow decodes the
    first frame (JPEGs straight at a reduced DCT scale, which is most of the speed-up), the EXIF
    orientation is applied, the picture is converted to RGB, box-downscaled so the long side is at
    most ``max_side`` (512: the hash then differs from the full-resolution one by ~4–14 bits of 256,
    while a 1 MP JPEG drops from ~20 ms to ~12–15 ms) and hashed with the reference C++ PDQ
    (``pdqhash``), which also gives the seven rotated/flipped variants in the same pass. The hex form
    is ThreatExchange's (first bit of ``pdqhash``'s vector = most significant bit of the first hex
    digit), so hashes from NCMEC/IWF/ThreatExchange-style lists compare directly. Anything that cannot be decoded, or
    would decode to more than ``max_pixels``, gets ``pdq=None`` and a reason in ``pdq_error``; what to
    do with such an image is the caller's decision (fail closed).

    ``pdqhash`` holds the GIL for the ~4–6 ms it takes, so a busy proxy should hash in a *process* pool
    (the function and its result pickle); :func:`hash_image_bytes_async` runs it in any executor.

Lists (:func:`parse_imagehash_list`)
    ``kind:hex[,item id]``, bare hex (kind by length), or CSV ``hash,kind,list_id,item_id``.

Index (:class:`ImageHashIndex`)
    Exact hashes live in sorted arrays (8-byte key + digest + record: 32–48 bytes per hash, no Python
    objects). PDQ uses multi-index hashing that is *exact* (never misses a hash within the distance):

    * the 256 bits are 8 words of 32 bits; if the distance is <= d, some word differs in at most
      R = d // 8 bits (pigeonhole), and within that word one 16-bit half differs in at most r = R // 2
      bits while its companion half differs in at most R minus that;
    * so there are 16 tables, one per 16-bit half, each sorted by that half (bucket offsets, the
      companion half, and the hash number in that order). A query enumerates the half's values within
      r bits (17 probes for d = 31), filters every bucket entry by its companion half in one vectorised
      step (which drops ~99% of the candidates, reading each bucket contiguously), and checks the few
      survivors against the full hashes;
    * d > 63 falls back to a vectorised brute-force scan, as do indexes smaller than 4096 hashes.

    Memory: 32 (hash) + 16 × (2 + 4) (companion + hash number) + 8 (record) = 136 bytes per PDQ hash
    plus 4.2 MB of bucket offsets: 1M hashes ≈ 134 MB, built in ~1.3 s. Speed on one core
    (bench/bench_imagehash.py), 1M hashes: one query ≈ 0.1–0.3 ms p50, all 8 dihedral variants of a
    picture ≈ 0.7–1.1 ms (numpy brute force: ~38 ms per query; faiss-cpu 1.15's IndexBinaryFlat ~2.7 ms
    and IndexBinaryMultiHash ~2 ms, so no faiss dependency). Needs numpy >= 2 (``np.bitwise_count``);
    older numpy falls back to a lookup table, several times slower.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import hashlib
import io
import itertools
import json
import math
import re
import sys
from array import array
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

try:  # the index and the list parser work without the C++ extension; hashing does not
    import pdqhash as _pdqhash
except ImportError as _exc:  # pragma: no cover - exercised only where pdqhash is missing
    _pdqhash = None
    _PDQ_IMPORT_ERROR: ImportError | None = _exc
else:
    _PDQ_IMPORT_ERROR = None

__all__ = [
    "DEFAULT_MAX_DISTANCE", "DEFAULT_MIN_QUALITY", "DIHEDRAL_NAMES", "KINDS", "ImageHashes", "ImageMatch",
    "ImageHashIndex", "ImageHashEntry", "ImageHashListError", "hash_image_bytes", "hash_image_bytes_async",
    "imagehash_file_json", "parse_imagehash_list", "parse_imagehash_entries", "pdq_distance",
]

DEFAULT_MAX_DISTANCE = 31  # ThreatExchange's "confident match" threshold for PDQ
DEFAULT_MIN_QUALITY = 50  # below this PDQ hashes of flat/blank pictures collide (ThreatExchange's advice)
DEFAULT_MAX_SIDE = 512
MAX_DECODE_PIXELS = 40_000_000  # after JPEG draft scaling; ~120 MB of RGB on a 1 GB gateway
PDQ_BYTES = 32
KINDS = ("md5", "sha1", "sha256", "pdq")
EXACT_KINDS = ("sha256", "sha1", "md5")  # match() tries them in this order
HEX_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "pdq": 64}
# Order of pdqhash.compute_dihedral's hashes (index = ImageHashes.pdq_dihedral position).
DIHEDRAL_NAMES = ("original", "rotate90", "rotate180", "rotate270", "flip_vertical", "flip_horizontal",
                  "flip_plus1", "flip_minus1")
_EXIF_ORIENTATION = 0x0112
_HEXDIGITS = frozenset("0123456789abcdefABCDEF")
_OBJECT_REPR = re.compile(r"<[^<>]*>")


def pdq_available() -> bool:
    """True when the ``pdqhash`` extension is importable (hashing needs it; parsing and matching do not)."""
    return _pdqhash is not None


# --------------------------------------------------------------------------------------------- hashing


@dataclass(frozen=True, slots=True)
class ImageHashes:
    """Hashes of one image: exact hashes of the bytes, PDQ of the picture (``None`` if undecodable).

    ``pdq_dihedral`` holds the 8 PDQ variants in :data:`DIHEDRAL_NAMES` order, ``[0]`` being ``pdq``
    itself (empty when ``pdq`` is None); ``pdq_error`` says why there is no PDQ hash.
    """

    md5: str
    sha1: str
    sha256: str
    pdq: str | None
    quality: int | None
    pdq_dihedral: tuple[str, ...] = ()
    pdq_error: str | None = None


# EXIF orientation → the transpose that shows the picture upright (what ImageOps.exif_transpose does).
_ORIENTATION_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                          6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def _decode_for_pdq(data: bytes, max_side: int, max_pixels: int) -> np.ndarray:
    """Decode ``data`` to a C-contiguous uint8 RGB array whose long side is <= ``max_side``."""
    im: Image.Image = Image.open(io.BytesIO(data))  # reads the header only
    w, h = im.size
    if w < 1 or h < 1:
        raise ValueError("empty image")
    scale = max_side / max(w, h)
    if scale < 1 and im.format == "JPEG":
        # libjpeg scales by 1/2, 1/4 or 1/8 while decoding; ask for at least the final size
        im.draft("RGB", (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
    if im.size[0] * im.size[1] > max_pixels:
        raise _TooLarge(f"{im.size[0]}x{im.size[1]} pixels")
    try:
        orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not stop the picture from being hashed
        orientation = 1
    im.load()
    if im.mode != "RGB":
        im = im.convert("RGB")
    w, h = im.size
    if max(w, h) > max_side:
        scale = max_side / max(w, h)
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    if method is not None:
        im = im.transpose(method)
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


class _TooLarge(ValueError):
    pass


def _vectors_to_hex(vectors: Sequence[np.ndarray]) -> tuple[str, ...]:
    packed = np.packbits(np.asarray(vectors, dtype=np.uint8), axis=1)
    return tuple(row.tobytes().hex() for row in packed)


def hash_image_bytes(data: bytes, *, max_side: int = DEFAULT_MAX_SIDE,
                     max_pixels: int = MAX_DECODE_PIXELS) -> ImageHashes:
    """Exact hashes of ``data`` plus the PDQ hash (and its 8 dihedral variants) of the decoded picture.

    Never raises for bad image data (``pdq`` is then None and ``pdq_error`` says why); raises
    RuntimeError if the ``pdqhash`` extension is not installed, so a misinstalled gateway fails loudly
    instead of silently skipping PDQ. CPU-bound (~12–15 ms for a 1 MP JPEG): keep it off the event loop.
    """
    if _pdqhash is None:
        raise RuntimeError(f"image hashing needs the 'pdqhash' package: {_PDQ_IMPORT_ERROR}")
    if max_side < 64:
        raise ValueError("max_side must be at least 64 (PDQ works on a 64x64 downsample)")
    md5 = hashlib.md5(data).hexdigest()
    sha1 = hashlib.sha1(data).hexdigest()
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        rgb = _decode_for_pdq(data, max_side, max_pixels)
    except (_TooLarge, Image.DecompressionBombError) as exc:
        return ImageHashes(md5, sha1, sha256, None, None, (), f"too large: {exc}"[:200])
    except Exception as exc:  # untrusted bytes: Pillow raises many kinds (OSError, SyntaxError, struct.error...)
        why = _OBJECT_REPR.sub("data", str(exc).splitlines()[0] if str(exc) else "")
        return ImageHashes(md5, sha1, sha256, None, None, (), f"undecodable: {type(exc).__name__}: {why}"[:200])
    vectors, quality = _pdqhash.compute_dihedral(rgb)
    variants = _vectors_to_hex(vectors)
    return ImageHashes(md5, sha1, sha256, variants[0], int(quality), variants)


async def hash_image_bytes_async(data: bytes, *, max_side: int = DEFAULT_MAX_SIDE,
                                 executor: Executor | None = None) -> ImageHashes:
    """:func:`hash_image_bytes` in ``executor`` (the loop's default thread pool if None).

    A ``ProcessPoolExecutor`` keeps PDQ (which holds the GIL) from stalling the event loop at all.
    """
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(hash_image_bytes, data, max_side=max_side))


def imagehash_file_json(path: str) -> dict:
    """CLI helper: ``{"file", "md5", "sha1", "sha256", "pdq", "quality"}`` for one file (OSError if unreadable).

    ``pdq_error`` is added when the file is not a decodable picture.
    """
    with open(path, "rb") as f:
        data = f.read()
    h = hash_image_bytes(data)
    out = {"file": path, "md5": h.md5, "sha1": h.sha1, "sha256": h.sha256, "pdq": h.pdq, "quality": h.quality}
    if h.pdq_error:
        out["pdq_error"] = h.pdq_error
    return out


def pdq_distance(a: str | bytes, b: str | bytes) -> int:
    """Hamming distance between two PDQ hashes (64 hex digits or 32 bytes each)."""
    x = int.from_bytes(_pdq_bytes(a), "big") ^ int.from_bytes(_pdq_bytes(b), "big")
    return x.bit_count()


def _pdq_bytes(h: str | bytes) -> bytes:
    if isinstance(h, str):
        if len(h) != 64 or not _HEXDIGITS.issuperset(h):
            raise ValueError(f"expected a PDQ hash of 64 hex digits, got {h[:70]!r}")
        return bytes.fromhex(h)
    b = bytes(h)
    if len(b) != PDQ_BYTES:
        raise ValueError(f"expected a PDQ hash of 32 bytes, got {len(b)}")
    return b


# --------------------------------------------------------------------------------------------- lists


class ImageHashListError(ValueError):
    """A line of an image-hash list that cannot be used; the message starts with ``file:line:``."""

    def __init__(self, path: str, line: int, why: str) -> None:
        super().__init__(f"{path}:{line}: {why}")
        self.path = path
        self.line = line
        self.why = why


class ImageHashEntry(NamedTuple):
    """One parsed list entry; ``list_id`` is only set by the CSV form."""

    kind: str
    hex: str
    item_id: str | None
    line: int
    list_id: str | None = None


_EXPECTED = ("expected 'kind:hex[,item id]' (kind md5, sha1, sha256 or pdq), bare hex of 32/40/64 digits, "
             "or CSV 'hash,kind,list_id,item_id'")
_DECLARE_PREFIXES = ("kind:", "format:")


def _check_hex(kind: str, value: str) -> str | None:
    """The problem with ``value`` as a ``kind`` hash, or None if it is fine."""
    want = HEX_LENGTHS[kind]
    if len(value) != want:
        return f"expected {want} hex digits for {kind}, got {len(value)}"
    if not _HEXDIGITS.issuperset(value):
        bad = next(c for c in value if c not in _HEXDIGITS)
        return f"{kind} hash has a non-hex character {bad!r}"
    return None


def _parse_line(text: str, declared: str | None, header_ok: bool) -> ImageHashEntry | str | None:
    """One stripped, non-comment line → an entry, an error text, or None for a CSV header."""
    try:
        fields = [f.strip() for f in next(csv.reader([text], skipinitialspace=True))]
    except (csv.Error, StopIteration) as exc:
        return f"bad CSV quoting ({exc})"
    first = fields[0]
    lowered = [f.lower() for f in fields]
    if len(fields) >= 2 and lowered[1] in ("kind", "type") and lowered[0] in ("hash", "hex", "value"):
        return None if header_ok else "CSV header row after the first entry"
    if len(fields) >= 2 and lowered[1] in KINDS and ":" not in first:  # CSV: hash,kind,list_id,item_id
        if len(fields) > 4:
            return f"CSV row has {len(fields)} fields; expected hash,kind,list_id,item_id"
        kind = lowered[1]
        list_id = fields[2] if len(fields) > 2 and fields[2] else None
        item_id = fields[3] if len(fields) > 3 and fields[3] else None
        problem = _check_hex(kind, first)
        return problem or ImageHashEntry(kind, first.lower(), item_id, 0, list_id)
    if len(fields) > 2:
        return f"{len(fields)} comma-separated fields; {_EXPECTED}"
    item_id = fields[1] if len(fields) == 2 and fields[1] else None
    if ":" in first:
        kind, _, value = first.partition(":")
        kind = kind.strip().lower()
        value = value.strip()
        if kind not in KINDS:
            return f"unknown hash kind {kind[:20]!r}; {_EXPECTED}"
    else:
        value = first
        kind = {32: "md5", 40: "sha1", 64: "sha256"}.get(len(value), "")
        if declared is not None:
            kind = declared  # a declared file says what its bare hashes are (the only way to get bare PDQ)
        elif not kind:
            if _HEXDIGITS.issuperset(value):
                return f"bare hash of {len(value)} hex digits; expected 32 (md5), 40 (sha1) or 64 (sha256)"
            return f"not a hash: {value[:40]!r}; {_EXPECTED}"
    problem = _check_hex(kind, value)
    return problem or ImageHashEntry(kind, value.lower(), item_id, 0)


def parse_imagehash_entries(path: str, *, kind: str | None = None,
                            skip_errors: bool = False) -> Iterator[ImageHashEntry | str]:
    """Parse an image-hash list, yielding :class:`ImageHashEntry` (with ``list_id`` for CSV rows).

    Accepted, one per line (``#`` lines and blank lines ignored, UTF-8, optional BOM):

    * ``md5:<hex>``, ``sha1:<hex>``, ``sha256:<hex>``, ``pdq:<hex>``, optionally followed by ``,<item id>``;
    * bare hex, optionally ``,<item id>``: 32 digits md5, 40 sha1, 64 **sha256** — 64 digits are PDQ only
      when the file is declared so, by ``kind="pdq"`` or by a ``# kind: pdq`` line before the first entry;
    * CSV ``hash,kind,list_id,item_id`` (list_id and item_id may be empty or missing), with or without a
      ``hash,kind,...`` header row.

    A bad line raises :class:`ImageHashListError` (``file:line: what was expected``). With
    ``skip_errors`` it is yielded instead as that message (a ``str``), and parsing goes on; the caller
    counts them and keeps the first few. An unreadable file raises OSError; a file with no entries
    simply yields none (the list loader treats that as an error).
    """
    declared = kind.lower() if kind else None
    if declared is not None and declared not in KINDS:
        raise ValueError(f"unknown declared hash kind {kind!r} (expected one of {', '.join(KINDS)})")
    seen_entry = False
    header_ok = True
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                parsed: ImageHashEntry | str | None = "line is not UTF-8 text"
            else:
                if lineno == 1:
                    text = text.lstrip("\ufeff")
                text = text.strip()
                if not text:
                    continue
                if text[0] == "#":
                    body = text[1:].strip().lower()
                    if not seen_entry and body.startswith(_DECLARE_PREFIXES):
                        value = body.partition(":")[2].strip()
                        if value in KINDS:
                            declared = declared or value
                    continue
                parsed = _parse_line(text, declared, header_ok)
                header_ok = False
                if parsed is None:  # the CSV header
                    continue
            if isinstance(parsed, ImageHashEntry):
                seen_entry = True
                yield parsed._replace(line=lineno)
                continue
            exc = ImageHashListError(path, lineno, str(parsed))
            if not skip_errors:
                raise exc
            yield str(exc)


def parse_imagehash_list(path: str, *, kind: str | None = None,
                         skip_errors: bool = False) -> Iterator[tuple[str, str, str | None, int] | str]:
    """``(kind, hex, item_id, line)`` for each entry of an image-hash list (see :func:`parse_imagehash_entries`).

    Hex is lower case. With ``skip_errors`` bad lines come through as ``"file:line: why"`` strings
    instead of raising :class:`ImageHashListError`.
    """
    for e in parse_imagehash_entries(path, kind=kind, skip_errors=skip_errors):
        yield e if isinstance(e, str) else (e.kind, e.hex, e.item_id, e.line)


# --------------------------------------------------------------------------------------------- index


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
    return _POP8[a.view(np.uint8)].reshape(*a.shape, a.itemsize).sum(axis=-1, dtype=np.uint8)


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
    """Exact Hamming-radius search over packed PDQ hashes (see the module docstring for the scheme)."""

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
                d = _popcount(self.words[start:start + block] ^ q).sum(axis=1, dtype=np.int32)
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
        self._pending: dict[str, tuple[bytearray, array]] | None = {k: (bytearray(), array("q")) for k in KINDS}
        self._chunks: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {k: [] for k in KINDS}
        self._exact: dict[str, _ExactSet] = {}
        self._pdq: _PdqIndex | None = None
        self._count = 0

    # ---- building

    def add(self, kind: str, hexhash: str, record: int) -> None:
        """Add one hash (``kind`` md5/sha1/sha256/pdq, hex of the right length) with its record."""
        kind, store = self._building(kind)
        problem = _check_hex(kind, hexhash)
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

    def _building(self, kind: str) -> tuple[str, tuple[bytearray, array]]:
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
            self._chunks[kind].append((np.frombuffer(bytes(raw), dtype=np.uint8).reshape(-1, width).copy(),
                                       np.array(recs, dtype=np.int64)))
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

    def match(self, h: ImageHashes, *, max_distance: int = DEFAULT_MAX_DISTANCE,
              min_quality: int = DEFAULT_MIN_QUALITY) -> ImageMatch | None:
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

    def nearest(self, pdq_hex_or_bytes: str | bytes, max_distance: int = DEFAULT_MAX_DISTANCE
                ) -> tuple[int, int] | None:
        """(distance, record) of the closest PDQ hash within ``max_distance`` of one hash, or None."""
        self._check_frozen()
        if self._pdq is None:
            return None
        query = np.frombuffer(_pdq_bytes(pdq_hex_or_bytes), dtype=np.uint8).reshape(1, PDQ_BYTES)
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


def main(argv: list[str] | None = None) -> int:
    """``python -m filterproxy.match.imagehash FILE...``: one JSON line per file."""
    status = 0
    for path in sys.argv[1:] if argv is None else argv:
        try:
            print(json.dumps(imagehash_file_json(path)))
        except OSError as exc:
            print(json.dumps({"file": path, "error": exc.strerror or str(exc)}))
            status = 1
    return status


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
