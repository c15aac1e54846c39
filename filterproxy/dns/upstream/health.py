"""Upstream health: which upstreams a query may try, and how an attempt's outcome changes that.

Only transport failures count against an upstream: a timeout, a connection or TLS error, a malformed or
mismatched reply. Each one skips the upstream for a back-off that doubles from 0.5 s up to 5 s; a good
answer ends it. An error rcode (SERVFAIL, REFUSED) is about one name: REFUSED makes that query try the
next upstream, SERVFAIL goes to the client, and neither marks the upstream down for anyone else — else one
client asking a refused name would cut the whole network off its resolver. Only a sustained error rate
does: more than 90% error rcodes among at least 20 answers, for at least 10 different questions, over a
window of at least 5 s (docs/decisions/upstream-error-rcodes.md). :func:`judge` applies this for both
strategies of :class:`~filterproxy.dns.upstream.group.UpstreamGroup`.
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
RATE_WINDOW = 5.0  # seconds: the error-rate rule looks at windows at least this long
RATE_MIN_ANSWERS = 20  # answers a window needs before its error rate can count
RATE_MIN_QUESTIONS = 10  # different questions among its errors (one refused name is not an upstream fault)
RATE_ERROR_SHARE = 0.9  # more than this share of SERVFAIL/REFUSED answers marks the upstream down


class Upstream:
    """One upstream server with its health state; transports implement :meth:`exchange`."""

    proto = "udp"

    def __init__(self, name: str):
        self.name = name
        self.fails = 0
        self.down_until = 0.0
        # the current error-rate window: its start, its answers, its error answers and (up to
        # RATE_MIN_QUESTIONS of) their questions
        self.win_start = 0.0
        self.win_answers = 0
        self.win_errors = 0
        self.win_questions: set[bytes] = set()

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

    def answered(self, now: float, error_question: bytes | None) -> None:
        """Count one answer for the error-rate rule: ``error_question`` is the question of a SERVFAIL or
        REFUSED answer, None for any other rcode. An error that ends a window in which the rule holds marks
        the upstream down (:meth:`failed`)."""
        if now - self.win_start >= RATE_WINDOW:
            if error_question is not None and self.error_rate_sustained():
                log.warning(
                    "upstream %s answered SERVFAIL/REFUSED to %d of its last %d queries in %.0fs",
                    self.name,
                    self.win_errors,
                    self.win_answers,
                    now - self.win_start,
                )
                self.failed(now)
            self.win_start, self.win_answers, self.win_errors = now, 0, 0
            self.win_questions.clear()
        self.win_answers += 1
        if error_question is not None:
            self.win_errors += 1
            if len(self.win_questions) < RATE_MIN_QUESTIONS:
                self.win_questions.add(error_question)

    def error_rate_sustained(self) -> bool:
        """The current window's answers were (nearly) all errors, for enough answers and questions."""
        n = self.win_answers
        return (
            n >= RATE_MIN_ANSWERS
            and self.win_errors > RATE_ERROR_SHARE * n
            and len(self.win_questions) >= RATE_MIN_QUESTIONS
        )

    async def exchange(self, query: bytes, timeout: float) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    async def close(self) -> None:
        pass


def question_of(reply: bytes) -> bytes:
    """The question section of a reply (its first name, type and class), as bytes; b"" when unreadable."""
    end, n = 12, len(reply)
    while end < n and reply[end] and not reply[end] & 0xC0:
        end += 1 + reply[end]
    return reply[12 : end + 5] if end < n and not reply[end] else b""


def judge(u: Upstream, t0: float, reply: bytes | None, exc: BaseException | None) -> UpstreamError | None:
    """An attempt's outcome: metrics and health updated; None when ``reply`` goes to the client, else the
    error (the query then tries the next upstream)."""
    now = time.monotonic()
    metrics.DNS_UPSTREAM_DURATION.observe(now - t0, u.name)
    if exc is None:
        assert reply is not None  # an attempt ends in cb(reply, None) or cb(None, error)
        if len(reply) < 12:
            exc = UpstreamError("protocol", "reply shorter than a header")
        else:
            rcode = reply[3] & 0xF
            if rcode != wire.SERVFAIL and rcode != wire.REFUSED:
                if u.fails:
                    u.ok()
                u.answered(now, None)
                return None
            u.answered(now, question_of(reply))  # for this name only: the upstream stays up
            if rcode == wire.SERVFAIL:
                return None
            metrics.DNS_UPSTREAM_ERRORS.inc(u.name, "refused")
            return UpstreamError("refused", "upstream answered REFUSED")
    kind = exc.kind if isinstance(exc, UpstreamError) else "protocol"
    metrics.DNS_UPSTREAM_ERRORS.inc(u.name, kind)
    u.failed(now)
    return exc if isinstance(exc, UpstreamError) else UpstreamError(kind, repr(exc))
