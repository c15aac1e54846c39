"""What every upstream transport shares: the two errors an exchange can end in, and the reply check.

A reply must carry our question (and, checked by each transport, our ID); the question check is here so
UDP, TCP/DoT, DoH and the UDP thread's reactor apply the same rule.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from filterproxy.dns import wire

if TYPE_CHECKING:
    from filterproxy.dns.upstream.health import Upstream

U16 = struct.Struct(">H")

AttemptCallback = Callable[[Any, BaseException | None], None]  # cb(reply, None) or cb(None, error), once


class Reactor(Protocol):
    """Makes upstream attempts on one thread (filterproxy.dns.deferred.LoopReactor, reactor.ThreadReactor)."""

    def attempt(self, u: Upstream, query: bytes, timeout: float, cb: AttemptCallback) -> None: ...


class Sink(Protocol):
    """Takes a group exchange's outcome (group.PairSink, the resolver chain's lookups)."""

    def ok(self, reply: bytes, name: str) -> None: ...

    def failed(self, error: BaseException) -> None: ...


class UpstreamError(Exception):
    """One exchange failed; ``kind`` is a metric label (timeout, network, tls, protocol, http, refused...)."""

    def __init__(self, kind: str, message: str = ""):
        super().__init__(message or kind)
        self.kind = kind


class AllUpstreamsFailed(Exception):
    """No upstream answered: ``down`` when none was even tried (all backing off)."""

    def __init__(self, down: bool, last: str = ""):
        super().__init__(last or ("all upstreams down" if down else "all upstreams failed"))
        self.down = down


def question_matches(query: bytes, reply: bytes) -> bool:
    """True when ``reply`` (at least a header long) carries exactly the one question of ``query``."""
    qd = U16.unpack_from(reply, 4)[0]
    if qd != 1:
        return False
    end = 12
    n = len(query)
    while end < n and query[end]:
        end += 1 + query[end]
    end += 5
    # upstreams echo the question as asked (ours is lower case); 0x20-style case changes take the long way
    return reply[12:end] == query[12:end] or wire.lower(reply[12:end]) == wire.lower(query[12:end])
