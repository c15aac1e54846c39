"""End to end: conflicting ``Host`` headers never let a blocked name through (real ``mitmdump`` + the addon).

A raw socket client sends the exact bytes (duplicate ``Host`` lines, odd case, an absolute-form target
that disagrees with ``Host``) through the proxy to a backend on 127.0.0.1 that records every ``Host``
line it receives. An origin that takes the last ``Host`` (or the URL) would otherwise serve a site the
filter never decided on; the proxy must answer 400 and forward nothing.
"""

from __future__ import annotations

import socket

import pytest
from conftest import write_config
from http_peers import RecordingBackend, routed_proxy
from test_http_e2e import stop


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("http-host")
    backend = RecordingBackend()
    (tmp / "adult.txt").write_text("blocked.test\n")
    cfg = write_config(
        tmp,
        """
        timezone: Asia/Ho_Chi_Minh
        lists:
          - {id: adult, category: adult, format: domains, match: subdomains, path: adult.txt}
    """,
        {"pupil": "name: Pupil\ntone: child\nblock_categories: [adult]\n"},
    )
    port, p = routed_proxy(tmp, cfg, backend.port)
    yield {"port": port, "backend": backend, "proc": p}
    stop(p)
    backend.close()


def send(port: int, raw: bytes, timeout: float = 10) -> bytes:
    """Send ``raw`` to the proxy, return everything it answers until it closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
                if b"\r\n\r\n" in out and b"Connection: close" not in out and b"content-length: 0" in out.lower():
                    break
        except TimeoutError:
            pass
    return out


def status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def variants(bp: int) -> list[bytes]:
    t = f"http://127.0.0.1:{bp}/".encode()
    return [
        b"GET " + t + b" HTTP/1.1\r\nHost: allowed.test\r\nHost: blocked.test\r\nConnection: close\r\n\r\n",
        b"GET " + t + b" HTTP/1.1\r\nHost: blocked.test\r\nHost: allowed.test\r\nConnection: close\r\n\r\n",
        b"GET " + t + b" HTTP/1.1\r\nHost: allowed.test\r\nhost: blocked.test\r\nConnection: close\r\n\r\n",
        b"GET " + t + b" HTTP/1.1\r\nHOST: allowed.test\r\nhOsT: blocked.test:80\r\nConnection: close\r\n\r\n",
        b"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nHost: blocked.test\r\nConnection: close\r\n\r\n",
        b"GET http://allowed.test/ HTTP/1.1\r\nHost: blocked.test\r\nConnection: close\r\n\r\n",
        b"GET http://blocked.test/ HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n",
        b"GET " + t + b" HTTP/1.1\r\nHost: blocked.test\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: allowed.test\r\nHost: blocked.test\r\nConnection: close\r\n\r\n",
    ]


def test_allowed_request_reaches_backend(setup):
    answer = send(
        setup["port"], b"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n"
    )
    assert status(answer) == 200 and answer.endswith(b"ok")
    assert setup["backend"].hosts[-1] == b"allowed.test"


@pytest.mark.parametrize("i", range(9))
def test_conflicting_host_is_refused(setup, i):
    backend = setup["backend"]
    before = backend.requests
    answer = send(setup["port"], variants(backend.port)[i])
    assert status(answer) == 400, answer[:300]
    assert b"host" in answer.split(b"\r\n\r\n", 1)[1].lower()  # a short plain reason
    assert backend.requests == before  # nothing forwarded
    assert not any(b"blocked" in h for h in backend.hosts)


def test_request_with_trailers_gets_400_not_a_crash(setup):
    backend = setup["backend"]
    before = backend.requests
    raw = (
        f"POST http://127.0.0.1:{backend.port}/ HTTP/1.1\r\nHost: 127.0.0.1:{backend.port}\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"
    ).encode()
    answer = send(setup["port"], raw)
    assert status(answer) == 400 and b"HTTP trailers are not supported" in answer
    assert backend.requests == before
    # the proxy still serves
    answer = send(
        setup["port"], b"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n"
    )
    assert status(answer) == 200


def test_trailer_guard_fits_this_mitmproxy():
    from filterproxy.http.protocol import refuse_trailers

    assert refuse_trailers() is True
    assert refuse_trailers() is True  # idempotent
