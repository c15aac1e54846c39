"""filterproxy.lists.fetch: sources file loading and downloads against a real local HTTP server."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from conftest import LISTS as DATA

from filterproxy.lists import fetch as F
from filterproxy.lists.fetch import Source, SourcesError, fetch, load_sources
from filterproxy.lists.parsers import ParseStats, iter_entries

REPO = Path(__file__).resolve().parent.parent
BODY = b"# test list\nexample.com\nexample.org\n"


# --- a real HTTP server on 127.0.0.1 with handlers each test controls ----------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        srv: _Server = self.server  # type: ignore[assignment]
        srv.hits.append((self.path, dict(self.headers)))
        route = srv.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_error(404)
            return
        route(self)

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}
        self.hits: list[tuple[str, dict]] = []

    def handle_error(self, request, client_address) -> None:  # client gone (timeouts): expected
        pass

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.hits if p == path)


@pytest.fixture
def server():
    srv = _Server()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def session():
    s = requests.Session()
    s.trust_env = False  # no proxy from the environment for 127.0.0.1
    yield s
    s.close()


def send(
    h: BaseHTTPRequestHandler, body: bytes, status: int = 200, headers: dict | None = None, length: int | None = -1
) -> None:
    h.send_response(status)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    if length == -1:
        length = len(body)
    if length is not None:
        h.send_header("Content-Length", str(length))
    h.end_headers()
    h.wfile.write(body)


def src(url: str, **kw) -> Source:
    kw.setdefault("format", "domains")
    kw.setdefault("category", "adult")
    return Source(id=kw.pop("id", "test"), url=url, **kw)


def quick(**kw) -> dict:
    """Bounded fetch settings: every test finishes well under 5 s."""
    return {"timeout": (1, 1), "retries": 0, "backoff": 0.01, "progress": False, **kw}


def cached(tmp_path: Path, id_: str = "test") -> bytes:
    return (tmp_path / f"{id_}.txt").read_bytes()


# --- conditional GET -----------------------------------------------------------------------------


def test_200_then_304_with_etag(server, session, tmp_path):
    def route(h):
        if h.headers.get("If-None-Match") == '"v1"':
            send(h, b"", 304, {"ETag": '"v1"'}, length=None)
        else:
            send(h, BODY, headers={"ETag": '"v1"'})

    server.routes["/list.txt"] = route
    s = src(server.url("/list.txt"))
    r1 = fetch(s, str(tmp_path), session=session, **quick())
    assert (r1.status, r1.error, r1.etag, r1.bytes) == ("updated", None, '"v1"', len(BODY))
    assert r1.path == str(tmp_path / "test.txt") and cached(tmp_path) == BODY
    assert r1.sha256 == hashlib.sha256(BODY).hexdigest()
    r2 = fetch(s, str(tmp_path), session=session, **quick())
    assert (r2.status, r2.etag, r2.bytes) == ("not-modified", '"v1"', len(BODY))
    assert server.hits[1][1].get("If-None-Match") == '"v1"'
    assert cached(tmp_path) == BODY


def test_200_then_304_with_last_modified(server, session, tmp_path):
    lm = "Wed, 05 Nov 2025 10:00:00 GMT"

    def route(h):
        if h.headers.get("If-Modified-Since") == lm:
            send(h, b"", 304, length=None)
        else:
            send(h, BODY, headers={"Last-Modified": lm})

    server.routes["/lm.txt"] = route
    s = src(server.url("/lm.txt"))
    assert fetch(s, str(tmp_path), session=session, **quick()).last_modified == lm
    r2 = fetch(s, str(tmp_path), session=session, **quick())
    assert (r2.status, r2.last_modified) == ("not-modified", lm)
    assert "If-None-Match" not in server.hits[1][1]


def test_changed_url_or_missing_file_makes_the_request_unconditional(server, session, tmp_path):
    server.routes["/a"] = lambda h: send(h, BODY, headers={"ETag": '"a"'})
    server.routes["/b"] = lambda h: send(h, BODY + b"x.example\n", headers={"ETag": '"a"'})
    fetch(src(server.url("/a")), str(tmp_path), session=session, **quick())
    r = fetch(src(server.url("/b")), str(tmp_path), session=session, **quick())
    assert r.status == "updated" and "If-None-Match" not in server.hits[1][1]
    os.unlink(tmp_path / "test.txt")
    r = fetch(src(server.url("/b")), str(tmp_path), session=session, **quick())
    assert r.status == "updated" and "If-None-Match" not in server.hits[2][1]


def test_identical_body_without_validators_is_not_modified(server, session, tmp_path):
    server.routes["/same"] = lambda h: send(h, BODY)
    s = src(server.url("/same"))
    assert fetch(s, str(tmp_path), session=session, **quick()).status == "updated"
    assert fetch(s, str(tmp_path), session=session, **quick()).status == "not-modified"


# --- failures keep the previous file ---------------------------------------------------------------


def _first_ok_then(server, path: str, then: Callable) -> None:
    calls = {"n": 0}

    def route(h):
        calls["n"] += 1
        if calls["n"] == 1:
            send(h, BODY)
        else:
            then(h)

    server.routes[path] = route


def test_timeout_fails_and_keeps_previous_file(server, session, tmp_path):
    def slow(h):
        time.sleep(1.0)
        send(h, b"new.example\n")

    _first_ok_then(server, "/slow", slow)
    s = src(server.url("/slow"))
    assert fetch(s, str(tmp_path), session=session, **quick()).status == "updated"
    t0 = time.monotonic()
    r = fetch(s, str(tmp_path), session=session, **quick(timeout=(1, 0.2)))
    assert time.monotonic() - t0 < 0.9
    assert r.status == "failed" and "timed out" in r.error
    assert r.path == str(tmp_path / "test.txt") and r.bytes == len(BODY)
    assert cached(tmp_path) == BODY
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


def test_deadline_ends_a_dripping_download_and_keeps_previous_file(server, session, tmp_path):
    chunk = b"d.example\n" * 6554  # 64 kB: one read of the body at a time

    def drip(h):
        send(h, b"", length=len(chunk) * 40)
        for _ in range(40):  # each piece well inside the read timeout, the whole far past the deadline
            h.wfile.write(chunk)
            h.wfile.flush()
            time.sleep(0.25)

    _first_ok_then(server, "/drip", drip)
    s = src(server.url("/drip"), max_bytes=1 << 30)
    fetch(s, str(tmp_path), session=session, **quick())
    r = fetch(s, str(tmp_path), session=session, **quick(timeout=(1, 5), deadline=time.monotonic() + 0.6))
    assert r.status == "failed" and "too slow" in r.error, r.error
    assert server.count("/drip") == 2  # not retried: the time allowed is spent
    assert cached(tmp_path) == BODY


def test_deadline_stops_retries(server, session, tmp_path):
    server.routes["/down"] = lambda h: send(h, b"", status=503)
    r = fetch(
        src(server.url("/down")),
        str(tmp_path),
        session=session,
        **quick(retries=3, backoff=2, deadline=time.monotonic() + 1),
    )
    assert r.status == "failed" and "HTTP 503" in r.error and "no time left to retry" in r.error
    assert server.count("/down") == 1


def test_oversize_by_content_length_fails_without_reading_or_retrying(server, session, tmp_path):
    server.routes["/big"] = lambda h: send(h, b"a.example\n" * 200)
    r = fetch(src(server.url("/big"), max_bytes=1000), str(tmp_path), session=session, **quick(retries=3))
    assert r.status == "failed" and "Content-Length 2000 exceeds max_bytes" in r.error
    assert server.count("/big") == 1 and r.path is None


def test_oversize_by_streamed_bytes_fails(server, session, tmp_path):
    # No Content-Length: the body is delimited by closing the connection (HTTP/1.0).
    _first_ok_then(server, "/stream", lambda h: send(h, b"a.example\n" * 500, length=None))
    s = src(server.url("/stream"), max_bytes=1000)
    fetch(s, str(tmp_path), session=session, **quick())
    r = fetch(s, str(tmp_path), session=session, **quick(retries=2))
    assert r.status == "failed" and "larger than max_bytes (1000 bytes)" in r.error
    assert server.count("/stream") == 2  # not retried: it would be just as big again
    assert cached(tmp_path) == BODY


def test_truncated_body_fails_and_is_retried(server, session, tmp_path):
    def short(h):
        send(h, b"a.example\n" * 50, length=1000)  # announces 1000, sends 500, closes

    _first_ok_then(server, "/short", short)
    s = src(server.url("/short"))
    fetch(s, str(tmp_path), session=session, **quick())
    r = fetch(s, str(tmp_path), session=session, **quick(retries=1))
    assert r.status == "failed" and "truncated" in r.error and "after 2 attempts" in r.error
    assert server.count("/short") == 3
    assert cached(tmp_path) == BODY


def test_500_then_200_is_retried_and_succeeds(server, session, tmp_path):
    calls = {"n": 0}

    def route(h):
        calls["n"] += 1
        if calls["n"] == 1:
            send(h, b"oops", 500)
        else:
            send(h, BODY)

    server.routes["/flaky"] = route
    r = fetch(src(server.url("/flaky")), str(tmp_path), session=session, **quick(retries=2))
    assert (r.status, server.count("/flaky")) == ("updated", 2)
    assert cached(tmp_path) == BODY


def test_backoff_grows_exponentially(server, session, tmp_path):
    server.routes["/down"] = lambda h: send(h, b"", 503)
    t0 = time.monotonic()
    r = fetch(src(server.url("/down")), str(tmp_path), session=session, **quick(retries=2, backoff=0.1))
    elapsed = time.monotonic() - t0
    assert r.status == "failed" and "HTTP 503" in r.error and server.count("/down") == 3
    assert 0.3 <= elapsed < 2  # 0.1 + 0.2


@pytest.mark.parametrize("status", [403, 404, 410, 429])
def test_4xx_is_not_retried(server, session, tmp_path, status):
    server.routes["/gone"] = lambda h: send(h, b"no", status)
    r = fetch(src(server.url("/gone")), str(tmp_path), session=session, **quick(retries=3))
    assert r.status == "failed" and f"HTTP {status}" in r.error
    assert server.count("/gone") == 1


def test_connection_refused_is_retried(session, tmp_path):
    srv = _Server()
    port = srv.server_address[1]
    srv.server_close()  # nothing listens there now
    s = src(f"http://127.0.0.1:{port}/x")
    r = fetch(s, str(tmp_path), session=session, **quick(retries=1))
    assert r.status == "failed" and "connection failed" in r.error and "after 2 attempts" in r.error


def test_sha256_pin(server, session, tmp_path):
    server.routes["/pinned"] = lambda h: send(h, BODY)
    good = hashlib.sha256(BODY).hexdigest()
    r = fetch(src(server.url("/pinned"), sha256="0" * 64), str(tmp_path), session=session, **quick())
    assert r.status == "failed" and "sha256 mismatch" in r.error and good in r.error
    assert r.path is None and not (tmp_path / "test.txt").exists()
    r = fetch(src(server.url("/pinned"), sha256=good), str(tmp_path), session=session, **quick())
    assert r.status == "updated"


def test_html_page_instead_of_list_is_refused(server, session, tmp_path):
    _first_ok_then(server, "/portal", lambda h: send(h, b"<!DOCTYPE html><html>Please log in</html>"))
    s = src(server.url("/portal"))
    fetch(s, str(tmp_path), session=session, **quick())
    r = fetch(s, str(tmp_path), session=session, **quick())
    assert r.status == "failed" and "HTML page" in r.error
    assert cached(tmp_path) == BODY


def test_validate_callback_can_refuse(server, session, tmp_path):
    _first_ok_then(server, "/v", lambda h: send(h, b"# only comments\n"))
    s = src(server.url("/v"))

    def validate(path: str) -> None:
        if not any(line.strip() and not line.startswith("#") for line in open(path)):
            raise ValueError("list has no entries")

    assert fetch(s, str(tmp_path), session=session, validate=validate, **quick()).status == "updated"
    r = fetch(s, str(tmp_path), session=session, validate=validate, **quick())
    assert r.status == "failed" and "no entries" in r.error
    assert cached(tmp_path) == BODY


def test_empty_body_is_refused(server, session, tmp_path):
    server.routes["/empty"] = lambda h: send(h, b"")
    r = fetch(src(server.url("/empty")), str(tmp_path), session=session, **quick())
    assert r.status == "failed" and "empty" in r.error


# --- gzip ---------------------------------------------------------------------------------------


def test_gzip_file_by_url_is_stored_decompressed(server, session, tmp_path):
    payload = (DATA / "hagezi/adblock/social.txt").read_bytes()
    server.routes["/social.txt.gz"] = lambda h: send(
        h, gzip.compress(payload), headers={"Content-Type": "application/gzip"}
    )
    r = fetch(
        src(server.url("/social.txt.gz"), format="adblock", category="social"),
        str(tmp_path),
        session=session,
        **quick(),
    )
    assert r.status == "updated" and cached(tmp_path) == payload and r.bytes == len(payload)


def test_gzip_content_encoding_is_decoded(server, session, tmp_path):
    server.routes["/enc"] = lambda h: send(h, gzip.compress(BODY), headers={"Content-Encoding": "gzip"})
    r = fetch(src(server.url("/enc")), str(tmp_path), session=session, **quick())
    assert r.status == "updated" and cached(tmp_path) == BODY


def test_concatenated_gzip_members(server, session, tmp_path):
    server.routes["/multi.gz"] = lambda h: send(h, gzip.compress(b"a.example\n") + gzip.compress(b"b.example\n"))
    r = fetch(src(server.url("/multi.gz")), str(tmp_path), session=session, **quick())
    assert r.status == "updated" and cached(tmp_path) == b"a.example\nb.example\n"


def test_truncated_gzip_fails(server, session, tmp_path):
    data = gzip.compress(b"a.example\n" * 1000)
    server.routes["/cut.gz"] = lambda h: send(h, data[: len(data) // 2])
    r = fetch(src(server.url("/cut.gz")), str(tmp_path), session=session, **quick())
    assert r.status == "failed" and "gzip" in r.error


def test_gzip_bomb_is_capped(server, session, tmp_path):
    bomb = gzip.compress(b"\0" * (20 << 20))  # 20 MiB of zeros in ~20 KiB
    server.routes["/bomb.gz"] = lambda h: send(h, bomb)
    r = fetch(src(server.url("/bomb.gz"), max_bytes=1 << 20), str(tmp_path), session=session, **quick())
    assert r.status == "failed" and "larger than max_bytes" in r.error


# --- local files and progress ---------------------------------------------------------------------


def test_local_path_source(tmp_path):
    s = Source(id="snuff", path=str(DATA / "sinfonietta/snuff-hosts.txt"), format="hosts", category="violence")
    cache = tmp_path / "cache"
    r = fetch(s, str(cache), progress=False)
    assert (
        r.status == "updated"
        and (cache / "snuff.txt").read_bytes() == (DATA / "sinfonietta/snuff-hosts.txt").read_bytes()
    )
    assert fetch(s, str(cache), progress=False).status == "not-modified"
    gz = Source(id="gz", path=str(DATA / "hagezi/wildcard/nsfw.txt.gz"), format="wildcard", category="adult")
    r = fetch(gz, str(cache), progress=False)
    assert r.status == "updated" and (cache / "gz.txt").read_bytes() == gzip.decompress(
        (DATA / "hagezi/wildcard/nsfw.txt.gz").read_bytes()
    )
    missing = Source(id="missing", path=str(tmp_path / "nope.txt"), format="domains", category="adult")
    r = fetch(missing, str(cache), progress=False)
    assert r.status == "failed" and "nope.txt" in r.error


def test_progress_goes_to_stderr_only_when_enabled(server, session, tmp_path, capsys):
    server.routes["/p"] = lambda h: send(h, BODY)
    fetch(src(server.url("/p")), str(tmp_path), session=session, **quick(progress=False))
    assert capsys.readouterr().err == ""
    os.unlink(tmp_path / "test.txt")
    fetch(src(server.url("/p")), str(tmp_path), session=session, **quick(progress=True))
    err = capsys.readouterr().err
    assert err.startswith("\rtest:") and "100%" in err and err.endswith("\n")


# --- sources files ------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "sources.yaml"
    p.write_text(text)
    return str(p)


def test_load_sources_converts_units_and_resolves_paths(tmp_path):
    path = write(
        tmp_path,
        """
sources:
  - id: hagezi-social
    url: https://raw.githubusercontent.com/hagezi/dns-blocklists/main/adblock/social.txt
    format: adblock
    category: social
    licence: GPL-3.0
    max_bytes: 8MiB
    refresh: 12h
  - id: school-extra
    path: lists/extra.txt
    format: domains
    category: games
    match: subdomains
    sha256: "ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
""",
    )
    a, b = load_sources(path)
    assert (a.max_bytes, a.refresh, a.licence, a.match) == (8 << 20, 43_200, "GPL-3.0", None)
    assert b.path == str(tmp_path / "lists/extra.txt") and b.match == "subdomains"
    assert b.sha256 == "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
    assert (b.max_bytes, b.refresh) == (F.DEFAULT_MAX_BYTES, F.DEFAULT_REFRESH)


@pytest.mark.parametrize(
    "body, line, message",
    [
        (
            "  - id: a\n    url: http://x.example/a\n    format: domains\n    category: adult\n    colour: red\n",
            6,
            "unknown key 'colour'",
        ),
        (
            "  - id: a\n    url: http://x.example/a\n    format: domain\n    category: adult\n",
            4,
            "unknown format 'domain'",
        ),
        ("  - id: a\n    format: domains\n    category: adult\n", 2, "exactly one of url / path"),
        (
            "  - id: a\n    url: http://x.example/a\n    path: a.txt\n    format: domains\n    category: adult\n",
            2,
            "exactly one of url / path",
        ),
        (
            "  - id: a\n    url: http://x.example/a\n    format: domains\n    category: gamblin\n",
            5,
            "did you mean 'gambling'",
        ),
        (
            "  - id: a\n    url: http://x.example/a\n    format: domains\n    category: adult\n    lisence: MIT\n",
            6,
            "did you mean 'licence'",
        ),
        ("  - id: a\n    url: ftp://x.example/a\n    format: domains\n    category: adult\n", 3, "http(s) URL"),
        (
            "  - id: a\n    url: http://x.example/a\n    format: urls\n    category: adult\n    match: exact\n",
            2,
            "match does not apply",
        ),
        (
            "  - id: a\n    url: http://x.example/a\n    format: domains\n    category: adult\n    refresh: 10s\n",
            6,
            "at least 300",
        ),
        (
            "  - id: a\n    url: http://x.example/a\n    format: domains\n    category: adult\n    max_bytes: lots\n",
            6,
            "max_bytes",
        ),
        ("  - id: a\n    url: http://x.example/a\n    format: bundle\n", 4, "unknown format"),
        (
            "  - id: a\n    url: http://x.example/a\n    format: domains\n    category: adult\n"
            "  - id: a\n    url: http://x.example/b\n    format: domains\n    category: adult\n",
            6,
            "duplicate id 'a' (first at line 2)",
        ),
        (
            "  - id: a\n    id: b\n    url: http://x.example/a\n    format: domains\n    category: adult\n",
            3,
            "duplicate key 'id'",
        ),
        ("  - id: Bad/Id\n    url: http://x.example/a\n    format: domains\n    category: adult\n", 2, "id must match"),
        ("  - id: a\n    url: [unclosed\n", 4, ""),
    ],
)
def test_load_sources_errors_carry_file_and_line(tmp_path, body, line, message):
    path = write(tmp_path, "sources:\n" + body)
    with pytest.raises(SourcesError) as exc:
        load_sources(path)
    assert f"{path}:{line}:" in str(exc.value)
    assert message in str(exc.value)


def test_load_sources_reports_every_problem(tmp_path):
    path = write(
        tmp_path,
        "sources:\n  - id: a\n    url: http://x.example/a\n    format: nope\n    category: adult\n"
        "  - id: b\n    url: http://x.example/b\n    format: domains\n    category: nope\n",
    )
    with pytest.raises(SourcesError) as exc:
        load_sources(path)
    assert f"{path}:4:" in str(exc.value) and f"{path}:9:" in str(exc.value)


@pytest.mark.parametrize("text", ["", "- id: a\n", "lists: []\n", "sources: []\n"])
def test_load_sources_needs_a_sources_list(tmp_path, text):
    with pytest.raises(SourcesError):
        load_sources(write(tmp_path, text))


def test_source_validates_when_built_directly():
    with pytest.raises(ValueError, match="unknown format"):
        Source(id="x", url="https://x.example/", format="csv", category="adult")
    with pytest.raises(ValueError, match="category is required"):
        Source(id="x", url="https://x.example/", format="domains")


def test_shipped_sources_file_loads_and_covers_the_product_categories():
    sources = load_sources(str(REPO / "blocklists/sources.yaml"))
    assert len(sources) >= 25
    core = {
        "adult",
        "gambling",
        "violence",
        "drugs",
        "dating",
        "social",
        "games",
        "chat",
        "bypass",
        "malware",
        "phishing",
        "ads",
    }  # "illegal" has no public source: the ministry's distribution repository (docs/distribution.md)
    assert {s.category for s in sources} >= core
    for s in sources:
        assert s.url and s.url.startswith("https://"), s.id
        assert s.licence, f"{s.id}: licence missing"
        host = s.url.split("/")[2]
        assert host == "raw.githubusercontent.com", s.id  # authors' repositories (UT1: its mirror)


def test_ut1_is_a_local_folder_read_in_place(tmp_path):
    with pytest.raises(ValueError, match="format: domains with match: subdomains"):
        Source(id="u", url="https://x.example/chat/domains", format="ut1", category="chat")
    folder = Source(id="chat", path=str(DATA / "ut1/chat"), format="ut1", category="chat")
    r = fetch(folder, str(tmp_path), progress=False)
    assert (r.status, r.path, r.error) == ("not-modified", str(DATA / "ut1/chat"), None) and r.bytes > 0
    r = fetch(Source(id="x", path=str(tmp_path / "none"), format="ut1", category="chat"), str(tmp_path))
    assert r.status == "failed" and "UT1 category folder" in r.error


# shipped source id -> the same upstream file in the shared test data
SAMPLES = {
    "hagezi-social": "hagezi/adblock/social.txt",
    "hagezi-bypass": "hagezi/adblock/doh-vpn-proxy-bypass.txt",
    "ut1-chat": "ut1/chat/domains",
    "ut1-chat-urls": "ut1/chat/urls",
    "ut1-violence": "ut1/agressif/domains",
    "sinfonietta-snuff": "sinfonietta/snuff-hosts.txt",
    "sinfonietta-gambling": "sinfonietta/gambling-hosts.txt",
    "dibdot-doh": "dibdot_doh/doh-domains_overall.txt",
}


@pytest.mark.parametrize("source_id, sample", sorted(SAMPLES.items()))
def test_shipped_sources_fetch_and_parse_their_upstream_files(server, session, tmp_path, source_id, sample):
    """Each shipped definition (format, match, size cap) fits the real file it points at."""
    shipped = {s.id: s for s in load_sources(str(REPO / "blocklists/sources.yaml"))}[source_id]
    body = (DATA / sample).read_bytes()
    server.routes["/" + sample] = lambda h: send(h, body)
    local = dataclasses.replace(shipped, url=server.url("/" + sample))
    r = fetch(local, str(tmp_path), session=session, **quick())
    assert r.status == "updated", r.error
    stats: dict = {}
    entries = [
        e for _f, e in iter_entries(local.format, r.path, lambda p: stats.setdefault(p, ParseStats(p)), local.match)
    ]
    assert len(entries) > 10
