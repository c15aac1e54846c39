"""Client admission, shared by the UDP and TCP listeners: may this query go on to the chain?

The per-address facts (ACL result against ``dns.allowed_networks``, the client's group, its rate-limit
window) live in one :class:`~filterproxy.dns.clients.ClientState`, built by the client table. This module
is the one place that judges a query with them: the one-second rate-limit window (:func:`over_limit`),
what a rate-limited query gets (:func:`limited`) and the checks before the chain (:func:`admit`).

The batched UDP loop keeps an inlined copy of :func:`over_limit` (a call per datagram shows there);
tests/test_dns_admission.py feeds the same packets through it and through this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from filterproxy import metrics
from filterproxy.dns import wire
from filterproxy.dns.wire import REFUSED, WireError

if TYPE_CHECKING:
    from filterproxy.dns.clients import ClientState


def over_limit(st: ClientState, sec: int) -> bool:
    """Count one query in the client's window of second ``sec``; True when it is past ``st.limit``."""
    if st.sec != sec:
        st.sec = sec
        st.count = 1
        return False
    st.count += 1
    return st.count > st.limit


def limited(st: ClientState, data: bytes, *, always_answer: bool = False) -> bytes | None:
    """Count a query past the rate limit; the REFUSED reply to send, or None to drop it.

    UDP answers the next ``limit`` queries of the second and drops the rest (a flood, maybe from a
    spoofed source, must not cost a reply each); TCP (``always_answer``: no spoofing) answers them all.
    """
    metrics.DNS_RATELIMITED.inc(st.group or "unknown")
    if always_answer or st.count <= 2 * st.limit:
        metrics.DNS_REFUSED.inc("ratelimit")
        return wire.header_reply(data, REFUSED)
    return None


def admit(data: bytes, st: ClientState) -> tuple[wire.Query | None, bytes | None]:
    """Parse and admit a query: (query, None) to go on, or (None, the reply to send or None to drop)."""
    try:
        q = wire.parse_query(data)
    except WireError as exc:
        metrics.DNS_MALFORMED.inc()
        return None, (wire.header_reply(data, exc.rcode) if exc.rcode is not None else None)
    if not st.allowed:  # no open resolver
        metrics.DNS_REFUSED.inc("acl")
        return None, wire.header_reply(data, REFUSED)
    if st.group is None:
        metrics.DNS_REFUSED.inc("unknown-client")
        return None, wire.header_reply(data, REFUSED)
    if q.edns and q.edns_version != 0:  # RFC 6891 §6.1.3
        return None, wire.pack_reply(q, wire.BADVERS)[0]
    return q, None
