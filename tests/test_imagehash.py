"""Tests for filterproxy.match.imagehash: hashing real pictures, parsing hash lists, the PDQ index.

Pictures are generated here (pink-noise "photos" with shapes, gradients, text pages, textures) plus any
real photos/screenshots found on the machine; nothing binary is committed.
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pdqhash
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from filterproxy.match import imagehash as ih
from filterproxy.match.imagehash import (
    DIHEDRAL_NAMES,
    ImageHashes,
    ImageHashIndex,
    ImageHashListError,
    ImageMatch,
    hash_image_bytes,
    parse_imagehash_entries,
    parse_imagehash_list,
    pdq_distance,
)
from filterproxy.match.imagehash.cli import imagehash_file_json

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------- synthetic pictures

WORDS = (
    "an toàn trẻ em mạng internet trường học gia đình bảo vệ tổng đài sách vở bút thước cửa sổ "
    "mặt trời con mèo quả táo xe đạp bầu trời"
).split()


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _pink(rng: np.random.Generator, h: int, w: int, alpha: float) -> np.ndarray:
    """Noise with a 1/f^alpha power spectrum (natural photos have alpha ≈ 2), scaled to 0..1."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f ** (alpha / 2)
    img = np.fft.irfft2(spec, s=(h, w))
    img -= img.min()
    return img / max(float(np.ptp(img)), 1e-9)


def _shapes(rng: np.random.Generator, im: Image.Image, n: int) -> None:
    d = ImageDraw.Draw(im)
    w, h = im.size
    for _ in range(n):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(w // 10, w // 2)), y0 + int(rng.integers(h // 10, h // 2))
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        k = rng.integers(0, 3)
        if k == 0:
            d.ellipse([x0, y0, x1, y1], fill=col)
        elif k == 1:
            d.rectangle([x0, y0, x1, y1], fill=col)
        else:
            d.polygon([(int(a), int(b)) for a, b in zip(rng.integers(0, w, 4), rng.integers(0, h, 4))], fill=col)


def natural(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Photo-like: colour-mixed pink noise, a lighting gradient, a few soft-edged objects."""
    base = np.stack([_pink(rng, h, w, rng.uniform(1.6, 2.6)) for _ in range(3)], -1) @ rng.dirichlet(np.ones(3), 3)
    gy, gx = np.mgrid[0:h, 0:w]
    a = rng.uniform(0, 2 * np.pi)
    light = (np.cos(a) * gx / w + np.sin(a) * gy / h)[..., None] * rng.uniform(0.2, 1, 3)
    im = Image.fromarray((np.clip(0.7 * base + 0.3 * light, 0, 1) * 255).astype(np.uint8))
    _shapes(rng, im, int(rng.integers(3, 10)))
    return im.filter(ImageFilter.GaussianBlur(1.2))


def gradient(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    gy, gx = np.mgrid[0:h, 0:w] / max(w, h)
    c0, c1, c2 = rng.uniform(0, 1, (3, 3))
    a = rng.uniform(0, 2 * np.pi)
    t = np.cos(a) * gx + np.sin(a) * gy
    t = (t - t.min()) / np.ptp(t)
    r = np.hypot(gx - rng.uniform(0, 1), gy - rng.uniform(0, 1))
    r /= r.max()
    img = (c0 * (1 - t)[..., None] + c1 * t[..., None]) * (1 - 0.5 * r[..., None]) + c2 * 0.5 * r[..., None]
    im = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    _shapes(rng, im, int(rng.integers(2, 8)))
    return im


def text_page(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    im = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(180, 256, 3)))
    d = ImageDraw.Draw(im)
    y = int(rng.integers(0, 20))
    while y < h:
        size = int(rng.integers(12, 40))
        words = " ".join(rng.choice(WORDS, int(rng.integers(2, 8))))
        d.text(
            (int(rng.integers(0, w // 4)), y),
            words,
            fill=tuple(int(c) for c in rng.integers(0, 120, 3)),
            font=_font(size),
        )
        y += size + int(rng.integers(2, 30))
    _shapes(rng, im, int(rng.integers(0, 3)))
    return im


def texture(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    kind = rng.integers(0, 3)
    if kind == 0:  # rough noise, two colours
        t = _pink(rng, h, w, rng.uniform(0.5, 1.5))[..., None]
        c = rng.uniform(0, 1, (2, 3))
        img = c[0] * (1 - t) + c[1] * t
    elif kind == 1:  # woven sine pattern + grain
        gy, gx = np.mgrid[0:h, 0:w]
        f = rng.uniform(0.02, 0.2, 2)
        ph = rng.uniform(0, 6, 2)
        img = (
            0.5
            + 0.25 * np.sin(gx * f[0] + ph[0])[..., None] * rng.uniform(0, 1, 3)
            + 0.25 * np.sin(gy * f[1] + ph[1] + gx * f[0] * rng.uniform(-1, 1))[..., None] * rng.uniform(0, 1, 3)
        )
        img = img + rng.normal(0, 0.05, img.shape)
    else:  # blurry mosaic + grain
        cells = rng.uniform(0, 1, (int(rng.integers(4, 20)), int(rng.integers(4, 20)), 3))
        img = np.asarray(Image.fromarray((cells * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)) / 255
        img = img + rng.normal(0, 0.08, img.shape)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))


GENERATORS: tuple[Callable[[np.random.Generator, int, int], Image.Image], ...] = (natural, gradient, text_page, texture)


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def webp(im: Image.Image, quality: int = 60) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "WEBP", quality=quality)
    return buf.getvalue()


def watermark(im: Image.Image) -> Image.Image:
    w, h = im.size
    overlay = Image.new("RGBA", im.size, (0, 0, 0, 0))
    ImageDraw.Draw(overlay).text(
        (w // 20, h - h // 6), "© truong-hoc.vn 2024", fill=(255, 255, 255, 170), font=_font(max(12, h // 14))
    )
    return Image.alpha_composite(im.convert("RGBA"), overlay).convert("RGB")


def with_exif_orientation(upright: Image.Image, orientation: int = 6) -> bytes:
    """JPEG whose pixels are stored rotated, with the EXIF tag that tells viewers to turn them upright."""
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 = "rotate 90° CW to view"
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


def crop_each_side(im: Image.Image, fraction: float) -> Image.Image:
    w, h = im.size
    dx, dy = round(fraction * w), round(fraction * h)
    return im.crop((dx, dy, w - dx, h - dy))


# Each transform turns the planted picture into the bytes a child's browser might receive.
TRANSFORMS: dict[str, Callable[[Image.Image], bytes]] = {
    "resize_half": lambda im: jpeg(im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS)),
    "resize_up_160pct": lambda im: png(im.resize((im.width * 8 // 5, im.height * 8 // 5), Image.Resampling.BICUBIC)),
    "thumbnail_160px": lambda im: jpeg(im.resize((160, round(160 * im.height / im.width)))),
    "jpeg_q20": lambda im: jpeg(im, 20),
    "webp_q60": lambda im: webp(im, 60),
    "crop_1pct_each_side": lambda im: jpeg(crop_each_side(im, 0.01)),
    "crop_5pct_area": lambda im: jpeg(crop_each_side(im, 0.0125)),  # 0.975² ≈ 95% of the area kept
    "brightness_plus_20pct": lambda im: jpeg(ImageEnhance.Brightness(im).enhance(1.2)),
    "contrast_minus_20pct": lambda im: jpeg(ImageEnhance.Contrast(im).enhance(0.8)),
    "watermark_text": lambda im: jpeg(watermark(im)),
    "grayscale": lambda im: jpeg(im.convert("L")),
    "rotate_90": lambda im: jpeg(im.transpose(Image.Transpose.ROTATE_90)),
    "rotate_180": lambda im: png(im.transpose(Image.Transpose.ROTATE_180)),
    "rotate_270": lambda im: jpeg(im.transpose(Image.Transpose.ROTATE_270)),
    "mirror": lambda im: jpeg(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
    "flip_vertical": lambda im: jpeg(im.transpose(Image.Transpose.FLIP_TOP_BOTTOM)),
    "exif_orientation_6": with_exif_orientation,
    "png_reencode": png,
}

# Real pictures that ship with Debian/pip/toolchain packages, if this machine has them (deduplicated).
_REAL_GLOBS = (
    "/root/.rustup/toolchains/*/share/doc/rust/html/embedded-book/assets/*.jp*g",
    "/usr/share/doc/**/*.jpg",
    "/usr/share/doc/**/*.jpeg",
    "/usr/share/doc/**/*.png",
    "/usr/share/icons/Adwaita/512x512/*/*.png",
    "/usr/share/pixmaps/*.png",
    "/usr/share/backgrounds/**/*.jpg",
    "/usr/share/wallpapers/**/*.jpg",
    "/root/.rustup/toolchains/*/share/doc/rust/html/**/*.png",
    sys.prefix + "/lib/python3*/site-packages/**/*.png",
)
REAL_PHOTOS = (
    "/root/.rustup/toolchains/*/share/doc/rust/html/embedded-book/assets/f3.jpg",
    "/root/.rustup/toolchains/*/share/doc/rust/html/embedded-book/assets/verify.jpeg",
)


def _real_files(patterns: tuple[str, ...], limit: int, min_size: int = 20_000) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern, recursive=True)):
            if len(out) >= limit:
                return out
            try:
                if os.path.getsize(path) < min_size:
                    continue
                data = open(path, "rb").read()
            except OSError:
                continue
            digest = hashlib.md5(data).hexdigest()
            if digest not in seen:
                seen.add(digest)
                out.append(path)
    return out


@pytest.fixture(scope="module")
def unrelated() -> list[tuple[str, bytes]]:
    """≥ 200 pictures unrelated to the planted ones: 240 generated (4 kinds) + real ones found on disk."""
    out = []
    for i in range(240):
        rng = np.random.default_rng(10_000 + i)
        gen = GENERATORS[i % len(GENERATORS)]
        w, h = int(rng.integers(160, 480)), int(rng.integers(160, 480))
        out.append((f"{gen.__name__}#{i}", jpeg(gen(rng, w, h), int(rng.integers(50, 95)))))
    planted = {hashlib.md5(open(p, "rb").read()).hexdigest() for p in _real_files(REAL_PHOTOS, 10)}
    for path in _real_files(_REAL_GLOBS, 80):
        data = open(path, "rb").read()
        if hashlib.md5(data).hexdigest() not in planted:  # the toolchains ship the planted photos twice
            out.append((path, data))
    return out


def planted_pictures() -> list[tuple[str, Image.Image]]:
    out = [(f"natural-seed{s}", natural(np.random.default_rng(s), 640, 480)) for s in (7, 8, 9)]
    for path in _real_files(REAL_PHOTOS, 2):
        out.append((os.path.basename(path), Image.open(path).convert("RGB")))
    return out


PLANTED = planted_pictures()

# ------------------------------------------------------------------------------- hashing


def test_exact_hashes_are_of_the_bytes() -> None:
    data = jpeg(natural(np.random.default_rng(1), 200, 150))
    h = hash_image_bytes(data)
    assert (h.md5, h.sha1, h.sha256) == (
        hashlib.md5(data).hexdigest(),
        hashlib.sha1(data).hexdigest(),
        hashlib.sha256(data).hexdigest(),
    )
    assert h.pdq is not None and len(h.pdq) == 64 and int(h.pdq, 16) >= 0
    assert h.quality == 100 and h.pdq_error is None
    assert len(h.pdq_dihedral) == 8 and h.pdq_dihedral[0] == h.pdq


def test_pdq_hex_uses_threatexchange_bit_order() -> None:
    """First bit of pdqhash's vector = most significant bit of the first hex digit (ThreatExchange form)."""
    im = natural(np.random.default_rng(2), 300, 300)
    rgb = np.asarray(im)
    vector, quality = pdqhash.compute(rgb)
    bits = "".join(str(int(b)) for b in vector)
    expected = f"{int(bits, 2):064x}"
    assert hash_image_bytes(png(im)).pdq == expected
    assert hash_image_bytes(png(im)).quality == quality


def test_dct_scaled_jpeg_decode_stays_close_to_full_size() -> None:
    """JPEGs at least 2 x max_side long decode at libjpeg's 1/2 scale (or less); smaller ones at full size."""
    data = jpeg(natural(np.random.default_rng(3), 2400, 1800), 95)
    full = hash_image_bytes(data, max_side=2400)
    scaled = hash_image_bytes(data)  # DEFAULT_MAX_SIDE = 1024: decoded at 1200x900
    assert max(pdq_distance(a, b) for a, b in zip(full.pdq_dihedral, scaled.pdq_dihedral)) <= 4
    assert full.quality == scaled.quality
    smaller = jpeg(natural(np.random.default_rng(3), 1600, 1200), 95)
    assert hash_image_bytes(smaller) == hash_image_bytes(smaller, max_side=1600)


def _png_with_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims width x height (a decompression bomb's calling card)."""
    data = bytearray(png(Image.new("L", (4, 4))))
    ihdr = 8 + 8  # signature, then length + "IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


@pytest.mark.parametrize(
    "name,data,error",
    [
        ("empty", b"", "undecodable"),
        ("not an image", b"<html><body>hello</body></html>", "undecodable"),
        ("truncated jpeg", jpeg(natural(np.random.default_rng(4), 300, 200))[:1500], "undecodable"),
        ("jpeg header only", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "undecodable"),
        ("8000x8000 png header", _png_with_size(8000, 8000), "too large"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else "",
)
def test_undecodable_images_get_no_pdq(name: str, data: bytes, error: str) -> None:
    h = hash_image_bytes(data)
    assert h.pdq is None and h.quality is None and h.pdq_dihedral == ()
    assert h.pdq_error is not None and h.pdq_error.startswith(error), h.pdq_error
    assert h.sha256 == hashlib.sha256(data).hexdigest()
    assert "object at" not in h.pdq_error  # no object reprs leak into logs


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1", "I", "F"])
def test_every_pixel_mode_hashes(mode: str) -> None:
    im = natural(np.random.default_rng(5), 200, 160)
    converted = im.convert(mode) if mode not in ("I;16", "I", "F") else im.convert("L").convert(mode)
    fmt = "TIFF" if mode in ("I;16", "I", "F", "CMYK") else "PNG"
    buf = io.BytesIO()
    converted.save(buf, fmt)
    h = hash_image_bytes(buf.getvalue())
    assert h.pdq is not None, h.pdq_error
    assert pdq_distance(h.pdq, hash_image_bytes(png(im)).pdq) <= 40


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (64, 64), (1, 900)])
def test_tiny_and_flat_pictures_have_low_quality(size: tuple[int, int]) -> None:
    h = hash_image_bytes(png(Image.new("RGB", size, (120, 130, 140))))
    assert h.pdq is not None and h.quality is not None and h.quality < ih.DEFAULT_MIN_QUALITY


def test_animated_gif_uses_first_frame() -> None:
    frames = [natural(np.random.default_rng(s), 160, 120).convert("P") for s in (11, 12)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert pdq_distance(hash_image_bytes(buf.getvalue()).pdq, hash_image_bytes(png(frames[0])).pdq) <= 8


def test_exif_orientation_is_applied() -> None:
    upright = natural(np.random.default_rng(6), 400, 300)
    h = hash_image_bytes(with_exif_orientation(upright))
    assert pdq_distance(h.pdq, hash_image_bytes(jpeg(upright)).pdq) <= 8


def test_async_and_process_pool_give_the_same_hashes() -> None:
    from concurrent.futures import ProcessPoolExecutor

    data = jpeg(natural(np.random.default_rng(7), 300, 200))
    expected = hash_image_bytes(data)
    assert asyncio.run(ih.hash_image_bytes_async(data)) == expected
    with ProcessPoolExecutor(1) as pool:
        assert asyncio.run(ih.hash_image_bytes_async(data, executor=pool)) == expected


def test_imagehash_file_json_and_module_cli(tmp_path: Path) -> None:
    pic = tmp_path / "pic.jpg"
    pic.write_bytes(jpeg(natural(np.random.default_rng(8), 300, 200)))
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"nope")
    doc = imagehash_file_json(str(pic))
    assert set(doc) == {"file", "md5", "sha1", "sha256", "pdq", "quality"}
    assert doc["md5"] == hashlib.md5(pic.read_bytes()).hexdigest() and doc["quality"] == 100
    assert imagehash_file_json(str(junk))["pdq"] is None
    with pytest.raises(OSError):
        imagehash_file_json(str(tmp_path / "missing.jpg"))
    out = subprocess.run(
        [sys.executable, "-m", "filterproxy.match.imagehash", str(pic), str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert out.returncode == 1 and lines[0] == doc and "error" in lines[1]


# ------------------------------------------------------------------------------- planted picture vs the world


# Copies that PDQ itself does not match: the reference (pdqhash on the full-size picture) puts them beyond
# the match distance, so ours must not be asked to (the old 512 px downscale blurred f3's crop to 24 bits).
BEYOND_PDQ = {("f3.jpg", "crop_5pct_area")}


def _closest_reference_distance(planted: bytes, copy: bytes) -> int:
    def variants(data: bytes) -> list[str]:
        rgb = np.ascontiguousarray(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
        return [np.packbits(np.asarray(v, dtype=np.uint8)).tobytes().hex() for v in pdqhash.compute_dihedral(rgb)[0]]

    return min(pdq_distance(variants(planted)[0], v) for v in variants(copy))


@pytest.mark.parametrize("name,picture", PLANTED, ids=[p[0] for p in PLANTED])
def test_transformed_copies_of_a_planted_picture_match(name: str, picture: Image.Image) -> None:
    planted = hash_image_bytes(jpeg(picture))
    assert planted.quality is not None and planted.quality >= ih.DEFAULT_MIN_QUALITY
    index = ImageHashIndex()
    index.add("pdq", planted.pdq, 42)
    index.freeze()
    rows, misses = [], []
    for tname, transform in TRANSFORMS.items():
        h = hash_image_bytes(transform(picture))
        m = index.match(h)
        rows.append(
            f"{tname:24} distance={m.distance if m else '-':>3} variant={m.variant if m else '-'} quality={h.quality}"
        )
        best = min(pdq_distance(v, planted.pdq) for v in h.pdq_dihedral) if h.pdq_dihedral else None
        if (name, tname) in BEYOND_PDQ:
            reference = _closest_reference_distance(jpeg(picture), transform(picture))
            assert reference > ih.DEFAULT_MAX_DISTANCE and best is not None and abs(best - reference) <= 8
        elif m is None or m.record != 42 or m.kind != "pdq":
            misses.append(f"{tname} (closest variant {best})")
    print(
        f"\n{name}: {len(TRANSFORMS) - len(misses)}/{len(TRANSFORMS)} transformed copies matched\n  "
        + "\n  ".join(rows)
    )
    assert not misses, f"false negatives for {name}: {misses}"


def test_unrelated_pictures_do_not_match_the_planted_ones(unrelated: list[tuple[str, bytes]]) -> None:
    assert len(unrelated) >= 200
    index = ImageHashIndex()
    planted = [hash_image_bytes(jpeg(p)) for _, p in PLANTED]
    for i, h in enumerate(planted):
        index.add("pdq", h.pdq, i)
        index.add("md5", h.md5, i)
    index.freeze()
    false_positives, closest = [], 256
    for name, data in unrelated:
        h = hash_image_bytes(data)
        assert h.pdq is not None, (name, h.pdq_error)
        m = index.match(h, min_quality=0)  # stricter than production: low-quality hashes count too
        if m is not None:
            false_positives.append((name, m))
        closest = min(closest, *(index.nearest(v, 255)[0] for v in h.pdq_dihedral))
    print(
        f"\n{len(unrelated)} unrelated pictures vs {len(planted)} planted: "
        f"{len(false_positives)} false positives, closest distance {closest}"
    )
    for fp in false_positives:
        print("  FALSE POSITIVE", fp)
    assert not false_positives
    assert closest > 31


def test_crop_sensitivity_is_what_pdq_is_known_for() -> None:
    """PDQ tolerates only small crops: ~1% per side matches, 5% off one side does not. Printed for the docs."""
    picture = PLANTED[0][1]
    base = hash_image_bytes(jpeg(picture)).pdq
    curve = {}
    for frac in (0.005, 0.01, 0.0125, 0.02, 0.025, 0.05):
        curve[f"{frac:.1%} each side"] = pdq_distance(base, hash_image_bytes(jpeg(crop_each_side(picture, frac))).pdq)
    w, h = picture.size
    curve["5% off the right"] = pdq_distance(base, hash_image_bytes(jpeg(picture.crop((0, 0, w - w // 20, h)))).pdq)
    print("\ncrop → PDQ distance:", curve)
    assert curve["1.0% each side"] <= 31 and curve["1.2% each side"] <= 31
    assert curve["5.0% each side"] > curve["1.0% each side"]


# ------------------------------------------------------------------------------- list parsing

MD5 = "d41d8cd98f00b204e9800998ecf8427e"
SHA1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
PDQ = "f8f8f0cee0f4a84f06370a32038f67f0b36e2ed596623e1d33e6339c4e9c9b22"


@pytest.mark.parametrize(
    "line,declared,expected",
    [
        (f"md5:{MD5}", None, ("md5", MD5, None)),
        (f"MD5:{MD5.upper()}", None, ("md5", MD5, None)),
        (f"sha1:{SHA1},item-7", None, ("sha1", SHA1, "item-7")),
        (f"sha256:{SHA256}, case 2024/17 ", None, ("sha256", SHA256, "case 2024/17")),
        (f'pdq:{PDQ},"id, with comma"', None, ("pdq", PDQ, "id, with comma")),
        (f"pdq: {PDQ}", None, ("pdq", PDQ, None)),
        (MD5, None, ("md5", MD5, None)),
        (SHA1, None, ("sha1", SHA1, None)),
        (SHA256, None, ("sha256", SHA256, None)),  # bare 64 digits: sha256 unless declared
        (PDQ, "pdq", ("pdq", PDQ, None)),
        (f"{PDQ},x1", "pdq", ("pdq", PDQ, "x1")),
        (f"md5:{MD5}", "pdq", ("md5", MD5, None)),  # an explicit kind beats the declaration
        (f"{PDQ},pdq,iwf,4711", None, ("pdq", PDQ, "4711")),  # CSV
        (f"{MD5},md5,,", None, ("md5", MD5, None)),
        (f"{SHA1},SHA1", None, ("sha1", SHA1, None)),
        (f"  {SHA256} , sha256 , ncmec , a b ", None, ("sha256", SHA256, "a b")),
    ],
)
def test_list_line_forms(tmp_path: Path, line: str, declared: str | None, expected: tuple) -> None:
    p = tmp_path / "list.txt"
    p.write_text(f"# a comment\n\n{line}\n")
    assert list(parse_imagehash_list(str(p), kind=declared)) == [(*expected, 3)]


def test_csv_with_header_keeps_list_ids(tmp_path: Path) -> None:
    p = tmp_path / "hashes.csv"
    p.write_text(f"hash,kind,list_id,item_id\r\n{PDQ},pdq,iwf,1\r\n{MD5},md5,ncmec,\r\n{SHA1},sha1\r\n")
    entries = list(parse_imagehash_entries(str(p)))
    assert [(e.kind, e.item_id, e.list_id, e.line) for e in entries] == [
        ("pdq", "1", "iwf", 2),
        ("md5", None, "ncmec", 3),
        ("sha1", None, None, 4),
    ]


def test_declaration_comment_and_bom(tmp_path: Path) -> None:
    p = tmp_path / "pdq.txt"
    p.write_bytes(f"\ufeff# exported 2024-05-01\n# kind: pdq\n{PDQ}\n{PDQ.upper()},x\n# kind: md5\n{SHA256}\n".encode())
    assert [e[0] for e in parse_imagehash_list(str(p))] == ["pdq", "pdq", "pdq"]  # late declarations ignored
    p.write_bytes(f"\ufeff{MD5}\n".encode())
    assert list(parse_imagehash_list(str(p))) == [("md5", MD5, None, 1)]


@pytest.mark.parametrize(
    "line,declared,why",
    [
        ("hello world", None, "not a hash"),
        ("abc123", None, "bare hash of 6 hex digits"),
        (f"md4:{MD5}", None, "unknown hash kind 'md4'"),
        (f"md5:{MD5}0", None, "expected 32 hex digits for md5, got 33"),
        (f"sha1:{SHA1[:-1]}z", None, "non-hex character 'z'"),
        (f"pdq:{PDQ[:60]}", None, "expected 64 hex digits for pdq, got 60"),
        (MD5, "pdq", "expected 64 hex digits for pdq, got 32"),
        (f"{MD5},md5,l,i,extra", None, "CSV row has 5 fields"),
        (f"md5:{MD5},a,b", None, "3 comma-separated fields"),
        (f"{PDQ[:63]}g,pdq,l,i", None, "non-hex character 'g'"),
        ('"unterminated', None, "not a hash"),
    ],
)
def test_bad_lines_name_file_line_and_expectation(tmp_path: Path, line: str, declared: str | None, why: str) -> None:
    p = tmp_path / "bad.txt"
    p.write_text(f"md5:{MD5}\n{line}\n")
    with pytest.raises(ImageHashListError) as exc:
        list(parse_imagehash_list(str(p), kind=declared))
    assert str(exc.value).startswith(f"{p}:2: ") and why in str(exc.value), str(exc.value)
    assert isinstance(exc.value, ValueError) and exc.value.line == 2


def test_skip_errors_yields_messages_and_goes_on(tmp_path: Path) -> None:
    p = tmp_path / "mixed.txt"
    p.write_bytes(
        b"\n".join(
            [
                f"md5:{MD5}".encode(),
                b"junk",
                b"\xff\xfe not utf-8",
                f"hash,kind\n{SHA1}".encode(),
                f"pdq:{PDQ}".encode(),
            ]
        )
        + b"\n"
    )
    items = list(parse_imagehash_list(str(p), skip_errors=True))
    errors = [i for i in items if isinstance(i, str)]
    entries = [i for i in items if not isinstance(i, str)]
    assert [e[:2] for e in entries] == [("md5", MD5), ("sha1", SHA1), ("pdq", PDQ)]
    assert errors == [
        f"{p}:2: not a hash: 'junk'; {ih._EXPECTED}",
        f"{p}:3: line is not UTF-8 text",
        f"{p}:4: CSV header row after the first entry",
    ]


def test_lists_loader_reads_image_hash_lists(tmp_path: Path) -> None:
    """The list store's imagehash parser (lists/parsers.py) consumes this module's output."""
    from filterproxy.lists import parsers

    p = tmp_path / "img.txt"
    p.write_text(f"md5:{MD5},i1\nnot-a-hash\npdq:{PDQ}\n")
    stats = parsers.ParseStats(str(p))
    entries = list(parsers.parse_imagehash(str(p), stats))
    assert [e.value for e in entries] == [f"md5:{MD5}", f"pdq:{PDQ}"] and entries[0].extra == "i1"
    assert stats.skipped == 1 and stats.errors[0].startswith(f"{p}:2: ")


def test_unknown_declared_kind_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown declared hash kind"):
        list(parse_imagehash_list(str(tmp_path), kind="crc32"))
    with pytest.raises(OSError):
        list(parse_imagehash_list(str(tmp_path / "missing.txt")))


# ------------------------------------------------------------------------------- index


def _hashes_of(data: bytes) -> ImageHashes:
    return hash_image_bytes(data)


def test_exact_matches_and_precedence() -> None:
    data = jpeg(natural(np.random.default_rng(20), 300, 200))
    h = _hashes_of(data)
    other = _hashes_of(jpeg(natural(np.random.default_rng(21), 300, 200)))
    index = ImageHashIndex()
    index.add("md5", h.md5, 1)
    index.add("sha1", h.sha1.upper(), 2)
    index.add("pdq", h.pdq, 3)
    index.add("md5", other.md5, 4)
    index.add("md5", h.md5, 5)  # a duplicate from another list: the first record wins
    index.freeze()
    assert index.match(h) == ImageMatch("sha1", 0, 2)  # sha256 > sha1 > md5 > pdq
    assert index.match(other) == ImageMatch("md5", 0, 4)
    pdq_only = ImageHashes("0" * 32, "0" * 40, "0" * 64, h.pdq, h.quality, h.pdq_dihedral)
    assert index.match(pdq_only) == ImageMatch("pdq", 0, 3, "original")
    assert index.match(ImageHashes("0" * 32, "0" * 40, "0" * 64, None, None)) is None
    assert len(index) == 5


def test_exact_lookup_with_shared_prefixes() -> None:
    """Digests that share their first 8 bytes (the sort key) are still told apart."""
    index = ImageHashIndex()
    for i in range(50):
        index.add("sha256", "ab" * 8 + f"{i:048x}", i)
    index.freeze()
    for i in range(50):
        h = ImageHashes("0" * 32, "0" * 40, "ab" * 8 + f"{i:048x}", None, None)
        assert index.match(h) == ImageMatch("sha256", 0, i)
    assert index.match(ImageHashes("0" * 32, "0" * 40, "ab" * 8 + "f" * 48, None, None)) is None


def test_min_quality_gates_pdq_but_not_exact() -> None:
    h = _hashes_of(png(Image.new("RGB", (100, 100), (50, 60, 70))))
    index = ImageHashIndex()
    index.add("pdq", h.pdq, 1)
    index.freeze()
    assert h.quality < 50
    assert index.match(h) is None
    assert index.match(h, min_quality=0) == ImageMatch("pdq", 0, 1, "original")


def test_index_lifecycle_errors() -> None:
    index = ImageHashIndex()
    with pytest.raises(ValueError, match="unknown hash kind"):
        index.add("crc", "00", 1)
    with pytest.raises(ValueError, match="expected 32 hex digits"):
        index.add("md5", "00", 1)
    with pytest.raises(ValueError, match="expected"):
        index.add_many("pdq", np.zeros((3, 31), np.uint8), [1, 2, 3])
    with pytest.raises(RuntimeError, match="freeze"):
        index.nearest(PDQ)
    index.freeze()
    with pytest.raises(RuntimeError, match="frozen"):
        index.add("md5", MD5, 1)
    assert index.nearest(PDQ) is None and len(index) == 0
    with pytest.raises(ValueError):
        index.nearest("xyz")


def _flip_bits(rng: np.random.Generator, h: np.ndarray, n: int) -> np.ndarray:
    bits = np.unpackbits(h)
    bits[rng.choice(256, n, replace=False)] ^= 1
    return np.packbits(bits)


def _brute_nearest(hashes: np.ndarray, q: np.ndarray, max_distance: int) -> tuple[int, int] | None:
    d = np.bitwise_count(hashes.view(np.uint64) ^ q.view(np.uint64)).sum(axis=1)
    k = int(np.argmin(d))  # first (lowest record) among equals
    return (int(d[k]), k) if d[k] <= max_distance else None


def _python_nearest(ints: list[int], q: int, max_distance: int) -> tuple[int, int] | None:
    best = None
    for i, h in enumerate(ints):
        d = (h ^ q).bit_count()
        if d <= max_distance and (best is None or d < best[0]):
            best = (d, i)
    return best


@pytest.mark.parametrize("n", [1_000, 30_000])  # below and above the brute-force cut-over
def test_index_agrees_with_brute_force(n: int) -> None:
    rng = np.random.default_rng(n)
    hashes = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    # plant clusters: entries that are near-duplicates of each other at distances 0..40
    for d in range(41):
        hashes[d + 1] = _flip_bits(rng, hashes[0], d)
    index = ImageHashIndex()
    index.add_many("pdq", hashes[: n // 2], np.arange(n // 2))
    for i in range(n // 2, n):
        index.add("pdq", hashes[i].tobytes().hex(), i)
    index.freeze()
    queries = [_flip_bits(rng, hashes[rng.integers(n)], d) for d in range(41) for _ in range(3)]
    queries += [rng.integers(0, 256, 32, dtype=np.uint8) for _ in range(20)]
    queries.append(hashes[0])
    ints = [int.from_bytes(h.tobytes(), "big") for h in hashes] if n <= 1_000 else None
    disagreements = []
    for q in queries:
        for max_distance in (0, 7, 8, 15, 16, 23, 24, 31, 32, 47, 63, 64, 100):
            got = index.nearest(q.tobytes(), max_distance)
            want = _brute_nearest(hashes, q, max_distance)
            if ints is not None:
                assert _python_nearest(ints, int.from_bytes(q.tobytes(), "big"), max_distance) == want
            if got != want:
                disagreements.append((max_distance, got, want))
    assert not disagreements, disagreements[:10]


def test_dihedral_match_reports_the_variant() -> None:
    rng = np.random.default_rng(5)
    hashes = rng.integers(0, 256, (10_000, 32), dtype=np.uint8)
    picture = natural(np.random.default_rng(30), 400, 300)
    stored = _hashes_of(jpeg(picture.transpose(Image.Transpose.ROTATE_90)))
    index = ImageHashIndex()
    index.add_many("pdq", hashes, np.arange(10_000) + 100)
    index.add("pdq", stored.pdq, 7)
    index.freeze()
    m = index.match(_hashes_of(jpeg(picture)))
    assert m is not None and m.kind == "pdq" and m.record == 7 and m.variant in DIHEDRAL_NAMES[1:]
    assert m.distance <= 31
    assert index.stats()["pdq"] == 10_001 and index.stats()["pdq_bytes_per_hash"] > 32


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint64])
def test_numpy1_popcount_fallback_agrees(dtype: type) -> None:
    a = np.random.default_rng(1).integers(0, np.iinfo(dtype).max, (50, 4), dtype=dtype, endpoint=True)
    assert np.array_equal(ih._popcount_table(a), np.bitwise_count(a))
