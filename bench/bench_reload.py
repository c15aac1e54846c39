#!/usr/bin/env python3
"""Reload under load: what list reloads cost the DNS service while it is busy.

One run (~4 minutes on a 2-core machine)::

    ./bench.sh reload
    .venv/bin/python bench/bench_reload.py --domains 1000000 --duration 30 --reloads 10

The same data and server set-up as ``bench_dns.py`` (a 1M-name list, the fake upstream, every feature
on), filterproxy pinned to one core and dnsperf on the other:

1. peak QPS (``dnsperf -c 4 -q 500``), then a load at ``--load-pct`` (65%) of that peak;
2. **baseline**: that load for ``--duration`` seconds with no reload;
3. **one reload that compiles**: the same load while the list file changes to version B (1% of the names
   differ) and ``SIGHUP`` asks for a reload: B is compiled in a child process and swapped in;
4. **reloads to cached versions**: the same load while the file alternates A, B, A, … ``--reloads`` times;
   each reload maps the snapshot compiled before (snapshots are cached by content).

It prints lost queries and average latency of the three runs side by side (the peer of the reload runs
is the same server without reloads, measured in the same run), and how long each reload took from the signal
to the log line that says it is done. Goals: lost queries no more than the baseline's, and a switch back
to a cached version under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dns import REPO, dnsperf, free_port, log, make_data, server_cmd, start_upstream, wait_ready  # noqa: E402

_DONE = re.compile(r"reload: (\d+ lists, \d+ entries in [\d.]+s|lists unchanged|.*failed.*)")


def _write_version(work: Path, lines: list[str]) -> None:
    """Replace the list file in one rename, as 'lists update' does."""
    tmp = work / "blocklist.txt.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, work / "blocklist.txt")


def _reload_and_wait(proc: subprocess.Popen, logpath: Path, timeout: float = 120) -> tuple[float, str]:
    """SIGHUP, then the seconds until the log says the reload finished, and how it finished."""
    before = len(_DONE.findall(logpath.read_text(errors="replace")))
    t0 = time.monotonic()
    proc.send_signal(signal.SIGHUP)
    while time.monotonic() - t0 < timeout:
        found = _DONE.findall(logpath.read_text(errors="replace"))
        if len(found) > before:
            return time.monotonic() - t0, found[before]
        time.sleep(0.02)
    return float("nan"), "timeout"


def _reloader(proc, logpath, work, versions, n, gap, out: list, first: int = 0) -> None:
    for i in range(first, first + n):
        time.sleep(gap)
        which = "B" if i % 2 == 0 else "A"
        _write_version(work, versions[which])
        secs, how = _reload_and_wait(proc, logpath)
        out.append({"to": which, "seconds": secs, "result": how})
        log(f"reload to version {which}: {secs:.2f} s ({how})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domains", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=100_000)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of each loaded run")
    p.add_argument("--reloads", type=int, default=10)
    p.add_argument("--load-pct", type=float, default=65.0, help="load as a share of the measured peak")
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--load-core", type=int, default=1)
    p.add_argument("--workdir", default="/tmp/filterproxy-bench-reload")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = make_data(work, args.domains, args.queries)
    a = (work / "blocklist.txt").read_text().split()
    b = a[: len(a) - len(a) // 100] + [f"v2-{i}.reload.bench" for i in range(len(a) // 100)]
    versions = {"A": a, "B": b}
    shutil.rmtree(work / "state", ignore_errors=True)  # no snapshot from an earlier run: version B compiles
    up_port = free_port()
    upstream = start_upstream(up_port, args.load_core)
    port, mport = free_port(), free_port()
    cmd = ["taskset", "-c", str(args.server_core)] + server_cmd("filterproxy", work, port, up_port, mport)
    logpath = work / "filterproxy.log"
    proc = subprocess.Popen(cmd, stdout=open(logpath, "wb"), stderr=subprocess.STDOUT, cwd=REPO)
    res: dict = {"domains": args.domains, "duration_s": args.duration}
    try:
        res["load_s"] = wait_ready(proc, port, data["probe"])
        qfile = work / "queries.txt"
        dnsperf(port, qfile, args.load_core, runs=1)  # warm-up
        peak, _ = dnsperf(port, qfile, args.load_core, duration=8)
        rate = args.load_pct / 100 * peak["qps"]
        res.update(peak_qps=peak["qps"], rate_qps=rate)
        log(f"peak {peak['qps']:,.0f} qps; load {rate:,.0f} qps ({args.load_pct:g}%) for {args.duration:g} s")
        base, _ = dnsperf(port, qfile, args.load_core, duration=args.duration, qps=rate)
        res.update(baseline=base)
        # one reload that compiles version B (in a child process), then reloads that alternate between
        # versions compiled before; each under the same load as the baseline
        for phase, n, first in (("compile", 1, 0), ("cached", args.reloads, 1)):
            reloads: list[dict] = []
            gap = 1.0 if n == 1 else args.duration / (n + 1)
            th = threading.Thread(
                target=_reloader, args=(proc, logpath, work, versions, n, gap, reloads), kwargs={"first": first}
            )
            th.start()
            loaded, _ = dnsperf(port, qfile, args.load_core, duration=args.duration, qps=rate)
            th.join()
            res[phase] = {"dnsperf": loaded, "reloads": reloads}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        upstream.kill()
    _report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


def _report(res: dict) -> None:
    base = res["baseline"]
    print(
        f"\nreload under load: {res['domains']:,} names, {res['rate_qps']:,.0f} qps for {res['duration_s']:g} s a run"
    )
    print(f"{'run':<34}{'sent':>10}{'lost':>8}{'lost %':>9}{'avg ms':>9}{'reload s':>16}")
    rows = [("no reloads", base, [])]
    rows += [("1 reload, compiles version B", res["compile"]["dnsperf"], res["compile"]["reloads"])]
    n = len(res["cached"]["reloads"])
    rows += [(f"{n} reloads to cached versions", res["cached"]["dnsperf"], res["cached"]["reloads"])]
    for name, r, rl in rows:
        share = 100 * r["lost"] / max(1.0, r["sent"])
        secs = f"max {max(x['seconds'] for x in rl):.2f}" if rl else "-"
        print(f"{name:<34}{r['sent']:>10,.0f}{r['lost']:>8,.0f}{share:>8.3f}%{r['avg'] * 1000:>9.3f}{secs:>16}")
    for name, r, _ in rows[1:]:
        ratio = r["avg"] / base["avg"]
        print(f"{name}: lost {r['lost']:.0f} vs {base['lost']:.0f} without reloads; avg latency {ratio:.2f}x")
    cached = [x["seconds"] for x in res["cached"]["reloads"]]
    worst_lost = max(r["lost"] for _, r, _ in rows[1:])
    print("goal: switch back to a cached version under 1 s:", "met" if cached and max(cached) < 1.0 else "MISSED")
    print("goal: no more lost than without reloads:", "met" if worst_lost <= base["lost"] else "MISSED")


if __name__ == "__main__":
    raise SystemExit(main())
