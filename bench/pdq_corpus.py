#!/usr/bin/env python3
"""Synthetic PDQ hash lists shaped like real ones, for the image-hash bench and tests.

    .venv/bin/python bench/pdq_corpus.py --write-list PATH [--count 10000000] [--queries 2000] [--seed 0]

writes ``PATH`` (``pdq:<hex>,<item id>`` lines, the imagehash list format) and ``PATH.queries``
(``<hex> <expected distance or -1>`` lines: edited copies of listed hashes, within 0..40 bits, and
unrelated ones). Real lists cluster, so the corpus mixes (:func:`make_corpus`):

* 50% uniform random hashes;
* 30% families of near-duplicates (2–40 members, each within 0–40 bits of the family's centre);
* 20% groups of *similar* pictures (20–2,000 members) that share many bits with a template: half the
  groups share whole 32-bit words (same layout, e.g. a banner: crowded buckets in the index), half
  share a random 55–80% of the bits.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

_CHUNK = 1 << 20


def flip(rng: np.random.Generator, hashes: np.ndarray, counts: np.ndarray, exact: bool = True) -> np.ndarray:
    """Each row with ``counts[i]`` random bits flipped: distinct bits (exactly that distance) when
    ``exact``, else drawn with replacement (a pair drawn twice cancels; fast, for millions of rows)."""
    out = hashes.copy()
    kmax = int(counts.max()) if len(counts) else 0
    if kmax == 0:
        return out
    for s in range(0, len(out), _CHUNK // 4):
        e = min(len(out), s + _CHUNK // 4)
        if exact:  # the first k of a random ordering of the 256 bits
            pos = np.argsort(rng.random((e - s, 256), dtype=np.float32), axis=1)[:, :kmax]
        else:
            pos = rng.integers(0, 256, (e - s, kmax))
        take = np.arange(kmax)[None, :] < counts[s:e, None]
        rows = np.broadcast_to(np.arange(s, e)[:, None], pos.shape)[take]
        cols = pos[take]
        np.bitwise_xor.at(out, (rows, cols >> 3), (0x80 >> (cols & 7)).astype(np.uint8))
    return out


def _sizes(rng: np.random.Generator, total: int, low: int, high: int) -> np.ndarray:
    """Group sizes in [low, high] (log-uniform: many small groups, a few big ones) summing to ``total``."""
    out: list[np.ndarray] = []
    left = total
    while left > 0:
        s = np.exp(rng.uniform(np.log(low), np.log(high + 1), max(16, left // low))).astype(np.int64)
        c = np.cumsum(s)
        s = s[: int(np.searchsorted(c, left)) + 1]
        s[-1] -= max(0, int(s.sum()) - left)
        out.append(s[s > 0])
        left -= int(out[-1].sum())
    return np.concatenate(out)


def make_corpus(n: int, seed: int = 0) -> np.ndarray:
    """(n, 32) uint8 PDQ-like hashes: uniform, near-duplicate families and similar-picture groups, shuffled."""
    rng = np.random.default_rng(seed)
    n_fam, n_sim = int(n * 0.3), int(n * 0.2)
    n_uni = n - n_fam - n_sim
    parts = [rng.integers(0, 256, (n_uni, 32), dtype=np.uint8)]
    if n_fam:
        sizes = _sizes(rng, n_fam, 2, 40)
        centres = rng.integers(0, 256, (len(sizes), 32), dtype=np.uint8)
        members = np.repeat(centres, sizes, axis=0)
        parts.append(flip(rng, members, rng.integers(0, 41, len(members)), exact=False))
    if n_sim:
        sizes = _sizes(rng, n_sim, 20, 2000)
        groups = np.repeat(np.arange(len(sizes)), sizes)
        templates = rng.integers(0, 256, (len(sizes), 32), dtype=np.uint8)
        # per group: a mask of shared bits; even groups share 2–4 whole words, odd ones 55–80% of the bits
        masks = np.zeros((len(sizes), 256), dtype=bool)
        for g in range(len(sizes)):
            if g % 2 == 0:
                words = rng.choice(8, int(rng.integers(2, 5)), replace=False)
                for w in words:
                    masks[g, w * 32 : (w + 1) * 32] = True
            else:
                masks[g] = rng.random(256) < rng.uniform(0.55, 0.8)
        packed = np.packbits(masks, axis=1)
        sim = np.empty((len(groups), 32), dtype=np.uint8)
        for s in range(0, len(groups), _CHUNK):
            g = groups[s : s + _CHUNK]
            noise = rng.integers(0, 256, (len(g), 32), dtype=np.uint8)
            sim[s : s + _CHUNK] = (templates[g] & packed[g]) | (noise & ~packed[g])
        parts.append(sim)
    out = np.concatenate(parts)
    return out[rng.permutation(n)]


def make_queries(hashes: np.ndarray, count: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(count, 32) queries and the planted distance of each (-1: unrelated): 3/4 edited copies of listed
    hashes (0–31 bits for most, 32–40 for some), 1/4 random."""
    rng = np.random.default_rng(seed)
    k = count * 3 // 4
    src = hashes[rng.integers(0, len(hashes), k)]
    dist = np.where(rng.random(k) < 0.85, rng.integers(0, 32, k), rng.integers(32, 41, k))
    edited = flip(rng, src, dist)
    unrelated = rng.integers(0, 256, (count - k, 32), dtype=np.uint8)
    planted = np.concatenate([dist, np.full(count - k, -1)])
    order = rng.permutation(count)
    return np.concatenate([edited, unrelated])[order], planted[order]


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def hex_rows(hashes: np.ndarray) -> np.ndarray:
    """(n, 64) uint8 ASCII hex of each row (vectorised)."""
    out = np.empty((len(hashes), 64), dtype=np.uint8)
    out[:, 0::2] = _HEX[hashes >> 4]
    out[:, 1::2] = _HEX[hashes & 15]
    return out


def write_list(path: str | Path, hashes: np.ndarray) -> None:
    """``pdq:<hex>,i<9-digit number>`` lines (the imagehash list format with item ids), written in chunks."""
    with open(path, "wb") as f:
        f.write(b"# synthetic PDQ list (bench/pdq_corpus.py)\n")
        for s in range(0, len(hashes), _CHUNK):
            h = hashes[s : s + _CHUNK]
            ids = np.char.zfill(np.arange(s, s + len(h)).astype(str), 9).astype("S9").view(np.uint8)
            line = np.empty((len(h), 4 + 64 + 2 + 9 + 1), dtype=np.uint8)
            line[:, :4] = np.frombuffer(b"pdq:", np.uint8)
            line[:, 4:68] = hex_rows(h)
            line[:, 68:70] = np.frombuffer(b",i", np.uint8)
            line[:, 70:79] = ids.reshape(-1, 9)
            line[:, 79] = ord("\n")
            f.write(line.tobytes())


def write_queries(path: str | Path, queries: np.ndarray, planted: np.ndarray) -> None:
    with open(path, "w") as f:
        for h, d in zip(hex_rows(queries), planted, strict=True):
            f.write(f"{h.tobytes().decode()} {int(d)}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write-list", metavar="PATH", required=True)
    ap.add_argument("--count", type=int, default=10_000_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t = time.perf_counter()
    hashes = make_corpus(args.count, args.seed)
    write_list(args.write_list, hashes)
    queries, planted = make_queries(hashes, args.queries, args.seed + 1)
    write_queries(args.write_list + ".queries", queries, planted)
    print(f"{args.write_list}: {args.count:,} hashes, {args.queries} queries ({time.perf_counter() - t:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
