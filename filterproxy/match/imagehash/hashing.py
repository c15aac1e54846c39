"""Hash one image: MD5/SHA-1/SHA-256 of the bytes as received, PDQ (+ 7 dihedral variants) of the picture.

PDQ is computed here in numpy, step for step as Meta's reference (ThreatExchange ``pdq/cpp``, which the
``pdqhash`` package wraps): float luminance, the Jarosz tent filter (two box passes per axis, window
``ceil(side / 128)``), decimation to 64x64, the 16x16 DCT, the median threshold, the quality metric, and
the dihedral variants as sign patterns of the DCT. Filter and decimation are linear and separable and keep
only 64 rows and 64 columns, so they collapse into one pass per axis over the full-size picture
(64 bands of weights per axis, a gather and a weighted sum: ~0.3 ms per megapixel). Lossless pictures hash
as the reference hashes them at full size (up to float rounding), JPEGs within a few bits (libjpeg's Y
below, and its DCT scaling); tests/test_imagehash_fidelity.py holds every dihedral hash to within 8 bits.
Why, and what was measured: docs/decisions/imagehash-pdq-numpy.md.

Pillow decodes the first frame: a JPEG straight to its luminance channel (libjpeg's Y is PDQ's
0.299/0.587/0.114 mix, and the chroma is never upsampled or converted), and from twice ``max_side`` at
libjpeg's 1/2, 1/4 or 1/8 DCT scale that keeps its long side at least ``max_side`` (each decoded pixel then
weighs for its s x s block); other formats to RGB. The EXIF orientation is applied by reversing and
swapping the filters. Undecodable or oversized input gets ``pdq=None`` and a reason in ``pdq_error``; what
to do with it is the caller's decision (fail closed).

CPU-bound (~4–8 ms per 1 MP JPEG): keep it off the event loop; :func:`hash_image_bytes_async` runs it in
any executor (the function and its result pickle, so a process pool works).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import math
import re
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from PIL import Image

DEFAULT_MAX_SIDE = 1024  # JPEGs from 2x this long decode at a reduced DCT scale, never below it
MAX_DECODE_PIXELS = 40_000_000  # after JPEG DCT scaling; ~120 MB of RGB (a PNG) on a 1 GB gateway
_MIN_HASHABLE_SIDE = 5  # the reference's MIN_HASHABLE_DIM: smaller pictures hash to zeros, quality 0
_EXIF_ORIENTATION = 0x0112
_OBJECT_REPR = re.compile(r"<[^<>]*>")
_GATHER_LIMIT = 1 << 21  # samples gathered (and made float) at a time: ~2 MP of luma, 0.7 MP of RGB
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # the reference's RGB → luminance weights
# EXIF orientation → (transpose, flip rows, flip columns) that show the stored picture upright, as
# Pillow's ImageOps.exif_transpose does (upright = stored[.T][::-1 rows][:, ::-1 columns]).
_ORIENTATION = {
    2: (False, False, True),
    3: (False, True, True),
    4: (False, True, False),
    5: (True, False, False),
    6: (True, False, True),
    7: (True, True, True),
    8: (True, True, False),
}
# Rows 1..16 of the 64-point DCT-II, scaled by sqrt(2/64), as the reference's dct_matrix_64.
_DCT = np.array(
    [[math.sqrt(2 / 64) * math.cos(math.pi / 128 * (i + 1) * (2 * j + 1)) for j in range(64)] for i in range(16)],
    dtype=np.float32,
)
_ODD = np.where(np.arange(16) % 2 == 1, np.float32(1), np.float32(-1))
_ODD_ROWS, _ODD_COLS = _ODD[:, None], _ODD[None, :]
_CHECKER = _ODD_ROWS * _ODD_COLS  # (-1)^(i+j)


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


@functools.lru_cache(maxsize=256)
def _tent(n: int) -> np.ndarray:
    """64 x n float64: the reference's Jarosz filter along an axis of n pixels, then its decimation to 64.

    Each pass is ``box1DFloat`` (window ``w = ceil(n / 128)``; output ``o`` averages inputs
    ``o - (w - (w + 2) // 2) .. o + (w + 2) // 2 - 1``, clipped at the edges); two passes make a tent,
    and only the rows ``int((i + 0.5) * n / 64)`` of it are kept. Built as step functions + cumsum.
    """
    w = (n + 127) // 128
    half = (w + 2) // 2
    o = np.arange(n)
    lo = np.maximum(o - (w - half), 0)
    hi = np.minimum(o + half, n)  # exclusive
    inv = 1.0 / (hi - lo)
    centre = ((np.arange(64) + 0.5) * n / 64).astype(np.intp)
    ks = lo[centre][:, None] + np.arange(w)[None, :]  # the first pass's outputs that the second averages
    valid = ks < hi[centre][:, None]
    ks = np.where(valid, ks, 0)
    weight = np.where(valid, inv[centre][:, None] * inv[ks], 0.0).ravel()
    row = np.repeat(np.arange(64) * (n + 1), w)
    steps = np.bincount(row + lo[ks].ravel(), weight, 64 * (n + 1))
    steps -= np.bincount(row + hi[ks].ravel(), weight, 64 * (n + 1))
    out = np.cumsum(steps.reshape(64, n + 1), axis=1)[:, :n]
    out[np.abs(out) < 1e-12] = 0.0  # rounding residue of the cumsum outside each row's support
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=512)
def _bands(n: int, s: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """(index, weight), both 64 x L: where each row of :func:`_tent` for ``n`` pixels is nonzero, and its weights.

    The rows are bands of L <= 2 * ceil(n / 128) pixels, so filtering one axis is a gather and a weighted sum
    (a dense matrix product would cost 64 multiply-adds per pixel and start BLAS threads). For a picture
    decoded at 1/s scale each decoded pixel stands for the mean of an s x s block: the weights are summed
    over blocks of s. ``flip`` reverses the axis (the picture is stored mirrored, see :data:`_ORIENTATION`).
    """
    m = _tent(n)
    if s > 1:
        nb = -(-n // s)
        m = np.pad(m, ((0, 0), (0, nb * s - n))).reshape(64, nb, s).sum(axis=2)
    if flip:
        m = m[:, ::-1]
    support = m != 0
    first = support.argmax(axis=1)
    last = m.shape[1] - 1 - support[:, ::-1].argmax(axis=1)
    index = first[:, None] + np.arange(int((last - first).max()) + 1)[None, :]
    inside = index < m.shape[1]
    index = np.minimum(index, m.shape[1] - 1)
    weight = np.where(inside, np.take_along_axis(m, index, axis=1), 0.0).astype(np.float32)
    index.flags.writeable = weight.flags.writeable = False
    return index, weight


def _filter_axis0(pixels: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """64 x W float32: the filtered, decimated luminance rows of ``pixels`` (H x W luma or H x W x 3 RGB).

    RGB is filtered per channel and mixed to luminance afterwards (both are linear), on 64 rows instead of H.
    """
    out = np.empty((64, pixels[0].size), dtype=np.float32)
    step = max(1, _GATHER_LIMIT // (index.shape[1] * pixels[0].size))  # output rows per gather
    for i in range(0, 64, step):
        rows = pixels[index[i : i + step]].reshape(len(index[i : i + step]), index.shape[1], -1)
        # einsum's own C loops: numpy's BLAS would start a thread per core for products this size
        out[i : i + step] = np.einsum("il,ilx->ix", weight[i : i + step], rows.astype(np.float32))
    if pixels.ndim == 3:
        rgb = out.reshape(64, pixels.shape[1], 3)
        out = rgb[..., 0] * _LUMA[0] + rgb[..., 1] * _LUMA[1] + rgb[..., 2] * _LUMA[2]
    return out


def _downsample64(pixels: np.ndarray, orientation: int, full: tuple[int, int], s: int) -> np.ndarray:
    """The reference's 64x64 buffer (luminance, tent filter, decimation) of the upright picture.

    ``pixels`` is the stored picture (before the EXIF orientation), decoded at 1/``s`` of ``full`` = (H, W).
    Upright = stored[.T][::-1][:, ::-1]: the filters of the upright axes are applied, reversed as needed,
    to the stored axes they land on, and the result is transposed back.
    """
    transpose, flip_rows, flip_cols = _ORIENTATION.get(orientation, (False, False, False))
    h, w = full
    if transpose:  # stored rows are the upright columns
        along0, along1 = _bands(h, s, flip_cols), _bands(w, s, flip_rows)
    else:
        along0, along1 = _bands(h, s, flip_rows), _bands(w, s, flip_cols)
    z = _filter_axis0(pixels, *along0)
    index, weight = along1
    a = np.einsum("jl,ijl->ij", weight, z[:, index])
    return np.ascontiguousarray(a.T) if transpose else a


def _quality(a: np.ndarray) -> int:
    """The reference's pdqImageDomainQualityMetric: truncated vertical + horizontal gradients of the 64x64."""
    total = 0
    for d in (a[:-1] - a[1:], a[:, :-1] - a[:, 1:]):
        total += int(np.abs(np.trunc(d * np.float32(100) / np.float32(255))).sum())
    return min(100, total // 90)


def _pdq(pixels: np.ndarray, orientation: int, full: tuple[int, int], s: int) -> tuple[tuple[str, ...], int]:
    """The 8 dihedral PDQ hashes (ThreatExchange hex) and the quality of a uint8 luminance or RGB array."""
    if min(full) < _MIN_HASHABLE_SIDE:
        return ("0" * 64,) * 8, 0
    a = _downsample64(pixels, orientation, full, s)
    dct = _DCT @ a @ _DCT.T
    # pdqDihedralHash256es: original, rot90, rot180, rot270, flipX, flipY, flip+1, flip-1 by sign patterns
    variants = np.stack(
        (
            dct,
            (dct * _ODD_COLS).T,
            dct * _CHECKER,
            (dct * _ODD_ROWS).T,
            dct * _ODD_ROWS,
            dct * _ODD_COLS,
            dct.T,
            (dct * _CHECKER).T,
        )
    ).reshape(8, 256)
    median = np.partition(variants, 127, axis=1)[:, 127:128]  # Torben's median of 256 = the 128th smallest
    # bit k (row-major over the 16x16) is worth 2**k, so the hex starts with bit 255
    packed = np.packbits(variants[:, ::-1] > median, axis=1)
    return tuple(row.tobytes().hex() for row in packed), _quality(a)


def _jpeg_scale(long_side: int, max_side: int) -> int:
    """libjpeg's DCT scale denominator (1, 2, 4 or 8) that keeps the long side at least ``max_side``."""
    for s in (8, 4, 2):
        if long_side // s >= max_side:
            return s
    return 1


def _decode(data: bytes, max_side: int, max_pixels: int) -> tuple[np.ndarray, int, tuple[int, int], int]:
    """Decode ``data`` to a uint8 luminance (H x W) or RGB (H x W x 3) array and its EXIF orientation."""
    im: Image.Image = Image.open(io.BytesIO(data))  # reads the header only
    w, h = im.size
    if w < 1 or h < 1:
        raise ValueError("empty image")
    s = 1
    if im.format in ("JPEG", "MPO"):
        s = _jpeg_scale(max(w, h), max_side)
        # "L": libjpeg outputs Y (the 0.299/0.587/0.114 luminance) and skips the chroma; a no-op on CMYK
        im.draft("L", (max(1, w // s), max(1, h // s)))
    if im.size[0] * im.size[1] > max_pixels:
        raise _TooLarge(f"{im.size[0]}x{im.size[1]} pixels")
    try:
        orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not stop the picture from being hashed
        orientation = 1
    im.load()
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB")
    if im.size != (-(-w // s), -(-h // s)):
        s, (h, w) = 1, im.size[::-1]  # the decoder did not scale as asked: treat the picture as full size
    return np.asarray(im, dtype=np.uint8), orientation, (h, w), s


def hash_image_bytes(
    data: bytes, *, max_side: int = DEFAULT_MAX_SIDE, max_pixels: int = MAX_DECODE_PIXELS
) -> ImageHashes:
    """Exact hashes of ``data`` plus the PDQ hash (and its 8 dihedral variants) of the decoded picture.

    The PDQ hashes are within a few bits of the reference's (``pdqhash`` on the full-size RGB picture;
    lossless pictures exactly, up to float rounding); JPEGs whose long side is at least ``2 * max_side``
    decode at a reduced DCT scale, never below ``max_side``. Never raises for bad image data (``pdq`` is
    then None and ``pdq_error`` says why). CPU-bound (~4–8 ms for a 1 MP JPEG): keep it off the event loop.
    """
    if max_side < 64:
        raise ValueError("max_side must be at least 64 (PDQ works on a 64x64 downsample)")
    md5 = hashlib.md5(data).hexdigest()
    sha1 = hashlib.sha1(data).hexdigest()
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        pixels, orientation, full, scale = _decode(data, max_side, max_pixels)
    except (_TooLarge, Image.DecompressionBombError) as exc:
        return ImageHashes(md5, sha1, sha256, None, None, (), f"too large: {exc}"[:200])
    except Exception as exc:  # untrusted bytes: Pillow raises many kinds (OSError, SyntaxError, struct.error...)
        why = _OBJECT_REPR.sub("data", str(exc).splitlines()[0] if str(exc) else "")
        return ImageHashes(md5, sha1, sha256, None, None, (), f"undecodable: {type(exc).__name__}: {why}"[:200])
    variants, quality = _pdq(pixels, orientation, full, scale)
    return ImageHashes(md5, sha1, sha256, variants[0], quality, variants)


async def hash_image_bytes_async(
    data: bytes, *, max_side: int = DEFAULT_MAX_SIDE, executor: Executor | None = None
) -> ImageHashes:
    """:func:`hash_image_bytes` in ``executor`` (the loop's default thread pool if None).

    Pillow releases the GIL while it decodes, but not all of the rest does: a ``ProcessPoolExecutor`` keeps
    the whole of it off the event loop's process.
    """
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(hash_image_bytes, data, max_side=max_side))
