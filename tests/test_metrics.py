"""filterproxy.metrics: exposition, label bounds, serving, multiprocess aggregation, meta rules.

Real peers: HTTP clients against metrics.serve() and child processes sharing a metrics directory.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from filterproxy import metrics
from filterproxy.dns.wire import QTYPE_NAMES
from filterproxy.verdict import Action, Reason
from filterproxy.vocabulary import KNOWN_CATEGORIES

REPO = Path(__file__).resolve().parents[1]
METRICS_PACKAGE = REPO / "filterproxy" / "metrics"

EXPECTED_METRICS = {
    "filterproxy_build_info": ("gauge", ("version", "python")),
    "filterproxy_dns_queries_total": ("counter", ("group", "qtype", "action", "protocol")),
    "filterproxy_dns_blocked_total": ("counter", ("group", "category", "reason")),
    "filterproxy_dns_cache_hits_total": ("counter", ()),
    "filterproxy_dns_cache_misses_total": ("counter", ()),
    "filterproxy_dns_cache_entries": ("gauge", ("cache",)),
    "filterproxy_dns_upstream_duration_seconds": ("histogram", ("upstream",)),
    "filterproxy_dns_upstream_errors_total": ("counter", ("upstream", "kind")),
    "filterproxy_dns_ratelimited_total": ("counter", ("group",)),
    "filterproxy_dns_refused_total": ("counter", ("reason",)),
    "filterproxy_dns_malformed_total": ("counter", ()),
    "filterproxy_dns_errors_total": ("counter", ("kind",)),
    "filterproxy_http_requests_total": ("counter", ("group", "action", "reason")),
    "filterproxy_http_blocked_total": ("counter", ("group", "category")),
    "filterproxy_http_errors_total": ("counter", ("hook",)),
    "filterproxy_http_safesearch_rewrites_total": ("counter", ("group", "engine")),
    "filterproxy_http_slow_clients_total": ("counter", ()),
    "filterproxy_lists_entries": ("gauge", ("list", "category")),
    "filterproxy_lists_info": ("gauge", ("list", "version")),
    "filterproxy_lists_last_success_timestamp_seconds": ("gauge", ("list",)),
    "filterproxy_lists_age_seconds": ("gauge", ("list",)),
    "filterproxy_lists_update_failures_total": ("counter", ("list", "reason")),
    "filterproxy_lists_reloads_total": ("counter", ("result",)),
    "filterproxy_config_reloads_total": ("counter", ("result",)),
    "filterproxy_config_generation": ("gauge", ("role",)),
    "filterproxy_distribution_list_version": ("gauge", ("list", "role")),
    "filterproxy_distribution_root_version": ("gauge", ()),
    "filterproxy_distribution_snapshot_version": ("gauge", ()),
    "filterproxy_distribution_last_success_timestamp_seconds": ("gauge", ()),
    "filterproxy_distribution_failures_total": ("counter", ("reason",)),
    "filterproxy_imagehash_images_total": ("counter", ()),
    "filterproxy_imagehash_matches_total": ("counter", ("list", "kind")),
    "filterproxy_imagehash_duration_seconds": ("histogram", ()),
    "filterproxy_fullhash_checks_total": ("counter", ("list", "result")),
    "filterproxy_reports_queue_depth": ("gauge", ()),
    "filterproxy_reports_delivered_total": ("counter", ()),
    "filterproxy_reports_delivery_failures_total": ("counter", ()),
    "filterproxy_querylog_written_total": ("counter", ()),
    "filterproxy_querylog_dropped_total": ("counter", ()),
    "filterproxy_admin_logins_total": ("counter", ("result",)),
    "filterproxy_admin_errors_total": ("counter", ()),
}


# ----------------------------------------------------------------------------- helpers


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Exposition text → {(sample name, labels): value}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def scrape_registry() -> dict[tuple[str, frozenset], float]:
    return samples(generate_latest(metrics.REGISTRY).decode())


def key(name: str, **labels: str) -> tuple[str, frozenset]:
    return name, frozenset(labels.items())


@pytest.fixture(autouse=True)
def _zero_counters():
    metrics.COLLECTOR.reset()
    yield
    metrics.COLLECTOR.reset()


# ----------------------------------------------------------------------------- exposition


def test_counter_exposition_and_enum_labels():
    for _ in range(3):
        metrics.DNS_QUERIES.inc("primary", "A", "block", "udp")
    metrics.DNS_QUERIES.inc("primary", "A", Action.BLOCK, "udp")  # enum member → its value
    metrics.DNS_QUERIES.inc("staff", "AAAA", "allow", "tcp", amount=5)
    metrics.DNS_BLOCKED.inc("primary", "adult", Reason.CATEGORY)
    metrics.DNS_BLOCKED.inc("primary", None, Reason.LEGAL)  # no category → "none"
    metrics.DNS_CACHE_HITS.inc()
    s = scrape_registry()
    assert s[key("filterproxy_dns_queries_total", group="primary", qtype="A", action="block", protocol="udp")] == 4
    assert s[key("filterproxy_dns_queries_total", group="staff", qtype="AAAA", action="allow", protocol="tcp")] == 5
    assert s[key("filterproxy_dns_blocked_total", group="primary", category="adult", reason="category")] == 1
    assert s[key("filterproxy_dns_blocked_total", group="primary", category="none", reason="legal")] == 1
    assert s[key("filterproxy_dns_cache_hits_total")] == 1
    assert metrics.DNS_QUERIES.value("primary", "A", Action.BLOCK, "udp") == 4


@pytest.mark.parametrize(
    "labels, expected",
    [
        (("primary", 28, "allow", "udp"), ("primary", "AAAA", "allow", "udp")),  # numeric qtype
        (("primary", "aaaa", "allow", "udp"), ("primary", "AAAA", "allow", "udp")),  # lower case
        (("primary", "WKS", "allow", "udp"), ("primary", "other", "allow", "udp")),  # rare qtype
        (("primary", 99, "allow", "udp"), ("primary", "other", "allow", "udp")),
        (("primary", "A", "allow", "smtp"), ("primary", "A", "allow", "other")),  # closed set
        (("www.example.com/x?y", "A", "allow", "udp"), ("other", "A", "allow", "udp")),  # never a name as label
        (("192.168.1.23", "A", "allow", "udp"), ("other", "A", "allow", "udp")),  # nor an address
        (("2001:db8::1", "A", "allow", "udp"), ("other", "A", "allow", "udp")),
        (("media.example", "A", "allow", "udp"), ("other", "A", "allow", "udp")),
    ],
)
def test_label_values_fold_to_bounded_sets(labels, expected):
    metrics.DNS_QUERIES.inc(*labels)
    metrics.DNS_QUERIES.inc(*labels)
    s = scrape_registry()
    g, q, a, p = expected
    assert s[key("filterproxy_dns_queries_total", group=g, qtype=q, action=a, protocol=p)] == 2


def test_learned_values_are_bounded():
    col = metrics.MetricsCollector()
    ls = metrics.LabelSet("group", ("primary",), extra=2)
    c = metrics.Counter("filterproxy_test_things_total", "t", (("group", ls),), collector=col)
    for g in ("primary", "custom-a", "custom-b", "custom-c", "custom-d", "custom-a"):
        c.inc(g)
    snap = c.snapshot()
    assert snap == {("primary",): 1, ("custom-a",): 2, ("custom-b",): 1, ("other",): 2}
    ls.add(["custom-z"])  # configured values never fold
    c.inc("custom-z")
    assert c.snapshot()[("custom-z",)] == 1


def test_configure_labels_accepts_configured_ids():
    metrics.configure_labels(groups=["lab-room-3"], lists=["moet-legal"], upstreams=["vnpt"])
    metrics.DNS_RATELIMITED.inc("lab-room-3")
    metrics.DNS_UPSTREAM_ERRORS.inc("vnpt", "timeout")
    s = scrape_registry()
    assert s[key("filterproxy_dns_ratelimited_total", group="lab-room-3")] == 1
    assert s[key("filterproxy_dns_upstream_errors_total", upstream="vnpt", kind="timeout")] == 1


def test_wrong_label_count_and_negative_amount_raise():
    with pytest.raises(ValueError):
        metrics.DNS_QUERIES.inc("primary", "A")
    with pytest.raises(ValueError):
        metrics.DNS_MALFORMED.inc(amount=-1)
    with pytest.raises(ValueError):
        metrics.LISTS_INFO.set("only-the-list")


def test_histogram_buckets_sum_count():
    for v in (0.0004, 0.001, 0.003, 0.2, 9.0):  # 0.001 sits exactly on a bound: le is inclusive
        metrics.DNS_UPSTREAM_DURATION.observe(v, "quad9")
    s = scrape_registry()
    b = lambda le: s[key("filterproxy_dns_upstream_duration_seconds_bucket", upstream="quad9", le=le)]  # noqa: E731
    assert b("0.0005") == 1
    assert b("0.001") == 2
    assert b("0.005") == 3
    assert b("0.25") == 4
    assert b("5.0") == 4
    assert b("+Inf") == 5
    assert s[key("filterproxy_dns_upstream_duration_seconds_count", upstream="quad9")] == 5
    assert s[key("filterproxy_dns_upstream_duration_seconds_sum", upstream="quad9")] == pytest.approx(9.2044)
    metrics.IMAGEHASH_DURATION.observe(0.04)
    s = scrape_registry()
    assert s[key("filterproxy_imagehash_duration_seconds_count")] == 1


def test_gauges_info_and_derived_age():
    now = time.time()
    metrics.LISTS_ENTRIES.set("ut1-adult", "adult", value=123456)
    metrics.LISTS_INFO.set("ut1-adult", "2024-06-01")
    metrics.LISTS_INFO.set("ut1-adult", "2024-06-02")  # replaces, never two versions
    metrics.LISTS_LAST_SUCCESS.set("ut1-adult", value=now - 7200)
    metrics.DISTRIBUTION_LIST_VERSION.set("ut1-adult", "national", value=42)
    metrics.DISTRIBUTION_LIST_VERSION.set("ut1-adult", "Hà Nội", value=42)  # not a role: folds to "other"
    depth = [7]
    metrics.REPORTS_QUEUE_DEPTH.set_function(lambda: depth[0])
    try:
        s = scrape_registry()
        assert s[key("filterproxy_lists_entries", list="ut1-adult", category="adult")] == 123456
        versions = [k for k in s if k[0] == "filterproxy_lists_info" and ("list", "ut1-adult") in k[1]]
        assert versions == [key("filterproxy_lists_info", list="ut1-adult", version="2024-06-02")]
        assert s[key("filterproxy_lists_age_seconds", list="ut1-adult")] == pytest.approx(7200, abs=5)
        assert s[key("filterproxy_distribution_list_version", list="ut1-adult", role="national")] == 42
        assert s[key("filterproxy_distribution_list_version", list="ut1-adult", role="other")] == 42
        assert s[key("filterproxy_reports_queue_depth")] == 7
        depth[0] = 0
        assert scrape_registry()[key("filterproxy_reports_queue_depth")] == 0
        metrics.LISTS_ENTRIES.remove("ut1-adult", "adult")
        assert key("filterproxy_lists_entries", list="ut1-adult", category="adult") not in scrape_registry()
    finally:
        metrics.REPORTS_QUEUE_DEPTH.set_function(None)
        metrics.LISTS_INFO.clear()
        metrics.LISTS_LAST_SUCCESS.clear()


def test_build_info_and_process_metrics():
    s = scrape_registry()
    build = [k for k in s if k[0] == "filterproxy_build_info"]
    assert len(build) == 1
    labels = dict(build[0][1])
    assert labels["python"] == ".".join(map(str, sys.version_info[:3]))
    assert labels["version"]
    assert any(k[0] == "process_resident_memory_bytes" for k in s)
    assert any(k[0] == "python_info" for k in s)


def test_hot_path_cost_is_a_dict_update():
    inc = metrics.DNS_QUERIES.inc
    t0 = time.perf_counter()
    for _ in range(200_000):
        inc("primary", "A", "allow", "udp")
    per_call = (time.perf_counter() - t0) / 200_000
    assert metrics.DNS_QUERIES.value("primary", "A", "allow", "udp") == 200_000
    assert per_call < 5e-6, f"{per_call * 1e9:.0f} ns per inc"


# ----------------------------------------------------------------------------- serving


def test_serve_metrics_healthz_404_gzip():
    metrics.HTTP_BLOCKED.inc("teen", "gambling")
    srv = metrics.serve(":0")  # no host → loopback
    try:
        assert srv.address[0] == "127.0.0.1"
        r = requests.get(f"{srv.url}/metrics", timeout=5)
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        assert samples(r.text)[key("filterproxy_http_blocked_total", group="teen", category="gambling")] == 1
        assert requests.get(f"{srv.url}/healthz", timeout=5).text == "ok\n"
        assert requests.get(f"{srv.url}/nope", timeout=5).status_code == 404
        raw = requests.get(f"{srv.url}/metrics", headers={"Accept-Encoding": "gzip"}, stream=True, timeout=5).raw
        assert raw.headers["Content-Encoding"] == "gzip"
        assert b"filterproxy_http_blocked_total" in gzip.decompress(raw.read(decode_content=False))
        om = requests.get(f"{srv.url}/metrics", headers={"Accept": "application/openmetrics-text"}, timeout=5)
        assert om.headers["Content-Type"].startswith("application/openmetrics-text")
        assert om.text.rstrip().endswith("# EOF")
    finally:
        srv.close()


def test_serve_basic_auth():
    from filterproxy.passwords import hash_password

    pw = "correct horse battery staple"
    srv = metrics.serve("127.0.0.1:0", basic_auth=("prometheus", hash_password(pw)))
    try:
        url = f"{srv.url}/metrics"
        r = requests.get(url, timeout=5)
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"].startswith("Basic ")
        assert requests.get(url, auth=("prometheus", "wrong"), timeout=5).status_code == 401
        assert requests.get(url, auth=("someone", pw), timeout=5).status_code == 401
        ok = requests.get(url, auth=("prometheus", pw), timeout=5)
        assert ok.status_code == 200 and "filterproxy_build_info" in ok.text
        assert len(srv.httpd.check._ok) == 1  # a success is remembered (the next scrape pays no argon2)
        assert requests.get(url, auth=("prometheus", pw), timeout=5).status_code == 200  # cached check
        assert requests.get(url, auth=("prometheus", "wrong"), timeout=5).status_code == 401  # failures never are
        assert len(srv.httpd.check._ok) == 1
        bad = {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe").decode()}
        assert requests.get(url, headers=bad, timeout=5).status_code == 401
        assert requests.get(f"{srv.url}/healthz", timeout=5).status_code == 200  # open for health checks
    finally:
        srv.close()


@pytest.mark.parametrize(
    "hashed, why",
    [
        ("plaintext-password", "expected an argon2id hash"),
        ("sha256:" + hashlib.sha256(b"pw").hexdigest(), "unsalted SHA-256"),
        (hashlib.sha256(b"pw").hexdigest(), "unsalted SHA-256"),
        ("$2b$04$" + "a" * 53, "bcrypt"),
    ],
)
def test_serve_rejects_other_hash_schemes(hashed, why):
    with pytest.raises(ValueError, match=why):
        metrics.serve("127.0.0.1:0", basic_auth=("u", hashed))


def test_serve_tls(tmp_path):
    from tlsutil import self_signed

    certfile, keyfile = self_signed(tmp_path, cn="gateway-test", names=(), days=1)
    srv = metrics.serve("127.0.0.1:0", certfile=str(certfile), keyfile=str(keyfile))
    try:
        assert srv.url.startswith("https://")
        r = requests.get(f"{srv.url}/metrics", verify=str(certfile), timeout=5)
        assert r.status_code == 200 and "filterproxy_build_info" in r.text
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{srv.url}/metrics", timeout=5)  # not trusted by default
        # a plain-HTTP client does not stall the server
        with pytest.raises(requests.RequestException):
            requests.get(f"http://127.0.0.1:{srv.port}/metrics", timeout=5)
        assert requests.get(f"{srv.url}/healthz", verify=str(certfile), timeout=5).status_code == 200
    finally:
        srv.close()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1:9108", ("127.0.0.1", 9108)),
        (":9108", ("127.0.0.1", 9108)),
        ("9108", ("127.0.0.1", 9108)),
        ("0.0.0.0:9108", ("0.0.0.0", 9108)),
        ("[::1]:9108", ("::1", 9108)),
    ],
)
def test_parse_listen(text, expected):
    assert metrics.parse_listen(text) == expected


@pytest.mark.parametrize("text", ["host:port", "1:2:3", "127.0.0.1:70000", ""])
def test_parse_listen_rejects(text):
    with pytest.raises(ValueError):
        metrics.parse_listen(text)


def test_serve_ipv6_loopback():
    assert socket.has_ipv6
    srv = metrics.serve("[::1]:0")
    try:
        assert requests.get(f"{srv.url}/healthz", timeout=5).status_code == 200
    finally:
        srv.close()


# ----------------------------------------------------------------------------- multiprocess

WORKER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from filterproxy import metrics as m
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))  # normal exit → atexit flush
    m.enable_multiprocess(sys.argv[1], interval=3600)        # flush only when told, and at exit
    srv = None
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "inc":
            m.DNS_QUERIES.inc("primary", "A", "block", "udp", amount=int(args[0]))
        elif cmd == "observe":
            m.DNS_UPSTREAM_DURATION.observe(float(args[0]), "quad9")
        elif cmd == "queue":
            m.REPORTS_QUEUE_DEPTH.set(value=float(args[0]))
        elif cmd == "version":
            m.LISTS_INFO.set("ut1-adult", args[0])
        elif cmd == "flush":
            m.flush()
        elif cmd == "serve":
            srv = m.serve("127.0.0.1:0")
            print(srv.port, flush=True)
        elif cmd == "fork":
            pid = os.fork()
            if pid == 0:  # child: starts from zero, writes its own file
                m.DNS_QUERIES.inc("primary", "A", "block", "udp", amount=int(args[0]))
                m.flush()
                os._exit(0)
            os.waitpid(pid, 0)
        elif cmd == "exit":
            sys.exit(0)
        print("ok", flush=True)
""")


class Worker:
    """A real process using filterproxy.metrics with a shared directory, driven over stdin."""

    def __init__(self, script: Path, directory: Path):
        self.p = subprocess.Popen(
            [sys.executable, str(script), str(directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(REPO),
        )

    def __call__(self, line: str) -> str:
        assert self.p.stdin and self.p.stdout
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        out = self.p.stdout.readline().strip()
        assert out, f"worker died on {line!r} (rc={self.p.poll()})"
        return out

    def serve(self) -> str:
        port = self("serve")
        assert self.p.stdout
        assert self.p.stdout.readline().strip() == "ok"
        return f"http://127.0.0.1:{port}/metrics"

    def exit(self) -> None:
        assert self.p.stdin
        self.p.stdin.write("exit\n")
        self.p.stdin.flush()
        assert self.p.wait(timeout=20) == 0

    def kill(self) -> None:
        self.p.kill()
        self.p.wait(timeout=20)

    def terminate(self) -> None:
        self.p.terminate()
        assert self.p.wait(timeout=20) == 0


@pytest.fixture
def mp(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=str(REPO)))
    directory = tmp_path / "metrics"
    procs: list[Worker] = []

    def start() -> Worker:
        w = Worker(script, directory)
        procs.append(w)
        return w

    yield start, directory
    for w in procs:
        if w.p.poll() is None:
            w.kill()


def _get(url: str) -> dict:
    r = requests.get(url, timeout=10)
    assert r.status_code == 200
    return samples(r.text)


Q = key("filterproxy_dns_queries_total", group="primary", qtype="A", action="block", protocol="udp")


def test_multiprocess_counters_sum_and_survive_exits(mp):
    start, directory = mp
    server = start()
    url = server.serve()
    server("inc 1")
    w1, w2 = start(), start()
    w1("inc 10")
    w1("observe 0.002")
    w1("flush")
    w2("inc 5")
    w2("observe 0.3")
    w2.exit()  # no explicit flush: the atexit hook writes
    s = _get(url)
    assert s[Q] == 16
    assert s[key("filterproxy_dns_upstream_duration_seconds_count", upstream="quad9")] == 2
    assert s[key("filterproxy_dns_upstream_duration_seconds_bucket", upstream="quad9", le="0.0025")] == 1

    # the exited worker was folded into the archive and its file removed, still counted
    assert "archive.json" in os.listdir(directory)
    assert len([n for n in os.listdir(directory) if re.match(r"\d+-[0-9a-f]+\.json$", n)]) == 1  # w1 only
    assert _get(url)[Q] == 16

    w1("inc 3")
    w1("flush")
    assert _get(url)[Q] == 19

    # a worker killed without flushing loses only what it had not written; nothing goes backwards
    w1("inc 2")
    w1.kill()
    assert _get(url)[Q] == 19

    # its restart starts at zero and adds on top
    w3 = start()
    w3("inc 1")
    w3("flush")
    assert _get(url)[Q] == 20

    # the serving process restarts cleanly (SIGTERM → atexit flush): its own count is kept
    server.terminate()
    server2 = start()
    url2 = server2.serve()
    assert _get(url2)[Q] == 20


def test_multiprocess_counter_never_decreases_after_serving_process_is_killed(mp):
    start, directory = mp
    server = start()
    url = server.serve()
    w = start()
    w("inc 7")
    w("flush")
    server("inc 4")  # exposed by the scrape below, never flushed
    assert _get(url)[Q] == 11
    server.kill()  # SIGKILL: no atexit, its 4 are lost from the files
    server2 = start()
    url2 = server2.serve()
    assert _get(url2)[Q] == 11  # high-water mark: Prometheus never sees a false reset
    w("inc 1")
    w("flush")
    assert _get(url2)[Q] == 11  # catching up with what was lost before growing again
    w("inc 4")
    w("flush")
    assert _get(url2)[Q] == 12


def test_multiprocess_unreadable_file_does_not_drop_counts(mp):
    start, directory = mp
    server = start()
    url = server.serve()
    w = start()
    w("inc 9")
    w("flush")
    assert _get(url)[Q] == 9
    w.kill()
    # simulate a file truncated by a power cut before the serving process archived it
    name = next(n for n in os.listdir(directory) if n.startswith(f"{w.p.pid}-"))
    (directory / name).write_text("{trunc")
    assert _get(url)[Q] == 9


def test_multiprocess_gauges_live_processes_only(mp):
    start, _ = mp
    server = start()
    url = server.serve()
    server("queue 1")
    server("version 2024-06-01")
    w = start()
    w("queue 2")
    time.sleep(0.01)
    w("version 2024-06-02")  # most recent wins
    w("flush")
    s = _get(url)
    assert s[key("filterproxy_reports_queue_depth")] == 3  # sum mode
    assert s[key("filterproxy_lists_info", list="ut1-adult", version="2024-06-02")] == 1
    assert key("filterproxy_lists_info", list="ut1-adult", version="2024-06-01") not in s
    w.kill()
    s = _get(url)
    assert s[key("filterproxy_reports_queue_depth")] == 1  # a dead process's gauge is gone
    assert s[key("filterproxy_lists_info", list="ut1-adult", version="2024-06-01")] == 1


def test_multiprocess_fork_child_starts_from_zero(mp):
    start, _ = mp
    parent = start()
    parent("inc 5")
    parent("flush")
    parent("fork 1")  # child adds 1 in its own file
    url = parent.serve()
    assert _get(url)[Q] == 6  # not 11: the child did not inherit the parent's 5


def test_enable_multiprocess_in_this_process(tmp_path):
    """The same path in-process (the pytest process serving its own registry)."""
    d = tmp_path / "m"
    foreign = {
        "pid": 999999999,
        "start": 1,
        "written": time.time(),
        "metrics": {"filterproxy_dns_malformed_total": [[[], 41]], "filterproxy_not_a_metric_any_more": [[[], 1]]},
    }
    d.mkdir()
    (d / "999999999-abcdef.json").write_text(json.dumps(foreign))  # a dead process's state
    metrics.enable_multiprocess(str(d), interval=3600)
    try:
        metrics.DNS_MALFORMED.inc()
        assert scrape_registry()[key("filterproxy_dns_malformed_total")] == 42
        metrics.flush()
        own = [n for n in os.listdir(d) if n.startswith(f"{os.getpid()}-")]
        assert len(own) == 1
        doc = json.loads((d / own[0]).read_text())
        assert doc["metrics"]["filterproxy_dns_malformed_total"] == [[[], 1]]
    finally:
        metrics.COLLECTOR.disable_multiprocess()


# ----------------------------------------------------------------------------- meta

FORBIDDEN_LABEL = re.compile(r"(client|^ip$|_ip$|addr|domain|url|qname|host|user|mac|path|name|email)", re.I)
SUBSYSTEMS = {
    "build",
    "dns",
    "http",
    "lists",
    "distribution",
    "imagehash",
    "reports",
    "config",
    "querylog",
    "fullhash",
    "admin",
}


def test_exactly_the_specified_metrics_are_defined():
    defined = {}
    for name, m in metrics.COLLECTOR.metrics.items():
        kind = {"counter": "counter", "histogram": "histogram"}.get(m.kind, "gauge")
        labels = m.labelnames + getattr(m, "infonames", ())
        defined[name] = (kind, labels)
    assert defined == EXPECTED_METRICS


@pytest.mark.parametrize("name", sorted(EXPECTED_METRICS))
def test_metric_naming_convention(name):
    m = metrics.COLLECTOR.metrics[name]
    assert re.fullmatch(r"filterproxy_[a-z]+(_[a-z0-9]+)+", name), name
    assert name.split("_")[1] in SUBSYSTEMS, name
    if m.kind == "counter":
        assert name.endswith("_total")
    else:
        assert not name.endswith("_total")
    if m.kind == "histogram":
        assert name.endswith("_seconds")
    if "timestamp" in name:
        assert name.endswith("_timestamp_seconds")
    assert m.documentation and m.documentation.endswith(".")
    for label in m.labelnames + getattr(m, "infonames", ()):
        assert not FORBIDDEN_LABEL.search(label), f"{name} has a label {label!r} that could identify a person/site"


def test_every_metric_name_in_the_source_is_defined_once():
    src = "\n".join(p.read_text() for p in sorted(METRICS_PACKAGE.glob("*.py")))
    literals = re.findall(r'"(filterproxy_[a-z0-9_]+)"', src)
    assert sorted(set(literals)) == sorted(EXPECTED_METRICS)
    assert len(literals) == len(set(literals)), "a metric name appears twice in filterproxy/metrics/"
    catalogue = (METRICS_PACKAGE / "catalogue.py").read_text()
    in_catalogue = re.findall(r'"(filterproxy_[a-z0-9_]+)"', catalogue)
    assert sorted(in_catalogue) == sorted(literals), "a metric named outside catalogue.py"
    with pytest.raises(ValueError):
        metrics.Counter("filterproxy_dns_queries_total", "dup")


def test_no_other_module_defines_metrics():
    """CONTRIBUTING.md rule 8: every metric is defined in filterproxy/metrics/; other modules only use its objects."""
    offenders = []
    for path in (REPO / "filterproxy").rglob("*.py"):
        if path.parent == METRICS_PACKAGE:
            continue
        text = path.read_text(errors="replace")
        if re.search(
            r"from prometheus_client import|import prometheus_client|\"filterproxy_[a-z_]+_(total|seconds)\"", text
        ):
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders, offenders


def test_every_exposed_sample_uses_bounded_labels():
    metrics.DNS_QUERIES.inc("a.very.long.domain.example.com", "TYPE65534", "allow", "udp")
    for fam in text_string_to_metric_families(generate_latest(metrics.REGISTRY).decode()):
        if not fam.name.startswith("filterproxy_"):
            continue
        for s in fam.samples:
            for k, v in s.labels.items():
                assert not FORBIDDEN_LABEL.search(k)
                if fam.name not in ("filterproxy_lists_info", "filterproxy_build_info"):
                    assert "." not in v or k in ("le",) or re.fullmatch(r"[\d.]+", v), (fam.name, k, v)


def test_collector_on_a_private_registry():
    col = metrics.MetricsCollector()
    c = metrics.Counter("filterproxy_test_private_total", "Private.", collector=col)
    reg = CollectorRegistry(auto_describe=True)
    reg.register(col)
    c.inc(amount=2)
    assert samples(generate_latest(reg).decode())[key("filterproxy_test_private_total")] == 2


def test_label_sets_are_derived_from_the_vocabulary():
    """The catalogue's categories, reasons, actions and qtypes are the vocabulary's own: no copy can drift."""
    assert set(metrics.CATEGORIES) == KNOWN_CATEGORIES | {"none"}
    assert set(metrics.REASONS) == {r.value for r in Reason}
    assert set(metrics.ACTIONS) == {a.value for a in Action}
    assert set(metrics.QTYPES) == set(QTYPE_NAMES.values())
    # the live label sets: configured categories may be added (configure_labels), never one missing
    assert metrics.CATEGORY.known >= KNOWN_CATEGORIES | {"none"}
    assert metrics.REASON.known == {r.value for r in Reason}
    assert metrics.ACTION.known == {a.value for a in Action}
    assert metrics.QTYPE.known == set(QTYPE_NAMES.values())
    for code, name in QTYPE_NAMES.items():
        assert metrics.QTYPE.fold(code) == name


def test_every_category_and_reason_is_a_label_value_not_other():
    for category in sorted(KNOWN_CATEGORIES):
        for reason in Reason:
            metrics.DNS_BLOCKED.inc("primary", category, reason)
    snap = metrics.DNS_BLOCKED.snapshot()
    assert {k[1] for k in snap} == KNOWN_CATEGORIES
    assert {k[2] for k in snap} == {r.value for r in Reason}
