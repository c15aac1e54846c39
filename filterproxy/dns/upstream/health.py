"""Upstream health: which upstreams a query may try, and how an attempt's outcome changes that.

An upstream that times out or errs is skipped for a back-off that doubles from 0.5 s up to 5 s; one good
reply ends it. :func:`judge` turns an attempt's outcome into that bookkeeping (and the upstream metrics)
for both strategies of :class:`~filterproxy.dns.upstream.group.UpstreamGroup`.
"""

from __future__ import annotations

import logging
import time

from filterproxy import metrics
from filterproxy.dns import wire
from filterproxy.dns.upstream.base import UpstreamError

log = logging.getLogger("filterproxy.dns")

BACKOFF_START = 0.5
BACKOFF_MAX = 5.0


class Upstream:
    """One upstream server with its health state; transports implement :meth:`exchange`."""

    proto = "udp"

    def __init__(self, name: str):
        self.name = name
        self.fails = 0
        self.down_until = 0.0

    def healthy(self, now: float) -> bool:
        return self.down_until <= now

    def ok(self) -> None:
        if self.fails:
            log.info("upstream %s is answering again", self.name)
        self.fails = 0
        self.down_until = 0.0

    def failed(self, now: float) -> None:
        self.fails += 1
        backoff = min(BACKOFF_MAX, BACKOFF_START * (2 ** (self.fails - 1)))
        if self.fails == 1 or self.fails % 20 == 0:
            log.warning("upstream %s failed (%d in a row); skipping it for %.1fs", self.name, self.fails, backoff)
        self.down_until = now + backoff

    async def exchange(self, query: bytes, timeout: float) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    async def close(self) -> None:
        pass


def judge(u: Upstream, t0: float, reply: bytes | None, exc: BaseException | None) -> UpstreamError | None:
    """An attempt's outcome: metrics and health updated; None when ``reply`` is good, else the error."""
    now = time.monotonic()
    metrics.DNS_UPSTREAM_DURATION.observe(now - t0, u.name)
    if exc is None and (len(reply) < 12 or reply[3] & 0xF == wire.REFUSED):
        exc = UpstreamError("refused", "upstream answered REFUSED")  # misconfigured or limiting us
    if exc is None:
        if u.fails:
            u.ok()
        return None
    kind = exc.kind if isinstance(exc, UpstreamError) else "protocol"
    metrics.DNS_UPSTREAM_ERRORS.inc(u.name, kind)
    u.failed(now)
    return exc if isinstance(exc, UpstreamError) else UpstreamError(kind, repr(exc))
