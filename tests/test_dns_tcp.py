"""TCP DNS cannot be taken by one address: a per-client connection cap (``dns.tcp_max_per_client``),
shorter idle timeouts when most of ``dns.tcp_max_connections`` is used, and, with the cap full, a new
connection evicts the one idle longest. Real sockets on 127.0.0.x against ``filterproxy run``."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_dns_server import addrs, ask, start, write_setup

from filterproxy.config import load_config
from filterproxy.dns.testing import FakeUpstream, synth_a
from filterproxy.vocabulary import ConfigError

ATTACKER, CLIENT = "127.0.0.2", "127.0.0.3"


@pytest.fixture()
def server(tmp_path):
    up = FakeUpstream().start()
    running = []

    def run(**dns_opts):
        srv = start(tmp_path, write_setup(tmp_path, upstreams=[up.address], dns_opts=dns_opts))
        running.append(srv)
        return srv

    yield run
    for srv in running:
        srv.stop()
    up.stop()
    for srv in running:
        assert "Traceback" not in srv.output(), srv.output()[-3000:]


def _connect(port: int, src: str) -> socket.socket:
    c = socket.create_connection(("127.0.0.1", port), timeout=3, source_address=(src, 0))
    c.settimeout(3)
    return c


def _closed(c: socket.socket, within: float) -> bool:
    """True when the server closes ``c`` within ``within`` seconds (False when it stays open)."""
    c.settimeout(within)
    try:
        return c.recv(10) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def test_one_address_holding_300_idle_connections_does_not_deny_others(server):
    srv = server()  # the defaults: 256 connections, 16 per client address, 10 s idle timeout
    held = []
    try:
        for _ in range(300):
            try:
                held.append(_connect(srv.port, ATTACKER))
            except OSError:
                pass
        time.sleep(0.3)
        answered = 0
        for i in range(20):
            try:
                if addrs(ask(srv.port, f"tcp{i}.example", tcp=True, src=CLIENT, timeout=2)) == [
                    synth_a(f"tcp{i}.example")
                ]:
                    answered += 1
            except (EOFError, OSError):
                pass
            time.sleep(0.1)
        assert answered == 20
        assert sum(not _closed(c, 0.01) for c in held) == 16  # the attacker keeps its own 16 only
    finally:
        for c in held:
            c.close()


def test_per_client_cap_and_eviction_of_the_longest_idle(server):
    srv = server(tcp_max_connections=8, tcp_max_per_client=2)
    first = _connect(srv.port, ATTACKER)
    second = _connect(srv.port, ATTACKER)
    time.sleep(0.1)
    third = _connect(srv.port, ATTACKER)
    assert _closed(third, 2)  # past the per-client cap: closed at once
    assert not _closed(first, 0.05) and not _closed(second, 0.05)
    others = [_connect(srv.port, f"127.0.0.{20 + i // 2}") for i in range(6)]  # the global cap is full
    time.sleep(0.8)
    assert addrs(ask(srv.port, "evict.example", tcp=True, src=CLIENT)) == [synth_a("evict.example")]
    assert _closed(first, 1)  # idle longest: evicted for the new connection
    assert not _closed(second, 0.05)
    for c in (first, second, third, *others):
        c.close()


def test_idle_timeout_shrinks_under_pressure(server):
    srv = server(tcp_max_connections=8, tcp_idle_timeout=10)
    conns = [_connect(srv.port, f"127.0.0.{20 + i}") for i in range(7)]  # 7 of 8: over 75% used
    t0 = time.monotonic()
    assert _closed(conns[-1], 5) and time.monotonic() - t0 < 4  # opened under pressure: ~1.5 s, not 10
    time.sleep(0.5)
    assert addrs(ask(srv.port, "pressure.example", tcp=True, src=CLIENT)) == [synth_a("pressure.example")]
    # the new connection found the others idle past the short timeout: closed now, not after 10 s
    t0 = time.monotonic()
    assert all(_closed(c, 2) for c in conns[:-1]) and time.monotonic() - t0 < 3
    for c in conns:
        c.close()


def test_tcp_max_per_client_is_checked_with_file_and_line(tmp_path):
    cfg = write_setup(tmp_path, upstreams=["127.0.0.1:53"], dns_opts={"tcp_max_per_client": 0})
    with pytest.raises(ConfigError) as exc:
        load_config(str(cfg))
    assert "'dns.tcp_max_per_client' must be at least 1" in str(exc.value)
    assert f"{cfg}:" in str(exc.value)


class _Conn:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_connections_table():
    from filterproxy.dns.tcp import Connections

    t = Connections(max_connections=5, max_per_client=2, idle_timeout=10.0)
    a1, a2, a3, b1, e1, c1, d1 = (_Conn() for _ in range(7))
    assert t.add(a1, "a", 0.0) is None and t.add(a2, "a", 0.0) is None
    assert t.add(a3, "a", 0.0) == "tcp-client-limit"
    assert t.add(b1, "b", 0.0) is None  # 3 of 5
    assert t.waiting(a1, 0.0) == 10.0 and t.waiting(a2, 0.1) == 10.0 and t.waiting(b1, 0.1) == 10.0
    assert t.add(e1, "e", 0.2) is None  # 4 of 5: over 75%, idle timeout 1.5 s from now on
    assert t.waiting(e1, 0.2) == 1.5 and not a1.closed
    t.busy(a1)  # a query is being read: not idle
    assert t.add(c1, "c", 0.3) is None  # 5 of 5
    assert t.add(d1, "d", 0.4) == "tcp-limit"  # full, and nobody idle for 0.5 s yet
    assert t.add(d1, "d", 0.7) is None and a2.closed and not a1.closed  # a2 idle longest: evicted
    t.remove(a2)  # its handler ends: nothing counted twice
    assert t.per_client == {"a": 1, "b": 1, "e": 1, "c": 1, "d": 1} and len(t.open) == 5
    t.remove(d1)
    f1 = _Conn()
    assert t.add(f1, "f", 1.65) is None and b1.closed and not e1.closed  # pressure: b1 idle 1.55 s goes now
    for c in (a1, e1, c1, f1):
        t.remove(c)
    assert t.per_client == {} and t.open == {} and t.idle == {} and t.timeout() == 10.0
