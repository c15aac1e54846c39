"""Request-head deadlines (slow clients): the deadline logic with a fake close, and its wiring in the addon.

The end-to-end twin (real ``filterproxy run``, real dripping sockets) is tests/test_http_header_timeout_e2e.py.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from conftest import write_config
from mitmproxy import connection, http
from mitmproxy.proxy import layers
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layer import NextLayer
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.test import taddons, tflow
from test_http_addon import POLICIES, client, connect, get, hello, make_config

from filterproxy import metrics
from filterproxy.config import load_config
from filterproxy.http.addon import FilterAddon
from filterproxy.http.header_timeout import HeaderDeadlines

T = 0.05  # the deadline in these tests (seconds)
WAIT = 0.3  # comfortably past it


class Closer:
    """A fake close function: records the connections it was asked to close."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def __call__(self, conn_id: str) -> bool:
        self.ids.append(conn_id)
        return True


def deadlines(timeout: float = T) -> tuple[HeaderDeadlines, Closer]:
    closer = Closer()
    return HeaderDeadlines(lambda: timeout, closer), closer


def conn(protocol: str = "tcp") -> connection.Client:
    c = tflow.tclient_conn()
    c.id = str(uuid.uuid4())
    c.transport_protocol = protocol  # type: ignore[assignment]
    return c


def flow(c: connection.Client, version: str = "HTTP/1.1", status: int | None = None) -> http.HTTPFlow:
    f = tflow.tflow(client_conn=c, resp=status is not None)
    f.request.http_version = version
    if f.response is not None:
        f.response.status_code = status  # type: ignore[assignment]
    return f


# ---------------------------------------------------------------- the deadline logic (fake close)


def test_connection_without_a_head_is_closed_and_counted():
    async def main():
        d, closer = deadlines()
        c = conn()
        before = metrics.HTTP_SLOW_CLIENTS.value()
        d.connected(c)
        assert len(d) == 1
        await asyncio.sleep(WAIT)
        assert closer.ids == [c.id] and d.closed == 1 and len(d) == 0
        assert metrics.HTTP_SLOW_CLIENTS.value() == before + 1

    asyncio.run(main())


def test_head_disarms():
    async def main():
        d, closer = deadlines()
        c = conn()
        d.connected(c)
        d.head(flow(c), "requestheaders")
        assert len(d) == 0
        await asyncio.sleep(WAIT)
        assert closer.ids == []

    asyncio.run(main())


def test_keep_alive_rearms_only_when_nothing_is_in_flight():
    async def main():
        d, closer = deadlines()
        c = conn()
        d.connected(c)
        f1, f2 = flow(c, status=200), flow(c, status=200)
        d.head(f1, "requestheaders")
        d.head(f2, "requestheaders")  # pipelined: two exchanges in flight
        d.done(f1, "response")
        d.done(f1, "error")  # a second end of the same exchange changes nothing
        assert len(d) == 0
        await asyncio.sleep(WAIT)
        assert closer.ids == []  # f2 still in flight: no deadline
        d.done(f2, "response")
        assert len(d) == 1  # idle keep-alive connection: waiting for the next head
        await asyncio.sleep(WAIT)
        assert closer.ids == [c.id]

    asyncio.run(main())


def test_next_head_disarms_the_keep_alive_deadline():
    async def main():
        d, closer = deadlines()
        c = conn()
        f1 = flow(c, status=200)
        d.head(f1, "requestheaders")
        d.done(f1, "response")
        await asyncio.sleep(T / 5)
        d.head(flow(c), "requestheaders")
        await asyncio.sleep(WAIT)
        assert closer.ids == []

    asyncio.run(main())


def test_off_when_zero():
    async def main():
        d, closer = deadlines(0)
        c = conn()
        d.connected(c)
        f = flow(c, status=200)
        d.head(f, "requestheaders")
        d.done(f, "response")
        assert len(d) == 0
        await asyncio.sleep(WAIT)
        assert closer.ids == []

    asyncio.run(main())


@pytest.mark.parametrize(
    "leave",
    [
        lambda d, c: _exchange(d, flow(c, "HTTP/2.0", status=200)),  # multiplexed
        lambda d, c: d.done(flow(c, status=101), "response"),  # upgraded (WebSocket, raw TCP)
        lambda d, c: d.next_layer(_next(c, layers.TCPLayer)),  # raw TCP relay (transparent, ignore_hosts, ...)
        lambda d, c: d.tls_clienthello(_hello(c, ignore=True)),  # TLS not intercepted (pass-through)
    ],
    ids=["http2", "upgrade", "tcp-layer", "tls-not-intercepted"],
)
def test_relayed_connections_are_left_to_mitmproxy(leave):
    async def main():
        d, closer = deadlines()
        c = conn()
        d.connected(c)
        leave(d, c)
        d.done(flow(c, status=200), "response")  # nothing re-arms a relayed connection
        assert len(d) == 0
        await asyncio.sleep(WAIT)
        assert closer.ids == []

    asyncio.run(main())


def test_intercepted_tls_and_http_layers_keep_their_deadline():
    async def main():
        d, closer = deadlines()
        c = conn()
        d.connected(c)
        d.tls_clienthello(_hello(c, ignore=False))
        d.next_layer(_next(c, layers.HttpLayer))
        await asyncio.sleep(WAIT)
        assert closer.ids == [c.id]

    asyncio.run(main())


def test_udp_is_not_timed_and_forget_cancels():
    async def main():
        d, closer = deadlines()
        u, c = conn("udp"), conn()
        d.connected(u)
        d.connected(c)
        assert len(d) == 1
        d.forget(c)
        assert len(d) == 0
        await asyncio.sleep(WAIT)
        assert closer.ids == []

    asyncio.run(main())


def test_an_error_fails_closed_and_is_counted():
    def broken() -> float:
        raise RuntimeError("injected")

    async def main():
        closer = Closer()
        d = HeaderDeadlines(broken, closer)
        c = conn()
        before = metrics.HTTP_ERRORS.value("client_connected")
        d.connected(c)
        assert closer.ids == [c.id]  # the connection is closed, not left without a deadline
        assert metrics.HTTP_ERRORS.value("client_connected") == before + 1

    asyncio.run(main())


def _exchange(d: HeaderDeadlines, f: http.HTTPFlow) -> None:
    d.head(f, "requestheaders")
    d.done(f, "response")


def _next(c: connection.Client, kind: type) -> NextLayer:
    nl = NextLayer(Context(c, None))  # type: ignore[arg-type]
    nl.layer = kind(nl.context) if kind is layers.TCPLayer else kind(nl.context, HTTPMode.transparent)
    return nl


def _hello(c: connection.Client, *, ignore: bool):
    data = hello(c, "example.test")
    data.ignore_connection = ignore
    return data


# ---------------------------------------------------------------- the addon's hooks


@pytest.fixture(scope="module")
def addon_config(tmp_path_factory) -> str:
    return str(make_config(tmp_path_factory.mktemp("header-timeout")))


@pytest.fixture
def addon(addon_config):
    a = FilterAddon()
    with taddons.context(a) as tctx:
        tctx.configure(a, filterproxy_config=addon_config, filterproxy_reload_signal=False)
        yield a


def _timed(a: FilterAddon) -> Closer:
    closer = Closer()
    a.heads.timeout = lambda: T
    a.heads._close = closer
    return closer


def test_addon_reads_header_timeout_from_its_config(addon):
    assert addon.heads.timeout() == 30.0  # http.header_timeout's default, from the loaded state


def test_addon_http1_exchange_and_keep_alive(addon):
    async def main():
        closer = _timed(addon)
        c = client()
        addon.client_connected(c)
        assert len(addon.heads) == 1
        f = get("http://allowed.example/", conn=c)
        addon.requestheaders(f)
        assert len(addon.heads) == 0
        f.response = http.Response.make(200, b"ok")
        addon.response(f)
        assert len(addon.heads) == 1  # idle keep-alive: waiting for the next head
        f2 = get("http://allowed.example/2", conn=c)
        addon.requestheaders(f2)
        addon.error(f2)  # e.g. the upstream failed
        assert len(addon.heads) == 1
        await asyncio.sleep(WAIT)
        assert closer.ids == [c.id]
        addon.client_disconnected(c)
        assert c.id not in addon.heads._in_flight

    asyncio.run(main())


@pytest.mark.parametrize("host,ignored", [("allowed.example", False), ("bank.example", True)])
def test_addon_connect_tunnel(addon, host, ignored):
    async def main():
        closer = _timed(addon)
        c = client()
        addon.client_connected(c)
        f = connect(host, conn=c)
        addon.http_connect(f)
        assert len(addon.heads) == 0
        f.response = http.Response.make(200)
        addon.http_connected(f)
        assert len(addon.heads) == 1  # the tunnel's first head (TLS handshake included) is due
        addon.tls_clienthello(hello(c, host))  # bank.example is a pass-through host: not intercepted
        assert len(addon.heads) == (0 if ignored else 1)
        await asyncio.sleep(WAIT)
        assert closer.ids == ([] if ignored else [c.id])

    asyncio.run(main())


def test_addon_refused_connect_waits_for_the_next_head(addon):
    async def main():
        closer = _timed(addon)
        c = client()
        f = connect("pinned-bad.example", conn=c)  # blocked pass-through: 403
        addon.http_connect(f)
        assert f.response is not None and f.response.status_code == 403
        addon.http_connect_error(f)
        await asyncio.sleep(WAIT)
        assert closer.ids == [c.id]

    asyncio.run(main())


def test_addon_raw_tcp_layer_is_left_to_mitmproxy(addon):
    async def main():
        closer = _timed(addon)
        c = client(mode="transparent")
        addon.client_connected(c)
        addon.next_layer(_next(c, layers.TCPLayer))
        await asyncio.sleep(WAIT)
        assert closer.ids == []

    asyncio.run(main())


def test_addon_websocket_is_left_to_mitmproxy(addon):
    async def main():
        closer = _timed(addon)
        c = client()
        f = get("http://allowed.example/ws", conn=c)
        addon.requestheaders(f)
        f.response = http.Response.make(101, b"", {"Upgrade": "websocket"})
        addon.response(f)
        await asyncio.sleep(WAIT)
        assert closer.ids == []

    asyncio.run(main())


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "text,want", [("", 30.0), ("http: {header_timeout: 2.5}\n", 2.5), ("http:\n  header_timeout: 0\n", 0.0)]
)
def test_config_header_timeout(tmp_path, text, want):
    cfg = write_config(tmp_path, text, {"g": POLICIES["kid"]})
    assert load_config(str(cfg)).http.header_timeout == want
