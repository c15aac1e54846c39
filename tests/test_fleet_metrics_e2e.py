"""Fleet metrics (deploy/ministry.md §5), end to end with the shipped files and real servers:

* a real ``filterproxy run`` with the shipped school config; a Prometheus **agent** started with the shipped
  drop-in's command line and environment variables and the shipped ``agent.yml`` (only ports, files and
  intervals changed); a real **vmauth** with the shipped ``vmauth.yml`` (TLS, bearer token, gateway label
  pinned to the token) in front of a real **VictoriaMetrics** started with the shipped ``/etc/default``
  arguments. DNS queries blocked in two categories and two groups come back from PromQL on VictoriaMetrics
  by category and group, with the external labels, together with the installed list versions; every
  dashboard and alert expression evaluates there, the version and list-age views give the right answers on
  a small imported fleet, and the not-reporting alert finds the gateway once its agent stops;
* vmalert accepts the rule files; the agent's drop-in verifies over Debian's prometheus.service;
* the series budget: under the DNS benchmark's query mix (bench/bench_dns.py), a gateway with the shipped
  school config and real lists exposes at most 500 series.
"""

from __future__ import annotations

import gzip
import importlib.util
import ipaddress
import json
import os
import random
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest
import requests
import yaml
from conftest import LISTS
from tlsutil import self_signed

from filterproxy.dns.testing import FakeUpstream, ServerProcess

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PROM = DEPLOY / "prometheus"
FLEET_RULES = PROM / "fleet.rules.yml"
GATEWAY_RULES = PROM / "filterproxy.rules.yml"
FLEET_DASHBOARD = DEPLOY / "grafana" / "filterproxy-fleet.json"
GATEWAY_DASHBOARD = DEPLOY / "grafana" / "filterproxy-dashboard.json"
SERIES_BUDGET = 500

# Groups by client address on loopback (the school config maps 10.x VLANs; tests come from 127.x).
CLIENT_GROUPS = {
    "127.0.0.1": "primary",  # the school config's default_group
    "127.0.1.1": "lower-secondary",
    "127.0.2.1": "upper-secondary",
    "127.0.3.1": "staff",
}


def need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.fail(f"{tool} not installed (test.sh installs the Debian package)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check: Callable[[], object], timeout: float = 60, logs: Callable[[], str] = lambda: "") -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (requests.RequestException, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})\n{logs()[-3000:]}")


class _Procs:
    """Processes a test started, stopped (by their own handle) at the end."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[tuple[subprocess.Popen, str]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.tmp)
        log.close()
        self.procs.append((p, name))
        return p

    def log(self, name: str) -> str:
        f = self.tmp / f"{name}.log"
        return f.read_text(errors="replace") if f.exists() else ""

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def stop_all(self) -> None:
        for p, _ in reversed(self.procs):
            self.stop(p)


# ----------------------------------------------------------------------------- the gateway


def _school_gateway(tmp: Path, upstream: FakeUpstream, lists: dict[str, Path] | None = None) -> ServerProcess:
    """`filterproxy run` with deploy/config/school.yaml as install.sh lays it out (policies, default lists),
    list files optionally replaced (list id → file), DNS and metrics on free loopback ports."""
    d = tmp / "gateway"
    d.mkdir()
    shutil.copytree(REPO / "policies", d / "policies")
    shutil.copytree(REPO / "blocklists" / "default", d / "lists")
    for f in (d / "lists").iterdir():
        os.utime(f)  # installed now (copytree keeps the checkout's times): the lists' age starts at 0
    shutil.copy(REPO / "blocklists" / "sources.yaml", d / "sources.yaml")
    cfg = yaml.safe_load((DEPLOY / "config" / "school.yaml").read_text())
    for li in cfg["lists"]:
        if lists and li["id"] in lists:
            li["path"] = str(lists[li["id"]])
    (d / "filterproxy.yaml").write_text(yaml.safe_dump(cfg))
    args = ["--config", str(d / "filterproxy.yaml"), "--state-dir", str(d / "state"), "--upstream", upstream.address]
    args += ["--dns-listen", "127.0.0.1:0", "--proxy-listen", "off", "--metrics-listen", f"127.0.0.1:{_free_port()}"]
    for addr, group in CLIENT_GROUPS.items():
        if group != cfg["default_group"]:
            args += ["--client-group", f"{ipaddress.ip_network(addr + '/24', strict=False)}={group}"]
    return ServerProcess(args, log_path=str(tmp / "gateway.log")).start()


def _ask(gw: ServerProcess, name: str, source: str, qtype: str = "A") -> dns.message.Message:
    q = dns.message.make_query(name, qtype, use_edns=0)  # EDNS: a blocked answer says why in an EDE option
    return dns.query.udp(q, gw.host, port=gw.port, source=source, timeout=3)


def _scrape(gw: ServerProcess) -> list[str]:
    assert gw.metrics_url, "the gateway logged no metrics address"
    text = requests.get(f"{gw.metrics_url}/metrics", timeout=10).text
    return [line for line in text.splitlines() if line and not line.startswith("#")]


# ----------------------------------------------------------------------------- the ministry side


def _cert(tmp: Path) -> tuple[Path, Path]:
    cert, key = self_signed(tmp, cn="metrics.test", names=(), days=2, files=("tls.crt", "tls.key"))
    return Path(cert), Path(key)


def _flags(argv: list[str], **values: str) -> list[str]:
    """Replace the values of ``-flag=value`` / ``--flag=value`` arguments (each must be present)."""
    out, seen = [], set()
    for a in argv:
        name = a.lstrip("-").partition("=")[0]
        if name in values:
            a = f"{a.partition('=')[0]}={values[name]}"
            seen.add(name)
        out.append(a)
    assert seen == set(values), f"flags missing from the shipped command line: {set(values) - seen}"
    return out


def _victoria_metrics(procs: _Procs) -> str:
    """VictoriaMetrics with the shipped ARGS (deploy/prometheus/victoria-metrics.default): storage in tmp,
    a free port; -search.latencyOffset=1s only so that seconds-old samples are visible to the test."""
    text = (PROM / "victoria-metrics.default").read_text()
    m = re.search(r'^ARGS="(.*)"$', text, re.M)
    assert m, "victoria-metrics.default: no ARGS line"
    port = _free_port()
    argv = _flags(
        shlex.split(m.group(1)), storageDataPath=str(procs.tmp / "vm-data"), httpListenAddr=f"127.0.0.1:{port}"
    )
    p = procs.start("victoria-metrics", [need("victoria-metrics"), *argv, "-search.latencyOffset=1s"])
    base = f"http://127.0.0.1:{port}"
    _wait(
        "victoria-metrics ready",
        lambda: p.poll() is None and requests.get(f"{base}/health", timeout=1).ok,
        logs=lambda: procs.log("victoria-metrics"),
    )
    return base


def _vmauth(procs: _Procs, vm: str, token: str, gateway: str) -> tuple[str, Path]:
    """vmauth with the shipped vmauth.yml (its one user: token and pinned gateway, backend port) over TLS."""
    cfg = yaml.safe_load((PROM / "vmauth.yml").read_text())
    (user,) = cfg["users"]
    assert user["bearer_token"].startswith("REPLACE-WITH")
    user["bearer_token"] = token
    (route,) = user["url_map"]
    assert route["src_paths"] == ["/api/v1/write"]  # write-only: no query access for gateways
    prefix = route["url_prefix"]
    assert prefix == "http://127.0.0.1:8428?extra_label=gateway=gw-hn-0001"
    route["url_prefix"] = prefix.replace("http://127.0.0.1:8428", vm).replace("gw-hn-0001", gateway)
    (procs.tmp / "vmauth.yml").write_text(yaml.safe_dump(cfg))
    crt, key = _cert(procs.tmp)
    port = _free_port()
    p = procs.start(
        "vmauth",
        [need("vmauth"), f"-auth.config={procs.tmp / 'vmauth.yml'}", f"-httpListenAddr=127.0.0.1:{port}"]
        + ["-tls", f"-tlsCertFile={crt}", f"-tlsKeyFile={key}"],
    )
    url = f"https://127.0.0.1:{port}"
    _wait(
        "vmauth ready",
        lambda: p.poll() is None and requests.get(f"{url}/health", verify=str(crt), timeout=1).ok,
        logs=lambda: procs.log("vmauth"),
    )
    return url, crt


def _agent(
    procs: _Procs, gw: ServerProcess, receiver: str, token: str, ca: Path, env: dict[str, str]
) -> subprocess.Popen:
    """Prometheus agent: the shipped drop-in's ExecStart and EnvironmentFile variables, the shipped agent.yml
    with the scrape target, receiver, token and CA files in tmp, and a 1 s interval instead of 60 s."""
    drop_in = (PROM / "agent.systemd.conf").read_text()
    (exec_start,) = [v for k, v in re.findall(r"^(ExecStart)=(.*)$", drop_in, re.M) if v]
    argv = shlex.split(exec_start)
    assert argv[0] == "/usr/bin/prometheus" and "--enable-feature=agent,expand-external-labels" in argv
    assert re.search(r"^EnvironmentFile=/etc/prometheus/filterproxy-agent.env$", drop_in, re.M)
    cfg = yaml.safe_load((PROM / "agent.yml").read_text())
    cfg["global"].update(scrape_interval="1s", scrape_timeout="1s")
    (job,) = cfg["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9108"]}]  # = school.yaml's metrics_listen
    assert gw.metrics_url
    job["static_configs"][0]["targets"] = [gw.metrics_url.removeprefix("http://")]
    (rw,) = cfg["remote_write"]
    assert rw["url"] == "https://metrics.moet.example.vn/api/v1/write"
    rw["url"] = f"{receiver}/api/v1/write"
    (procs.tmp / "remote-write.token").write_text(token + "\n")
    rw["authorization"]["credentials_file"] = str(procs.tmp / "remote-write.token")
    rw["tls_config"]["ca_file"] = str(ca)
    rw["queue_config"]["batch_send_deadline"] = "1s"
    (procs.tmp / "agent.yml").write_text(yaml.safe_dump(cfg))
    port = _free_port()
    argv = _flags(
        argv,
        **{
            "config.file": str(procs.tmp / "agent.yml"),
            "storage.agent.path": str(procs.tmp / "agent-wal"),
            "web.listen-address": f"127.0.0.1:{port}",
        },
    )
    shipped_env = dict(re.findall(r"^(FILTERPROXY_\w+)=(\S+)$", (PROM / "agent.env").read_text(), re.M))
    assert set(shipped_env) == set(env), "agent.env and agent.yml name the same variables"
    p = procs.start("agent", [need("prometheus"), *argv[1:]], env={**os.environ, **env})
    _wait(
        "prometheus agent ready",
        lambda: p.poll() is None and requests.get(f"http://127.0.0.1:{port}/-/ready", timeout=1).ok,
        logs=lambda: procs.log("agent"),
    )
    return p


def _query(vm: str, q: str) -> list[dict]:
    r = requests.get(f"{vm}/api/v1/query", params={"query": q}, timeout=10)
    doc = r.json()
    assert r.ok and doc.get("status") == "success", f"{q}: {r.status_code} {doc}"
    return doc["data"]["result"]


def _grafana_to_promql(expr: str) -> str:
    e = expr.replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$__interval", "1m")
    return re.sub(r"\$\{?\w+\}?", ".*", e)


def _rule_exprs(path: Path) -> dict[str, str]:
    doc = yaml.safe_load(path.read_text())
    return {r.get("alert") or r["record"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def _dashboard_exprs(path: Path) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in json.loads(path.read_text())["panels"] for t in p.get("targets", [])]


@pytest.fixture
def procs(tmp_path) -> Iterator[_Procs]:
    ps = _Procs(tmp_path)
    try:
        yield ps
    finally:
        ps.stop_all()


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream().start()
    yield up
    up.stop()


# ----------------------------------------------------------------------------- gateway → agent → VictoriaMetrics


def test_blocked_attempts_and_list_versions_reach_victoria_metrics(tmp_path, procs, upstream):
    gw = _school_gateway(tmp_path, upstream)
    try:
        vm = _victoria_metrics(procs)
        token = "tok-" + os.urandom(16).hex()
        receiver, ca = _vmauth(procs, vm, token, gateway="gw-hn-0001")
        # the agent claims another gateway id: the receiver pins the one its token belongs to
        env = {
            "FILTERPROXY_GATEWAY": "gw-impostor",
            "FILTERPROXY_SCHOOL": "thpt-test",
            "FILTERPROXY_PROVINCE": "test-tinh",
        }
        agent = _agent(procs, gw, receiver, token, ca, env)
        labels = {"gateway": "gw-hn-0001", "school": "thpt-test", "province": "test-tinh"}

        lists = {
            p.stem: [n for n in p.read_text().splitlines() if n and not n.startswith("#")]
            for p in (REPO / "blocklists" / "default").glob("*.txt")
        }
        sent = Counter()
        for source, category, n in (("127.0.0.1", "adult", 3), ("127.0.1.1", "gambling", 2), ("127.0.1.1", "adult", 1)):
            for name in lists[category][:n]:
                r = _ask(gw, name, source)
                assert any(o.otype == 15 for o in r.options), f"{name} from {source} not blocked: {r}"
                sent[(CLIENT_GROUPS[source], category)] += 1
        assert len({g for g, _ in sent}) == 2 and len({c for _, c in sent}) == 2

        q = 'sum by (gateway, school, province, group, category) (filterproxy_dns_blocked_total{job="filterproxy"})'

        def arrived() -> dict | None:
            got = {(r["metric"]["group"], r["metric"]["category"]): float(r["value"][1]) for r in _query(vm, q)}
            return got if got == {k: float(v) for k, v in sent.items()} else None

        _wait("blocked counters in VictoriaMetrics", arrived, logs=lambda: procs.log("agent"))
        for r in _query(vm, q):
            assert {k: r["metric"][k] for k in labels} == labels, r["metric"]

        # installed list versions: one series per list, the versions the gateway exposes
        local = {
            m.group(1): m.group(2)
            for line in _scrape(gw)
            if (m := re.match(r'filterproxy_lists_info\{list="([^"]+)",version="([^"]+)"\}', line))
        }
        assert len(local) == 12, local
        got = _query(vm, 'filterproxy_lists_info{gateway="gw-hn-0001"}')
        assert {r["metric"]["list"]: r["metric"]["version"] for r in got} == local
        assert all(r["metric"]["province"] == "test-tinh" for r in got)
        assert _query(vm, 'count({gateway="gw-impostor"})') == []
        # the agent sends only what the fleet uses (write_relabel_configs)
        assert _query(vm, 'count({__name__=~"python_.*|scrape_.*"})') == []

        # every fleet and gateway expression evaluates on VictoriaMetrics with data
        exprs = {**_rule_exprs(FLEET_RULES), **_rule_exprs(GATEWAY_RULES)}
        for board in (FLEET_DASHBOARD, GATEWAY_DASHBOARD):
            exprs |= {
                f"{board.name}: {t} #{i}": _grafana_to_promql(e) for i, (t, e) in enumerate(_dashboard_exprs(board))
            }
        for name, expr in exprs.items():
            try:
                _query(vm, expr)
            except AssertionError as exc:
                raise AssertionError(f"{name} does not evaluate on VictoriaMetrics") from exc
        # the panels the ministry reads: blocked attempts by province, category and age group; versions
        by_panel = {t: _grafana_to_promql(e) for t, e in _dashboard_exprs(FLEET_DASHBOARD)}
        blocked = _query(vm, by_panel["Blocked attempts by province, category and age group"])
        assert {(r["metric"]["province"], r["metric"]["category"], r["metric"]["group"]) for r in blocked} == {
            ("test-tinh", c, g) for g, c in sent
        }
        versions = _query(vm, by_panel["Gateways by list version (every list)"])
        assert {(r["metric"]["list"], r["metric"]["version"]) for r in versions} == set(local.items())
        assert all(float(r["value"][1]) == 1 for r in versions)  # one gateway on each version

        # list versions from the distribution repository, as other gateways of the fleet report them
        # (imported straight into VictoriaMetrics): two versions side by side in one province
        fleet = [
            ("gw-b1", "test-tinh", 41),
            ("gw-b2", "test-tinh", 42),
            ("gw-c1", "other-tinh", 42),
            ("gw-c2", "other-tinh", 42),
        ]
        text = "".join(
            f'filterproxy_distribution_list_version{{job="filterproxy",gateway="{g}",school="s-{g}",'
            f'province="{p}",list="moet-illegal",role="national"}} {v}\n'
            f'filterproxy_lists_age_seconds{{job="filterproxy",gateway="{g}",school="s-{g}",province="{p}",'
            f'list="moet-illegal"}} {200000 if g == "gw-b1" else 3600}\n'
            for g, p, v in fleet
        )
        assert requests.post(f"{vm}/api/v1/import/prometheus", data=text, timeout=10).ok
        installed = by_panel["Gateways by installed list version"]
        _wait("imported versions visible", lambda: len(_query(vm, installed)) == 2)
        assert {r["metric"]["version"]: float(r["value"][1]) for r in _query(vm, installed)} == {"41": 1, "42": 3}
        behind = _query(vm, by_panel["Gateways behind the newest list version"])
        assert [(r["metric"]["gateway"], r["metric"]["list"], float(r["value"][1])) for r in behind] == [
            ("gw-b1", "moet-illegal", 1)
        ]
        skew = {r["metric"]["province"] for r in _query(vm, _rule_exprs(FLEET_RULES)["FilterproxyProvinceVersionSkew"])}
        assert skew == {"test-tinh"}
        assert {r["metric"]["province"] for r in _query(vm, by_panel["Version skew by province"])} == skew
        # one gateway of test-tinh's three (gw-b1) has a list past 48 h: more than 10 %
        stale = _query(vm, _rule_exprs(FLEET_RULES)["FilterproxyFleetListsStale"])
        assert [(r["metric"]["province"], round(float(r["value"][1]), 2)) for r in stale] == [("test-tinh", 0.33)]

        # a gateway whose agent goes silent is reported (the alert's 30 min window shortened to 10 s)
        silent = _rule_exprs(FLEET_RULES)["FilterproxyGatewayNotReporting"]
        assert "[30m]" in silent
        silent = silent.replace("[30m]", "[10s]")
        assert _query(vm, silent) == []
        procs.stop(agent)
        found = _wait("the silent gateway in the not-reporting alert", lambda: _query(vm, silent), timeout=60)
        assert isinstance(found, list)
        assert [{k: r["metric"].get(k) for k in labels} for r in found] == [labels]
    finally:
        gw.stop()


def test_rules_pass_vmalert_dry_run():
    """vmalert, which evaluates the alerts on the ministry's VictoriaMetrics, accepts both rule files."""
    r = subprocess.run(
        [need("vmalert"), "-dryRun", f"-rule={GATEWAY_RULES}", f"-rule={FLEET_RULES}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_agent_drop_in_verifies_with_debians_prometheus_unit(tmp_path):
    """The drop-in, installed over Debian's prometheus.service, passes systemd-analyze verify without a
    warning (and the check is real: a misspelt key in it is reported)."""
    unit = Path("/lib/systemd/system/prometheus.service")
    assert unit.exists(), "prometheus not installed (test.sh installs the Debian package)"
    shutil.copy(unit, tmp_path / unit.name)
    (tmp_path / "prometheus.service.d").mkdir()
    drop_in = tmp_path / "prometheus.service.d" / "filterproxy-agent.conf"
    drop_in.write_text((PROM / "agent.systemd.conf").read_text())
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}  # the trailing colon keeps the default paths

    def verify() -> str:
        cmd = [need("systemd-analyze"), "verify", "--man=no", unit.name]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        return (r.stdout + r.stderr).strip()

    assert verify() == ""
    drop_in.write_text(drop_in.read_text() + "EnvironmentFle=/x\n")
    assert "EnvironmentFle" in verify()


# ----------------------------------------------------------------------------- the series budget


# school.yaml's list ids → real lists of that category (UT1 and HaGeZi, tests/shared_data.py)
REAL_LISTS = {
    "default-adult": "hagezi/adblock/nsfw.txt.gz",
    "default-gambling": "ut1/gambling/domains",
    "default-violence": "ut1/agressif/domains",
    "default-drugs": "ut1/drogue/domains",
    "default-dating": "ut1/dating/domains",
    "default-social": "ut1/social_networks/domains",
    "default-games": "ut1/games/domains",
    "default-chat": "ut1/chat/domains",
    "default-bypass": "hagezi/domains/doh.txt",
    "default-malware": "ut1/malware/domains.gz",
    "default-phishing": "ut1/phishing/domains.gz",
}


def _bench_dns():
    spec = importlib.util.spec_from_file_location("bench_dns", REPO / "bench" / "bench_dns.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _real_lists(tmp: Path) -> dict[str, Path]:
    """The real lists as plain domain files (school.yaml's format), bare IP addresses left out."""
    out = {}
    for list_id, rel in REAL_LISTS.items():
        src = LISTS / rel
        assert src.exists(), f"missing test data {src}"
        with gzip.open(src, "rt") if src.suffix == ".gz" else open(src) as f:
            names = []
            for line in f:
                line = line.strip().lower()
                if line.startswith("||"):
                    line = line[2:].split("^", 1)[0]
                if line and line[0] not in "#![" and not line.replace(".", "").isdigit():
                    names.append(line)
        out[list_id] = tmp / f"{list_id}.txt"
        out[list_id].write_text("\n".join(names) + "\n")
    return out


def test_series_budget_under_the_bench_mix(tmp_path, upstream, data_dir):
    """The benchmark's mix (20% listed names, 10% their subdomains, 64% popular allowed names with Zipf weights,
    5% cache misses, 1% a local zone; A/AAAA) from the four age groups' subnets, against the shipped school
    config with real lists: one gateway exposes at most SERIES_BUDGET series."""
    bench = _bench_dns()
    rng = random.Random(7)
    real = _real_lists(tmp_path)
    gw = _school_gateway(tmp_path, upstream, real)
    try:
        listed = [
            n
            for p in real.values()
            for names in [p.read_text().split()]
            for n in rng.sample(names, min(200, len(names)))
        ]
        allowed = bench.query_names()[:20000]
        weights = [1.0 / (r + 1) ** 0.9 for r in range(len(allowed))]
        n = 4000
        mix = [(rng.choice(listed), "A") for _ in range(n * 20 // 100)]
        mix += [(f"{rng.choice(('www', 'm', 'cdn', 'img', 'api'))}.{rng.choice(listed)}", "A") for _ in range(n // 10)]
        mix += [(f"m{k}.miss.bench", "A") for k in range(n * 5 // 100)]
        mix += [(f"host{k}.school.lan", "A") for k in range(n // 100)]
        mix += [(name, rng.choice(("A", "A", "AAAA"))) for name in rng.choices(allowed, weights, k=n - len(mix))]
        rng.shuffle(mix)
        sources = [str(ipaddress.ip_address(a) + k) for a in CLIENT_GROUPS for k in range(8)]
        answered = 0
        for i, (name, qtype) in enumerate(mix):
            try:
                _ask(gw, name, sources[i % len(sources)], qtype)
                answered += 1
            except dns.exception.Timeout:
                pass
        assert answered >= n * 0.99, f"{answered}/{n} answered"

        lines = _scrape(gw)
        families = Counter(re.sub(r"(_bucket|_sum|_count)$", "", line.split("{")[0].split(" ")[0]) for line in lines)
        blocked = [line for line in lines if line.startswith("filterproxy_dns_blocked_total{")]
        assert len(set(re.findall(r'category="([^"]+)"', "\n".join(blocked)))) >= 8, blocked
        assert len(set(re.findall(r'group="([^"]+)"', "\n".join(blocked)))) == 4, blocked
        report = "\n".join(f"{v:5d} {k}" for k, v in families.most_common())
        print(f"\n{len(lines)} series after {n} queries:\n{report}")
        assert len(lines) <= SERIES_BUDGET, f"{len(lines)} series > {SERIES_BUDGET}:\n{report}"
    finally:
        gw.stop()
