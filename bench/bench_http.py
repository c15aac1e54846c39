#!/usr/bin/env python3
"""HTTP proxy benchmark: bare mitmdump vs filterproxy (1M domains + 100k URL rules + 100k URL hashes)
vs squid (same domains as a ``dstdomain`` deny ACL), and filterproxy with 1 vs 2 proxy workers.

    python bench/bench_http.py                      # full run (~5 min)
    python bench/bench_http.py --duration 5 --domains 100000 --skip-squid   # quick look

Set-up, all on 127.0.0.1: nginx serves a small page; wrk drives each proxy in **regular (explicit)
proxy mode** with absolute-form requests (``GET http://www.siteN.bench.test:PORT/p/123?q=45``) so
every request really goes through the host + URL + URL-hash look-ups — nothing is rewritten to an
address first. The host names are not resolvable, so every mitmproxy run (bare included) loads the
same two-line bench addon that points the upstream connection at nginx *after* the filter has
decided (``flow.request.data.host = "127.0.0.1"``, Host header untouched); squid gets a
``hosts_file``. Requests are all allowed (the filter's full work, then the upstream round trip);
``--blocked-share`` adds names from the list to exercise the block page too.

All proxies are started first and measured in turn, for ``--rounds`` rounds; each keeps its best
round (other processes on the machine slow every proxy alike, and the best round is the one least
disturbed). Prints req/s, p50/p99 latency and RSS per proxy, and the ratios against the targets:
filtering costs at most 10 % of bare mitmdump's throughput; 2 workers >= 1.8x one worker.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
TLDS = ("com", "net", "org", "info", "xyz", "vn", "com.vn", "ru", "de", "io", "edu.vn", "co.uk")


# ---------------------------------------------------------------- data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate(d: str, n_domains: int, n_urls: int, n_hashes: int, n_hosts: int, seed: int = 1) -> dict:
    """Lists, squid ACL (entries covered by a parent removed), request host names."""
    rnd = random.Random(seed)
    t0 = time.monotonic()
    names: list[str] = []
    for i in range(n_domains):
        if i > 1000 and rnd.random() < 0.05:  # some subdomains of listed names (squid refuses those)
            names.append("".join(rnd.choices(ALPHABET, k=5)) + "." + names[rnd.randrange(i)])
        else:
            names.append("".join(rnd.choices(ALPHABET, k=rnd.randint(6, 14))) + "." + rnd.choice(TLDS))
    with open(os.path.join(d, "domains.txt"), "w") as f:
        f.write("# bench domains (category adult, subdomains)\n" + "\n".join(names) + "\n")
    listed = set(names)

    def covered(n: str) -> bool:
        parts = n.split(".")
        return any(".".join(parts[i:]) in listed for i in range(1, len(parts) - 1))

    squid = sorted({n for n in listed if not covered(n)})
    with open(os.path.join(d, "squid-domains.txt"), "w") as f:
        f.write("".join(f".{n}\n" for n in squid))

    hosts = [f"www.site{i}.bench.test" for i in range(n_hosts)]
    with open(os.path.join(d, "urls.txt"), "w") as f:
        for i in range(n_urls):
            if i % 10 == 0:  # rules on the requested hosts too, so the path matcher really probes
                host = hosts[rnd.randrange(n_hosts)]
                f.write(f"{host}/blocked/{i}/\n")
            else:
                label = "".join(rnd.choices(ALPHABET, k=10))  # drawn in this order: the lists stay seed-identical
                tld = rnd.choice(TLDS)
                path = "".join(rnd.choices(ALPHABET, k=8))
                f.write(f"{label}.{tld}/{path}/\n")
    with open(os.path.join(d, "urlhash.txt"), "w") as f:
        f.write("# random SHA-256 URL-expression hashes\n")
        for i in range(n_hashes):
            f.write(hashlib.sha256(f"bench-{seed}-{i}".encode()).hexdigest() + "\n")
    blocked = [n for n in names[:50000] if n.count(".") == 1][:1000]
    print(
        f"generated {n_domains} domains ({len(squid)} for squid after removing covered entries), "
        f"{n_urls} URL rules, {n_hashes} URL hashes in {time.monotonic() - t0:.1f} s",
        flush=True,
    )
    return {"hosts": hosts, "blocked": blocked}


def write_config(d: str, with_urls: bool, with_hashes: bool) -> str:
    os.makedirs(os.path.join(d, "policies"), exist_ok=True)
    with open(os.path.join(d, "policies", "bench.yaml"), "w") as f:
        f.write('name: Bench\ntone: teen\nblock_categories: [adult]\nsafesearch: "off"\nyoutube: "off"\n')
    lists = ["  - {id: bench-domains, category: adult, format: domains, match: subdomains, path: domains.txt}"]
    if with_urls:
        lists.append("  - {id: bench-urls, category: adult, format: urls, path: urls.txt}")
    if with_hashes:
        lists.append("  - {id: bench-urlhash, category: adult, format: urlhash, path: urlhash.txt}")
    path = os.path.join(d, "filterproxy.yaml")
    with open(path, "w") as f:
        f.write(
            f"timezone: Asia/Ho_Chi_Minh\ndefault_group: bench\npolicies_dir: policies\n"
            f"server:\n  state_dir: {d}/state\nlists:\n" + "\n".join(lists) + "\n"
        )
    return path


REDIRECT_ADDON = """\
# bench only: the request names are not resolvable; connect to nginx, after every filter decided.
class Upstream:
    def request(self, flow):
        flow.request.data.host = "127.0.0.1"

addons = [Upstream()]
"""


HOOKTIMER_ADDON = """\
# bench only: CPU time spent inside filterproxy's hooks vs the whole mitmdump process (same clock, same
# process: a ratio that other load on the machine does not distort the way it distorts req/s).
import json, time
from mitmproxy import ctx

HOOKS = ("requestheaders", "request", "responseheaders", "response", "http_connect", "tls_clienthello",
         "server_connect", "client_disconnected")
OUT = {out!r}


class HookTimer:
    def running(self):
        fa = ctx.master.addons.get("filteraddon")
        self.acc = {{h: [0, 0] for h in HOOKS}}
        for h in HOOKS:
            orig = getattr(fa, h)

            def wrap(*a, _o=orig, _h=h):
                t = time.thread_time_ns()
                try:
                    return _o(*a)
                finally:
                    x = self.acc[_h]
                    x[0] += time.thread_time_ns() - t
                    x[1] += 1
            setattr(fa, h, wrap)
        self.t0 = time.process_time()

    def done(self):
        with open(OUT, "w") as f:
            json.dump({{"process_cpu": time.process_time() - self.t0,
                       "hooks": {{k: v for k, v in self.acc.items() if v[1]}}}}, f)


addons = [HookTimer()]
"""


def write_wrk_script(d: str, hosts: list[str], blocked: list[str], share: float, port: int) -> str:
    n_blocked = int(round(len(hosts) * share / max(1e-9, 1 - share))) if share > 0 else 0
    names = hosts + blocked[:n_blocked]
    lua = [
        "local hosts = {" + ",".join(f'"{h}"' for h in names) + "}",
        f"local port = {port}",
        "local counter = 0",
        "request = function()",
        "  counter = counter + 1",
        "  local h = hosts[math.random(#hosts)]",
        "  local hp = h .. ':' .. port",
        "  return wrk.format('GET', 'http://' .. hp .. '/p/' .. math.random(100000) .. '?q=' .. counter,"
        " {['Host'] = hp})",
        "end",
    ]
    path = os.path.join(d, "proxy.lua")
    with open(path, "w") as f:
        f.write("\n".join(lua) + "\n")
    return path


# ---------------------------------------------------------------- processes


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listening on {port} after {timeout:.0f} s")


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def children(pid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(p))
            except (OSError, ValueError, IndexError):
                pass
    return out


def start_nginx(d: str, port: int) -> subprocess.Popen:
    conf = os.path.join(d, "nginx.conf")
    body = "<!DOCTYPE html><html><head><title>ok</title></head><body><p>" + "hello " * 60 + "</p></body></html>"
    with open(conf, "w") as f:
        f.write(
            textwrap.dedent(f"""\
            worker_processes 1;
            daemon off;
            pid {d}/nginx.pid;
            error_log {d}/nginx-error.log warn;
            events {{ worker_connections 4096; }}
            http {{
              access_log off;
              keepalive_requests 1000000;
              server {{
                listen 127.0.0.1:{port};
                location / {{ default_type text/html; return 200 '{body}'; }}
              }}
            }}
            """)
        )
    p = subprocess.Popen(["nginx", "-c", conf, "-p", d], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_port(port, 10, p)
    return p


def start_squid(d: str, port: int, hosts: list[str]) -> subprocess.Popen:
    sd = os.path.join(d, "squid")
    os.makedirs(sd, exist_ok=True)
    os.chmod(sd, 0o777)
    with open(os.path.join(sd, "hosts"), "w") as f:
        f.write("".join(f"127.0.0.1 {h}\n" for h in hosts))
    conf = os.path.join(sd, "squid.conf")
    with open(conf, "w") as f:
        f.write(
            textwrap.dedent(f"""\
            http_port 127.0.0.1:{port}
            acl blocked dstdomain "{d}/squid-domains.txt"
            http_access deny blocked
            http_access allow localhost
            http_access deny all
            hosts_file {sd}/hosts
            dns_nameservers 127.0.0.1
            cache deny all
            cache_mem 8 MB
            access_log none
            cache_store_log none
            cache_log {sd}/cache.log
            pid_filename {sd}/squid.pid
            coredump_dir {sd}
            visible_hostname bench
            shutdown_lifetime 1 seconds
            workers 1
            """)
        )
    p = subprocess.Popen(["squid", "-N", "-f", conf], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_port(port, 180, p)
    return p


def stop(p: subprocess.Popen | None) -> None:
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


# ---------------------------------------------------------------- measuring


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    rss_mb: float
    non2xx: int
    errors: int
    note: str = ""
    cpu_us: float = float("nan")  # proxy CPU time (user+sys, all its processes) per request, median of rounds


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    v = float(m.group(1))
    return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v


def run_wrk(proxy_port: int, script: str, duration: int, connections: int, threads: int) -> dict:
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        script,
        f"http://127.0.0.1:{proxy_port}/",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": rps,
        "requests": total,
        "p50": _ms(lat.get("50", "nan")),
        "p99": _ms(lat.get("99", "nan")),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "errors": sum(map(int, errs.groups())) if errs else 0,
        "raw": out,
    }


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU time of these processes (from /proc/PID/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def measure(name: str, port: int, pids_fn, script: str, a: argparse.Namespace, note: str = "") -> Result:
    pids = pids_fn()
    cpu0 = cpu_seconds(pids)
    r = run_wrk(port, script, a.duration, a.connections, a.threads)
    cpu = cpu_seconds(pids) - cpu0
    res = Result(
        name,
        r["rps"],
        r["p50"],
        r["p99"],
        rss_kb(pids_fn()) / 1024,
        r["non2xx"],
        r["errors"],
        note,
        cpu_us=cpu / max(1, r["requests"]) * 1e6,
    )
    print(
        f"  {name:<34} {res.rps:8.1f} req/s  p50 {res.p50_ms:7.2f} ms  p99 {res.p99_ms:7.2f} ms  "
        f"CPU {res.cpu_us:7.0f} µs/req  RSS {res.rss_mb:7.1f} MB  non-2xx {res.non2xx}  socket errors {res.errors}",
        flush=True,
    )
    return res


def mitmdump_cmd(port: int, d: str, extra: list[str]) -> list[str]:
    exe = shutil.which("mitmdump", path=os.path.dirname(sys.executable)) or shutil.which("mitmdump") or "mitmdump"
    return [exe, "-q", "--listen-host", "127.0.0.1", "-p", str(port), "--set", f"confdir={d}/mitmproxy"] + extra


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--domains", type=int, default=1_000_000)
    ap.add_argument("--urls", type=int, default=100_000)
    ap.add_argument("--hashes", type=int, default=100_000)
    ap.add_argument("--hosts", type=int, default=1000, help="distinct allowed host names requested")
    ap.add_argument("--blocked-share", type=float, default=0.0, help="share of requests for listed names")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="measure every proxy this many times, keep the best")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-squid", action="store_true")
    ap.add_argument("--skip-workers", action="store_true", help="skip the 1 vs 2 worker scaling runs")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return ap.parse_args(argv)


def _matchers() -> tuple[bool, bool]:
    """(URL matcher, URL-hash matcher) present in this checkout."""
    from filterproxy.lists.parsers import FORMATS  # noqa: F401  (the package must be importable)

    try:
        import filterproxy.match.url  # noqa: F401

        with_urls = True
    except ImportError:
        with_urls = False
    try:
        import filterproxy.match.urlhash  # noqa: F401

        with_hashes = True
    except ImportError:
        with_hashes = False
    return with_urls, with_hashes


def _start_filterproxy(d: str, addon: str, cfg_path: str, procs: list[subprocess.Popen]) -> tuple:
    """(b) the filterproxy addon in mitmdump, lists loaded: ((name, port, pids, note), process, timer output)."""
    port = free_port()
    t0 = time.monotonic()
    timer = os.path.join(d, "hooktimer.py")
    timer_out = os.path.join(d, "hooktimer.json")
    with open(timer, "w") as f:
        f.write(HOOKTIMER_ADDON.format(out=timer_out))
    filt = subprocess.Popen(
        mitmdump_cmd(
            port,
            d,
            [
                "-s",
                os.path.join(REPO, "addons", "filterproxy_addon.py"),
                "-s",
                addon,
                "-s",
                timer,
                "--set",
                f"filterproxy_config={cfg_path}",
            ],
        )
    )
    procs.append(filt)
    wait_port(port, 600, filt)
    target = (
        "filterproxy (mitmdump -s addon)",
        port,
        lambda: [filt.pid],
        f"start-up with lists {time.monotonic() - t0:.0f} s",
    )
    return target, filt, timer_out


def _start_workers(d: str, addon: str, cfg_path: str, workers: list) -> list[tuple[str, int, object, str]]:
    """(d, e) filterproxy proxy workers: 1 and 2 processes on one SO_REUSEPORT address."""
    from filterproxy.config import load_config
    from filterproxy.http.server import ProxyWorkers

    targets: list[tuple[str, int, object, str]] = []
    ns = argparse.Namespace(config=cfg_path, extra_list=[], client_group=[], state_dir=f"{d}/state", verbose=False)
    cfg = load_config(cfg_path)
    for n in (1, 2):
        port = free_port()
        t0 = time.monotonic()
        # the bench addon is loaded through mitmproxy's own 'scripts' option
        pw = ProxyWorkers(
            ns,
            cfg,
            ("127.0.0.1", port),
            n,
            options={"confdir": f"{d}/mitmproxy", "scripts": addon},
            metrics_dir="",
        )
        pw.start()
        workers.append(pw)
        targets.append(
            (
                f"filterproxy ProxyWorkers x{n}",
                port,
                (lambda pw=pw: pw.pids),
                f"start-up {time.monotonic() - t0:.0f} s",
            )
        )
    return targets


def _measure_all(targets: list[tuple[str, int, object, str]], script: str, a: argparse.Namespace) -> list[Result]:
    """Warm every proxy up, then measure them in turn for ``a.rounds`` rounds; each keeps its best round."""
    for _name, port, _pids, _note in targets:  # warm-up: connections, caches
        run_wrk(port, script, a.warmup, a.connections, a.threads)
    best: dict[str, Result] = {}
    cpu: dict[str, list[float]] = {}
    for rnd in range(1, a.rounds + 1):
        print(f"round {rnd}/{a.rounds}", flush=True)
        for name, port, pids, note in targets:
            r = measure(name, port, pids, script, a, note)
            cpu.setdefault(name, []).append(r.cpu_us)
            if name not in best or r.rps > best[name].rps:
                best[name] = r
    results = [best[name] for name, *_ in targets]
    for r in results:
        r.cpu_us = statistics.median(cpu[r.name])
    return results


def _print_hooktime(hooktime: dict) -> None:
    hooks = hooktime["hooks"]
    ours = sum(v[0] for v in hooks.values()) / 1e9
    n = hooks.get("requestheaders", [0, 1])[1]
    share = ours / hooktime["process_cpu"]
    print(
        f"  inside filterproxy's hooks (thread CPU, same process): {ours / max(n, 1) * 1e6:.0f} µs per request of "
        f"{hooktime['process_cpu'] / max(n, 1) * 1e6:.0f} µs = {share * 100:.1f} % of mitmdump's CPU "
        f"(target <= 10 %: {'OK' if share <= 0.10 else 'MISSED'}); per hook: "
        + ", ".join(f"{k} {v[0] / max(v[1], 1) / 1e3:.0f} µs" for k, v in hooks.items())
    )


def _print_report(results: list[Result], hooktime: dict | None, a: argparse.Namespace) -> None:
    by = {r.name: r for r in results}
    print(f"\nresults (best of {a.rounds} rounds of {a.duration} s each)")
    print(f"  {'proxy':<34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/req':>10} {'RSS MB':>8}  note")
    for r in results:
        print(f"  {r.name:<34} {r.rps:8.1f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.cpu_us:10.0f} {r.rss_mb:8.1f}  {r.note}")
    print("\nratios")
    bare, filt = by.get("bare mitmdump"), by.get("filterproxy (mitmdump -s addon)")
    if bare and filt:
        cost = 1 - filt.rps / bare.rps
        print(
            f"  filterproxy / bare mitmdump throughput: {filt.rps / bare.rps:.3f} (filtering costs {cost * 100:.1f} %; "
            f"target <= 10 %: {'OK' if cost <= 0.10 else 'MISSED'})"
        )
        print(f"  filterproxy / bare mitmdump p50 latency: {filt.p50_ms / bare.p50_ms:.3f}")
        ccost = filt.cpu_us / bare.cpu_us - 1
        print(
            f"  CPU per request (median of rounds): bare {bare.cpu_us:.0f} µs, "
            f"filterproxy {filt.cpu_us:.0f} µs → filtering costs {ccost * 100:.1f} % of the CPU budget, i.e. "
            f"{(1 - bare.cpu_us / filt.cpu_us) * 100:.1f} % of the CPU-bound throughput "
            f"(target <= 10 %: {'OK' if 1 - bare.cpu_us / filt.cpu_us <= 0.10 else 'MISSED'})"
        )
    if hooktime:
        _print_hooktime(hooktime)
    squid = by.get("squid (dstdomain deny)")
    if squid and filt:
        print(
            f"  squid / filterproxy throughput: {squid.rps / filt.rps:.1f}x; RSS squid {squid.rss_mb:.0f} MB vs "
            f"filterproxy {filt.rss_mb:.0f} MB"
        )
    w1, w2 = by.get("filterproxy ProxyWorkers x1"), by.get("filterproxy ProxyWorkers x2")
    if w1 and w2:
        s = w2.rps / w1.rps
        print(
            f"  2 workers / 1 worker: {s:.2f}x (target >= 1.8x on two cores: {'OK' if s >= 1.8 else 'MISSED'}; "
            f"{os.cpu_count()} CPUs here)"
        )


def main(argv: list[str] | None = None) -> int:
    a = _parse_args(argv)
    for tool in ("wrk", "nginx") + (() if a.skip_squid else ("squid",)):
        if not shutil.which(tool):
            print(f"bench: {tool} not found (apt-get install wrk nginx-light squid)", file=sys.stderr)
            return 2

    d = tempfile.mkdtemp(prefix="fp-bench-http-")
    os.chmod(d, 0o755)
    procs: list[subprocess.Popen] = []
    workers: list = []
    hooktime = None
    results: list[Result] = []
    try:
        with_urls, with_hashes = _matchers()
        data = generate(d, a.domains, a.urls, a.hashes, a.hosts)
        cfg_path = write_config(d, with_urls, with_hashes)
        lists_note = (
            f"{a.domains} domains"
            + (f" + {a.urls} URL rules" if with_urls else " (no URL matcher yet)")
            + (f" + {a.hashes} URL hashes" if with_hashes else " (no URL-hash matcher yet)")
        )
        addon = os.path.join(d, "upstream_addon.py")
        with open(addon, "w") as f:
            f.write(REDIRECT_ADDON)
        nginx_port = free_port()
        procs.append(start_nginx(d, nginx_port))
        script = write_wrk_script(d, data["hosts"], data["blocked"], a.blocked_share, nginx_port)
        print(
            f"nginx on 127.0.0.1:{nginx_port}; wrk -t{a.threads} -c{a.connections} -d{a.duration}s; "
            f"lists: {lists_note}",
            flush=True,
        )

        # Everything starts first (idle proxies cost nothing), then the proxies are measured in turn,
        # round after round, and each keeps its best round: other load on the machine hits all alike.
        targets: list[tuple[str, int, object, str]] = []  # (name, port, pids function, note)

        # (a) bare mitmdump
        port = free_port()
        bare = subprocess.Popen(mitmdump_cmd(port, d, ["-s", addon]))
        procs.append(bare)
        wait_port(port, 60, bare)
        targets.append(("bare mitmdump", port, lambda: [bare.pid], ""))

        # (b) filterproxy addon in mitmdump, lists loaded
        target, filt, timer_out = _start_filterproxy(d, addon, cfg_path, procs)
        targets.append(target)

        # (c) squid, same domains as dstdomain deny list
        if not a.skip_squid:
            port = free_port()
            t0 = time.monotonic()
            sq = start_squid(d, port, data["hosts"])
            procs.append(sq)
            targets.append(
                (
                    "squid (dstdomain deny)",
                    port,
                    lambda: [sq.pid] + children(sq.pid),
                    f"start-up {time.monotonic() - t0:.0f} s",
                )
            )

        # (d, e) filterproxy proxy workers: 1 and 2 processes on one SO_REUSEPORT address
        if not a.skip_workers:
            targets += _start_workers(d, addon, cfg_path, workers)

        results = _measure_all(targets, script, a)
        stop(filt)  # writes the hook timer's totals
        try:
            with open(timer_out) as f:
                hooktime = json.load(f)
        except OSError:
            hooktime = None
    finally:
        for pw in workers:
            pw.stop()
        for p in reversed(procs):
            stop(p)
        if a.keep:
            print(f"kept {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)

    _print_report(results, hooktime, a)
    if a.json:
        with open(a.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
