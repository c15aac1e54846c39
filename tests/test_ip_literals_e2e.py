"""End to end: a request to a site by its IP address, in any spelling a browser accepts, never reaches it
for a minors' group (real ``mitmdump`` + the addon, a raw-socket client, a recording backend).

The only server on this machine the tests may reach is on loopback, and loopback is exempt by default
(``ip_literal_exempt``: a home router or school intranet stays reachable). So the minors' group here sets
``ip_literal_exempt: []``, the way a family that wants no exception would; a second minors' group keeps
the default exemptions and must reach the loopback backend. Clients pick their group by source address
(127.0.0.2-4); no test name or address leaves 127.0.0.0/8.
"""

from __future__ import annotations

import socket
import subprocess

import pytest
from conftest import write_config
from http_peers import RecordingBackend, mitmdump_cmd
from test_http_e2e import free_port, stop, wait_port

PUPIL, STAFF, TEEN = "127.0.0.2", "127.0.0.3", "127.0.0.4"
# 127.0.0.1 as a browser reads it: dotted, 32-bit, octal, hex, and the short forms
FORMS = ["127.0.0.1", "2130706433", "0177.0.0.1", "0x7f.0.0.1", "0x7f000001", "127.1", "0x7f.1", "[::ffff:127.0.0.1]"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ip-literals-e2e")
    backend = RecordingBackend(b"backend")
    (tmp / "malware.txt").write_text("127.0.0.9\n")  # an IP list entry, in its canonical form
    cfg = write_config(
        tmp,
        f"""
        timezone: Asia/Ho_Chi_Minh
        default_group: pupil
        clients:
          - {{ip: {PUPIL}, group: pupil}}
          - {{ip: {STAFF}, group: staff}}
          - {{ip: {TEEN}, group: teen}}
        lists:
          - {{id: malware-ips, category: malware, format: domains, path: malware.txt}}
    """,
        {
            "pupil": "name: Pupil\ntone: child\nblock_categories: [malware]\nip_literal_exempt: []\n",
            "staff": "name: Staff\ntone: adult\nblock_categories: [malware]\n",
            "teen": "name: Teen\ntone: teen\nblock_categories: [malware]\n",
        },
    )
    port = free_port()
    cmd = mitmdump_cmd(tmp, port, cfg)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_port(port, p)
    yield {"port": port, "backend": backend}
    stop(p)
    backend.close()


def exchange(port: int, src: str, *messages: bytes, timeout: float = 10) -> list[bytes]:
    """Send each message from ``src`` and read one response head+body for each (connection kept)."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(src, 0)) as s:
        for m in messages:
            s.sendall(m)
            out.append(_read_response(s))
    return out


def _read_response(s: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            return buf
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    fields = (line.partition(b":") for line in head.split(b"\r\n")[1:])
    length = next((int(v) for k, _, v in fields if k.strip().lower() == b"content-length"), 0)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def get(host: str, port: int) -> bytes:
    authority = f"{host}:{port}".encode()
    return b"GET http://" + authority + b"/ HTTP/1.1\r\nHost: " + authority + b"\r\nConnection: close\r\n\r\n"


def status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def reason(answer: bytes) -> str:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"x-filterproxy-reason:"):
            return line.split(b":", 1)[1].strip().decode()
    return ""


@pytest.mark.parametrize("form", FORMS)
def test_minor_never_reaches_an_address(setup, form):
    backend = setup["backend"]
    before = backend.connections, backend.requests
    (answer,) = exchange(setup["port"], PUPIL, get(form, backend.port))
    assert status(answer) == 403, answer[:300]
    assert reason(answer) == "ip-literal/policy:pupil"
    assert (backend.connections, backend.requests) == before  # nothing reached the backend


@pytest.mark.parametrize("form", FORMS)
def test_adult_reaches_the_address(setup, form):
    backend = setup["backend"]
    before = backend.requests
    (answer,) = exchange(setup["port"], STAFF, get(form, backend.port))
    assert status(answer) == 200 and answer.endswith(b"backend"), answer[:300]
    assert backend.requests == before + 1


@pytest.mark.parametrize("form", ["2130706433", "0x7f.1"])
def test_minor_reaches_an_exempt_address(setup, form):
    """The teen group keeps the default exemptions: loopback, whatever its spelling, stays reachable."""
    backend = setup["backend"]
    before = backend.requests
    (answer,) = exchange(setup["port"], TEEN, get(form, backend.port))
    assert status(answer) == 200 and backend.requests == before + 1


@pytest.mark.parametrize("form", ["127.0.0.1", "2130706433", "0x7f.0.0.1"])
def test_connect_to_an_address(setup, form):
    backend = setup["backend"]
    target = f"{form}:{backend.port}".encode()
    connect = b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n"
    inner = b"GET / HTTP/1.1\r\nHost: " + target + b"\r\nConnection: close\r\n\r\n"
    before = backend.connections, backend.requests
    tunnel, answer = exchange(setup["port"], PUPIL, connect, inner)
    assert status(tunnel) == 200  # accepted without contacting the address: the block page inside
    assert status(answer) == 403 and reason(answer) == "ip-literal/policy:pupil"
    assert (backend.connections, backend.requests) == before
    tunnel, answer = exchange(setup["port"], STAFF, connect, inner)
    assert status(tunnel) == 200 and status(answer) == 200 and answer.endswith(b"backend")
    assert backend.requests == before[1] + 1


@pytest.mark.parametrize("form", ["127.0.0.9", "0177.0.0.011", "0x7f.9", "2130706441"])
def test_ip_list_matches_every_spelling(setup, form):
    (answer,) = exchange(setup["port"], STAFF, get(form, setup["backend"].port))
    assert status(answer) == 403 and reason(answer) == "category/malware/malware-ips"


@pytest.mark.parametrize("form", ["256.0.0.1", "1.2.3.4.5", "0x7f.08"])
def test_invalid_address_is_refused(setup, form):
    backend = setup["backend"]
    before = backend.connections
    (answer,) = exchange(setup["port"], STAFF, get(form, backend.port))
    assert status(answer) == 400 and b"not a valid IP address" in answer
    assert backend.connections == before
