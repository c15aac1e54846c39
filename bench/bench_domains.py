#!/usr/bin/env python3
"""Domain matcher benchmark: 1,000,000 domains — bytes per domain (RSS) and lookups/s, next to a
Python ``set`` of strings measured in the same run, plus snapshot load time vs parsing the text lists.

    .venv/bin/python bench/bench_domains.py [--domains 1000000] [--queries 300000]

Domains: the union of real lists from ../shared/data (hagezi, UT1, StevenBlack), topped up with synthetic
subdomains of real names to reach the target. Queries: 30% listed names or their subdomains, 70% names
from the Cloudflare Radar top 100k (mostly not listed). Each variant runs in a fresh process so RSS is its own.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from shared_data import DATA  # noqa: E402  (../shared/data, or beside the checkout this was cloned from)

SOURCES = [
    "hagezi/adblock/pro.txt.gz",
    "hagezi/adblock/gambling.txt.gz",
    "hagezi/adblock/nsfw.txt.gz",
    "ut1/malware/domains.gz",
    "ut1/redirector/domains.gz",
    "ut1/games/domains",
    "ut1/gambling/domains",
    "stevenblack_trimmed/unified_hosts.trimmed.txt.gz",
]


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def make_inputs(n: int, nq: int, work: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(REPO))
    from filterproxy.lists.parsers import ParseStats, iter_entries

    names: dict[str, None] = {}
    for rel in SOURCES:
        fmt = "adblock" if "adblock" in rel else "domains"
        for _f, e in iter_entries(fmt, str(DATA / "blocklists" / rel), lambda p: ParseStats(p)):
            if e.kind == "domain":
                names[e.value] = None
        if len(names) >= n:
            break
    real = list(names)
    rnd = random.Random(42)
    while len(names) < n:
        names[f"{rnd.choice(('cdn', 'img', 'ads', 'm', 'api', 'x'))}{rnd.getrandbits(20):x}.{rnd.choice(real)}"] = None
    listed = list(names)[:n]
    with gzip.open(DATA / "queries/cloudflare_radar_top100k_2024-01-22_2024-01-29.csv.gz", "rt") as f:
        next(f)
        popular = [line.strip().lower() for line in f if line.strip()]
    queries = []
    for _ in range(nq):
        r = rnd.random()
        if r < 0.15:
            queries.append(rnd.choice(listed))
        elif r < 0.30:
            queries.append("www." + rnd.choice(listed))
        else:
            queries.append(rnd.choice(popular))
    dom = work / "domains.txt"
    dom.write_text("\n".join(listed) + "\n")
    q = work / "queries.txt"
    q.write_text("\n".join(queries) + "\n")
    return dom, q


def _set_lookup(s: set[str]) -> Callable[[str], bool]:
    """The baseline's lookup: same suffix semantics as the matcher (walk the parents)."""

    def lookup(name: str) -> bool:
        while True:
            if name in s:
                return True
            i = name.find(".")
            if i < 0:
                return False
            name = name[i + 1 :]

    return lookup


def _best_rate(qs: list[str], fn: Callable[[str], object]) -> float:
    """Lookups per second over ``qs``, best of three passes."""
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for q in qs:
            fn(q)
        best = max(best, len(qs) / (time.perf_counter() - t))
    return best


def child(kind: str, dom: str, qfile: str, snapdir: str) -> None:
    """One measurement in a fresh process; prints a JSON line."""
    import gc

    sys.path.insert(0, str(REPO))
    queries = Path(qfile).read_text().split()
    if kind != "set":  # count the index, not the import of numpy/marisa (a few MB, paid once per process)
        import filterproxy.match.domain  # noqa: F401

        if kind == "build":
            import numpy  # noqa: F401  (only building uses it; a saved snapshot is served without it)
    names = None
    gc.collect()
    base = rss_kb()
    t0 = time.perf_counter()
    if kind == "set":
        s = set(Path(dom).read_text().split())
        load = time.perf_counter() - t0
        n = len(s)
        lookup = _set_lookup(s)
    else:
        from filterproxy.match.domain import DomainMatcher

        if kind == "build":  # what a start-up without a compiled snapshot pays: parse the text list, build
            from filterproxy.lists.store import ListSource, build_snapshot, save_snapshot

            del names
            snap = build_snapshot([ListSource("bench", "adult", "domains", dom, match="subdomains")])
            m = snap.domains
            load = time.perf_counter() - t0
            save_snapshot(snap, snapdir)
        else:  # "snapshot": memory-map what "build" saved
            m = DomainMatcher.load(snapdir)
        if kind != "build":
            load = time.perf_counter() - t0
        n = len(m)
        lookup = m.lookup
    gc.collect()
    gc.freeze()  # as the server does once its state is loaded (runner.py): the collector never rescans it
    mem = (rss_kb() - base) * 1024
    if kind == "snapshot":  # touch every page once so RSS counts the whole mapped index
        for q in queries:
            lookup(q)
        mem = (rss_kb() - base) * 1024

    hit_q = [q for q in queries if lookup(q)]
    miss_q = [q for q in queries if not lookup(q)]
    walk_s = 0.0
    if kind == "snapshot" and hit_q:  # the floor under a listed name: the bare trie walk, no results built
        walk = m._trie.iter_prefixes_with_ids
        walk_s = _best_rate([q[::-1] + "." for q in hit_q], lambda key: list(walk(key)))
    print(
        json.dumps(
            {
                "kind": kind,
                "n": n,
                "load_s": load,
                "bytes": mem,
                "lookups_s": _best_rate(queries, lookup),
                "hit_s": _best_rate(hit_q, lookup),
                "miss_s": _best_rate(miss_q, lookup),
                "hits": len(hit_q),
                "walk_s": walk_s,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domains", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=300_000)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        dom, q = make_inputs(a.domains, a.queries, work)
        print(f"inputs: {a.domains:,} domains, {a.queries:,} queries ({time.perf_counter() - t:.1f}s to prepare)")
        res = {}
        for kind in ("set", "build", "snapshot"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", kind, str(dom), str(q), str(work / "snap")],
                capture_output=True,
                text=True,
                check=True,
            )
            res[kind] = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{'variant':<36}{'entries':>10}{'load s':>8}{'bytes/domain':>13}{'mix/s':>11}{'hits/s':>11}"
            f"{'misses/s':>11}{'hits':>9}"
        )
        labels = {
            "set": "python set[str] (baseline)",
            "build": "filterproxy (parse text + build)",
            "snapshot": "filterproxy (mmap compiled snapshot)",
        }
        for kind, r in res.items():
            print(
                f"{labels[kind]:<36}{r['n']:>10,}{r['load_s']:>8.2f}{r['bytes'] / r['n']:>13.1f}"
                f"{r['lookups_s']:>11,.0f}{r['hit_s']:>11,.0f}{r['miss_s']:>11,.0f}{r['hits']:>9,}"
            )
        s, b, m = res["set"], res["build"], res["snapshot"]
        assert s["hits"] == b["hits"] == m["hits"], "variants disagree on matches"
        print(
            f"ratios vs set: memory {b['bytes'] / s['bytes']:.2f}x (built), "
            f"{m['bytes'] / s['bytes']:.2f}x (snapshot); "
            f"lookups {b['lookups_s'] / s['lookups_s']:.2f}x; ready to serve: {m['load_s'] * 1000:.1f} ms from the "
            f"compiled snapshot vs {b['load_s']:.1f} s parsing the text list "
            f"({b['load_s'] / max(m['load_s'], 1e-6):,.0f}x)"
        )
        print(
            f"targets: <= 24 bytes/domain -> {m['bytes'] / m['n']:.1f} (snapshot, as served), "
            f"{b['bytes'] / b['n']:.1f} (right after building in-process); "
            f">= 500,000 lookups/s -> mix {m['lookups_s']:,.0f}, "
            f"names with no rule {m['miss_s']:,.0f}, listed names {m['hit_s']:,.0f}"
        )
        print(
            f"per lookup: listed name {1e6 / m['hit_s']:.1f} us (of which the bare trie walk over the whole key "
            f"{1e6 / max(m['walk_s'], 1):.1f} us, the rest builds its DomainMatch), "
            f"no rule {1e6 / m['miss_s']:.1f} us (the walk stops at the first label that differs), "
            f"mix {1e6 / m['lookups_s']:.1f} us; 500,000/s needs 2.0 us. "
            "Mix = 30% listed names and their subdomains, 70% popular names."
        )


if __name__ == "__main__":
    main()
