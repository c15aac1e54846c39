#!/usr/bin/env python3
"""Image-hash benchmark: PDQ hashing time per picture, and PDQ matching against 10k–1M (10M) hashes.

    .venv/bin/python bench/bench_imagehash.py [--big] [--sizes 10000,100000,1000000] [--cpu N] [--json FILE]

1. Hashing: ``hash_image_bytes`` (MD5+SHA-1+SHA-256, decode incl. JPEG DCT scaling above 2048 px, EXIF,
   PDQ with its 8 dihedral variants) on generated photo-like JPEGs of 256 px, 1 MP and 12 MP and on real
   photographs (skimage.data's, a 1 MP JPEG of one, the Debian package mate-backgrounds' nature photos),
   each with its bit distance to the reference: ``pdqhash.compute_dihedral`` on the full-size RGB picture
   (max and mean over the 8 dihedral hashes).
2. Matching (bench/imagehash_matching.py): N PDQ hashes, uniform and clustered (bench/pdq_corpus.py),
   written as an imagehash list and compiled like the server does (child process, cached by
   fingerprint); a child that only maps the index answers pictures (8 dihedral variants each, what the
   proxy does per picture): p50/p99 and its RSS; recall against a numpy brute force on a sample, and
   the brute force's time per picture, in the same run; 10,000 hashes added + 10,000 removed
   (``with_changes``) and the compaction. ``--big`` adds 10M hashes (~1.4 GB of index files, ~2 min).
   ``--write-list PATH --count N`` (or ``bench/pdq_corpus.py``) writes such a list (and planted queries) alone.
3. ``--update`` (bench/imagehash_update.py): at each size, a list compiled, then 10,000 lines inserted and
   1,000 removed and compiled again (the image index as a delta over the previous base), against the same
   edited list compiled in full; added, kept and removed hashes checked on a sample.

Everything runs pinned to one core (``--cpu``, default the last one). Targets: hashing a 1 MP JPEG
<= 20 ms; 10M hashes: match p50 <= 5 ms, p99 <= 20 ms, build <= 60 s, query RSS <= 400 MB, recall 100%.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from filterproxy.match.imagehash import hash_image_bytes  # noqa: E402

TARGET_HASH_1MP_MS = 20.0


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p))


# ---------------------------------------------------------------------------------------- pictures


def photo_like(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Pink noise (1/f², like photos) at up to 1 MP, objects, upscaled to w×h, plus sensor grain."""
    bw, bh = min(w, 1024), max(1, round(min(w, 1024) * h / w))
    fy, fx = np.fft.fftfreq(bh)[:, None], np.fft.rfftfreq(bw)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1
    chans = []
    for _ in range(3):
        spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f
        c = np.fft.irfft2(spec, s=(bh, bw))
        chans.append((c - c.min()) / np.ptp(c))
    base = np.stack(chans, -1) @ rng.dirichlet(np.ones(3), 3)
    im = Image.fromarray((base * 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(6):
        x, y = int(rng.integers(0, bw)), int(rng.integers(0, bh))
        d.ellipse(
            [x, y, x + int(rng.integers(20, bw // 2)), y + int(rng.integers(20, bh // 2))],
            fill=tuple(int(c) for c in rng.integers(0, 256, 3)),
        )
    im = im.filter(ImageFilter.GaussianBlur(1.5))
    if (bw, bh) != (w, h):
        im = im.resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.int16) + rng.normal(0, 4, (h, w, 1)).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


SKIMAGE_PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg")
MATE_PHOTOS = Path("/usr/share/backgrounds/mate/nature")  # Debian package mate-backgrounds: 12 photos, 1280-2560 px


def jpeg_bytes(im: Image.Image, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def bench_pictures() -> list[tuple[str, str, bytes]]:
    """(set, label, bytes): generated JPEGs, then real photographs as shipped (and one as a 1 MP JPEG)."""
    import skimage.data  # the test extra (pip install -e .[test]); its wheel bundles the photographs

    rng = np.random.default_rng(1)
    out = [
        ("generated", f"{label} JPEG {w}x{h}", jpeg_bytes(photo_like(rng, w, h)))
        for label, (w, h) in (("256 px", (256, 192)), ("1 MP", (1152, 864)), ("12 MP", (4000, 3000)))
    ]
    sk = Path(skimage.data.__file__).parent
    for name in SKIMAGE_PHOTOS:
        data = (sk / name).read_bytes()
        w, h = Image.open(io.BytesIO(data)).size
        out.append(("skimage.data", f"{name} {w}x{h}", data))
    astronaut = Image.open(sk / "astronaut.png").resize((1024, 1024), Image.Resampling.LANCZOS)
    out.append(("skimage.data", "1 MP photo JPEG 1024x1024 (astronaut, upscaled)", jpeg_bytes(astronaut)))
    mate = sorted(MATE_PHOTOS.glob("*.jpg"))
    if not mate:
        raise SystemExit(f"no photos in {MATE_PHOTOS}: install the Debian package mate-backgrounds")
    for path in mate:
        data = path.read_bytes()
        w, h = Image.open(io.BytesIO(data)).size
        out.append(("mate-backgrounds", f"{path.name} {w}x{h}", data))
    return out


def reference_bits(data: bytes) -> list[int]:
    """Bit distance of each of our 8 dihedral hashes to pdqhash's on the upright full-size RGB picture."""
    import pdqhash
    from PIL import ImageOps

    rgb = np.ascontiguousarray(np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")))
    vectors, _quality = pdqhash.compute_dihedral(rgb)
    ours = hash_image_bytes(data).pdq_dihedral
    return [
        (int(np.packbits(np.asarray(v, dtype=np.uint8)).tobytes().hex(), 16) ^ int(h, 16)).bit_count()
        for v, h in zip(vectors, ours)
    ]


def bench_hashing(repeats: int) -> list[dict]:
    rows = []
    for kind, label, data in bench_pictures():
        w, h = Image.open(io.BytesIO(data)).size
        hash_image_bytes(data)  # warm-up
        n = repeats if w * h < 4e6 else max(5, repeats // 4)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            hash_image_bytes(data)
            times.append((time.perf_counter() - t) * 1000)
        bits = reference_bits(data)
        rows.append(
            {
                "set": kind,
                "picture": label,
                "bytes": len(data),
                "runs": n,
                "p50_ms": statistics.median(times),
                "mean_ms": statistics.fmean(times),
                "ref_bits_max": max(bits),
                "ref_bits_mean": statistics.fmean(bits),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------- matching

sys.path.insert(0, str(Path(__file__).parent))
import imagehash_matching  # noqa: E402  (the matching section lives there: list → snapshot → index)
import imagehash_update  # noqa: E402  (the --update section: a changed list compiled as a delta)

# the issue's: a query (one hash) p50 <= 5 ms, p99 <= 20 ms; also held per picture (its 8 dihedral hashes)
TARGETS_10M = {
    "match1_p50_ms": 5.0,
    "match1_p99_ms": 20.0,
    "match8_p50_ms": 5.0,
    "match8_p99_ms": 20.0,
    "build_s": 60.0,
    "rss_mb": 400.0,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated index sizes")
    ap.add_argument("--big", action="store_true", help="also 10,000,000 hashes (~1.4 GB of files, ~2 min)")
    ap.add_argument("--queries", type=int, default=2000, help="pictures per size (half of them above 1M)")
    ap.add_argument("--workdir", help="folder for the generated lists and snapshots (default: the temp folder)")
    ap.add_argument("--write-list", metavar="PATH", help="only write a generated PDQ list (+ PATH.queries) and exit")
    ap.add_argument("--count", type=int, default=10_000_000, help="hashes in the --write-list list")
    ap.add_argument("--hash-repeats", type=int, default=40)
    ap.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1, help="pin to this core (-1: don't)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--update", action="store_true", help="also compile +10,000 −1,000 lines as a delta, per size")
    args = ap.parse_args()
    if args.write_list:  # the benchmark's list alone, e.g. for `filterproxy imagehash --list imagehash:PATH`
        return imagehash_matching.pdq_corpus.main(["--write-list", args.write_list, "--count", str(args.count)])
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.big:
        sizes.append(10_000_000)
    started = time.perf_counter()
    print(
        f"filterproxy image-hash bench — Python {sys.version.split()[0]}, numpy {np.__version__}, "
        f"core {args.cpu if args.cpu >= 0 else 'any'}"
    )

    print("\n== PDQ hashing (bytes → md5/sha1/sha256 + decode + PDQ×8), one core; bits = distance to pdqhash")
    hashing = bench_hashing(args.hash_repeats)
    for r in hashing:
        print(
            f"  {r['set']:16} {r['picture']:48} {r['bytes'] / 1024:6.0f} KiB   p50 {r['p50_ms']:6.1f} ms   "
            f"mean {r['mean_ms']:6.1f} ms   bits max {r['ref_bits_max']:2d} mean {r['ref_bits_mean']:4.2f}   "
            f"({r['runs']} runs)"
        )
    for kind in dict.fromkeys(r["set"] for r in hashing):
        rs = [r for r in hashing if r["set"] == kind]
        worst, mean = max(r["ref_bits_max"] for r in rs), statistics.fmean(r["ref_bits_mean"] for r in rs)
        print(
            f"  {kind}: {len(rs)} pictures, distance to the reference over their 8 dihedral hashes: "
            f"max {worst} bits, mean {mean:.2f}"
        )

    print("\n== PDQ matching, max distance 31 (uniform + clustered hashes, the index loaded in a child process)")
    matching = []
    for n in sizes:
        nq = args.queries if n <= 1_000_000 else max(300, args.queries // 2)
        r = imagehash_matching.bench_matching(n, nq, args.cpu, args.workdir)
        matching.append(r)
        imagehash_matching.print_row(r)

    updates = []
    if args.update:
        print("\n== list update: +10,000 −1,000 lines compiled as a delta vs in full (child process each)")
        for n in sizes:
            updates.append(imagehash_update.bench_update(n, args.workdir))
            imagehash_update.print_row(updates[-1])

    print("\n== targets")
    ok = True
    one_mp = next(r for r in hashing if r["picture"].startswith("1 MP"))
    verdict = one_mp["p50_ms"] <= TARGET_HASH_1MP_MS
    ok &= verdict
    print(
        f"  hash a 1 MP JPEG <= {TARGET_HASH_1MP_MS:g} ms: {one_mp['p50_ms']:.1f} ms  {'OK' if verdict else 'MISSED'}"
    )
    for r in matching:
        recall_ok = r["recall_found"] == r["recall_expected"] and r["changes_wrong"] == 0
        ok &= recall_ok
        print(f"  {r['hashes']:,} hashes: recall 100% (also after changes)  {'OK' if recall_ok else 'MISSED'}")
        if r["hashes"] == 10_000_000:
            for key, limit in TARGETS_10M.items():
                verdict = r[key] <= limit
                ok &= verdict
                print(f"  10M hashes: {key} <= {limit:g}: {r[key]:.2f}  {'OK' if verdict else 'MISSED'}")
    for r in updates:
        verdict = r["path"] == "delta" and not any(r["wrong"].values())
        ok &= verdict
        print(f"  {r['hashes']:,} hashes, list update: delta path, 0 wrong answers  {'OK' if verdict else 'MISSED'}")
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"hashing": hashing, "matching": matching, "update": updates}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
