"""Upstream groups: the ``failover`` and ``parallel`` strategies over a list of upstreams.

The strategies are written once, on callbacks, so the UDP thread and the asyncio loop share them; a
reactor (``attempt(upstream, query, timeout, cb)``) provides the attempts, a sink (``ok(reply, name)``,
``failed(error)``; see :class:`PairSink`) takes the outcome, and :func:`~.health.judge` keeps the health.
"""

from __future__ import annotations

import asyncio
import time

from filterproxy.dns.deferred import Deferred, LoopReactor, to_future
from filterproxy.dns.upstream.base import (
    AllUpstreamsFailed,
    AttemptCallback,
    Reactor,
    Sink,
)
from filterproxy.dns.upstream.health import Upstream, judge


class PairSink(Deferred):
    """The plain sink of :meth:`UpstreamGroup.exchange_into`: a Deferred of (reply bytes, upstream name).
    (The resolver chain's lookups are sinks too: they turn the reply into a cacheable one directly.)"""

    __slots__ = ()

    def ok(self, reply: bytes, name: str) -> None:
        self._finish((reply, name), None)

    def failed(self, error: BaseException) -> None:
        self._finish(None, error)


class _Failover:
    """One exchange under ``failover``: the healthy upstreams in order until one answers."""

    __slots__ = ("group", "cands", "i", "query", "reactor", "sink", "u", "t0", "last")

    def __init__(self, group: UpstreamGroup, cands: list[Upstream], query: bytes, reactor: Reactor, sink: Sink):
        self.group, self.cands, self.query, self.reactor, self.sink = group, cands, query, reactor, sink
        self.i = 0
        self.u: Upstream | None = None
        self.t0 = 0.0
        self.last = ""

    def next(self) -> None:
        cands, i = self.cands, self.i
        now = time.monotonic()
        while 0 < i < len(cands) and not cands[i].healthy(now):  # marked down meanwhile: skip
            i += 1
        self.i = i
        if i >= len(cands):
            self.sink.failed(AllUpstreamsFailed(False, self.last))
            return
        self.u = u = cands[i]
        self.t0 = now
        self.group.attempt(u, self.query, self.reactor, self.on_reply)

    def on_reply(self, reply: bytes | None, exc: BaseException | None) -> None:
        u = self.u
        assert u is not None  # next() set it before the attempt
        exc = judge(u, self.t0, reply, exc)
        if exc is None:
            assert reply is not None  # judge() passes only replies
            self.sink.ok(reply, u.name)
            return
        self.last = f"{u.name}: {exc}"
        self.i += 1
        self.next()


class UpstreamGroup:
    """Upstreams with a strategy (``failover`` | ``parallel``), a per-attempt timeout and health tracking:
    ``failover`` asks the healthy upstreams in order, ``parallel`` the two best at once (first good reply
    wins, then the others in order); when every upstream is backing off, queries fail at once."""

    def __init__(self, upstreams: list[Upstream], strategy: str = "failover", timeout: float = 2.0):
        if not upstreams:
            raise ValueError("an upstream group needs at least one upstream")
        self.upstreams = upstreams
        self.strategy = strategy
        self.timeout = timeout

    def describe(self) -> str:
        return f"{self.strategy} over {', '.join(u.name for u in self.upstreams)} (timeout {self.timeout:g}s)"

    def all_down(self, now: float) -> bool:
        for u in self.upstreams:
            if u.healthy(now):
                return False
        return True

    def attempt(self, u: Upstream, query: bytes, reactor: Reactor, cb: AttemptCallback) -> None:
        """One attempt through the reactor; a reactor that cannot even start it reports the error to ``cb``."""
        try:
            reactor.attempt(u, query, self.timeout, cb)
        except Exception as exc:
            cb(None, exc)

    judge = staticmethod(judge)  # an attempt's outcome → health and metrics (see health.judge)

    def exchange_into(self, query: bytes, reactor: Reactor, sink: Sink) -> None:
        """Ask the group; the first good reply goes to ``sink.ok(reply, upstream name)``, else
        ``sink.failed(AllUpstreamsFailed)`` (``down`` when every upstream is backing off)."""
        now = time.monotonic()
        cands = [u for u in self.upstreams if u.healthy(now)]
        if not cands:
            sink.failed(AllUpstreamsFailed(True))
        elif self.strategy == "parallel" and len(cands) > 1:
            self._parallel(cands[:2], cands[2:], query, reactor, sink)
        else:
            _Failover(self, cands, query, reactor, sink).next()

    def exchange_d(self, query: bytes, reactor: Reactor) -> Deferred:
        """:meth:`exchange_into` as a Deferred of (reply, upstream name)."""
        d = PairSink()
        self.exchange_into(query, reactor, d)
        return d

    def _parallel(
        self, first: list[Upstream], rest: list[Upstream], query: bytes, reactor: Reactor, sink: Sink
    ) -> None:
        left = [len(first)]
        done = [False]

        def cb_for(u: Upstream) -> AttemptCallback:
            t0 = time.monotonic()

            def cb(value: bytes | None, error: BaseException | None) -> None:
                error = judge(u, t0, value, error)
                if done[0]:
                    return
                if error is None:
                    assert value is not None  # judge() passes only replies
                    done[0] = True
                    sink.ok(value, u.name)
                    return
                left[0] -= 1
                if left[0] == 0:  # both failed: the others in order
                    done[0] = True
                    if rest:
                        _Failover(self, rest, query, reactor, sink).next()
                    else:
                        sink.failed(AllUpstreamsFailed(False, f"{u.name}: {error}"))

            return cb

        for u in first:
            self.attempt(u, query, reactor, cb_for(u))

    async def exchange(self, query: bytes) -> tuple[bytes, str]:
        """Async form (tests, tools): run on the current loop."""
        loop = asyncio.get_running_loop()
        return await to_future(self.exchange_d(query, LoopReactor(loop)), loop)

    async def close(self) -> None:
        for u in self.upstreams:
            await u.close()
