"""deploy/: Prometheus config, alert rules and their unit tests, Grafana dashboard, systemd units,
nftables rules (checked, loaded, and exercised with real packets in private network namespaces),
the install script, the guides' config examples and commands, and a real Prometheus scraping
metrics.serve().
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml
from conftest import write_config

from filterproxy import metrics

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PROM = DEPLOY / "prometheus"
RULES = PROM / "filterproxy.rules.yml"
FLEET_RULES = PROM / "fleet.rules.yml"  # the ministry's fleet alerts (deploy/ministry.md §5)
DASHBOARD = DEPLOY / "grafana" / "filterproxy-dashboard.json"
FLEET_DASHBOARD = DEPLOY / "grafana" / "filterproxy-fleet.json"
SYSTEMD = DEPLOY / "systemd"
NFT = DEPLOY / "nftables" / "filterproxy.nft"
GUIDES = ["raspberry-pi.md", "school-gateway.md", "ministry.md", "privacy.md", "transparent-proxy.md", "wireguard.md"]

# Series that exist besides filterproxy's own: Prometheus' target health.
EXTERNAL_SERIES = {"up"}
TARGET_LABELS = {"job", "instance", "gateway", "school", "province"}


def need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.fail(f"{tool} not installed (test.sh installs the Debian package)")
    return path


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


# ----------------------------------------------------------------------------- PromQL helpers


def defined_series() -> set[str]:
    names = set(EXTERNAL_SERIES)
    for name, m in metrics.COLLECTOR.metrics.items():
        if m.kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        else:
            names.add(name)
    return names


def defined_labels() -> set[str]:
    labels = set(TARGET_LABELS) | {"le", "__name__"}
    for m in metrics.COLLECTOR.metrics.values():
        labels |= set(m.labelnames) | set(getattr(m, "infonames", ()))
    return labels


_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
    "Inf",
    "NaN",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels and durations removed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)
    names = set()
    for m in re.finditer(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*", e):
        if e[m.end() :].lstrip().startswith("(") or m.group(0) in _KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def promql_label_names(expr: str) -> set[str]:
    labels = set()
    for m in re.finditer(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in m.group(2).split(",") if x.strip()}
    for m in re.finditer(r"\{([^}]*)\}", re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)):
        labels |= {x.group(1) for x in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)", m.group(1))}
    return labels


def rule_exprs(path: Path = RULES) -> list[tuple[str, str]]:
    doc = yaml.safe_load(path.read_text())
    return [(r.get("alert") or r.get("record"), r["expr"]) for g in doc["groups"] for r in g["rules"]]


def dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text())


def dashboard_exprs(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    out = []
    for p in dashboard(path)["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    return out


def dashboard_variable_queries(path: Path = DASHBOARD) -> list[str]:
    out = []
    for v in dashboard(path)["templating"]["list"]:
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append(q)
    return out


def grafana_to_promql(expr: str) -> str:
    """Substitute Grafana's variables so Prometheus/promtool can evaluate the expression."""
    e = expr.replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$__interval", "1m")
    return re.sub(r"\$\{?\w+\}?", ".*", e)


# ----------------------------------------------------------------------------- promtool


def test_promtool_check_config():
    r = run([need("promtool"), "check", "config", "prometheus.yml"], cwd=PROM)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_promtool_check_agent_config():
    """agent.yml, the gateways' Prometheus agent config (deploy/ministry.md §5), is valid in agent mode."""
    r = run([need("promtool"), "check", "config", "--agent", "agent.yml"], cwd=PROM)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


@pytest.mark.parametrize("rules", [RULES, FLEET_RULES], ids=lambda p: p.name)
def test_promtool_check_rules(rules):
    r = run([need("promtool"), "check", "rules", str(rules)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


@pytest.mark.parametrize("tests", ["filterproxy.rules.test.yml", "fleet.rules.test.yml"])
def test_promtool_test_rules(tests):
    r = run([need("promtool"), "test", "rules", tests], cwd=PROM)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


PROMISED_ALERTS = {  # the alerts the deployment guide promises
    RULES: {
        "FilterproxyListStale",
        "FilterproxyImageHashMatch",
        "FilterproxyUpstreamFailing",
        "FilterproxyBlockedSpike",
        "FilterproxyTargetDown",
        "FilterproxyReportDeliveryFailing",
    },
    FLEET_RULES: {"FilterproxyGatewayNotReporting", "FilterproxyFleetListsStale", "FilterproxyProvinceVersionSkew"},
}


@pytest.mark.parametrize("rules", [RULES, FLEET_RULES], ids=lambda p: p.name)
def test_every_alert_is_unit_tested_firing_and_not_firing(rules):
    tests = yaml.safe_load(rules.with_name(rules.name.replace(".yml", ".test.yml")).read_text())["tests"]
    fired, quiet = set(), set()
    for t in tests:
        for a in t.get("alert_rule_test", []):
            (fired if a.get("exp_alerts") else quiet).add(a["alertname"])
    alerts = {name for name, _ in rule_exprs(rules)}
    assert alerts - fired == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested not firing"
    assert PROMISED_ALERTS[rules] <= alerts
    guide = set(re.findall(r"^\| (Filterproxy\w+)", (DEPLOY / "ministry.md").read_text(), re.M))
    assert guide >= PROMISED_ALERTS[rules], "deploy/ministry.md §5 lists every promised alert"


@pytest.mark.parametrize(
    "expr, expected",
    [
        (
            'sum by (le, upstream) (rate(filterproxy_dns_upstream_duration_seconds_bucket{a="b"}[5m]))',
            {"filterproxy_dns_upstream_duration_seconds_bucket"},
        ),
        ("filterproxy_lists_age_seconds > 48 * 3600", {"filterproxy_lists_age_seconds"}),
        ("x unless x offset 15m", {"x"}),
        ('label_replace(up, "a", "$1", "b", "(.*)") == 0 and on (instance) foo_total', {"up", "foo_total"}),
        ("1e3 + time()", set()),
    ],
)
def test_promql_name_extraction(expr, expected):
    assert promql_metric_names(expr) == expected


@pytest.mark.parametrize("where", [RULES, FLEET_RULES, DASHBOARD, FLEET_DASHBOARD], ids=lambda p: p.name)
def test_promql_references_only_defined_metrics_and_labels(where):
    exprs = rule_exprs(where) if where.suffix == ".yml" else dashboard_exprs(where)
    known, labels = defined_series(), defined_labels()
    assert exprs
    for name, expr in exprs:
        unknown = promql_metric_names(expr) - known
        assert not unknown, f"{where.name} {name!r} uses undefined metrics {unknown}: {expr}"
        bad = promql_label_names(expr) - labels
        assert not bad, f"{where.name} {name!r} uses unknown labels {bad}: {expr}"
    for q in dashboard_variable_queries(where) if where.suffix == ".json" else []:
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\s*\)", q)
        assert m, q
        assert promql_metric_names(m.group(1)) <= known, q
        assert m.group(2) in labels, q


@pytest.mark.parametrize("path", [DASHBOARD, FLEET_DASHBOARD], ids=lambda p: p.name)
def test_dashboard_expressions_parse_with_promtool(tmp_path, path):
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expr_{i}", "expr": grafana_to_promql(e)}
                    for i, (_, e) in enumerate(dashboard_exprs(path))
                ],
            }
        ]
    }
    f = tmp_path / "dashboard.rules.yml"
    f.write_text(yaml.safe_dump(rules))
    r = run([need("promtool"), "check", "rules", str(f)])
    assert r.returncode == 0, r.stdout + r.stderr


def _check_panels(d: dict) -> None:
    """Unique ids, the dashboard's datasource variable, a query in every panel, panels inside the 24-column grid."""
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}"
            assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24


def test_dashboard_structure():
    d = dashboard()
    titles = " | ".join(p["title"] for p in d["panels"]).lower()
    for topic in (
        "by category",
        "by age group",
        "top categories",
        "list version and age",
        "upstream latency",
        "cache hit ratio",
        "reports waiting",
    ):
        assert topic in titles, topic
    _check_panels(d)
    assert {v["name"] for v in d["templating"]["list"]} >= {"datasource", "province", "school", "gateway", "group"}
    # privacy: no per-client or per-site breakdown anywhere
    assert not re.search(r"\b(client|qname|domain|url)\b", json.dumps([e for _, e in dashboard_exprs()]))


def test_fleet_dashboard_structure():
    """The ministry's fleet dashboard: the views deploy/ministry.md §5 promises, by province, valid panels."""
    d = dashboard(FLEET_DASHBOARD)
    assert d["uid"] != dashboard()["uid"]  # imported next to the per-gateway dashboard, not over it
    titles = " | ".join(p["title"] for p in d["panels"]).lower()
    for topic in (
        "gateways not reporting",
        "gateways by installed list version",
        "behind the newest list version",
        "version skew by province",
        "lists older than 48 h",
        "blocked attempts by province, category and age group",
    ):
        assert topic in titles, topic
    _check_panels(d)
    assert {v["name"] for v in d["templating"]["list"]} >= {"datasource", "province"}
    exprs = json.dumps([e for _, e in dashboard_exprs(FLEET_DASHBOARD)])
    assert not re.search(r"\b(client|qname|domain|url)\b", exprs)
    assert "$province" in exprs


# ----------------------------------------------------------------------------- systemd


def _unit_directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        k, _, v = line.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


UNITS = ["filterproxy.service", "filterproxy-lists.service", "filterproxy-lists.timer"]


def test_systemd_analyze_verify(tmp_path):
    """Verify copies whose ExecStart points at /bin/true (the venv does not exist on this machine);
    any warning at all (unknown key, bad value) fails the test, not only the exit code."""
    tool = need("systemd-analyze")
    for u in UNITS:
        text = (SYSTEMD / u).read_text().replace("/opt/filterproxy/.venv/bin/filterproxy", "/bin/true")
        (tmp_path / u).write_text(text)
    r = run([tool, "verify", "--man=no", *[f"./{u}" for u in UNITS]], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    noise = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert noise == [], noise
    # and the check is real: a typo is reported
    (tmp_path / "filterproxy.service").write_text(
        (tmp_path / "filterproxy.service").read_text().replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomme=yes")
    )
    r = run([tool, "verify", "--man=no", "./filterproxy.service"], cwd=tmp_path)
    assert "ProtectHomme" in r.stdout + r.stderr


@pytest.mark.parametrize("unit", ["filterproxy.service", "filterproxy-lists.service"])
def test_systemd_exposure_score(unit):
    r = run([need("systemd-analyze"), "security", "--offline=true", "--threshold=25", str(SYSTEMD / unit)])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout + r.stderr)
    assert score and float(score.group(1)) <= 2.5


def test_systemd_units_follow_the_contract():
    svc = _unit_directives(SYSTEMD / "filterproxy.service")
    assert svc["User"] == ["filterproxy"]
    assert svc["ExecStart"] == ["/opt/filterproxy/.venv/bin/filterproxy run --config /etc/filterproxy/filterproxy.yaml"]
    assert svc["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    for k, v in {
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "StateDirectory": "filterproxy",
        "ConfigurationDirectory": "filterproxy",
    }.items():
        assert svc[k] == [v], k
    families = svc["RestrictAddressFamilies"][0].split()
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(families)
    assert "@system-service" in svc["SystemCallFilter"]
    lists = _unit_directives(SYSTEMD / "filterproxy-lists.service")
    assert lists["Type"] == ["oneshot"]
    cmds = [c.split()[1:3] for c in lists["ExecStart"]]
    assert cmds == [["lists", "update"], ["lists", "reload"]]  # in this order: reload only after a good update
    timer = _unit_directives(SYSTEMD / "filterproxy-lists.timer")
    assert timer["Unit"] == ["filterproxy-lists.service"] and timer["Persistent"] == ["true"]


def test_systemd_command_lines_parse_with_the_cli():
    from filterproxy.cli import build_parser

    parser = build_parser()
    for u in ("filterproxy.service", "filterproxy-lists.service"):
        for cmd in _unit_directives(SYSTEMD / u)["ExecStart"]:
            parser.parse_args(shlex.split(cmd)[1:])


# ----------------------------------------------------------------------------- nftables


def test_nft_check():
    r = run([need("nft"), "-c", "-f", str(NFT)])
    assert r.returncode == 0, r.stderr


def _in_private_netns(shell: str) -> subprocess.CompletedProcess:
    r = run(["unshare", "--net", "sh", "-c", shell])
    assert not (r.returncode != 0 and ("Operation not permitted" in r.stderr or "unshare failed" in r.stderr)), (
        f"cannot create a network namespace (test.sh runs the tests as root): {r.stderr.strip()}"
    )
    return r


def test_nft_loads_twice_in_a_private_namespace():
    need("nft")
    r = _in_private_netns(f"nft -f {shlex.quote(str(NFT))} && nft -f {shlex.quote(str(NFT))} && nft list ruleset")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.count("table inet filterproxy") == 1  # reloading replaces, never duplicates
    for needle in ("redirect to :53", "tcp dport 853", "udp dport 443", "set student_v4", "set transparent_v4"):
        assert needle in out, needle


NS_SERVER = textwrap.dedent("""
    import socket, sys, threading
    def udp(port, reply):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
        while True:
            data, addr = s.recvfrom(2048); s.sendto(reply.encode(), addr)
    def tcp(port, reply):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port)); s.listen()
        while True:
            c, _ = s.accept(); c.sendall(reply.encode()); c.close()
    for spec in sys.argv[1:]:
        proto, port, reply = spec.split(":")
        threading.Thread(target=udp if proto == "udp" else tcp, args=(int(port), reply), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
""")

NS_CLIENT = textwrap.dedent("""
    import json, socket, sys
    def udp(host, port):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.connect((host, port))
        try:
            s.send(b"q"); return s.recv(100).decode()
        except ConnectionRefusedError: return "refused"
        except socket.timeout: return "timeout"
    def tcp(host, port):
        try:
            c = socket.create_connection((host, port), timeout=2); return c.recv(100).decode()
        except ConnectionRefusedError: return "refused"
        except socket.timeout: return "timeout"
    out = {}
    for spec in sys.argv[1:]:
        proto, host, port = spec.split(":")
        out[spec] = (udp if proto == "udp" else tcp)(host, int(port))
    print(json.dumps(out))
""")


@pytest.fixture
def netlab(tmp_path):
    """student (10.20.0.2) → gateway (10.20.0.1 | 10.99.0.1) → 'internet' host (10.99.0.53), all in
    network namespaces made for this test; no packet leaves them."""
    need("nft")
    ip = need("ip")
    tag = uuid.uuid4().hex[:6]
    ns = {n: f"fp{n}{tag}" for n in ("st", "gw", "net")}
    r = run([ip, "netns", "add", ns["gw"]])
    assert r.returncode == 0, f"cannot create network namespaces (test.sh runs the tests as root): {r.stderr.strip()}"
    procs: list[subprocess.Popen] = []
    try:
        for n in ("st", "net"):
            subprocess.run([ip, "netns", "add", ns[n]], check=True)
        sh = [
            f"ip link add vst{tag} netns {ns['st']} type veth peer name vgs{tag} netns {ns['gw']}",
            f"ip link add vgn{tag} netns {ns['gw']} type veth peer name vnt{tag} netns {ns['net']}",
            f"ip -n {ns['st']} addr add 10.20.0.2/24 dev vst{tag}",
            f"ip -n {ns['gw']} addr add 10.20.0.1/24 dev vgs{tag}",
            f"ip -n {ns['gw']} addr add 10.99.0.1/24 dev vgn{tag}",
            f"ip -n {ns['net']} addr add 10.99.0.53/24 dev vnt{tag}",
            *[f"ip -n {ns[n]} link set lo up" for n in ns],
            f"ip -n {ns['st']} link set vst{tag} up",
            f"ip -n {ns['gw']} link set vgs{tag} up",
            f"ip -n {ns['gw']} link set vgn{tag} up",
            f"ip -n {ns['net']} link set vnt{tag} up",
            f"ip -n {ns['st']} route add default via 10.20.0.1",
            f"ip -n {ns['net']} route add 10.20.0.0/16 via 10.99.0.1",
            f"ip netns exec {ns['gw']} sysctl -qw net.ipv4.ip_forward=1",
            f"ip netns exec {ns['gw']} nft -f {shlex.quote(str(NFT))}",
        ]
        for cmd in sh:
            r = run(["sh", "-c", cmd])
            assert r.returncode == 0, f"{cmd}: {r.stderr}"
        (tmp_path / "server.py").write_text(NS_SERVER)
        (tmp_path / "client.py").write_text(NS_CLIENT)

        def serve(n: str, *specs: str) -> None:
            p = subprocess.Popen(
                [ip, "netns", "exec", ns[n], sys.executable, str(tmp_path / "server.py"), *specs],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(p)
            assert p.stdout and p.stdout.readline().strip() == "ready"

        def probe(*specs: str) -> dict[str, str]:
            r = run([ip, "netns", "exec", ns["st"], sys.executable, str(tmp_path / "client.py"), *specs])
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)

        def nft(n: str, *args: str) -> None:
            r = run([ip, "netns", "exec", ns[n], "nft", *args])
            assert r.returncode == 0, r.stderr

        yield serve, probe, nft, ns
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)
        for n in ns.values():
            run([ip, "netns", "del", n])


def _nft_define(name: str) -> int:
    m = re.search(rf"^define {name} = (\d+)$", NFT.read_text(), re.M)
    assert m, f"{NFT.name}: no 'define {name}'"
    return int(m.group(1))


def test_nft_rules_redirect_dns_and_block_bypasses(netlab):
    serve, probe, nft, _ns = netlab
    transparent = _nft_define("FILTERPROXY_TRANSPARENT_PORT")
    serve(
        "gw",
        "udp:53:filterproxy-dns",
        "tcp:53:filterproxy-dns-tcp",
        "tcp:8080:explicit-proxy",
        f"tcp:{transparent}:filterproxy-proxy",
    )
    serve(
        "net",
        "udp:53:rogue-dns",
        "tcp:53:rogue-dns-tcp",
        "tcp:853:rogue-dot",
        "udp:853:rogue-doq",
        "udp:443:quic",
        "tcp:443:https",
        "tcp:80:http",
    )
    got = probe(
        "udp:10.99.0.53:53",
        "tcp:10.99.0.53:53",
        "tcp:10.99.0.53:853",
        "udp:10.99.0.53:853",
        "udp:10.99.0.53:443",
        "tcp:10.99.0.53:443",
        "tcp:10.99.0.53:80",
    )
    assert got == {
        "udp:10.99.0.53:53": "filterproxy-dns",  # a hard-coded resolver still reaches filterproxy
        "tcp:10.99.0.53:53": "filterproxy-dns-tcp",
        "tcp:10.99.0.53:853": "refused",  # DoT: TCP reset
        "udp:10.99.0.53:853": "refused",  # DoQ: ICMP unreachable
        "udp:10.99.0.53:443": "refused",  # QUIC: browsers fall back to TCP
        "tcp:10.99.0.53:443": "https",  # ordinary web traffic untouched (transparent mode off)
        "tcp:10.99.0.53:80": "http",
    }
    # the transparent-proxy toggle: add the student subnet to the set
    nft("gw", "add", "element", "inet", "filterproxy", "transparent_v4", "{ 10.20.0.0/16 }")
    got = probe("tcp:10.99.0.53:80", "tcp:10.99.0.53:443")
    assert got == {"tcp:10.99.0.53:80": "filterproxy-proxy", "tcp:10.99.0.53:443": "filterproxy-proxy"}


def test_transparent_redirect_reaches_the_shipped_transparent_listener(netlab, tmp_path):
    """Real packets: a student's web request, redirected by the shipped nftables rules, reaches the
    transparent listener of the shipped school.yaml's proxy_modes in `filterproxy run` and is decided there
    with that listener's group (any other listener would give the default group, which allows the site)."""
    from filterproxy.config.proxy import mode_kind, mode_port

    serve, _probe, nft, ns = netlab
    school = yaml.safe_load((DEPLOY / "config" / "school.yaml").read_text())["server"]
    (tport,) = [mode_port(m) for m in school["proxy_modes"] if mode_kind(m) == "transparent"]
    (tmp_path / "fp").mkdir()
    (tmp_path / "fp" / "adult.txt").write_text("blocked.example\n")
    cfg = write_config(
        tmp_path / "fp",
        f"""
        timezone: Asia/Ho_Chi_Minh
        server:
          proxy_listen: "{school["proxy_listen"]}"
          proxy_modes: {json.dumps(school["proxy_modes"])}
        http:
          listener_groups: {{{tport}: pupil}}
        default_group: staff
        lists:
          - {{id: adult, category: adult, format: domains, match: subdomains, path: adult.txt}}
        """,
        {"pupil": "name: Pupil\ntone: child\nblock_categories: [adult]\n", "staff": "name: Staff\ntone: adult\n"},
    )
    ip = need("ip")
    cmd = [ip, "netns", "exec", ns["gw"], sys.executable, "-m", "filterproxy", "run", "--config", str(cfg)]
    cmd += ["--dns-listen", "off", "--metrics-listen", "off", "--state-dir", str(tmp_path / "state")]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        out = []
        assert p.stdout is not None
        for line in p.stdout:  # until the proxy listens (or the process ends and the loop with it)
            out.append(line)
            if "proxy listening on" in line:
                break
        assert out and "proxy listening on" in out[-1], "".join(out)
        nft("gw", "add", "element", "inet", "filterproxy", "transparent_v4", "{ 10.20.0.0/16 }")
        serve("net", "tcp:80:http")  # mitmproxy connects to the original destination before reading the request
        r = run(
            [ip, "netns", "exec", ns["st"], need("curl"), "-s", "-D", "-", "-o", "/dev/null", "--max-time", "30"]
            + ["--resolve", "blocked.example:80:10.99.0.53", "http://blocked.example/"]
        )
        assert r.stdout.startswith("HTTP/1.1 403"), f"curl exit {r.returncode}: {r.stdout}{r.stderr}"
        assert "x-filterproxy-reason: category/adult/adult" in r.stdout.lower(), r.stdout
    finally:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def test_one_transparent_port_across_guide_nft_config_and_unit(tmp_path):
    """The guide's transparent port == the nftables redirect == the shipped school.yaml's transparent@PORT,
    which the unit's command line does not override; the explicit proxy port is a different one."""
    from filterproxy.cli import build_parser
    from filterproxy.config.proxy import mode_kind, mode_port

    guide = (DEPLOY / "transparent-proxy.md").read_text()
    guide_ports = {int(p) for p in re.findall(r"transparent@(\d+)", guide)}
    snippet = re.search(r"```\n(table inet filterproxy_web \{.*?)```", guide, re.S)
    assert snippet, "transparent-proxy.md: no nftables rules block"
    guide_redirects = {int(p) for p in re.findall(r"redirect to :(\d+)", snippet.group(1))}

    nft_text = NFT.read_text()
    nft_port = _nft_define("FILTERPROXY_TRANSPARENT_PORT")
    web = re.findall(r"saddr @transparent_v[46] tcp dport \{ 80, 443 \} redirect to :\$(\w+)", nft_text)
    assert web == ["FILTERPROXY_TRANSPARENT_PORT"] * 2, web

    school = yaml.safe_load((DEPLOY / "config" / "school.yaml").read_text())["server"]
    unit_cmd = _unit_directives(SYSTEMD / "filterproxy.service")["ExecStart"][0]
    args = build_parser().parse_args(shlex.split(unit_cmd)[1:])
    assert args.config == "/etc/filterproxy/filterproxy.yaml"  # install.sh puts school.yaml there
    modes = args.proxy_mode or school["proxy_modes"]
    config_ports = {mode_port(m) for m in modes if mode_kind(m) == "transparent"}
    explicit = int(str(school["proxy_listen"]).rsplit(":", 1)[1])

    assert guide_ports == guide_redirects == {nft_port} == config_ports, (
        guide_ports,
        guide_redirects,
        nft_port,
        config_ports,
    )
    assert explicit != nft_port and f"explicit proxy port ({explicit})" in guide
    assert _nft_define("FILTERPROXY_DNS_PORT") == int(str(school["dns_listen"]).rsplit(":", 1)[1])
    # the guide's rules are valid nftables on their own
    (tmp_path / "web.nft").write_text(snippet.group(1))
    r = run([need("nft"), "-c", "-f", str(tmp_path / "web.nft")])
    assert r.returncode == 0, r.stderr


# ----------------------------------------------------------------------------- install script + guides


def _load_config(path: Path):
    from filterproxy.config import load_config

    return load_config(str(path))


@pytest.mark.parametrize(
    "profile, groups",
    [("home", ["child", "teen", "adult"]), ("school", ["primary", "lower-secondary", "upper-secondary", "staff"])],
)
def test_install_script_into_a_destdir(tmp_path, profile, groups):
    root = tmp_path / "root"
    env = dict(os.environ, DESTDIR=str(root), FILTERPROXY_ADDRESS="192.0.2.10")
    r = run(["bash", str(DEPLOY / "install.sh"), profile], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = root / "etc/filterproxy/filterproxy.yaml"
    c = _load_config(cfg)
    assert list(c.groups) == groups
    assert c.server.block_page_ipv4 == "192.0.2.10"
    assert c.server.dns_listen == ("0.0.0.0", 53)
    assert c.querylog.enabled is False and c.querylog.anonymise is True
    for u in UNITS:
        assert (root / "etc/systemd/system" / u).is_file()
    assert (root / "etc/nftables.d/filterproxy.nft").exists() == (profile == "school")
    # the guide's complete example is true on an installed system: its /opt/filterproxy paths exist
    if profile == "school":
        block = next(b for g, b in _code_blocks("yaml") if b.startswith("# filterproxy.yaml"))
        example = tmp_path / "example.yaml"
        example.write_text(block.replace("/opt/filterproxy/", f"{root}/opt/filterproxy/"))
        assert list(_load_config(example).groups) == groups
    # running it again keeps the admin's edits
    cfg.write_text(cfg.read_text().replace("rate_limit: 300", "rate_limit: 301") + "# edited\n")
    assert run(["bash", str(DEPLOY / "install.sh"), profile], env=env).returncode == 0
    assert cfg.read_text().endswith("# edited\n")


def test_install_script_refuses_unknown_profile():
    r = run(["bash", str(DEPLOY / "install.sh"), "office"], env=dict(os.environ, DESTDIR="/nonexistent"))
    assert r.returncode == 2 and "usage" in r.stderr


def _code_blocks(lang: str) -> list[tuple[str, str]]:
    out = []
    for g in GUIDES:
        text = (DEPLOY / g).read_text()
        for m in re.finditer(rf"```{lang}\n(.*?)```", text, re.S):
            out.append((g, m.group(1)))
    return out


def test_guides_exist_and_link_each_other():
    for g in GUIDES:
        text = (DEPLOY / g).read_text()
        assert text.startswith("# "), g
        for link in re.findall(r"\]\(([^)#]+\.md)", text):
            assert (DEPLOY / link).exists(), f"{g} links to missing {link}"


def test_guide_config_examples_load(tmp_path):
    """Every YAML block that starts with '# excerpt of filterproxy.yaml' is merged over the guide's
    template (home for the Raspberry Pi guide, school otherwise) and loaded by the real configuration
    loader (CONTRIBUTING.md rule 8: docs config examples are tested). Complete examples ('# filterproxy.yaml')
    are loaded as they are by tests/test_config.py."""
    blocks = [(g, b) for g, b in _code_blocks("yaml") if b.startswith("# excerpt of filterproxy.yaml")]
    assert len(blocks) >= 3
    for i, (guide, block) in enumerate(blocks):
        profile = "home" if guide == "raspberry-pi.md" else "school"
        base = yaml.safe_load((DEPLOY / "config" / f"{profile}.yaml").read_text())
        d = tmp_path / f"ex{i}"
        shutil.copytree(REPO / "policies", d / "policies")
        shutil.copytree(REPO / "blocklists" / "default", d / "lists")
        shutil.copy(REPO / "blocklists" / "sources.yaml", d / "sources.yaml")
        merged = dict(base)
        for k, v in (yaml.safe_load(block) or {}).items():
            merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
        (d / "filterproxy.yaml").write_text(yaml.safe_dump(merged))
        try:
            _load_config(d / "filterproxy.yaml")
        except Exception as exc:  # pragma: no cover - the message is the point
            raise AssertionError(f"{guide}: example does not load: {exc}\n{block}") from exc


def test_guide_yaml_blocks_parse():
    for _guide, block in _code_blocks("yaml"):
        yaml.safe_load(block)


def test_guide_commands_parse_with_the_cli():
    """Every `filterproxy ...` command line in the guides is accepted by the real argument parser."""
    from filterproxy.cli import build_parser

    parser = build_parser()
    seen = set()
    for guide, block in _code_blocks("sh"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            m = re.search(r"(?:^|\s|/)filterproxy\s+(run|lists|publish|export|check|explain|querylog)\b(.*)$", line)
            if not m or line.startswith("#"):
                continue
            cmdline = re.split(r"\s[|>]", m.group(1) + m.group(2))[0]  # drop pipes and redirections
            argv = shlex.split(cmdline)
            try:
                parser.parse_args(argv)
            except SystemExit as exc:
                raise AssertionError(f"{guide}: `{line}` is not a valid filterproxy command") from exc
            seen.add(" ".join(argv[:2]))
    commands = ("publish keygen", "publish init", "publish add", "publish sign", "publish commit", "publish rotate")
    commands += ("publish delegate", "lists update", "lists reload")
    for cmd in (*commands, "querylog"):
        assert any(s.startswith(cmd) for s in seen), f"no guide shows `filterproxy {cmd}`"


def test_privacy_guide_states_what_is_recorded():
    text = (DEPLOY / "privacy.md").read_text().lower()
    for phrase in ("aggregate", "anonymis", "retention", "off by default", "never"):
        assert phrase in text, phrase


# ----------------------------------------------------------------------------- real Prometheus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(base: str, q: str) -> dict:
    r = requests.get(f"{base}/api/v1/query", params={"query": q}, timeout=10)
    doc = r.json()
    assert doc.get("status") == "success", f"{q}: {doc}"
    return doc["data"]


def _wait_value(base: str, q: str, expected: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        res = _query(base, q)["result"]
        last = res
        if res and float(res[0]["value"][1]) == expected:
            return
        time.sleep(0.25)
    raise AssertionError(f"{q} never reached {expected}; last result {last}")


@pytest.fixture
def prometheus(tmp_path):
    """Start Debian's prometheus scraping metrics.serve() (with basic auth) every second, with
    deploy/prometheus/filterproxy.rules.yml loaded."""
    binary = need("prometheus")
    metrics.COLLECTOR.reset()
    password = "scrape-" + uuid.uuid4().hex
    from filterproxy.passwords import hash_password

    srv = metrics.serve("127.0.0.1:0", basic_auth=("prometheus", hash_password(password)))
    port = _free_port()
    cfg = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "filterproxy",
                "basic_auth": {"username": "prometheus", "password": password},
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{srv.port}"],
                        "labels": {"gateway": "gw-test", "school": "test-school", "province": "ha-noi"},
                    }
                ],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    log = open(tmp_path / "prometheus.log", "w")
    p = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/-/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if p.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("prometheus did not start:\n" + (tmp_path / "prometheus.log").read_text()[-3000:])
            time.sleep(0.2)
        yield base
    finally:
        p.terminate()
        p.wait(timeout=20)
        log.close()
        srv.close()


def test_real_prometheus_scrapes_and_evaluates(prometheus):
    base = prometheus
    metrics.DNS_BLOCKED.inc("primary", "gambling", "category", amount=3)
    metrics.LISTS_INFO.set("default-adult", "2026-11-01")
    metrics.LISTS_LAST_SUCCESS.set("default-adult", value=time.time() - 3600)
    metrics.DNS_CACHE_HITS.inc(amount=3)
    metrics.DNS_CACHE_MISSES.inc()
    metrics.DNS_UPSTREAM_DURATION.observe(0.02, "quad9")
    try:
        q = 'filterproxy_dns_blocked_total{group="primary",category="gambling",gateway="gw-test"}'
        _wait_value(base, q, 3)
        _wait_value(base, 'up{job="filterproxy"}', 1)  # basic auth accepted
        metrics.DNS_BLOCKED.inc("primary", "gambling", "category", amount=2)
        _wait_value(base, q, 5)
        age = _query(base, 'filterproxy_lists_age_seconds{list="default-adult"}')["result"]
        assert age and 3590 < float(age[0]["value"][1]) < 3700

        # every dashboard expression evaluates on real data
        for _title, expr in dashboard_exprs():
            _query(base, grafana_to_promql(expr))
        version = _query(
            base,
            grafana_to_promql(
                "max by (province, school, gateway, instance, list, version) "
                '(filterproxy_lists_info{province=~"$province"})'
            ),
        )
        assert version["result"][0]["metric"]["version"] == "2026-11-01"

        # the alert rules load and evaluate without errors
        deadline = time.monotonic() + 30
        while True:
            groups = requests.get(f"{base}/api/v1/rules", timeout=10).json()["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules):
                break
            assert time.monotonic() < deadline, "rules never evaluated"
            time.sleep(0.5)
        assert {r["name"] for r in rules} == {n for n, _ in rule_exprs()}
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    finally:
        metrics.LISTS_INFO.clear()
        metrics.LISTS_LAST_SUCCESS.clear()
