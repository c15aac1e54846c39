"""Hash one image: MD5/SHA-1/SHA-256 of the bytes as received, PDQ (+ 7 dihedral variants) of the picture.

PDQ needs the decoded picture: Pillow decodes the first frame (JPEGs straight at a reduced DCT scale),
applies the EXIF orientation, converts to RGB and box-downscales so the long side is at most
``max_side`` (see docs/decisions/imagehash-max-side.md), then the reference C++ PDQ (``pdqhash``)
hashes it and its rotated/flipped variants in one pass. Undecodable or oversized input gets
``pdq=None`` and a reason in ``pdq_error``; what to do with it is the caller's decision (fail closed).

``pdqhash`` holds the GIL for the ~4–6 ms it takes, so a busy proxy hashes in a *process* pool (the
function and its result pickle); :func:`hash_image_bytes_async` runs it in any executor.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import math
import re
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from PIL import Image

try:  # the index and the list parser work without the C++ extension; hashing does not
    import pdqhash as _pdqhash
except ImportError as _exc:  # pragma: no cover - exercised only where pdqhash is missing
    _pdqhash = None
    _PDQ_IMPORT_ERROR: ImportError | None = _exc
else:
    _PDQ_IMPORT_ERROR = None

DEFAULT_MAX_SIDE = 512
MAX_DECODE_PIXELS = 40_000_000  # after JPEG draft scaling; ~120 MB of RGB on a 1 GB gateway
_EXIF_ORIENTATION = 0x0112
_OBJECT_REPR = re.compile(r"<[^<>]*>")
# EXIF orientation → the transpose that shows the picture upright (what ImageOps.exif_transpose does).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def pdq_available() -> bool:
    """True when the ``pdqhash`` extension is importable (hashing needs it; parsing and matching do not)."""
    return _pdqhash is not None


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


class _TooLarge(ValueError):
    pass


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


def _vectors_to_hex(vectors: Sequence[np.ndarray]) -> tuple[str, ...]:
    """pdqhash's bit vectors → ThreatExchange hex (first bit = most significant bit of the first digit)."""
    packed = np.packbits(np.asarray(vectors, dtype=np.uint8), axis=1)
    return tuple(row.tobytes().hex() for row in packed)


def hash_image_bytes(
    data: bytes, *, max_side: int = DEFAULT_MAX_SIDE, max_pixels: int = MAX_DECODE_PIXELS
) -> ImageHashes:
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


async def hash_image_bytes_async(
    data: bytes, *, max_side: int = DEFAULT_MAX_SIDE, executor: Executor | None = None
) -> ImageHashes:
    """:func:`hash_image_bytes` in ``executor`` (the loop's default thread pool if None).

    A ``ProcessPoolExecutor`` keeps PDQ (which holds the GIL) from stalling the event loop at all.
    """
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(hash_image_bytes, data, max_side=max_side))
