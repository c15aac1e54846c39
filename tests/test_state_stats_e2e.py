"""Statistics through a real ``filterproxy run`` (two DNS processes and a proxy worker): DNS answers (blocked
and allowed, over UDP incl. the packed-reply path and TCP) and proxy decisions reach the state database's
per-minute counts within the flush interval, and no table holds a client address or a queried name."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import requests
import yaml

from filterproxy.dns.testing import FakeUpstream, ServerProcess

sys.path.insert(0, str(Path(__file__).parent))
from test_http_e2e import free_port  # noqa: E402
from test_querylog_e2e import backend  # noqa: E402, F401  (fixture: a local HTTP server answering "hello")

NAMES = ("blocked5.example", "fine.example", "blocked7.example", "blocked9.example")


def _config(tmp_path: Path, upstream: FakeUpstream) -> Path:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "kids.yaml").write_text("name: Kids\nblock_categories: [adult]\nblock_mode: nxdomain\n")
    (tmp_path / "adult.txt").write_text("".join(f"blocked{i}.example\n" for i in range(10)))
    doc = {
        "server": {"state_dir": str(tmp_path / "state")},
        "admin": {"stats_flush_seconds": 1},
        "upstreams": {"servers": [upstream.address], "timeout": 1.0},
        "dns": {"allowed_networks": ["127.0.0.0/8"], "rate_limit": 0},
        "policies_dir": "policies",
        "groups": ["kids"],
        "default_group": "kids",
        "lists": [
            {"id": "adult", "category": "adult", "format": "domains", "match": "subdomains", "path": "adult.txt"}
        ],
    }
    cfg = tmp_path / "filterproxy.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


def _counts(db: Path) -> dict[tuple[str, str, str, str], int]:
    """(group, category, action, protocol) → count, summed over the minutes (empty while no table yet)."""
    if not db.exists():
        return {}
    with sqlite3.connect(db) as conn:
        try:
            rows = conn.execute(
                'SELECT "group", category, action, protocol, SUM(count) FROM stats_minute'
                " WHERE category != '*' GROUP BY 1, 2, 3, 4"  # not the pre-added series rows
            ).fetchall()
        except sqlite3.OperationalError:  # not migrated yet
            return {}
    return {tuple(r[:4]): r[4] for r in rows}


def _every_value(db: Path) -> str:
    """Every value of every row of every table, as one text."""
    out = []
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert "stats_minute" in tables and "stats_hour" in tables
        for t in tables:
            out += [repr(row) for row in conn.execute(f'SELECT * FROM "{t}"')]  # noqa: S608 (names from the db)
    return "\n".join(out)


def test_decisions_are_counted_without_addresses_or_names(tmp_path: Path, backend: int) -> None:  # noqa: F811
    up = FakeUpstream().start()
    proxy_port = free_port()
    proc = ServerProcess(
        ["--config", str(_config(tmp_path, up)), "--dns-listen", "127.0.0.1:0", "--dns-workers", "2",
         "--proxy-listen", f"127.0.0.1:{proxy_port}", "--proxy-workers", "1", "--metrics-listen", "off",
         "--admin-listen", "off"],
        log_path=str(tmp_path / "run.log"),
    ).start()  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "proxy listening on" not in proc.output():
            assert proc.alive() and time.monotonic() < deadline, proc.output()[-3000:]
            time.sleep(0.1)

        def udp(name: str) -> dns.message.Message:
            return dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=proc.port, timeout=3)

        for _ in range(3):  # the later answers come from the packed-reply cache (the UDP hot path)
            assert udp("blocked5.example").rcode() == dns.rcode.NXDOMAIN
            assert udp("fine.example").rcode() == dns.rcode.NOERROR
        tcp = dns.query.tcp(dns.message.make_query("blocked7.example", "A"), "127.0.0.1", port=proc.port, timeout=3)
        assert tcp.rcode() == dns.rcode.NXDOMAIN
        s = requests.Session()
        s.trust_env = False
        s.proxies = {"http": f"http://127.0.0.1:{proxy_port}"}
        assert s.get("http://blocked9.example/page", timeout=10).status_code == 403
        assert s.get(f"http://localhost:{backend}/", timeout=10).text == "hello"

        want = {
            ("kids", "adult", "block", "udp"): 3,
            ("kids", "none", "allow", "udp"): 3,
            ("kids", "adult", "block", "tcp"): 1,
            ("kids", "adult", "block", "http"): 1,
            ("kids", "none", "allow", "http"): 1,
        }
        db = tmp_path / "state" / "state.db"
        deadline = time.monotonic() + 30  # flushes every second (admin.stats_flush_seconds: 1)
        while _counts(db) != want and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _counts(db) == want, proc.output()[-3000:]
        everything = _every_value(db)
        for secret in ("127.0.0.1", "localhost", *NAMES, *(n.split(".")[0] for n in NAMES)):
            assert secret not in everything
    finally:
        proc.stop()
        up.stop()
