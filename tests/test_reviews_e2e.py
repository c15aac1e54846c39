"""Review requests end to end through a real ``filterproxy run`` (proxy and admin API on port 0, a state dir):
the block page's form posted through the proxy (http and an intercepted https page), the per-address limit,
the message cap, no trace of the client's address in the database, a teacher approving (the page then
passes the proxy) or denying, a teacher of another group refused, and the ``review_url`` link without the form
when the control API is off. ``POST /api/v1/reviews`` (unauthenticated, limited) is checked the same way.
"""

from __future__ import annotations

import http.server
import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from filterproxy.config import load_config
from filterproxy.dns.testing import FakeUpstream, ServerProcess
from filterproxy.passwords import hash_password
from filterproxy.state.model import Actor
from filterproxy.state.store import Store

PATH = "/.well-known/filterproxy/review"
_ADMIN_RE = re.compile(r"admin API on http://([0-9.]+):(\d+)/api/v1")
_PROXY_RE = re.compile(r"proxy listening on 127\.0\.0\.1:(\d+)")


class _Backend(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None:
        pass


def _config(tmp: Path, upstream: FakeUpstream, review_url: str | None = None) -> Path:
    (tmp / "policies").mkdir(exist_ok=True)
    for g, tone in (("kids", "child"), ("teens", "teen")):
        (tmp / "policies" / f"{g}.yaml").write_text(f"name: {g}\ntone: {tone}\nblock_categories: [adult]\n")
    (tmp / "adult.txt").write_text("localhost\nadult.example\n")
    (tmp / "illegal.txt").write_text("illegal.example\n")
    doc: dict = {
        "server": {"state_dir": str(tmp / "state")},
        "upstreams": {"servers": [upstream.address], "timeout": 1.0},
        "dns": {"allowed_networks": ["127.0.0.0/8"], "rate_limit": 0},
        "policies_dir": "policies",
        "groups": ["kids", "teens"],
        "default_group": "kids",
        "clients": [{"ip": "127.0.0.1", "group": "teens"}],
        "lists": [
            {"id": "adult", "category": "adult", "format": "domains", "match": "subdomains", "path": "adult.txt"},
            {"id": "national", "category": "illegal", "format": "domains", "legal": True, "path": "illegal.txt"},
        ],
    }
    if review_url:
        doc["http"] = {"review_url": review_url}
    cfg = tmp / "filterproxy.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


def _tokens(cfg: Path) -> dict[str, str]:
    """An admin, a teacher of teens (the requester's group) and a teacher of kids; their token secrets."""
    store = Store.for_config(load_config(str(cfg)))
    try:
        system, hashed = Actor("system", "system"), hash_password("pw pw pw pw")
        store.add_user(system, "boss", "admin", hashed)
        store.add_user(system, "tt", "teacher", hashed, ("teens",))
        store.add_user(system, "ms", "teacher", hashed, ("kids",))
        return {u: store.create_token(system, f"{u}-t", u)[1] for u in ("boss", "tt", "ms")}
    finally:
        store.close()


def _run(tmp: Path, cfg: Path, *extra: str) -> ServerProcess:
    proc = ServerProcess(
        ["--config", str(cfg), "--dns-listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0"]
        + ["--proxy-workers", "1", "--metrics-listen", "off", *extra],
        log_path=str(tmp / "run.log"),
    ).start()
    deadline = time.monotonic() + 120
    want = "admin API on" if "--admin-listen" in extra else "proxy listening on"
    while want not in proc.output() or not _PROXY_RE.search(proc.output()):
        assert proc.alive() and time.monotonic() < deadline, proc.output()[-3000:]
        time.sleep(0.1)
    return proc


def _session(token: str | None = None) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    if token:
        s.headers["Authorization"] = f"Bearer {token}"
    return s


class Gateway:
    def __init__(self, proc: ServerProcess, cfg: Path, tokens: dict[str, str], db: Path) -> None:
        self.proc, self.cfg, self.tokens, self.db = proc, cfg, tokens, db
        out = proc.output()
        m = _ADMIN_RE.search(out)
        self.base = f"http://{m.group(1)}:{m.group(2)}/api/v1" if m else ""
        port = int(_PROXY_RE.search(out).group(1))  # type: ignore[union-attr]
        self.proxy = _session()
        self.proxy.proxies = {"http": f"http://127.0.0.1:{port}", "https": f"http://127.0.0.1:{port}"}
        self.proxy.verify = False  # the test does not install the proxy's CA
        self.proxy.headers["Accept-Language"] = "en"

    def api(self, user: str) -> requests.Session:
        return _session(self.tokens[user])


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
def gw(tmp_path_factory, upstream):
    tmp = tmp_path_factory.mktemp("reviews")
    cfg = _config(tmp, upstream, review_url="https://school.example/ask")
    tokens = _tokens(cfg)
    proc = _run(tmp, cfg, "--admin-listen", "127.0.0.1:0")
    yield Gateway(proc, cfg, tokens, tmp / "state" / "state.db")
    proc.stop()


def _form(page: str) -> dict[str, str]:
    """The hidden fields of the block page's review form (what a browser would send back)."""
    form = re.search(r'<form id="review-form"[^>]*action="([^"]+)"(.*?)</form>', page, re.S)
    assert form, page
    assert form.group(1) == PATH
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', form.group(2)))


def _reviews(gw: Gateway, user: str, status: str | None = None) -> list[dict]:
    r = gw.api(user).get(f"{gw.base}/reviews", params={"status": status} if status else None, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_form_through_the_proxy_and_a_teacher_approving(gw, backend):
    url = f"http://localhost:{backend}/some/page?token=secret"
    page = gw.proxy.get(url, headers={"Accept-Language": "en"}, timeout=10)
    assert page.status_code == 403 and 'id="review-form"' in page.text
    assert "form-action 'self'" in page.headers["Content-Security-Policy"]
    assert 'id="review" href="https://school.example/ask?' in page.text  # the configured link stays (documented)
    fields = _form(page.text)
    assert fields == {"host": "localhost", "reason": "category/adult/adult"}
    # posted as the browser would: to the page's own origin, through the proxy
    sent = gw.proxy.post(
        f"http://localhost:{backend}{PATH}", data={**fields, "message": " for \x07homework\n"}, timeout=10
    )
    assert sent.status_code == 200 and "A teacher will look at" in sent.text, sent.text
    # an intercepted https page: the same form, posted inside the tunnel
    tls_page = gw.proxy.get("https://adult.example/x", timeout=10)
    assert tls_page.status_code == 403 and 'id="review-form"' in tls_page.text
    tls_fields = _form(tls_page.text)
    sent = gw.proxy.post(f"https://adult.example{PATH}", data={**tls_fields, "message": "é" * 600}, timeout=10)
    assert sent.status_code == 200, sent.text

    mine = {r["host_or_url"]: r for r in _reviews(gw, "tt", "open")}
    assert set(mine) >= {"localhost", "adult.example"}
    first, second = mine["localhost"], mine["adult.example"]
    assert (first["group"], first["reason_id"], first["message"]) == ("teens", "category/adult/adult", "for homework")
    assert second["message"] == "é" * 500  # trimmed to the cap
    # the teacher of another group sees none of it and cannot decide it
    assert [r for r in _reviews(gw, "ms") if r["group"] == "teens"] == []
    other = gw.api("ms").post(f"{gw.base}/reviews/{first['id']}/approve", json={"minutes": 30}, timeout=10)
    assert other.status_code == 403, other.text

    ok = gw.api("tt").post(f"{gw.base}/reviews/{first['id']}/approve", json={"minutes": 30}, timeout=10)
    assert ok.status_code == 200 and ok.json()["status"] == "approved", ok.text
    again = gw.api("tt").post(f"{gw.base}/reviews/{first['id']}/approve", json={"minutes": 30}, timeout=10)
    assert again.status_code == 409 and "already approved" in again.json()["detail"]
    too_long = gw.api("tt").post(f"{gw.base}/reviews/{second['id']}/approve", json={"minutes": 10**5}, timeout=10)
    assert too_long.status_code == 403, too_long.text
    overrides = gw.api("tt").get(f"{gw.base}/overrides", timeout=10).json()
    assert [(o["group"], o["name"], o["action"]) for o in overrides if o["id"] == ok.json()["override_id"]] == [
        ("teens", "localhost", "allow")
    ]
    deadline = time.monotonic() + 10  # the watcher applies changes within 2 s; slack for a loaded machine
    while (r := gw.proxy.get(url, timeout=10)).status_code != 200:
        assert time.monotonic() < deadline, "the approved page is still blocked"
        time.sleep(0.2)
    assert r.text == "hello"

    denied = gw.api("tt").post(f"{gw.base}/reviews/{second['id']}/deny", json={"note": "no"}, timeout=10)
    assert denied.status_code == 200 and denied.json()["status"] == "denied", denied.text
    assert second["id"] not in {r["id"] for r in _reviews(gw, "tt", "open")}
    actions = [(e["actor"], e["action"]) for e in gw.api("boss").get(f"{gw.base}/audit", timeout=10).json()]
    assert ("anonymous", "review.add") in actions and ("tt", "review.approve") in actions
    assert ("tt", "review.deny") in actions


def test_the_form_limit_per_address_and_no_address_stored(gw):
    page = gw.proxy.get("http://adult.example/", timeout=10)
    fields = _form(page.text)
    codes = [gw.proxy.post(f"http://adult.example{PATH}", data=fields, timeout=10).status_code for _ in range(6)]
    assert codes[-1] == 429 and 200 in codes, codes  # the first test sent two: at most 5 per 10 minutes
    assert gw.proxy.get(f"http://adult.example{PATH}", timeout=10).status_code == 405
    bad = gw.proxy.post(f"http://adult.example{PATH}", data={"host": "", "reason": "x"}, timeout=10)
    assert bad.status_code in (400, 429)

    api = _session()
    body = {"host_or_url": "https://adult.example/p?q=1", "reason_id": "category/adult/adult"}
    long = api.post(f"{gw.base}/reviews", json={**body, "message": "x" * 501}, timeout=10)
    assert long.status_code == 400 and "message" in long.json()["detail"]
    made = api.post(f"{gw.base}/reviews", json={**body, "message": "please"}, timeout=10)
    assert made.status_code == 201 and made.json()["group"] == "teens", made.text
    assert made.json()["host_or_url"] == "adult.example"  # the host only: a URL may carry personal tokens
    legal = api.post(f"{gw.base}/reviews", json={"host_or_url": "illegal.example", "reason_id": "legal"}, timeout=10)
    assert legal.status_code == 201, legal.text
    refused = gw.api("boss").post(f"{gw.base}/reviews/{legal.json()['id']}/approve", json={}, timeout=10)
    assert refused.status_code == 403 and "legal list" in refused.json()["detail"], refused.text
    codes = [api.post(f"{gw.base}/reviews", json=body, timeout=10).status_code for _ in range(4)]
    assert codes == [201, 201, 201, 429], codes  # 5 per address within 10 minutes

    with sqlite3.connect(gw.db) as db:  # no trace of the requester anywhere in the database
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert "reviews" in tables
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 - names from sqlite_master
                assert "127.0.0.1" not in repr(row), (table, row)


def test_without_the_control_api_the_page_keeps_its_link(tmp_path, upstream):
    cfg = _config(tmp_path, upstream, review_url="https://school.example/ask")
    proc = _run(tmp_path, cfg)  # ServerProcess adds --admin-listen off; no state_db
    try:
        gw = Gateway(proc, cfg, {}, tmp_path / "state" / "state.db")
        page = gw.proxy.get("http://adult.example/", headers={"Accept-Language": "en"}, timeout=10)
        assert page.status_code == 403 and 'id="review" href="https://school.example/ask?' in page.text
        assert "review-form" not in page.text and "form-action 'none'" in page.headers["Content-Security-Policy"]
    finally:
        proc.stop()
