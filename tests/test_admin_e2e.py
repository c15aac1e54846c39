"""The control API through a real ``filterproxy run`` (``--admin-listen 127.0.0.1:0``), driven by ``requests``:
authentication (tokens, sessions, CSRF, lockout, cookie flags under TLS), teachers' limits, refusals as JSON,
the OpenAPI document, ``explain`` equal to the CLI's, and an override applied by DNS and the proxy.
Users and tokens are made through the store before the server starts (as ``filterproxy admin`` does).
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest
import requests
import yaml
from tlsutil import self_signed

from filterproxy.config import load_config
from filterproxy.dns.testing import FakeUpstream, ServerProcess
from filterproxy.passwords import hash_password
from filterproxy.state.model import Actor
from filterproxy.state.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from test_http_e2e import free_port  # noqa: E402

PASSWORD = "correct horse battery staple"
_ADMIN_RE = re.compile(r"admin API on (https?)://([0-9.]+):(\d+)/api/v1")


def _config(tmp_path: Path, upstream: FakeUpstream, admin: dict | None = None) -> Path:
    (tmp_path / "policies").mkdir(exist_ok=True)
    for g in ("kids", "teens"):
        (tmp_path / "policies" / f"{g}.yaml").write_text(
            f"name: {g}\nblock_categories: [adult]\nblock_mode: nxdomain\n"
        )
    (tmp_path / "adult.txt").write_text("adult.example\n")
    (tmp_path / "illegal.txt").write_text("illegal.example\n")
    doc: dict = {
        "server": {"state_dir": str(tmp_path / "state")},
        "upstreams": {"servers": [upstream.address], "timeout": 1.0},
        "dns": {"allowed_networks": ["127.0.0.0/8"], "rate_limit": 0},
        "policies_dir": "policies",
        "groups": ["kids", "teens"],
        "default_group": "kids",
        "lists": [
            {"id": "adult", "category": "adult", "format": "domains", "match": "subdomains", "path": "adult.txt"},
            {
                "id": "national",
                "category": "illegal",
                "format": "domains",
                "match": "subdomains",
                "legal": True,
                "path": "illegal.txt",
            },
        ],
    }
    if admin:
        doc["admin"] = admin
    cfg = tmp_path / "filterproxy.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


def _users(cfg: Path) -> dict[str, str]:
    """An admin (boss), a teacher of kids (ms) and a token of each; returns the token secrets."""
    store = Store.for_config(load_config(str(cfg)))
    try:
        system = Actor("system", "system")
        hashed = hash_password(PASSWORD)
        store.add_user(system, "boss", "admin", hashed)
        store.add_user(system, "ms", "teacher", hashed, ("kids",))
        return {user: store.create_token(system, f"{user}-script", user)[1] for user in ("boss", "ms")}
    finally:
        store.close()


class Api:
    """A running ``filterproxy run`` with its admin base URL."""

    def __init__(self, proc: ServerProcess, cfg: Path, tokens: dict[str, str], verify: str | bool = False) -> None:
        self.proc, self.cfg, self.tokens, self.verify = proc, cfg, tokens, verify
        self.proxy_port = 0
        m = _ADMIN_RE.search(proc.output())
        assert m, proc.output()[-3000:]
        self.scheme, self.host, self.port = m.group(1), m.group(2), int(m.group(3))
        self.base = f"{self.scheme}://{self.host}:{self.port}/api/v1"

    def session(self, token: str | None = None) -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        s.verify = self.verify
        if token:
            s.headers["Authorization"] = f"Bearer {token}"
        return s

    def login(self, user: str) -> tuple[requests.Session, requests.Response]:
        s = self.session()
        r = s.post(f"{self.base}/login", json={"user": user, "password": PASSWORD}, timeout=10)
        assert r.status_code == 200, r.text
        return s, r


def _start(tmp_path: Path, upstream: FakeUpstream, *extra: str, admin: dict | None = None):
    cfg = _config(tmp_path, upstream, admin)
    tokens = _users(cfg)
    proc = ServerProcess(
        ["--config", str(cfg), "--dns-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", *extra],
        log_path=str(tmp_path / "run.log"),
    ).start()
    deadline = time.monotonic() + 120
    while "admin API on" not in proc.output():  # the last listener to start
        assert proc.alive() and time.monotonic() < deadline, proc.output()[-3000:]
        time.sleep(0.1)
    return proc, cfg, tokens


class _Backend(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def upstream():
    up = FakeUpstream().start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def backend():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


@pytest.fixture(scope="module")
def api(tmp_path_factory, upstream):
    """DNS, the proxy (one worker) and the admin API; metrics off."""
    tmp = tmp_path_factory.mktemp("admin")
    proxy_port = free_port()
    proc, cfg, tokens = _start(
        tmp,
        upstream,
        "--proxy-listen",
        f"127.0.0.1:{proxy_port}",
        "--proxy-workers",
        "1",
        "--metrics-listen",
        "off",
    )
    a = Api(proc, cfg, tokens)
    a.proxy_port = proxy_port
    yield a
    proc.stop()


def test_listens_on_loopback_and_refuses_the_unauthenticated(api):
    assert api.scheme == "http" and api.host == "127.0.0.1"
    anon = api.session()
    for method, path in (("GET", "/me"), ("GET", "/overrides"), ("POST", "/overrides"), ("GET", "/status")):
        r = anon.request(method, f"{api.base}{path}", timeout=10)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"] == "unauthorized" and r.json()["detail"]
    r = api.session("not-a-token").get(f"{api.base}/me", timeout=10)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    me = api.session(api.tokens["boss"]).get(f"{api.base}/me", timeout=10).json()
    assert me == {"user": "boss", "role": "admin", "groups": [], "via": "token"}


def test_cookie_session_needs_the_csrf_token(api):
    s, r = api.login("boss")
    cookie = r.headers["set-cookie"]
    assert (
        "filterproxy_session=" in cookie
        and "HttpOnly" in cookie
        and "SameSite=strict" in cookie.replace("Strict", "strict")
    )
    assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    csrf = r.json()["csrf_token"]
    assert s.get(f"{api.base}/me", timeout=10).json()["csrf_token"] == csrf
    body = {"group": "teens", "name": "csrf.example", "action": "block", "minutes": 5}
    r = s.post(f"{api.base}/overrides", json=body, timeout=10)
    assert r.status_code == 403 and r.json()["error"] == "forbidden" and "CSRF" in r.json()["detail"]
    r = s.post(f"{api.base}/overrides", json=body, headers={"X-CSRF-Token": "wrong"}, timeout=10)
    assert r.status_code == 403
    r = s.post(f"{api.base}/overrides", json=body, headers={"X-CSRF-Token": csrf}, timeout=10)
    assert r.status_code == 201, r.text
    o = r.json()
    assert o["name"] == "csrf.example" and o["created_by"] == "boss"
    assert dt.datetime.fromisoformat(o["expires_at"]).utcoffset() is not None  # ISO 8601 with an offset
    r = s.delete(f"{api.base}/overrides/{o['id']}", headers={"X-CSRF-Token": csrf}, timeout=10)
    assert r.status_code == 200, r.text
    assert s.post(f"{api.base}/logout", headers={"X-CSRF-Token": csrf}, timeout=10).status_code == 200
    assert s.get(f"{api.base}/me", timeout=10).status_code == 401


def test_teachers_act_for_their_groups_within_their_limit(api):
    t = api.session(api.tokens["ms"])
    base = f"{api.base}/overrides"
    r = t.post(base, json={"group": "teens", "name": "x.example", "action": "allow", "minutes": 10}, timeout=10)
    assert r.status_code == 403 and "teens" in r.json()["detail"]
    r = t.post(base, json={"group": "kids", "name": "x.example", "action": "allow", "minutes": 481}, timeout=10)
    assert r.status_code == 403 and "480" in r.json()["detail"]
    r = t.post(base, json={"group": "kids", "name": "x.example", "action": "allow"}, timeout=10)  # no end
    assert r.status_code == 403
    r = t.post(base, json={"group": "kids", "name": "x.example", "action": "block", "minutes": 10}, timeout=10)
    assert r.status_code == 403
    r = t.post(base, json={"group": "kids", "name": "x.example", "action": "allow", "minutes": 30}, timeout=10)
    assert r.status_code == 201, r.text
    assert r.json()["created_role"] == "teacher"
    theirs = api.session(api.tokens["boss"]).post(
        base, json={"group": "teens", "name": "y.example", "action": "block"}, timeout=10
    )
    assert theirs.status_code == 201
    assert {o["group"] for o in t.get(base, timeout=10).json()} == {"kids"}  # a teacher sees their groups only
    assert t.delete(f"{base}/{theirs.json()['id']}", timeout=10).status_code == 403
    for path in ("/audit", "/querylog", "/devices", "/pause"):
        assert t.get(f"{api.base}{path}", timeout=10).status_code == 403, path
    r = t.get(f"{api.base}/explain", params={"q": "adult.example", "group": "teens"}, timeout=10)
    assert r.status_code == 403


def test_refusals_are_json_with_error_and_detail(api):
    s = api.session(api.tokens["boss"])
    base = f"{api.base}/overrides"
    cases = [
        (b'{"group": "kids", "name":', 400),  # bad JSON
        (b"[1, 2]", 400),  # not an object
        (json.dumps({"group": "kids", "name": "a.example", "action": "block", "colour": "red"}).encode(), 400),
        (json.dumps({"group": "kids", "name": 5, "action": "block"}).encode(), 400),  # wrong type
        (json.dumps({"group": "kids", "name": "a.example", "action": "maybe"}).encode(), 400),
        (json.dumps({"group": "nobody", "name": "a.example", "action": "block"}).encode(), 400),  # no such group
        (json.dumps({"group": "kids", "name": "not a name!", "action": "block"}).encode(), 400),
        (json.dumps({"group": "kids", "name": "a.example", "action": "block", "note": "x" * 70000}).encode(), 413),
    ]
    for raw, status in cases:
        r = s.post(base, data=raw, headers={"Content-Type": "application/json"}, timeout=10)
        assert r.status_code == status, (raw[:60], r.text)
        assert set(r.json()) == {"error", "detail"} and r.json()["detail"], r.text
    r = s.get(f"{api.base}/no-such-thing", timeout=10)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = s.put(base, json={}, timeout=10)
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    r = s.delete(f"{base}/987654", timeout=10)
    assert r.status_code == 404 and set(r.json()) == {"error", "detail"}
    r = s.get(f"{api.base}/audit", params={"limit": "many"}, timeout=10)
    assert r.status_code == 400
    assert "Traceback" not in api.proc.output()


def test_allowing_a_legal_list_name_is_refused(api):
    s = api.session(api.tokens["boss"])
    r = s.post(
        f"{api.base}/overrides", json={"group": "kids", "name": "illegal.example", "action": "allow"}, timeout=10
    )
    assert r.status_code == 403 and set(r.json()) == {"error", "detail"}, r.text


def test_openapi_describes_every_endpoint(api):
    from filterproxy.admin.server import endpoints
    from filterproxy.admin.spec import openapi_path

    doc = api.session().get(f"{api.base}/openapi.json", timeout=10).json()  # public
    assert doc["openapi"].startswith("3.")
    served = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert {(openapi_path(e.path), e.method.lower()) for e in endpoints()} == served
    for path in ("/overrides", "/overrides/{id}", "/pause", "/devices", "/explain", "/status", "/audit", "/querylog"):
        assert f"/api/v1{path}" in doc["paths"], path


def test_explain_answers_what_the_cli_prints(api):
    s = api.session(api.tokens["boss"])
    for q, who in (("adult.example", {"group": "kids"}), ("http://fine.example/a?b=1", {"client": "127.0.0.1"})):
        r = s.get(f"{api.base}/explain", params={"q": q, **who}, timeout=10)
        assert r.status_code == 200, r.text
        flag, value = next(iter(who.items()))
        cli = subprocess.run(
            [sys.executable, "-m", "filterproxy", "explain", "--json", "--config", str(api.cfg), f"--{flag}", value, q],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert r.json() == json.loads(cli.stdout)
    assert s.get(f"{api.base}/explain", params={"q": "a.example"}, timeout=10).status_code == 400


def test_status_pause_devices_audit_querylog(api):
    s = api.session(api.tokens["boss"])
    st = s.get(f"{api.base}/status", timeout=10).json()
    assert st["config"]["generation"] == 1 and st["uptime_seconds"] >= 0
    assert {li["id"] for li in st["lists"]} == {"adult", "national"}
    assert all(li["entries"] == 1 and li["age_seconds"] is not None for li in st["lists"])
    assert st["upstreams"][0]["healthy"] is True and st["reports"]["pending"] == 0
    p = s.post(f"{api.base}/pause", json={"client": "10.1.2.3", "minutes": 15}, timeout=10)
    assert p.status_code == 201, p.text
    assert s.post(f"{api.base}/pause", json={"minutes": 15}, timeout=10).status_code == 400
    assert [x["id"] for x in s.get(f"{api.base}/pause", timeout=10).json()] == [p.json()["id"]]
    assert s.delete(f"{api.base}/pause/{p.json()['id']}", timeout=10).status_code == 200
    d = s.post(f"{api.base}/devices", json={"name": "tablet", "group": "kids", "mac": "AA-BB-CC-DD-EE-FF"}, timeout=10)
    assert d.status_code == 201, d.text
    assert d.json()["mac"] == "aa:bb:cc:dd:ee:ff" and "last_seen" in d.json()
    r = s.patch(f"{api.base}/devices/{d.json()['id']}", json={"group": "teens"}, timeout=10)
    assert r.status_code == 200 and r.json()["group"] == "teens", r.text
    # the tablet gets a fixed address: identified by it from now on, its MAC cleared with null
    r = s.patch(f"{api.base}/devices/{d.json()['id']}", json={"ip": "10.1.2.9", "mac": None}, timeout=10)
    assert r.status_code == 200 and (r.json()["ip"], r.json()["mac"]) == ("10.1.2.9", None), r.text
    assert [x["mac"] for x in s.get(f"{api.base}/devices", timeout=10).json()] == [None]
    r = s.patch(f"{api.base}/devices/{d.json()['id']}", json={"ip": None}, timeout=10)  # nothing would be left
    assert r.status_code == 400 and "needs an ip, a mac or a doh_id" in r.json()["detail"], r.text
    r = s.patch(f"{api.base}/devices/{d.json()['id']}", json={"name": None}, timeout=10)  # null is not a name
    assert r.status_code == 400, r.text
    assert s.delete(f"{api.base}/devices/{d.json()['id']}", timeout=10).status_code == 200
    actions = [a["action"] for a in s.get(f"{api.base}/audit", timeout=10).json()]
    assert "pause.add" in actions and "device.add" in actions
    r = s.get(f"{api.base}/querylog", timeout=10)
    assert r.status_code == 403 and "querylog.enabled" in r.json()["detail"]


def test_an_override_reaches_dns_and_the_proxy(api, backend):
    def rcode(name: str) -> int:
        q = dns.message.make_query(name, "A")
        return dns.query.udp(q, "127.0.0.1", port=api.proc.port, timeout=3).rcode()

    proxy = requests.Session()
    proxy.trust_env = False
    proxy.proxies = {"http": f"http://127.0.0.1:{api.proxy_port}"}
    url = f"http://localhost:{backend}/"
    assert rcode("live-block.example") == dns.rcode.NOERROR
    assert proxy.get(url, timeout=10).text == "hello"
    s = api.session(api.tokens["boss"])
    made = [
        s.post(f"{api.base}/overrides", json={"group": "kids", "name": n, "action": "block"}, timeout=10)
        for n in ("live-block.example", "localhost")
    ]
    assert [r.status_code for r in made] == [201, 201], [r.text for r in made]
    deadline = time.monotonic() + 10  # the watcher applies changes within 2 s; slack for a loaded machine
    while rcode("live-block.example") != dns.rcode.NXDOMAIN or proxy.get(url, timeout=10).status_code != 403:
        assert time.monotonic() < deadline, "the override was not applied"
        time.sleep(0.2)
    for r in made:
        assert s.delete(f"{api.base}/overrides/{r.json()['id']}", timeout=10).status_code == 200
    deadline = time.monotonic() + 10
    while rcode("live-block.example") != dns.rcode.NOERROR or proxy.get(url, timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "removing the override was not applied"
        time.sleep(0.2)


def test_wrong_passwords_lock_the_address_out(tmp_path, upstream):
    proc, cfg, tokens = _start(tmp_path, upstream, "--proxy-listen", "off", "--metrics-listen", "127.0.0.1:0")
    try:
        api = Api(proc, cfg, tokens)
        s = api.session()
        answers = [
            s.post(f"{api.base}/login", json={"user": "boss", "password": f"guess {i}"}, timeout=30) for i in range(10)
        ]
        assert [r.status_code for r in answers[:5]] == [401] * 5
        assert [r.status_code for r in answers[5:]] == [429] * 5
        assert 0 < int(answers[-1].headers["Retry-After"]) <= 900
        right = s.post(f"{api.base}/login", json={"user": "boss", "password": PASSWORD}, timeout=30)
        assert right.status_code == 429 and "set-cookie" not in right.headers
        assert api.session(tokens["boss"]).get(f"{api.base}/me", timeout=10).status_code == 200  # tokens still work
        text = requests.get(f"{proc.metrics_url}/metrics", timeout=10).text
        assert 'filterproxy_admin_logins_total{result="failure"} 5.0' in text
        assert 'filterproxy_admin_logins_total{result="locked"} 6.0' in text
    finally:
        proc.stop()


@pytest.fixture()
def cert(tmp_path):
    return self_signed(tmp_path, cn="127.0.0.1", names=(), days=2)


def test_tls_sets_a_secure_cookie(tmp_path, upstream, cert):
    admin = {"tls_cert_file": cert[0], "tls_key_file": cert[1]}
    proc, cfg, tokens = _start(tmp_path, upstream, "--proxy-listen", "off", "--metrics-listen", "off", admin=admin)
    try:
        api = Api(proc, cfg, tokens, verify=cert[0])
        assert api.scheme == "https"
        s, r = api.login("ms")
        cookie = r.headers["set-cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie
        assert s.get(f"{api.base}/me", timeout=10).json()["user"] == "ms"
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{api.base}/me", timeout=10)  # the self-signed certificate is not trusted by default
    finally:
        proc.stop()
