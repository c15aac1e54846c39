"""Client admission is written once (filterproxy.dns.admission); the batched UDP loop keeps an inlined copy
of its rate-limit window. Here the same packets from the same sources go through the batched loop, the
plain loop (which calls the admission unit) and the unit itself, on a pinned clock: all three must agree
on every query (answered, refused by the ACL or for an unknown client, rate-limited, dropped)."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import dns.message
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_dns_server import write_setup

from filterproxy.app import load_engine
from filterproxy.dns import mmsg, wire
from filterproxy.dns.admission import admit, limited, over_limit
from filterproxy.dns.chain import build_chain
from filterproxy.dns.server import DnsServer

RATE = 4
HOME, KIDS, OUTSIDE, NO_GROUP = "127.0.0.1", "127.0.0.2", "127.0.0.9", "127.0.0.4"
CHAIN = "chain"  # the model's word for "admitted: the chain answers"


def _query(qid: int, name: str = "adult.test", **kw) -> bytes:
    q = dns.message.make_query(name, "A", **kw)
    q.id = qid
    return q.to_wire()


def _phases() -> list[tuple[float, list[tuple[str, bytes]]]]:
    """(clock, [(source, datagram)]): floods past the limit, refused sources, bad packets, a new second."""
    ids = iter(range(1, 1000))
    one = [(HOME, _query(next(ids))) for _ in range(3 * RATE - 1)]  # answered, REFUSED, dropped
    one += [(KIDS, _query(next(ids))), (KIDS, _query(next(ids), "game.test"))]
    one += [(KIDS, next(ids).to_bytes(2, "big") + b"\x01\x00" + bytes(8))]  # no question: FORMERR
    one += [(KIDS, _query(next(ids), use_edns=1)), (KIDS, b"\x00\x01\x02")]  # BADVERS; too short: dropped
    one += [(OUTSIDE, _query(next(ids))) for _ in range(RATE + 2)]  # ACL, then the rate limit
    one += [(NO_GROUP, _query(next(ids))) for _ in range(2)]
    two = [(HOME, _query(next(ids))) for _ in range(RATE - 1)]  # a new second: answered again, TTLs aged
    three = [(HOME, _query(next(ids))) for _ in range(3)]  # the same second: one more answered, then REFUSED
    return [(1000.25, one), (1001.25, two), (1001.75, three)]


def _config(tmp: Path) -> Path:
    cfg = write_setup(tmp, upstreams=["127.0.0.1:9"], dns_opts={"rate_limit": RATE})
    doc = yaml.safe_load(cfg.read_text())
    del doc["default_group"]  # 127.0.0.4 is allowed but in no group
    doc["clients"].append({"ip": HOME, "group": "home"})
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    return cfg


def _exchange(port: int, clock: list[float], phases) -> dict[tuple[str, bytes], bytes | None]:
    """Send each phase at its clock time; (source, datagram) → the reply, None when dropped."""
    socks = {}
    for src in (HOME, KIDS, OUTSIDE, NO_GROUP):
        s = socks[src] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.settimeout(0.4)
    out: dict[tuple[str, bytes], bytes | None] = {}
    try:
        for now, packets in phases:
            clock[0] = now
            for src, data in packets:
                socks[src].sendto(data, ("127.0.0.1", port))
            replies = {}
            for src, s in socks.items():
                try:
                    while True:
                        r = s.recv(4096)
                        replies[(src, r[:2])] = r
                except TimeoutError:
                    pass
            for src, data in packets:
                out[(src, data)] = replies.get((src, data[:2]))
    finally:
        for s in socks.values():
            s.close()
    return out


def _serve(cfg: Path, batched: bool, monkeypatch: pytest.MonkeyPatch, phases) -> dict:
    monkeypatch.setattr(mmsg, "available", lambda: batched)
    conf, engine = load_engine(str(cfg))
    chain = build_chain(conf, engine)
    srv = DnsServer(chain, "127.0.0.1", 0)
    clock = [phases[0][0]]
    srv.udp.clock = lambda: clock[0]

    async def run() -> dict:
        await srv.start()
        try:
            assert srv.udp.batched is batched
            return await asyncio.get_running_loop().run_in_executor(None, _exchange, srv.port, clock, phases)
        finally:
            await srv.stop()
            await chain.close()

    return asyncio.run(run())


def _model(cfg: Path, phases) -> dict:
    """What the admission unit says of each datagram: the reply it makes, None (dropped) or CHAIN."""
    conf, engine = load_engine(str(cfg))
    clients = build_chain(conf, engine).clients
    out = {}
    for now, packets in phases:
        for src, data in packets:
            st = clients.state(src, now)
            if over_limit(st, int(now)):
                out[(src, data)] = limited(st, data)
            else:
                q, early = admit(data, st)
                out[(src, data)] = CHAIN if q is not None else early
    return out


def test_batched_loop_admits_like_the_admission_unit(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    phases = _phases()
    batched = _serve(cfg, True, monkeypatch, phases)
    plain = _serve(cfg, False, monkeypatch, phases)
    model = _model(cfg, phases)
    assert batched == plain  # byte for byte, drops included
    for key, want in model.items():
        got = batched[key]
        if want is CHAIN:
            assert got is not None and got[3] & 0xF != wire.REFUSED, key
        else:
            assert got == want, key
    # the script covers every outcome
    kinds = {"chain" if w is CHAIN else "drop" if w is None else w[3] & 0xF for w in model.values()}
    assert kinds >= {"chain", "drop", wire.REFUSED, wire.FORMERR}, kinds
    home = [batched[(src, d)] for _, ps in phases for src, d in ps if src == HOME]
    assert [r is not None and r[3] & 0xF != wire.REFUSED for r in home] == (
        [True] * RATE + [False] * (2 * RATE - 1) + [True] * (RATE - 1) + [True, False, False]
    )
    assert [r is None for r in home[RATE : 3 * RATE - 1]] == [False] * RATE + [True] * (RATE - 1)
