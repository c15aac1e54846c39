"""The PDQ matching part of bench/bench_imagehash.py: a generated list → snapshot → mapped index → queries.

Per size N (uniform + clustered hashes from :mod:`pdq_corpus`):

* the list file is written in the imagehash format, then compiled the way the server does it
  (``compile_snapshot``: a child process, cached by fingerprint; the second compile is a cache hit);
* a **query child** that only loads the snapshot's index (``ImageHashIndex.load``: bucket offsets read,
  the tables and hashes opened for ``pread``) answers pictures (a planted or random hash plus 7
  unrelated dihedral variants, as the proxy asks per picture) with ``ImageHashIndex.match``, and the same
  planted hashes alone with ``nearest`` (one query): p50/p99 of both, and its RSS (VmRSS, of which
  file-backed and anonymous) afterwards. Then it drops the index files from the page cache
  (``posix_fadvise(DONTNEED)``) and answers 50 pictures again: the cost on a machine whose memory
  cannot keep the index cached (every bucket and hash read from disk);
* recall: the parent checks a sample of those answers against a numpy brute-force scan over all N
  (same run), which also gives the brute-force time per picture for the ratio;
* changes: 10,000 hashes added and 10,000 removed with ``with_changes`` (seconds), answers checked
  against a brute force over the changed set, and the compaction (a full rebuild) timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))

import pdq_corpus  # noqa: E402

from filterproxy.match.imagehash import ImageHashes, ImageHashIndex  # noqa: E402

D = 31
CHANGES = 10_000


def _pictures(queries: np.ndarray, seed: int) -> np.ndarray:
    """(n, 8, 32): each query as the first dihedral variant, 7 unrelated random variants."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 256, (len(queries), 8, 32), dtype=np.uint8)
    out[:, 0] = queries
    return out


def _as_hashes(p: np.ndarray) -> ImageHashes:
    variants = tuple(v.tobytes().hex() for v in p)
    return ImageHashes("0" * 32, "0" * 40, "0" * 64, variants[0], 100, variants)


def _brute(words: np.ndarray, picture: np.ndarray) -> tuple[int, int] | None:
    """(distance, position) of the nearest hash to any of the 8 variants (ties: lowest position, then
    variant), or None beyond D: the reference the index must agree with."""
    best: tuple[int, int] | None = None
    for q in picture.view(np.uint64).reshape(-1, 4):
        d = np.bitwise_count(words ^ q).sum(axis=1, dtype=np.int32)
        k = int(np.argmin(d))
        if d[k] <= D and (best is None or (int(d[k]), k) < best):
            best = (int(d[k]), k)
    return best


def _status_kb(fields: tuple[str, ...]) -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            name = line.split(":")[0]
            if name in fields:
                out[name] = int(line.split()[1]) / 1024
    return out


def _drop_from_page_cache(images_dir: str) -> None:
    for name in os.listdir(images_dir):
        fd = os.open(os.path.join(images_dir, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def query_child(images_dir: str, pictures_npy: str, out_json: str) -> None:
    """Load the index, answer every picture and every first variant alone, report times, answers and
    memory, then time 50 pictures with the index out of the page cache (run as a subprocess)."""
    before = _status_kb(("VmRSS",))["VmRSS"]
    ix = ImageHashIndex.load(images_dir)
    pictures = np.load(pictures_npy)
    hashes = [_as_hashes(p) for p in pictures]
    for h in hashes[:20]:  # warm-up
        ix.match(h, max_distance=D)
    times, answers, single = [], [], []
    for h in hashes:
        t = time.perf_counter()
        m = ix.match(h, max_distance=D)
        times.append((time.perf_counter() - t) * 1000)
        answers.append(None if m is None else (m.distance, m.record))
    for p in pictures:
        t = time.perf_counter()
        ix.nearest(p[0].tobytes(), D)
        single.append((time.perf_counter() - t) * 1000)
    mem = _status_kb(("VmRSS", "RssAnon", "RssFile"))
    _drop_from_page_cache(images_dir)
    cold = []
    for h in hashes[-50:]:
        t = time.perf_counter()
        ix.match(h, max_distance=D)
        cold.append((time.perf_counter() - t) * 1000)
    result = {"times": times, "single": single, "cold": cold, "answers": answers, "rss_before": before, **mem}
    Path(out_json).write_text(json.dumps(result))


def _run_query_child(images_dir: str, pictures: np.ndarray, work: str, cpu: int) -> dict:
    np.save(os.path.join(work, "pictures.npy"), pictures)
    out = os.path.join(work, "answers.json")
    cmd = [sys.executable, __file__, "--query-child", images_dir, os.path.join(work, "pictures.npy"), out]
    if cpu >= 0:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    subprocess.run(cmd, check=True)
    result: dict = json.loads(Path(out).read_text())
    return result


def _compile(list_path: str, root: str) -> tuple[str, float, float]:
    from filterproxy.lists.snapshot import ListSource
    from filterproxy.lists.snapshot_cache import compile_snapshot

    src = ListSource(id="pdq-bench", category="illegal", format="imagehash", path=list_path, hashed=True)
    t = time.perf_counter()
    folder = compile_snapshot([src], root)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    again = compile_snapshot([src], root)
    cached_s = time.perf_counter() - t
    assert again == folder
    return folder, build_s, cached_s


def _recall(hashes: np.ndarray, pictures: np.ndarray, answers: list, full: int, first: int) -> dict:
    """Answers against brute force: the first ``full`` pictures over all 8 variants, the next ``first``
    over their first variant only (the edited copy; the 7 others are random hashes, which match nothing
    within 31 of N hashes but with odds of ~N·2^-130), with the brute force's time per picture."""
    words = hashes.view(np.uint64)
    found = expected = 0
    times = []
    for i, (p, a) in enumerate(zip(pictures[: full + first], answers[: full + first], strict=True)):
        t = time.perf_counter()
        ref = _brute(words, p if i < full else p[:1])
        if i < full:
            times.append((time.perf_counter() - t) * 1000)
        if ref is None:
            assert a is None, f"index answered {a} where brute force finds nothing within {D}"
            continue
        expected += 1
        found += a is not None and a[0] == ref[0] and a[1] == ref[1] + 2  # record = line = position + 2
    return {"recall_found": found, "recall_expected": expected, "numpy_brute_ms": float(np.median(times))}


def _changes(folder: str, hashes: np.ndarray, seed: int, check: int) -> dict:
    """10k added + 10k removed on the mapped index: time, answers vs brute force, compaction time."""
    rng = np.random.default_rng(seed)
    ix = ImageHashIndex.load(os.path.join(folder, "images"))
    gone_pos = rng.choice(len(hashes), CHANGES, replace=False)
    new = pdq_corpus.flip(rng, hashes[rng.integers(0, len(hashes), CHANGES)], rng.integers(0, 41, CHANGES))
    added = [("pdq", h.tobytes().hex(), 10**12 + i) for i, h in enumerate(new)]
    removed = [("pdq", hashes[i].tobytes().hex()) for i in gone_pos]
    t = time.perf_counter()
    ix2 = ix.with_changes(added=added, removed=removed)
    change_s = time.perf_counter() - t
    # reference: the live set, in answer order (base minus every copy of a removed hash, then the added)
    gone = np.isin(hashes.view("V32").ravel(), hashes[gone_pos].view("V32").ravel())
    live = np.concatenate([hashes[~gone], new])
    live_rec = np.concatenate([np.flatnonzero(~gone) + 2, 10**12 + np.arange(CHANGES)])
    probes = np.concatenate([hashes[gone_pos[: check // 2]], new[: check // 2]])
    bad = 0
    for p in _pictures(probes, seed):
        ref = _brute(live.view(np.uint64), p)
        m = ix2.match(_as_hashes(p), max_distance=D)
        got = None if m is None else (m.distance, m.record)
        bad += got != (None if ref is None else (ref[0], int(live_rec[ref[1]])))
    with tempfile.TemporaryDirectory(prefix="pdqidx-compact-", dir=os.path.dirname(folder)) as tmp:
        t = time.perf_counter()
        ix3 = ix2.compacted(tmp)
        compact_s = time.perf_counter() - t
        same = sum(
            ix3.match(_as_hashes(p), max_distance=D) == ix2.match(_as_hashes(p), max_distance=D)
            for p in _pictures(probes, seed + 1)
        )
    return {
        "change_s": change_s,
        "changes_checked": len(probes),
        "changes_wrong": bad,
        "compact_s": compact_s,
        "compacted_same": f"{same}/{len(probes)}",
    }


def bench_matching(n: int, nq: int, cpu: int, workdir: str | None = None) -> dict:
    """One size: build, cache hit, queries + RSS, recall vs brute force, 10k changes."""
    work = tempfile.mkdtemp(prefix="pdqidx-bench-", dir=workdir)
    t = time.perf_counter()
    hashes = pdq_corpus.make_corpus(n, seed=n)
    list_path = os.path.join(work, "pdq.txt")
    pdq_corpus.write_list(list_path, hashes)
    gen_s = time.perf_counter() - t
    folder, build_s, cached_s = _compile(list_path, os.path.join(work, "snapshots"))
    images = os.path.join(folder, "images")
    files_mb = sum(os.path.getsize(os.path.join(images, f)) for f in os.listdir(images)) / 2**20
    queries, _ = pdq_corpus.make_queries(hashes, nq, seed=n + 1)
    pictures = _pictures(queries, n + 2)
    child = _run_query_child(images, pictures, work, cpu)
    times = child["times"]
    full, first = (min(nq, 200), 0) if n <= 1_000_000 else (30, 150)
    recall = _recall(hashes, pictures, child["answers"], full, first)
    changes = _changes(folder, hashes, n + 3, 40 if n <= 1_000_000 else 10)
    row = {
        "hashes": n,
        "generate_s": round(gen_s, 1),
        "build_s": round(build_s, 1),
        "cache_hit_s": round(cached_s, 3),
        "files_mb": round(files_mb),
        "queries": nq,
        "hit_rate": round(sum(a is not None for a in child["answers"]) / nq, 3),
        "match8_p50_ms": float(np.percentile(times, 50)),
        "match8_p99_ms": float(np.percentile(times, 99)),
        "match1_p50_ms": float(np.percentile(child["single"], 50)),
        "match1_p99_ms": float(np.percentile(child["single"], 99)),
        "cold8_p50_ms": float(np.percentile(child["cold"], 50)),
        "rss_mb": round(child["VmRSS"]),
        "rss_file_mb": round(child["RssFile"]),
        "rss_anon_mb": round(child["RssAnon"]),
        "rss_before_load_mb": round(child["rss_before"]),
        **recall,
        **changes,
    }
    row["speedup_vs_numpy_brute"] = row["numpy_brute_ms"] / row["match8_p50_ms"]
    subprocess.run(["rm", "-rf", work], check=False)
    return row


def print_row(r: dict) -> None:
    print(
        f"  {r['hashes']:>11,} hashes: list written in {r['generate_s']:.1f} s; compiled (child process) in "
        f"{r['build_s']:.1f} s, cache hit {r['cache_hit_s'] * 1000:.0f} ms; index files {r['files_mb']} MB"
    )
    print(
        f"      match (8 variants)    p50 {r['match8_p50_ms']:7.3f} ms   p99 {r['match8_p99_ms']:7.3f} ms   "
        f"hit rate {r['hit_rate']:.2f} ({r['queries']} pictures)"
    )
    print(
        f"      match (1 hash)        p50 {r['match1_p50_ms']:7.3f} ms   p99 {r['match1_p99_ms']:7.3f} ms   "
        f"(the first variant of each picture alone)"
    )
    print(
        f"      query child RSS       {r['rss_mb']} MB after the queries ({r['rss_file_mb']} MB mapped file pages, "
        f"{r['rss_anon_mb']} MB anonymous; {r['rss_before_load_mb']} MB before loading the index)"
    )
    print(
        f"      index out of cache    p50 {r['cold8_p50_ms']:7.1f} ms per picture (files dropped from the page "
        f"cache: every bucket and hash read from disk)"
    )
    print(
        f"      numpy brute force     {r['numpy_brute_ms']:7.1f} ms per picture   "
        f"(index is {r['speedup_vs_numpy_brute']:.0f}x faster)"
    )
    print(f"      recall vs brute force {r['recall_found']}/{r['recall_expected']} pictures with a hash within {D}")
    print(
        f"      +{CHANGES:,} / -{CHANGES:,} hashes    with_changes {r['change_s']:.2f} s "
        f"({r['changes_wrong']} wrong of {r['changes_checked']} checked by brute force); "
        f"compaction {r['compact_s']:.1f} s, same answers {r['compacted_same']}"
    )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--query-child":
        query_child(*sys.argv[2:])
    else:
        sys.exit("usage: imagehash_matching.py --query-child IMAGES_DIR PICTURES.npy OUT.json")
