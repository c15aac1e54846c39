"""Upstreams (filterproxy.dns.upstream): UDP, TCP, DoT and DoH against local servers; strategies; health."""

from __future__ import annotations

import asyncio
import base64
import http.server
import socket
import ssl
import struct
import threading
import time

import dns.message
import dns.rrset
import pytest
from tlsutil import self_signed

from filterproxy.dns import upstream as upmod
from filterproxy.dns import wire
from filterproxy.dns.testing import FakeUpstream, synth_a
from filterproxy.dns.upstream import (
    AllUpstreamsFailed,
    HttpsUpstream,
    TcpUpstream,
    UdpUpstream,
    UpstreamGroup,
    parse_upstream,
)


def query(name: str, qtype: int = wire.A) -> bytes:
    return wire.build_query(wire.text_to_name(name), qtype, qid=0x4242)


def answer_a(reply: bytes) -> list[str]:
    m = dns.message.from_wire(reply)
    assert m.id == 0x4242
    return [r.to_text() for rrset in m.answer for r in rrset]


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("tls"), days=2)


@pytest.fixture(scope="module")
def fake():
    up = FakeUpstream(truncate={"big.example"}).start()
    yield up
    up.stop()


def _server_ctx(cert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*cert)
    return ctx


@pytest.fixture(scope="module")
def dot(cert, fake):
    ctx = _server_ctx(cert)
    ls = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def conn(c):
        try:
            with ctx.wrap_socket(c, server_side=True) as s:
                while True:
                    hdr = s.recv(2)
                    if len(hdr) < 2:
                        return
                    n = struct.unpack(">H", hdr)[0]
                    data = b""
                    while len(data) < n:
                        data += s.recv(n - len(data))
                    out = fake.answer(data, "tcp")
                    s.sendall(struct.pack(">H", len(out)) + out)
        except (OSError, ssl.SSLError):
            pass

    def accept():
        while not stop.is_set():
            try:
                c, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=conn, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield ls.getsockname()[1]
    stop.set()
    ls.close()


@pytest.fixture(scope="module")
def doh(cert, fake):
    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _reply(self, body: bytes | None):
            if body is None:
                self.send_response(400)
                self.end_headers()
                return
            out = fake.answer(body, "tcp")
            self.send_response(200)
            self.send_header("Content-Type", "application/dns-message")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def do_POST(self):
            n = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(n)
            ok = self.headers.get("Content-Type") == "application/dns-message" and body[:2] == b"\x00\x00"
            self._reply(body if ok else None)

        def do_GET(self):
            from urllib.parse import parse_qs, urlsplit

            v = parse_qs(urlsplit(self.path).query).get("dns", [""])[0]
            self._reply(base64.urlsafe_b64decode(v + "=" * (-len(v) % 4)) if v else None)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.socket = _server_ctx(cert).wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


def run(coro):
    return asyncio.run(coro)


def test_udp_and_truncation_retry(fake):
    async def go():
        u = UdpUpstream("127.0.0.1", fake.port)
        try:
            a = answer_a(await u.exchange(query("one.example"), 2))
            b = answer_a(await u.exchange(query("big.example"), 2))
            many = await asyncio.gather(*(u.exchange(query(f"n{i}.example"), 2) for i in range(50)))
            return a, b, [answer_a(r) for r in many]
        finally:
            await u.close()

    a, b, many = run(go())
    assert a == [synth_a("one.example")] and b == [synth_a("big.example")]
    assert many == [[synth_a(f"n{i}.example")] for i in range(50)]
    assert fake.count("big.example", "A", "tcp") == 1


def test_tcp_reuses_connection(fake):
    async def go():
        u = TcpUpstream("127.0.0.1", fake.port)
        try:
            r = [answer_a(await u.exchange(query(f"t{i}.example"), 2)) for i in range(3)]
            conn = u._conn
            r += [
                answer_a(x) for x in await asyncio.gather(*(u.exchange(query(f"p{i}.example"), 2) for i in range(10)))
            ]
            return r, conn is u._conn
        finally:
            await u.close()

    r, same = run(go())
    assert r[0] == [synth_a("t0.example")] and len(r) == 13 and same


def test_dot(dot, cert, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", cert[0])
    u = parse_upstream(f"tls://localhost:{dot}#127.0.0.1")
    assert isinstance(u, TcpUpstream) and u.name == f"tls://localhost:{dot}"

    async def go():
        try:
            return [answer_a(await u.exchange(query(f"dot{i}.example"), 3)) for i in range(3)]
        finally:
            await u.close()

    assert run(go()) == [[synth_a(f"dot{i}.example")] for i in range(3)]


def test_dot_rejects_untrusted_certificate(dot):
    u = parse_upstream(f"tls://localhost:{dot}#127.0.0.1")  # system CAs only

    async def go():
        try:
            await u.exchange(query("x.example"), 3)
        finally:
            await u.close()

    with pytest.raises(upmod.UpstreamError) as ei:
        run(go())
    assert ei.value.kind == "tls"


@pytest.mark.parametrize(
    "template", ["https://localhost:{port}/dns-query", "https://localhost:{port}/dns-query{{?dns}}"]
)
def test_doh_post_and_get(doh, cert, monkeypatch, template):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert[0])
    u = parse_upstream(template.format(port=doh))
    assert isinstance(u, HttpsUpstream) and u.get == ("{?dns}" in template)

    async def go():
        return [answer_a(await u.exchange(query(f"doh{i}.example"), 3)) for i in range(3)]

    assert run(go()) == [[synth_a(f"doh{i}.example")] for i in range(3)]


@pytest.mark.parametrize(
    "addr, cls, name",
    [
        ("9.9.9.9", UdpUpstream, "9.9.9.9:53"),
        ("udp://127.0.0.1:5399", UdpUpstream, "127.0.0.1:5399"),
        ("[2620:fe::fe]:53", UdpUpstream, "[2620:fe::fe]:53"),
        ("tcp://10.0.0.1", TcpUpstream, "tcp://10.0.0.1:53"),
        ("tls://dns.quad9.net", TcpUpstream, "tls://dns.quad9.net:853"),
        ("https://dns.quad9.net/dns-query", HttpsUpstream, "https://dns.quad9.net/dns-query"),
    ],
)
def test_parse_upstream(addr, cls, name):
    u = parse_upstream(addr)
    assert isinstance(u, cls) and u.name == name


def test_failover_health_and_backoff(fake):
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))  # never answers
    bad = UdpUpstream("127.0.0.1", dead.getsockname()[1])
    good = UdpUpstream("127.0.0.1", fake.port)
    g = UpstreamGroup([bad, good], "failover", timeout=0.3)

    async def go():
        try:
            r1, n1 = await g.exchange(query("f1.example"))  # bad times out, good answers
            r2, n2 = await g.exchange(query("f2.example"))  # bad is backing off: straight to good
            return n1, n2, bad.fails
        finally:
            await g.close()

    n1, n2, fails = run(go())
    dead.close()
    assert n1 == n2 == good.name
    assert fails == 1 and bad.down_until > 0  # the second query did not wait for it


def test_all_down_fails_fast():
    a = UdpUpstream("127.0.0.1", 9)
    a.failed(1e12)  # backing off far into the future
    g = UpstreamGroup([a], timeout=1)

    async def go():
        await g.exchange(query("x.example"))

    with pytest.raises(AllUpstreamsFailed) as ei:
        run(go())
    assert ei.value.down


@pytest.mark.parametrize("fails, backoff", [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (9, 5.0)])
def test_backoff_table(fails, backoff):
    u = UdpUpstream("127.0.0.1", 9)
    for _ in range(fails):
        u.failed(100.0)
    assert u.down_until == pytest.approx(100.0 + backoff)
    u.ok()
    assert u.healthy(0) and u.fails == 0


def test_dot_upstream_end_to_end(dot, cert, tmp_path):
    """``filterproxy run --upstream tls://localhost:PORT#127.0.0.1`` answers UDP and TCP clients."""
    import dns.query

    from filterproxy.dns.testing import ServerProcess

    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "home.yaml").write_text("name: home\nblock_categories: [adult]\nblock_mode: nxdomain\n")
    (tmp_path / "adult.txt").write_text("adult.test\n")
    cfg = tmp_path / "filterproxy.yaml"
    cfg.write_text(
        f"server: {{state_dir: {tmp_path / 'state'}}}\npolicies_dir: policies\ngroups: [home]\n"
        f"default_group: home\nlists:\n  - {{id: a, category: adult, format: domains, path: adult.txt}}\n"
    )
    srv = ServerProcess(
        [
            "--config",
            str(cfg),
            "--dns-listen",
            "127.0.0.1:0",
            "--proxy-listen",
            "off",
            "--metrics-listen",
            "off",
            "--upstream",
            f"tls://localhost:{dot}#127.0.0.1",
        ],
        log_path=str(tmp_path / "run.log"),
        env={"SSL_CERT_FILE": cert[0]},
    ).start()
    try:
        for tcp in (False, True):
            q = dns.message.make_query(f"dot-e2e-{tcp:d}.example", "A")
            r = (dns.query.tcp if tcp else dns.query.udp)(q, "127.0.0.1", port=srv.port, timeout=5)
            assert [x.to_text() for rrset in r.answer for x in rrset] == [synth_a(f"dot-e2e-{tcp:d}.example")]
        r = dns.query.udp(dns.message.make_query("adult.test", "A"), "127.0.0.1", port=srv.port, timeout=5)
        assert r.rcode() == 3
    finally:
        srv.stop()
    assert "Traceback" not in srv.output()


def _answer_a(data: bytes) -> bytes:
    m = dns.message.from_wire(data)
    resp = dns.message.make_response(m)
    resp.answer.append(dns.rrset.from_text(m.question[0].name, 60, "IN", "A", "192.0.2.1"))
    return resp.to_wire()


def test_thread_reactor_holds_queries_for_one_burst_and_fails_over_within_it():
    """The batched UDP loop's reactor (hold=True): queries wait in ``held`` until send_held() sends them
    together; a send that fails (the kernel already knows the port is closed) fails over to the next
    upstream in that same call; replies reach their callbacks with the caller's ID."""
    up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # plays the upstream
    up.bind(("127.0.0.1", 0))
    up.setblocking(False)
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    good, gone = UdpUpstream("127.0.0.1", up.getsockname()[1]), UdpUpstream("127.0.0.1", closed_port)
    r = upmod.ThreadReactor(None, lambda: None, lambda on: None)
    r.hold = True
    got: dict[str, tuple] = {}

    def sink(tag):
        return lambda value, error: got.setdefault(tag, (value, error))

    def serve_all():
        n = 0
        while True:
            try:
                data, addr = up.recvfrom(4096)
            except BlockingIOError:
                return n
            up.sendto(_answer_a(data), addr)
            n += 1

    def pump(done) -> int:  # what the UDP loop does between batches: poll, then send what that queued
        served = 0
        deadline = time.monotonic() + 5
        while not done() and time.monotonic() < deadline:
            served += serve_all()
            r.poll(time.monotonic())
            r.send_held()
            time.sleep(0.005)
        return served

    try:
        for k in range(3):
            r.attempt(good, query(f"h{k}.example"), 2.0, sink(f"h{k}"))
        assert len(r.held) == 3 and r.pending == 3
        assert serve_all() == 0  # nothing sent yet
        r.send_held()
        assert not r.held
        assert pump(lambda: len(got) == 3) == 3 and r.pending == 0
        for k in range(3):
            value, error = got[f"h{k}"]
            assert error is None and answer_a(value) == ["192.0.2.1"]

        # the closed port: the first datagram draws an ICMP error, which the next send reports at once
        r.attempt(gone, query("warm.example"), 2.0, sink("warm"))
        r.send_held()
        time.sleep(0.1)  # the ICMP error arrives (not read: no poll)
        g = UpstreamGroup([gone, good], "failover", timeout=2.0)
        pair = upmod.PairSink()
        g.exchange_into(query("fo.example"), r, pair)
        assert len(r.held) == 1
        r.send_held()  # refused at once; the failover query to the good upstream goes out in this same call
        assert not r.held and gone.fails == 1
        assert serve_all() == 1
        pump(lambda: pair.done)
        box = []
        pair.add(lambda v, e: box.append((v, e)))
        (reply, name), error = box[0]
        assert error is None and name == good.name and answer_a(reply) == ["192.0.2.1"]
    finally:
        r.close()
        up.close()


# ---------------------------------------------------------------- an error rcode for one name is not a failure


class RefusingUpstream(FakeUpstream):
    """The fake upstream, but ``bad.test`` (and names under it) are answered REFUSED."""

    def answer(self, request: bytes, proto: str) -> bytes | None:
        if b"\x03bad\x04test\x00" in request[12:].lower():
            self.queries[("bad.test", "A", proto)] += 1
            return wire.header_reply(request, wire.REFUSED)
        return super().answer(request, proto)


def _ask(port: int, name: str, src: str, timeout: float = 2.0) -> dns.message.Message:
    import dns.query

    return dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=timeout, source=src)


def test_a_refused_name_does_not_take_the_upstream_down_for_other_clients(tmp_path):
    """A client hammering a name the upstream REFUSEs gets SERVFAIL for it; every other client's misses
    are still answered (the upstream is not marked down by one name's rcode)."""
    from filterproxy.dns.testing import ServerProcess

    up = RefusingUpstream().start()
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "home.yaml").write_text("name: home\nblock_mode: nxdomain\n")
    cfg = tmp_path / "filterproxy.yaml"
    cfg.write_text(
        f"server: {{state_dir: {tmp_path / 'state'}}}\npolicies_dir: policies\ngroups: [home]\n"
        f"default_group: home\nupstreams: {{servers: ['{up.address}'], timeout: 0.5}}\n"
    )
    srv = ServerProcess(
        ["--config", str(cfg), "--dns-listen", "127.0.0.1:0", "--proxy-listen", "off", "--metrics-listen", "off"],
        log_path=str(tmp_path / "run.log"),
    ).start()
    stop = threading.Event()
    hostile: list[int] = []

    def hammer() -> None:  # one hostile client (its own address: the per-client rate limit is not ours to hit)
        while not stop.is_set():
            try:
                hostile.append(_ask(srv.port, "bad.test", "127.0.0.9", timeout=1.0).rcode())
            except Exception:
                hostile.append(-1)

    t = threading.Thread(target=hammer, daemon=True)
    try:
        assert _ask(srv.port, "warm.example", "127.0.0.1").rcode() == 0
        t.start()
        while up.count("bad.test") < 5:
            time.sleep(0.01)
        rcodes = {}
        for i in range(40):  # ~2 s: well inside one error-rate window
            m = _ask(srv.port, f"miss{i}.example", "127.0.0.1")
            rcodes[i] = (m.rcode(), [r.to_text() for rrset in m.answer for r in rrset])
            time.sleep(0.03)
    finally:
        stop.set()
        t.join(5)
        srv.stop()
        up.stop()
    bad = {i: v for i, v in rcodes.items() if v != (0, [synth_a(f"miss{i}.example")])}
    assert not bad, f"{len(bad)} of 40 misses not answered while bad.test was hammered, e.g. {list(bad.items())[:3]}"
    assert up.count("bad.test") >= 40 and hostile.count(2) >= 40  # it did hammer; it got SERVFAIL itself
    assert "Traceback" not in srv.output()


def test_refused_fails_over_for_that_query_only():
    """REFUSED for one name: that query tries the next upstream; the first stays healthy and keeps
    getting the other names."""
    first, second = RefusingUpstream().start(), FakeUpstream().start()
    a, b = UdpUpstream("127.0.0.1", first.port), UdpUpstream("127.0.0.1", second.port)
    g = UpstreamGroup([a, b], "failover", timeout=1.0)

    async def go():
        try:
            out = [await g.exchange(query("bad.test"))]
            out += [await g.exchange(query(f"after{i}.example")) for i in range(5)]
            return out
        finally:
            await g.close()

    try:
        out = run(go())
    finally:
        first.stop()
        second.stop()
    assert out[0][1] == b.name and answer_a(out[0][0]) == [synth_a("bad.test")]  # failed over
    assert [name for _r, name in out[1:]] == [a.name] * 5  # the first was never marked down
    assert a.fails == 0 and a.healthy(time.monotonic())


def _q(name: str) -> bytes:
    return wire.text_to_name(name) + b"\x00\x01\x00\x01"


def test_sustained_error_rate_marks_an_upstream_down():
    """Only > 90% SERVFAIL/REFUSED among >= 20 answers for >= 10 names, over a window of >= 5 s."""
    u = UdpUpstream("127.0.0.1", 9)
    t = 1000.0
    for i in range(200):  # all refused, for many names, but within 4.9 s: not yet
        u.answered(t + i * 0.0245, _q(f"n{i}.example"))
    assert u.healthy(t + 4.9) and u.fails == 0
    u.answered(t + 5.0, _q("late.example"))  # the window is over: 201 of 201 errors
    assert not u.healthy(t + 5.0) and u.fails == 1


@pytest.mark.parametrize("case", ["one-name", "mostly-good", "too-few"])
def test_error_rate_below_the_rule_keeps_an_upstream_up(case):
    u = UdpUpstream("127.0.0.1", 9)
    t = 1000.0
    for i in range(600):  # 12 s of answers, every 20 ms
        if case == "one-name":  # a hostile client asking one refused name, nothing else
            q = _q("bad.test")
        elif case == "mostly-good":  # 80% errors
            q = None if i % 5 == 0 else _q(f"n{i}.example")
        else:  # all errors, but only 15 answers a window
            if i % 40:
                continue
            q = _q(f"n{i}.example")
        u.answered(t + i * 0.02, q)
        assert u.healthy(t + i * 0.02), i
    assert u.fails == 0
