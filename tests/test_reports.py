"""Tests for filterproxy.reports: a real HTTP endpoint on 127.0.0.1, real child processes that crash.

The endpoint deduplicates by report id, as the delivery contract requires, and records every POST so
the tests can tell "accepted once" from "sent twice".
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from filterproxy.reports import Report, ReportSpool, reduce_url

REPO = Path(__file__).resolve().parents[1]
REPORT_FIELDS = {f.name for f in fields(Report)}


class Endpoint:
    """A hotline endpoint: records POSTs, answers ``status`` (2xx dedupes by id), can be stopped/started."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.status = 200
        self.posts: list[tuple[dict, dict, bytes, int]] = []  # (headers, body json, raw body, status answered)
        self.accepted: dict[str, dict] = {}  # id → first accepted body
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/reports"

    def start(self) -> Endpoint:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with endpoint.lock:
                    status = endpoint.status
                    body = json.loads(raw)
                    endpoint.posts.append((dict(self.headers), body, raw, status))
                    duplicate = body["id"] in endpoint.accepted
                    if 200 <= status < 300 and not duplicate:
                        endpoint.accepted[body["id"]] = body
                self.send_response(status)
                if status in (301, 302, 307):
                    self.send_header("Location", "http://127.0.0.2:9/elsewhere")
                self.send_header("Content-Type", "application/json")
                reply = json.dumps({"duplicate": duplicate}).encode()
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def posts_per_id(self, accepted_only: bool = False) -> Counter:
        with self.lock:
            return Counter(b["id"] for _, b, _, s in self.posts if not accepted_only or 200 <= s < 300)


@pytest.fixture()
def endpoint() -> Iterator[Endpoint]:
    ep = Endpoint().start()
    yield ep
    ep.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(condition: Callable[[], bool], timeout: float = 10, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def fast_spool(directory: Path, endpoint_url: str | None, **kw) -> ReportSpool:
    kw.setdefault("gateway_id", "gw-test")
    kw.setdefault("timeout", 2)
    kw.setdefault("base_backoff", 0.05)
    kw.setdefault("max_backoff", 0.2)
    return ReportSpool(str(directory), endpoint_url, **kw)


def submit_one(spool: ReportSpool, n: int = 0, **kw) -> Report:
    kw.setdefault("url", f"https://bad.example/pics/{n}.jpg?session=abc")
    kw.setdefault("client", "10.20.30.40")
    return spool.submit(list_id="vn-csam", item_id=f"item-{n}", match_kind="pdq", distance=n % 32, **kw)


# ------------------------------------------------------------------------------- durability


def test_submit_is_on_disk_before_it_returns(tmp_path: Path) -> None:
    spool = fast_spool(tmp_path, None)
    r = submit_one(spool, 3)
    path = tmp_path / "pending" / f"{r.id}.json"
    doc = json.loads(path.read_text())
    assert doc["report"] == {**r.__dict__} and doc["attempts"] == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE((tmp_path / "pending").stat().st_mode) == 0o700
    assert [p.name for p in (tmp_path / "pending").iterdir()] == [f"{r.id}.json"]  # no temp files left
    assert len(r.id) == 32 and r.time.endswith("Z") and r.gateway_id == "gw-test"
    assert spool.queue_depth == 1 and spool.deliver_pending() == (0, 0)  # no endpoint: spool only
    listing = spool.list()
    assert listing == {"pending": [r], "sent": []}
    assert fast_spool(tmp_path, None).queue_depth == 1  # a restart counts what is on disk


def test_endpoint_down_then_up_delivers_everything_exactly_once(tmp_path: Path) -> None:
    port = free_port()
    spool = fast_spool(tmp_path, f"http://127.0.0.1:{port}/v1/reports")
    ids = {submit_one(spool, i).id for i in range(6)}

    # 1. nothing listening: the first attempt fails and the pass stops (the endpoint is down)
    assert spool.deliver_pending() == (0, 1)
    assert spool.queue_depth == 6 and spool.delivery_failures == 1
    failed = [json.loads(p.read_text()) for p in (tmp_path / "pending").glob("*.json")]
    assert sorted(d["attempts"] for d in failed) == [0, 0, 0, 0, 0, 1]
    assert all(d["last_error"] == "ConnectionError" for d in failed if d["attempts"])

    # 2. up but overloaded (503): still failing, with backoff between passes
    ep = Endpoint(port)
    ep.status = 503
    ep.start()
    try:
        assert until(lambda: spool.deliver_pending()[1] > 0 or len(ep.posts) >= 2, timeout=5)
        assert spool.queue_depth == 6 and not ep.accepted

        # 3. healthy: the background loop drains the spool
        ep.status = 200
        stop = threading.Event()
        thread = spool.start(stop, interval=0.02)
        assert until(lambda: spool.queue_depth == 0, timeout=10)
        stop.set()
        thread.join(5)
    finally:
        ep.stop()
    assert set(ep.accepted) == ids
    assert set(ep.posts_per_id(accepted_only=True).values()) == {1}  # nothing re-sent after a 2xx
    assert spool.delivered == 6 and spool.delivery_failures >= 2
    assert {r.id for r in spool.list()["sent"]} == ids and not spool.list()["pending"]
    for headers, body, _, _ in ep.posts:
        assert headers["Idempotency-Key"] == body["id"] and headers["Content-Type"] == "application/json"


def test_backoff_survives_a_restart(tmp_path: Path, endpoint: Endpoint) -> None:
    endpoint.status = 500
    spool = fast_spool(tmp_path, endpoint.url, base_backoff=30, max_backoff=60)
    submit_one(spool)
    assert spool.deliver_pending() == (0, 1)
    endpoint.status = 200
    restarted = fast_spool(tmp_path, endpoint.url, base_backoff=30, max_backoff=60)
    assert restarted.deliver_pending() == (0, 0)  # next attempt is 15-30 s away, remembered in the file
    assert len(endpoint.posts) == 1


def test_client_errors_do_not_stop_the_pass_but_overload_does(tmp_path: Path, endpoint: Endpoint) -> None:
    spool = fast_spool(tmp_path, endpoint.url, base_backoff=0.5, max_backoff=1)  # first retry after 0.25-0.5 s
    for i in range(3):
        submit_one(spool, i)
    endpoint.status = 400  # a problem with the report, not the endpoint: try the others
    assert spool.deliver_pending() == (0, 3)
    assert spool.deliver_pending() == (0, 0)  # each report's own backoff
    time.sleep(0.55)
    endpoint.status = 429  # too many requests: back off at once
    assert spool.deliver_pending() == (0, 1)
    assert spool.deliver_pending() == (0, 0)  # the endpoint-wide backoff is still running


def test_redirects_are_not_followed(tmp_path: Path, endpoint: Endpoint) -> None:
    endpoint.status = 302
    spool = fast_spool(tmp_path, endpoint.url)
    submit_one(spool)
    assert spool.deliver_pending() == (0, 1)
    assert len(endpoint.posts) == 1 and spool.queue_depth == 1


def test_unreadable_pending_file_is_kept_in_bad(tmp_path: Path, endpoint: Endpoint) -> None:
    spool = fast_spool(tmp_path, endpoint.url)
    good = submit_one(spool)
    (tmp_path / "pending" / "0123abcd.json").write_text("{ torn")
    spool = fast_spool(tmp_path, endpoint.url)
    assert spool.queue_depth == 2
    assert spool.deliver_pending() == (1, 0)
    assert (tmp_path / "bad" / "0123abcd.json").read_text() == "{ torn"
    assert set(endpoint.accepted) == {good.id} and spool.queue_depth == 0


def test_one_delivering_process_at_a_time(tmp_path: Path, endpoint: Endpoint) -> None:
    spool = fast_spool(tmp_path, endpoint.url)
    submit_one(spool)
    with open(tmp_path / ".deliver.lock", "a+") as held:  # as another process delivering would
        fcntl.flock(held, fcntl.LOCK_EX)
        assert spool.deliver_pending() == (0, 0)
    assert spool.deliver_pending() == (1, 0)


def test_stale_temp_files_from_crashed_writers_are_removed(tmp_path: Path) -> None:
    fast_spool(tmp_path, None)
    stale = tmp_path / "pending" / ".abc.json.1.2.tmp"
    fresh = tmp_path / "pending" / ".def.json.1.2.tmp"
    stale.write_text("{")
    fresh.write_text("{")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    spool = fast_spool(tmp_path, None)
    assert not stale.exists() and fresh.exists() and spool.queue_depth == 0 and spool.list()["pending"] == []


# ------------------------------------------------------------------------------- real crashes


def run_child(body: str, *, wait: bool = True, timeout: float = 60) -> subprocess.Popen | subprocess.CompletedProcess:
    code = f"import os, sys, time\nsys.path.insert(0, {str(REPO)!r})\nfrom filterproxy.reports import ReportSpool\n"
    code += textwrap.dedent(body)
    cmd = [sys.executable, "-c", code]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_crash_right_after_submit_then_restart_delivers_once(tmp_path: Path, endpoint: Endpoint) -> None:
    child = run_child(f"""
        s = ReportSpool({str(tmp_path)!r}, {endpoint.url!r}, gateway_id="gw-child")
        r = s.submit(list_id="vn-csam", item_id="42", match_kind="pdq", distance=12, url="https://bad.example/a.jpg")
        print(r.id, flush=True)
        os._exit(9)  # dies before any delivery
    """)
    assert child.returncode == 9, child.stderr
    rid = child.stdout.strip()
    assert not endpoint.posts
    restarted = fast_spool(tmp_path, endpoint.url)
    assert restarted.queue_depth == 1 and restarted.deliver_pending() == (1, 0)
    assert fast_spool(tmp_path, endpoint.url).deliver_pending() == (0, 0)
    assert endpoint.posts_per_id() == {rid: 1} and endpoint.accepted[rid]["item_id"] == "42"


def test_sigkill_while_submitting_loses_no_acknowledged_report(tmp_path: Path, endpoint: Endpoint) -> None:
    child = run_child(
        f"""
        s = ReportSpool({str(tmp_path)!r}, None, gateway_id="gw-child")
        for i in range(100000):
            r = s.submit(list_id="vn-csam", item_id=str(i), match_kind="md5", url="https://bad.example/")
            print(r.id, flush=True)
    """,
        wait=False,
    )
    acknowledged = []
    try:
        assert child.stdout is not None
        while len(acknowledged) < 25:
            line = child.stdout.readline()
            assert line, child.stderr.read() if child.stderr else "child ended"
            acknowledged.append(line.strip())
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    restarted = fast_spool(tmp_path, endpoint.url)
    while restarted.deliver_pending()[0]:
        pass
    assert set(acknowledged) <= set(endpoint.accepted)  # every report submit() returned is delivered
    assert set(endpoint.posts_per_id().values()) == {1} and restarted.queue_depth == 0
    assert all(not n.endswith(".json") for n in os.listdir(tmp_path / "pending"))  # only torn temp files, if any


def test_crash_between_post_and_move_resends_the_same_id_once(tmp_path: Path, endpoint: Endpoint) -> None:
    child = run_child(f"""
        s = ReportSpool({str(tmp_path)!r}, {endpoint.url!r}, gateway_id="gw-child")
        r = s.submit(list_id="vn-csam", item_id="7", match_kind="sha256", url="https://bad.example/b.png")
        print(r.id, flush=True)
        os.replace = lambda *a, **k: os._exit(9)  # the power goes out right after the endpoint's 2xx
        s.deliver_pending()
        os._exit(0)
    """)
    assert child.returncode == 9, child.stderr
    rid = child.stdout.strip()
    assert endpoint.posts_per_id() == {rid: 1} and rid in endpoint.accepted
    restarted = fast_spool(tmp_path, endpoint.url)
    assert restarted.deliver_pending() == (1, 0)
    for _ in range(3):
        assert fast_spool(tmp_path, endpoint.url).deliver_pending() == (0, 0)
    assert endpoint.posts_per_id() == {rid: 2}  # re-sent once, with the same id...
    assert list(endpoint.accepted) == [rid]  # ...which the endpoint dedupes: delivered exactly once
    keys = [h["Idempotency-Key"] for h, _, _, _ in endpoint.posts]
    assert keys == [rid, rid]


# ------------------------------------------------------------------------------- privacy

URL = "https://user:secret@Bad.Example:8443/pics/a.jpg?x=1#frag"


@pytest.mark.parametrize(
    "url_mode,expected_url",
    [
        ("host", "bad.example"),
        ("full", "https://bad.example:8443/pics/a.jpg?x=1"),
        ("none", None),
        ("hashed", "hash"),
    ],
)
@pytest.mark.parametrize("include_client", [False, True])
def test_what_leaves_the_gateway(
    tmp_path: Path, endpoint: Endpoint, url_mode: str, expected_url: str | None, include_client: bool
) -> None:
    from PIL import Image

    from filterproxy.match.imagehash import ImageHashIndex, hash_image_bytes

    buf = io.BytesIO()
    Image.effect_mandelbrot((256, 256), (-2, -1.5, 1, 1.5), 50).convert("RGB").save(buf, "JPEG")
    picture = buf.getvalue()
    h = hash_image_bytes(picture)
    index = ImageHashIndex()
    index.add("pdq", h.pdq, 0)
    index.freeze()
    match = index.match(h)
    assert match is not None

    spool = fast_spool(tmp_path, endpoint.url, url_mode=url_mode, include_client=include_client, token="s3cret-token")
    r = spool.submit(
        list_id="vn-csam",
        item_id="case-9",
        match_kind=match.kind,
        distance=match.distance,
        url=URL,
        client="192.168.77.23",
    )
    assert spool.deliver_pending() == (1, 0)
    ((headers, body, raw, _),) = endpoint.posts
    assert set(body) == REPORT_FIELDS and body == r.__dict__
    assert headers["Authorization"] == "Bearer s3cret-token" and headers["Idempotency-Key"] == r.id
    assert body["match_kind"] == "pdq" and body["list_id"] == "vn-csam" and body["item_id"] == "case-9"
    if expected_url == "hash":
        assert len(body["url"]) == 64 and int(body["url"], 16) >= 0 and "bad.example" not in raw.decode()
    else:
        assert body["url"] == expected_url
    assert b"secret@" not in raw and b"#frag" not in raw  # never user info or fragments
    assert (b"192.168.77.23" in raw) is include_client and (body["client"] == "192.168.77.23") is include_client
    assert len(raw) < 600 and b"\xff\xd8" not in raw and picture[100:140] not in raw  # no picture
    for leaked in (h.md5, h.sha256, h.pdq):  # not even the picture's own hashes
        assert leaked.encode() not in raw
    stored = b"".join(p.read_bytes() for p in (tmp_path / "sent").iterdir())
    assert (b"192.168.77.23" in stored) is include_client and b"secret@" not in stored


def test_submit_refuses_picture_data_and_bad_config(tmp_path: Path) -> None:
    spool = fast_spool(tmp_path, None)
    with pytest.raises(TypeError):
        spool.submit(list_id="l", item_id=b"\xff\xd8\xff\xe0 jpeg bytes", match_kind="md5")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        spool.submit(list_id="l", item_id="x" * 5000, match_kind="md5")
    with pytest.raises(ValueError):
        fast_spool(tmp_path, None, url_mode="everything")
    with pytest.raises(ValueError):
        fast_spool(tmp_path, "ftp://hotline.example/")
    assert spool.queue_depth == 0


@pytest.mark.parametrize(
    "url,mode,expected",
    [
        ("https://Bad.Example/a.jpg", "host", "bad.example"),
        ("bad.example/a.jpg", "host", "bad.example"),
        ("http://[2001:db8::1]:8080/x", "host", "2001:db8::1"),
        ("http://[2001:db8::1]:8080/x#y", "full", "http://[2001:db8::1]:8080/x"),
        ("HTTP://u@h.example", "full", "http://h.example/"),
        ("http://bad.example/a.jpg", "hashed", None),  # checked below against the canonical form
        ("", "host", None),
        (None, "full", None),
        ("http://:80/", "host", None),
    ],
)
def test_reduce_url(url: str | None, mode: str, expected: str | None) -> None:
    got = reduce_url(url, mode)
    if mode == "hashed":
        from filterproxy.match.urlhash import canonicalize

        assert got == hashlib.sha256(canonicalize(url).encode()).hexdigest()
        assert got == reduce_url("HTTP://BAD.example:80/a.jpg#frag", "hashed")  # same page, same hash
    else:
        assert got == expected


def test_a_failed_write_raises_and_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = fast_spool(tmp_path, None)

    def disk_full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        submit_one(spool)
    monkeypatch.undo()
    assert os.listdir(tmp_path / "pending") == [] and spool.queue_depth == 0
