"""Named devices' last-seen times through a real ``filterproxy run`` (DNS, one proxy worker, the admin API):
a DNS query, a proxy request and a CONNECT from a device's address show up in ``GET /api/v1/devices`` within the flush
interval (``admin.devices_seen_seconds``), a silent device stays unseen, and nothing but ``last_seen`` changes.
"""

from __future__ import annotations

import datetime as dt
import http.client
import socket
import sys
import time
from pathlib import Path

import dns.message
import dns.query
import pytest

from filterproxy.config import load_config
from filterproxy.dns.testing import FakeUpstream, ServerProcess
from filterproxy.state.model import Actor
from filterproxy.state.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from test_admin_e2e import Api, _Backend, _config, _users  # noqa: E402
from test_http_e2e import free_port  # noqa: E402

DEVICES = {
    "dns-tablet": "127.0.0.2",
    "proxy-laptop": "127.0.0.3",
    "silent-phone": "127.0.0.4",
    "tunnel-tv": "127.0.0.5",
}


@pytest.fixture(scope="module")
def upstream():
    up = FakeUpstream().start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def backend():
    import http.server
    import threading

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


@pytest.fixture(scope="module")
def api(tmp_path_factory, upstream):
    tmp = tmp_path_factory.mktemp("seen")
    proxy_port = free_port()
    # the devices exist before the start (as after a restart), so the first query already maps to one
    cfg = _config(tmp, upstream, {"devices_seen_seconds": 0.5})
    tokens = _users(cfg)
    store = Store.for_config(load_config(str(cfg)))
    try:
        for name, ip in DEVICES.items():
            store.add_device(Actor("system", "system"), name, "teens", ip)
    finally:
        store.close()
    proc = ServerProcess(
        ["--config", str(cfg), "--dns-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
        + ["--proxy-listen", f"127.0.0.1:{proxy_port}", "--proxy-workers", "1", "--metrics-listen", "off"],
        log_path=str(tmp / "run.log"),
    ).start()
    deadline = time.monotonic() + 120
    while "admin API on" not in proc.output():
        assert proc.alive() and time.monotonic() < deadline, proc.output()[-3000:]
        time.sleep(0.1)
    a = Api(proc, cfg, tokens)
    a.proxy_port = proxy_port
    yield a
    proc.stop()


def _devices(api: Api) -> dict[str, dict]:
    r = api.session(api.tokens["boss"]).get(f"{api.base}/devices", timeout=10)
    assert r.status_code == 200, r.text
    return {d["name"]: d for d in r.json()}


def _seen_after(api: Api, name: str, after: dt.datetime, timeout: float = 20.0) -> dt.datetime:
    """The device's last_seen once it is later than ``after`` (fails after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        d = _devices(api)[name]
        if d["last_seen"] is not None:
            seen = dt.datetime.fromisoformat(d["last_seen"])
            if seen > after:
                return seen
        assert time.monotonic() < deadline, (name, d, api.proc.output()[-3000:])
        time.sleep(0.2)


def _ask(api: Api, source: str, name: str) -> None:
    q = dns.message.make_query(name, "A")
    dns.query.udp(q, api.proc.host, port=api.proc.port, source=source, timeout=5)


def test_dns_and_proxy_traffic_mark_devices_seen_and_nothing_else(api, backend):
    before = {n: {k: v for k, v in d.items() if k != "last_seen"} for n, d in _devices(api).items()}
    assert all(d["last_seen"] is None for d in _devices(api).values())
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)

    _ask(api, DEVICES["dns-tablet"], "example.org")  # builds the client state: noted then
    first = _seen_after(api, "dns-tablet", start)
    # the state lives 30 s: a later query is seen only by the once-a-second sweep (which notes a state up
    # to two sweeps after its last query: wait those out first)
    time.sleep(2.5)
    asked = dt.datetime.now(dt.UTC)
    _ask(api, DEVICES["dns-tablet"], "example.com")
    assert _seen_after(api, "dns-tablet", asked) > first

    conn = http.client.HTTPConnection(
        "127.0.0.1", api.proxy_port, timeout=10, source_address=(DEVICES["proxy-laptop"], 0)
    )
    conn.request("GET", f"http://localhost:{backend}/", headers={"Host": f"localhost:{backend}"})
    assert conn.getresponse().read() == b"hello"
    conn.close()
    assert _seen_after(api, "proxy-laptop", start) <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)

    with socket.create_connection(
        ("127.0.0.1", api.proxy_port), timeout=10, source_address=(DEVICES["tunnel-tv"], 0)
    ) as s:
        s.sendall(f"CONNECT localhost:{backend} HTTP/1.1\r\nHost: localhost:{backend}\r\n\r\n".encode())
        assert s.recv(1024).startswith(b"HTTP/1.1 200")  # a tunnel: only its CONNECT is seen by the proxy
    _seen_after(api, "tunnel-tv", start)

    after = _devices(api)
    assert after["silent-phone"]["last_seen"] is None  # no traffic, no mark
    assert {n: {k: v for k, v in d.items() if k != "last_seen"} for n, d in after.items()} == before
