#!/usr/bin/env python3
"""Admin server memory: the RSS the control API adds to ``filterproxy run``'s main process.

    .venv/bin/python bench/bench_admin.py [--rounds 3] [--domains 100000] [--requests 200]

Starts ``filterproxy run`` (DNS on, proxy and metrics off, the same configuration and state database with
one admin user and a token) alternately with ``--admin-listen off`` and ``--admin-listen 127.0.0.1:0``.
The second gets a login (argon2id check, session cookie), then ``--requests`` API calls with the session
and the token (``/me``, ``/status``, ``/overrides``, ``/devices``, ``/audit``, ``/openapi.json``, an
override added and removed). Both get the same DNS queries. Then the main process's RSS (VmRSS) is read
after a second's rest. Prints each round, the medians and the difference (target: at most +25 MB).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from filterproxy.dns.testing import FakeUpstream, ServerProcess  # noqa: E402

PASSWORD = "correct horse battery staple"
TARGET_MB = 25.0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def setup(work: Path, domains: int, upstream: str) -> tuple[Path, str]:
    """A configuration with one list of ``domains`` names, and a state database with an admin and a token."""
    from filterproxy.config import load_config
    from filterproxy.passwords import hash_password
    from filterproxy.state.model import Actor
    from filterproxy.state.store import Store

    (work / "policies").mkdir()
    (work / "policies" / "kids.yaml").write_text("name: kids\nblock_categories: [adult]\nblock_mode: nxdomain\n")
    (work / "adult.txt").write_text("".join(f"n{i}.adult.example\n" for i in range(domains)))
    cfg = work / "filterproxy.yaml"
    cfg.write_text(
        f"server: {{state_dir: {work / 'state'}}}\nupstreams: {{servers: ['{upstream}']}}\n"
        "dns: {allowed_networks: [127.0.0.0/8], rate_limit: 0}\npolicies_dir: policies\ngroups: [kids]\n"
        "default_group: kids\nlists:\n  - {id: adult, category: adult, format: domains, match: subdomains, "
        "path: adult.txt}\n"
    )
    store = Store.for_config(load_config(str(cfg)))
    try:
        system = Actor("system", "system")
        store.add_user(system, "boss", "admin", hash_password(PASSWORD))
        token = store.create_token(system, "bench", "boss")[1]
    finally:
        store.close()
    return cfg, token


def dns_queries(proc: ServerProcess, n: int = 200) -> None:
    import dns.message
    import dns.query

    for i in range(n):
        dns.query.udp(
            dns.message.make_query(f"n{i}.adult.example" if i % 2 else "example.org", "A"), proc.host, 5, port=proc.port
        )


def api_calls(base: str, token: str, n: int) -> int:
    """A login, then ``n`` calls alternating the session and the token (an answer that is not 2xx raises);
    returns the number of calls."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    def call(method: str, path: str, body: dict | None = None, headers: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(base + path, data=data, method=method, headers=headers or {})
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with opener.open(req, timeout=10) as r:
            return json.loads(r.read() or b"null")

    login = call("POST", "/login", {"user": "boss", "password": PASSWORD})
    csrf = {"X-CSRF-Token": login["csrf_token"]}
    bearer = {"Authorization": f"Bearer {token}"}
    paths = ("/me", "/status", "/overrides", "/devices", "/audit", "/openapi.json")
    ok = 1
    for i in range(n):
        who = csrf if i % 2 else bearer
        if i % 20 == 10:
            o = call(
                "POST", "/overrides", {"group": "kids", "name": f"x{i}.example", "action": "allow", "minutes": 5}, who
            )
            call("DELETE", f"/overrides/{o['id']}", None, who)
        else:
            call("GET", paths[i % len(paths)], None, who)
        ok += 1
    return ok


def one(cfg: Path, token: str, admin: bool, n: int, log: Path) -> float:
    import re

    args = ["--config", str(cfg), "--dns-listen", "127.0.0.1:0", "--proxy-listen", "off", "--metrics-listen", "off"]
    args += ["--admin-listen", "127.0.0.1:0" if admin else "off"]
    proc = ServerProcess(args, log_path=str(log)).start(timeout=120)
    try:
        deadline = time.monotonic() + 60
        while admin and "admin API on" not in proc.output():
            assert proc.alive() and time.monotonic() < deadline, proc.output()[-2000:]
            time.sleep(0.1)
        dns_queries(proc)
        if admin:
            m = re.search(r"admin API on (http://[0-9.]+:\d+/api/v1)", proc.output())
            assert m, proc.output()[-2000:]
            api_calls(m.group(1), token, n)
        time.sleep(1.0)
        assert proc.proc is not None
        return rss_mb(proc.proc.pid)
    finally:
        proc.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--domains", type=int, default=100_000)
    p.add_argument("--requests", type=int, default=200)
    args = p.parse_args(argv)
    up = FakeUpstream().start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-admin-") as tmp:
            work = Path(tmp)
            cfg, token = setup(work, args.domains, up.address)
            off: list[float] = []
            on: list[float] = []
            for r in range(args.rounds):
                off.append(one(cfg, token, False, args.requests, work / f"off{r}.log"))
                on.append(one(cfg, token, True, args.requests, work / f"on{r}.log"))
                print(f"round {r + 1}: RSS admin off {off[-1]:.1f} MB, on {on[-1]:.1f} MB (+{on[-1] - off[-1]:.1f})")
    finally:
        up.stop()
    a, b = statistics.median(off), statistics.median(on)
    d = b - a
    print(
        f"\nmain process RSS, median of {args.rounds} ({args.domains:,} listed names, a login and {args.requests} API "
        f"calls): admin off {a:.1f} MB, on {b:.1f} MB: +{d:.1f} MB (target <= +{TARGET_MB:g} MB: "
        f"{'OK' if d <= TARGET_MB else 'MISSED'})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
