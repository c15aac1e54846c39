"""URL-hash prefixes are confirmed by the list's full-hash endpoint before they block (docs/fullhash.md).

Real peers: a JSON endpoint on 127.0.0.1 (``http.server`` in a thread) that records every request body,
and a real ``mitmdump`` with the filterproxy addon routing allowed requests to a recording backend. A
32-bit prefix collision is built without brute force: the list holds the 4-byte prefix of a URL's
expression, and the endpoint answers with a different full hash under that prefix.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from conftest import write_config
from http_peers import RecordingBackend, routed_proxy
from test_http_e2e import free_port, stop

from filterproxy import metrics
from filterproxy.config import ConfigError, load_config
from filterproxy.http.fullhash import FullHashConfirmer, FullHashError, parse_answer, parse_duration
from filterproxy.lists.parsers import ListError
from filterproxy.lists.snapshot import build_snapshot
from filterproxy.match.urlhash import expression_hash
from filterproxy.policy.engine import Engine
from filterproxy.verdict import Action, FullHashCheck, Reason


def _other(digest: bytes) -> bytes:
    """A different full hash with the same 4-byte prefix: a 32-bit collision by construction."""
    return digest[:4] + bytes(b ^ 0x5A for b in digest[4:])


class Endpoint:
    """A full-hash endpoint: ``answers[prefix] = [full hashes]`` per path; records (path, raw body)."""

    def __init__(self) -> None:
        self.answers: dict[str, dict[bytes, list[bytes]]] = {}
        self.bodies: list[tuple[str, bytes]] = []
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.bodies.append((self.path, body))
                table = outer.answers.get(self.path, {})
                asked = [bytes.fromhex(p) for p in json.loads(body)["prefixes"]]
                out = {
                    "matches": [{"hash": h.hex(), "cacheDuration": "300s"} for p in asked for h in table.get(p, [])],
                    "negativeCacheDuration": "300s",
                }
                data = json.dumps(out).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/fullhash"  # nothing listens there: connection refused


# --------------------------------------------------------------------------- loading


def test_prefix_entry_without_endpoint_is_a_load_error_naming_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "sb.txt").write_text("# prefixes\n" + expression_hash("a.test/").hex() + "\n1a2b3c4d\n")
    cfg = write_config(
        tmp_path,
        "lists:\n  - {id: sb, category: adult, format: urlhash, path: sb.txt}\n",
        {"pupil": "name: Pupil\nblock_categories: [adult]\n"},
    )
    config = load_config(str(cfg))
    want = f"{tmp_path / 'sb.txt'}:3: list 'sb': a 4-byte prefix entry needs a 'fullhash_url' on the list ({cfg}:2)"
    with pytest.raises(ListError, match=re.escape(want)):
        build_snapshot(config.lists)
    r = subprocess.run(
        [sys.executable, "-m", "filterproxy", "check", "-c", str(cfg)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and want in r.stderr, r.stderr


@pytest.mark.parametrize(
    "entry, error",
    [
        ("{id: d, category: adult, format: domains, path: l.txt, fullhash_url: 'https://x.test/'}", "urlhash only"),
        ("{id: d, category: adult, format: urlhash, path: l.txt, fullhash_url: 'ftp://x.test/'}", "http(s) URL"),
        ("{id: d, category: adult, format: urlhash, path: l.txt, fullhash_failure: closed}", "needs 'fullhash_url'"),
        (
            "{id: d, category: adult, format: urlhash, path: l.txt, fullhash_url: 'https://x.test/', "
            "fullhash_failure: maybe}",
            "must be one of closed, open",
        ),
    ],
)
def test_fullhash_settings_are_checked_with_file_and_line(tmp_path: Path, entry: str, error: str) -> None:
    (tmp_path / "l.txt").write_text(expression_hash("a.test/").hex() + "\n")
    cfg = write_config(tmp_path, f"lists:\n  - {entry}\n", {"pupil": "name: Pupil\n"})
    with pytest.raises(ConfigError, match=rf"{re.escape(str(cfg))}:2: .*{re.escape(error)}"):
        load_config(str(cfg))


# --------------------------------------------------------------------------- engine


def _engine(tmp_path: Path, prefix_of: str, category: str = "adult", failure: str = "") -> Engine:
    (tmp_path / "sb.txt").write_text(expression_hash(prefix_of).hex()[:8] + "\n")
    extra = f", fullhash_failure: {failure}" if failure else ""
    cfg = write_config(
        tmp_path,
        f"lists:\n  - {{id: sb, category: {category}, format: urlhash, path: sb.txt, "
        f"fullhash_url: 'https://fullhash.test/v1'{extra}}}\n",
        {"pupil": "name: Pupil\nblock_categories: [adult]\n", "staff": "name: Staff\ntone: adult\n"},
    )
    config = load_config(str(cfg))
    return Engine(config, build_snapshot(config.lists))


def test_engine_prefix_hit_is_pending_not_evidence(tmp_path: Path) -> None:
    engine = _engine(tmp_path, "evil.test/page")
    digest = expression_hash("evil.test/page")
    v = engine.decide(None, "evil.test", "http://evil.test/page", group="pupil")
    assert v.action is Action.ALLOW  # a 4-byte match alone never blocks
    assert v.pending == (FullHashCheck("sb", "https://fullhash.test/v1", False, digest),)
    assert v.to_dict()["pending"] == [{"list": "sb", "prefix": digest[:4].hex()}]  # no URL in it
    confirmed = engine.decide(None, "evil.test", "http://evil.test/page", group="pupil", confirmed={("sb", digest)})
    assert (confirmed.action, confirmed.reason, confirmed.list_id, confirmed.pending) == (
        Action.BLOCK,
        Reason.CATEGORY,
        "sb",
        (),
    )
    collision = engine.decide(None, "evil.test", "http://evil.test/page", group="pupil", confirmed=frozenset())
    assert collision.action is Action.ALLOW and collision.pending == ()
    # a group that does not block the category has nothing to ask; the resolver never passes a URL
    assert engine.decide(None, "evil.test", "http://evil.test/page", group="staff").pending == ()
    assert engine.decide(None, "evil.test", group="pupil").pending == ()


def test_legal_list_fails_closed_by_default(tmp_path: Path) -> None:
    v = _engine(tmp_path, "evil.test/", category="illegal").decide(
        None, "evil.test", "http://evil.test/", group="staff"
    )
    assert [c.fail_closed for c in v.pending] == [True]  # every group: legal lists apply to all
    v = _engine(tmp_path, "evil.test/", category="illegal", failure="open").decide(
        None, "evil.test", "http://evil.test/", group="staff"
    )
    assert [c.fail_closed for c in v.pending] == [False]


# --------------------------------------------------------------------------- the endpoint client


def test_parse_answer_and_durations() -> None:
    d = expression_hash("a.test/")
    found, negative = parse_answer(
        json.dumps({"matches": [{"hash": d.hex(), "cacheDuration": "12.5s"}, {"hash": "ab" * 32}]}).encode(), [d[:4]]
    )
    assert found == {d: 12.5} and negative == 300.0  # a hash outside the asked prefixes is ignored
    assert parse_duration("99999999s") == 86_400.0 and parse_duration(0) == 0.0
    for bad in (b"[]", b"{", b'{"matches": [{"hash": "xyz"}]}', b'{"matches": [], "negativeCacheDuration": "5m"}'):
        with pytest.raises(FullHashError):
            parse_answer(bad, [d[:4]])


@pytest.fixture
def endpoint():
    ep = Endpoint()
    yield ep
    ep.close()


def _checks(ep_url: str, digest: bytes, closed: bool = False, list_id: str = "sb") -> list[FullHashCheck]:
    return [FullHashCheck(list_id, ep_url, closed, digest)]


def test_confirmer_asks_prefixes_only_and_caches_both_answers(endpoint: Endpoint) -> None:
    listed, collided = expression_hash("listed.test/"), expression_hash("collided.test/")
    endpoint.answers["/v1"] = {listed[:4]: [listed], collided[:4]: [_other(collided)]}
    fh = FullHashConfirmer()
    url = endpoint.url("/v1")
    before = {r: metrics.FULLHASH_CHECKS.value("sb", r) for r in ("confirmed", "not_listed")}
    try:
        assert asyncio.run(fh.confirm(_checks(url, listed) + _checks(url, collided))) == {("sb", listed)}
        assert len(endpoint.bodies) == 1
        path, body = endpoint.bodies[0]
        assert json.loads(body) == {"prefixes": sorted([listed[:4].hex(), collided[:4].hex()])}
        assert b"test" not in body  # no host, no URL: only the prefixes leave the gateway
        # both answers come from the cache now (positive and negative)
        assert asyncio.run(fh.confirm(_checks(url, listed) + _checks(url, collided))) == {("sb", listed)}
        assert len(endpoint.bodies) == 1
    finally:
        fh.close()
    assert metrics.FULLHASH_CHECKS.value("sb", "confirmed") - before["confirmed"] == 2
    assert metrics.FULLHASH_CHECKS.value("sb", "not_listed") - before["not_listed"] == 2


def test_confirmer_shares_one_request_between_concurrent_flows(endpoint: Endpoint) -> None:
    listed = expression_hash("listed.test/")
    endpoint.answers["/v1"] = {listed[:4]: [listed]}
    fh = FullHashConfirmer()

    async def two_flows() -> list[frozenset[tuple[str, bytes]]]:
        checks = _checks(endpoint.url("/v1"), listed)
        return list(await asyncio.gather(fh.confirm(checks), fh.confirm(checks)))

    try:
        assert asyncio.run(two_flows()) == [{("sb", listed)}, {("sb", listed)}]
    finally:
        fh.close()
    assert len(endpoint.bodies) == 1


@pytest.mark.parametrize("closed", [True, False])
def test_confirmer_unreachable_endpoint_follows_the_list(closed: bool) -> None:
    digest = expression_hash("down.test/")
    result = "failed_closed" if closed else "failed_open"
    before = metrics.FULLHASH_CHECKS.value("down", result)
    fh = FullHashConfirmer(timeout=2)
    try:
        got = asyncio.run(fh.confirm(_checks(_dead_url(), digest, closed, "down")))
    finally:
        fh.close()
    assert got == ({("down", digest)} if closed else frozenset())
    assert metrics.FULLHASH_CHECKS.value("down", result) - before == 1


def test_confirmer_bad_answer_is_a_failure(endpoint: Endpoint) -> None:
    endpoint.status = 500
    digest = expression_hash("x.test/")
    fh = FullHashConfirmer()
    try:
        assert asyncio.run(fh.confirm(_checks(endpoint.url("/v1"), digest, True))) == {("sb", digest)}
        assert asyncio.run(fh.confirm(_checks(endpoint.url("/v1"), digest, False))) == frozenset()
    finally:
        fh.close()


# --------------------------------------------------------------------------- through a real mitmdump


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fullhash")
    backend, ep = RecordingBackend(), Endpoint()
    for name, expr in (
        ("sb", "collide.test/page"),
        ("sb2", "confirm.test/page"),
        ("legal", "legal-down.test/page"),
        ("adult", "adult-down.test/page"),
    ):
        (tmp / f"{name}.txt").write_text(expression_hash(expr).hex()[:8] + "\n")
    collide, confirm = expression_hash("collide.test/page"), expression_hash("confirm.test/page")
    ep.answers["/sb"] = {collide[:4]: [_other(collide)], confirm[:4]: [confirm]}
    dead, sb_url = _dead_url(), ep.url("/sb")
    cfg = write_config(
        tmp,
        f"""
        lists:
          - {{id: sb, category: adult, format: urlhash, path: sb.txt, fullhash_url: '{sb_url}'}}
          - {{id: sb2, category: adult, format: urlhash, path: sb2.txt, fullhash_url: '{sb_url}'}}
          - {{id: national, category: illegal, format: urlhash, path: legal.txt, fullhash_url: '{dead}'}}
          - {{id: adult-down, category: adult, format: urlhash, path: adult.txt, fullhash_url: '{dead}'}}
        """,
        {"pupil": "name: Pupil\ntone: child\nblock_categories: [adult]\n"},
    )
    port, p = routed_proxy(tmp, cfg, backend.port)
    yield {"port": port, "backend": backend, "endpoint": ep}
    stop(p)
    backend.close()
    ep.close()


def _get(proxy: dict, url: str) -> requests.Response:
    p = f"http://127.0.0.1:{proxy['port']}"
    return requests.get(url, proxies={"http": p}, timeout=30)


@pytest.mark.parametrize(
    "url, status",
    [
        ("http://collide.test/page", 200),  # the prefix matches, the full hash does not: a collision
        ("http://confirm.test/page", 403),  # the endpoint confirms the full hash
        ("http://legal-down.test/page", 451),  # endpoint down, legal list: fails closed
        ("http://adult-down.test/page", 200),  # endpoint down, another category: fails open
        ("http://unlisted.test/page", 200),
    ],
)
def test_proxy_blocks_only_on_a_full_hash(proxy: dict, url: str, status: int) -> None:
    r = _get(proxy, url)
    assert r.status_code == status, r.text[:300]
    if status == 200:
        assert r.text == "ok" and proxy["backend"].hosts[-1] == url.split("/")[2].encode()


def test_proxy_sends_the_endpoint_prefixes_only(proxy: dict) -> None:
    _get(proxy, "http://collide.test/page?child=alice")
    bodies = proxy["endpoint"].bodies
    assert bodies, "the endpoint was never asked"
    for _path, body in bodies:
        doc = json.loads(body)
        assert list(doc) == ["prefixes"] and all(len(p) == 8 for p in doc["prefixes"])
        assert b"test" not in body and b"alice" not in body


def test_explain_names_the_unconfirmed_prefix(tmp_path: Path) -> None:
    _engine(tmp_path, "evil.test/page")  # writes the list and the config
    r = subprocess.run(
        [sys.executable, "-m", "filterproxy", "explain", "-c", str(tmp_path / "filterproxy.yaml")]
        + ["--group", "pupil", "http://evil.test/page"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "ALLOW" in r.stdout and "prefix     sb: a 4-byte prefix matched" in r.stdout
