"""Batched UDP I/O (recvmmsg/sendmmsg through ctypes): datagrams, addresses and replies, IPv4 and IPv6."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from filterproxy.dns import mmsg


def _pair(family: int, host: str):
    srv = socket.socket(family, socket.SOCK_DGRAM)
    srv.bind((host, 0))
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 1, 0))  # as the server's polling
    clients = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(3)]
    for c in clients:
        c.bind((host, 0))
        c.settimeout(2)
    return srv, clients


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_batch_round_trip(family, host):
    srv, clients = _pair(family, host)
    bs = mmsg.BatchSocket(srv)
    for k, c in enumerate(clients):
        c.sendto(b"query-%d" % k + bytes(k * 100), srv.getsockname())
    got: list[tuple[bytes, tuple]] = []
    while len(got) < 3:
        n = bs.recv()
        assert n > 0
        for i in range(n):
            got.append((bs.data(i), bs.addr(i), bs.ip(i), bs.addr_key(i)))
            assert bs.put(i, b"ID", b"-reply-to-" + bs.data(i)[:7])
        bs.flush()
    by_port = {a[1]: (d, a, ip, key) for d, a, ip, key in got}
    for k, c in enumerate(clients):
        d, a, ip, key = by_port[c.getsockname()[1]]
        assert d == b"query-%d" % k + bytes(k * 100)
        assert a[:2] == c.getsockname()[:2] and ip == host
        assert key == socket.inet_pton(family, host)
        if family == socket.AF_INET6:
            assert len(a) == 4  # (host, port, flowinfo, scope_id), as recvfrom gives
        assert c.recv(100) == b"ID-reply-to-query-%d" % k
    for s in (srv, *clients):
        s.close()


def test_addresses_stay_whole_over_many_batches_on_a_dual_stack_socket():
    """The kernel writes each address's length back into the batch's headers and they are not reset
    between calls: on an IPv6 socket every source (native or v4-mapped) must still come back whole."""
    srv = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", 0))
    srv.settimeout(2)
    port = srv.getsockname()[1]
    c4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c4.bind(("127.0.0.1", 0))
    c6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    c6.bind(("::1", 0))
    for c in (c4, c6):
        c.settimeout(2)
    bs = mmsg.BatchSocket(srv)
    try:
        for rnd in range(4):
            first, second = (c4, c6) if rnd % 2 else (c6, c4)
            first.sendto(b"a%d" % rnd, ("127.0.0.1" if first is c4 else "::1", port))
            second.sendto(b"b%d" % rnd, ("127.0.0.1" if second is c4 else "::1", port))
            seen = {}
            while len(seen) < 2:
                n = bs.recv()
                assert n > 0
                for i in range(n):
                    seen[bs.data(i)] = bs.addr(i)
                    assert bs.put(i, b"ID", bs.data(i))
                bs.flush()
            want = {b"a%d" % rnd: first, b"b%d" % rnd: second}
            for data, addr in seen.items():
                c = want[data]
                host = "::ffff:127.0.0.1" if c is c4 else "::1"
                assert addr[:2] == (host, c.getsockname()[1])
                assert c.recv(100) == b"ID" + data  # the reply went to that same address
    finally:
        for s in (srv, c4, c6):
            s.close()


def test_timeout_returns_zero_and_oversize_reply_is_refused():
    srv, clients = _pair(socket.AF_INET, "127.0.0.1")
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 20000))
    bs = mmsg.BatchSocket(srv)
    assert bs.recv() == 0  # nothing queued: the timeout, not an error
    clients[0].sendto(b"q", srv.getsockname())
    assert bs.recv() == 1
    assert not bs.put(0, b"ID", bytes(mmsg.SLOT))  # too big for a slot: the caller sends it itself
    assert bs.pending == 0
    assert bs.put(0, b"ID", b"ok")
    bs.flush()
    assert clients[0].recv(10) == b"IDok" and bs.pending == 0
    for s in (srv, *clients):
        s.close()


def test_a_failing_destination_does_not_stop_the_batch():
    srv, clients = _pair(socket.AF_INET, "127.0.0.1")
    bs = mmsg.BatchSocket(srv)
    clients[0].sendto(b"a", srv.getsockname())
    clients[1].sendto(b"b", srv.getsockname())
    time.sleep(0.05)
    assert bs.recv() == 2  # both queued: one call takes them
    assert {bs.data(0), bs.data(1)} == {b"a", b"b"}
    to_b = 0 if bs.data(0) == b"b" else 1
    bs.names[(1 - to_b) * mmsg.NAME + 2 : (1 - to_b) * mmsg.NAME + 4] = b"\x00\x00"  # port 0: refused by the kernel
    bs.put(1 - to_b, b"ID", b"x")
    bs.put(to_b, b"ID", b"y")
    bs.flush()
    assert clients[1].recv(10) == b"IDy" and bs.pending == 0
    for s in (srv, *clients):
        s.close()


def test_env_switch(monkeypatch):
    monkeypatch.setenv("FILTERPROXY_DNS_MMSG", "0")
    assert not mmsg.available()
    monkeypatch.setenv("FILTERPROXY_DNS_MMSG", "1")
    assert mmsg.available()


def test_word_views_read_what_the_struct_accessors_read():
    """The hot loop reads lengths, IPv4 sources and IDs through native-word views of the batch buffers."""
    srv, clients = _pair(socket.AF_INET, "127.0.0.1")
    bs = mmsg.BatchSocket(srv)
    for k, c in enumerate(clients):
        c.sendto(b"\x12%c" % (k + 1) + bytes(11 + k * 50), srv.getsockname())
    seen = 0
    while seen < 3:
        n = bs.recv()
        assert n > 0
        for i in range(n):
            assert bs.lens[i * bs.len_step + bs.len_at] == bs.length(i) == len(bs.data(i))
            assert struct.pack("I", bs.ipv4[i * mmsg.NAME // 4 + 1]) == bs.addr_key(i) == socket.inet_aton("127.0.0.1")
            assert struct.pack("H", bs.rids[i * mmsg.SLOT // 2]) == bs.data(i)[:2]
        seen += n
    for s in (srv, *clients):
        s.close()


def test_an_unexpected_batch_layout_falls_back_to_the_plain_loop(monkeypatch):
    from filterproxy.dns.server import DnsServer

    srv = DnsServer(None, "127.0.0.1", 0)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    monkeypatch.setattr(mmsg, "available", lambda: True)
    target, args, batched = srv.udp._pick_udp_loop(s)
    assert batched and target == srv.udp._udp_loop_batched and isinstance(args[0], mmsg.BatchSocket)

    def refuse(sock):
        raise OSError("unexpected mmsghdr/iovec layout")

    monkeypatch.setattr(mmsg, "BatchSocket", refuse)
    target, args, batched = srv.udp._pick_udp_loop(s)
    assert not batched and target == srv.udp._udp_loop and args == ()
    s.close()
