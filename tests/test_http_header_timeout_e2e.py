"""End to end: slow clients are closed by ``http.header_timeout`` (a real ``filterproxy run`` and raw sockets).

Fifty connections drip an unfinished request head one byte at a time; the proxy (``header_timeout: 2``)
closes each a few seconds after it connected, counts them in ``filterproxy_http_slow_clients_total``,
and answers a normal request meanwhile. A slow upstream answer is not a slow client; an idle HTTP/1
keep-alive connection and an intercepted tunnel without a head are closed; a pass-through tunnel is not.
Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import socket
import ssl
import sys
import threading
import time

import pytest
import requests
from conftest import start_logged, write_config
from test_http_e2e import free_port, make_cert, stop

TIMEOUT = 2.0  # http.header_timeout in this test's configuration
LATE = 10.0  # generous slack on top of TIMEOUT before a connection counts as never closed
SLOW_ANSWER = 3.0  # the backend's /slow answer takes longer than TIMEOUT
DRIPPERS = 50


class Backend:
    """HTTP and HTTPS keep-alive servers on 127.0.0.1; ``/slow`` answers after SLOW_ANSWER seconds."""

    def __init__(self, cert: str, key: str) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                if self.path.endswith("/slow"):
                    time.sleep(SLOW_ANSWER)
                body = f"backend {self.path}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.https = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self.https.socket = ctx.wrap_socket(self.https.socket, server_side=True)
        for s in (self.http, self.https):
            threading.Thread(target=s.serve_forever, daemon=True).start()
        self.port, self.tls_port = self.http.server_address[1], self.https.server_address[1]

    def close(self) -> None:
        for s in (self.http, self.https):
            s.shutdown()
            s.server_close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("header-timeout-e2e")
    backend = Backend(*make_cert(tmp))
    (tmp / "adult.txt").write_text("blocked.test\n")
    cfg = write_config(
        tmp,
        f"""
        timezone: Asia/Ho_Chi_Minh
        http:
          header_timeout: {TIMEOUT:g}
          passthrough: [localhost]
        lists:
          - {{id: adult, category: adult, format: domains, match: subdomains, path: adult.txt}}
    """,
        {"pupil": "name: Pupil\ntone: child\nblock_categories: [adult]\n"},
    )
    port, mport = free_port(), free_port()
    cmd = [sys.executable, "-m", "filterproxy", "run", "--config", str(cfg), "--proxy-listen", f"127.0.0.1:{port}"]
    cmd += ["--dns-listen", "off", "--metrics-listen", f"127.0.0.1:{mport}", "--state-dir", str(tmp / "state")]
    cmd += ["--proxy-workers", "1", "--client-group", "127.0.0.0/8=pupil"]
    p, out, ready = start_logged(cmd, ["proxy listening on"], cwd=str(tmp))
    assert ready.wait(90), "".join(out)
    yield {"port": port, "mport": mport, "backend": backend, "out": out}
    stop(p)
    backend.close()


def slow_clients(mport: int) -> float:
    text = requests.get(f"http://127.0.0.1:{mport}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("filterproxy_http_slow_clients_total "):
            return float(line.split()[-1])
    return 0.0


def read_response(s: socket.socket) -> bytes:
    """One HTTP/1.1 response with a Content-Length body (the backend's and the proxy's)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        assert chunk, f"closed before a response: {buf!r}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = next((int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += s.recv(4096)
    return head + b"\r\n\r\n" + body


def wait_closed(s: socket.socket, limit: float) -> float:
    """Seconds until the proxy closes ``s`` (EOF or reset); fails after ``limit`` seconds."""
    t0 = time.monotonic()
    s.settimeout(limit)
    try:
        data = s.recv(4096)
    except ConnectionError:
        data = b""
    except TimeoutError:
        pytest.fail(f"the proxy kept an idle connection open for {limit:g} s")
    assert data == b"", data
    return time.monotonic() - t0


def normal_get(proxy: dict, path: str = "/") -> requests.Response:
    with requests.Session() as s:
        s.trust_env = False
        s.proxies = {"http": f"http://127.0.0.1:{proxy['port']}"}
        return s.get(f"http://127.0.0.1:{proxy['backend'].port}{path}", timeout=10)


def test_dripping_heads_are_closed_while_others_are_served(proxy):
    before = slow_clients(proxy["mport"])
    head = f"GET http://127.0.0.1:{proxy['backend'].port}/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode()
    head += b"a" * 200  # never finished: no blank line
    start = time.monotonic()
    socks = [socket.create_connection(("127.0.0.1", proxy["port"]), timeout=5) for _ in range(DRIPPERS)]
    for s in socks:
        s.setblocking(False)
    closed: dict[int, float] = {}
    answered: dict[int, bytes] = {}
    normal: tuple[int, int] | None = None  # (still dripping, status) of the normal request
    i = 0
    while len(closed) < DRIPPERS and time.monotonic() - start < TIMEOUT + LATE and i < len(head):
        for k, s in enumerate(socks):
            if k in closed:
                continue
            try:
                data = s.recv(4096)
            except BlockingIOError:
                data = None
            except ConnectionError:
                data = b""
            if data == b"":
                closed[k] = time.monotonic() - start
                continue
            if data:
                answered[k] = data
            try:
                s.send(head[i : i + 1])
            except BlockingIOError:
                pass
            except OSError:
                closed[k] = time.monotonic() - start
        i += 1
        if normal is None and time.monotonic() - start >= 1.0:
            dripping = DRIPPERS - len(closed)
            normal = (dripping, normal_get(proxy).status_code)
        time.sleep(0.5)
    for s in socks:
        s.close()
    assert normal is not None and normal[0] > 0 and normal[1] == 200, normal  # answered during the attack
    assert not answered, answered  # closed without an answer, not parsed as a request
    assert len(closed) == DRIPPERS, f"{DRIPPERS - len(closed)} slow connections still open after {TIMEOUT + LATE} s"
    assert min(closed.values()) >= TIMEOUT * 0.75, sorted(closed.values())  # the deadline, not something else
    assert max(closed.values()) <= TIMEOUT + LATE
    deadline = time.monotonic() + 30  # the worker writes its counters every few seconds
    while slow_clients(proxy["mport"]) < before + DRIPPERS and time.monotonic() < deadline:
        time.sleep(0.5)
    assert slow_clients(proxy["mport"]) >= before + DRIPPERS


def test_slow_answer_is_not_a_slow_client_but_idle_keep_alive_is_closed(proxy):
    bport = proxy["backend"].port
    with socket.create_connection(("127.0.0.1", proxy["port"]), timeout=SLOW_ANSWER + LATE) as s:
        for path in ("/slow", "/again"):  # the same connection: the slow answer did not close it
            s.sendall(f"GET http://127.0.0.1:{bport}{path} HTTP/1.1\r\nHost: 127.0.0.1:{bport}\r\n\r\n".encode())
            answer = read_response(s)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(f"backend {path}".encode()), answer
        idle = wait_closed(s, TIMEOUT + LATE)  # no next head: closed like a slow one
    assert idle >= TIMEOUT * 0.75


def connect(proxy: dict, target: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proxy["port"]), timeout=TIMEOUT + LATE)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = s.recv(4096)
        assert chunk, answer
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return s


def test_intercepted_tunnel_without_a_head_is_closed(proxy):
    with connect(proxy, f"127.0.0.1:{proxy['backend'].tls_port}") as s:  # no TLS handshake follows
        assert wait_closed(s, TIMEOUT + LATE) >= TIMEOUT * 0.75


def test_pass_through_tunnel_is_left_alone(proxy):
    raw = connect(proxy, f"localhost:{proxy['backend'].tls_port}")  # http.passthrough: not intercepted
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        time.sleep(TIMEOUT * 2)  # idle past the deadline: the proxy relays bytes, it waits for no head
        s.sendall(b"GET /inside HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = read_response(s)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"backend /inside"), answer
