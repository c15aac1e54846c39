"""Upstream resolvers: plain UDP (retried over TCP when truncated), TCP, DNS-over-TLS, DNS-over-HTTPS.

Every query to an upstream is our own (random ID, lower-case name, EDNS 1232, no client cookie or
subnet): nothing of the client leaks. A reply must come from the address asked, carry our ID and our
question.

Modules: ``spec`` (addresses → upstreams), ``health`` (back-off, judging an attempt), ``group`` (the
``failover`` and ``parallel`` strategies), ``udp``, ``stream`` (TCP, DoT), ``https`` (DoH) — the
transports on the asyncio loop — and ``reactor`` (the UDP thread's own upstream sockets). The names
callers use are re-exported here.
"""

from filterproxy.dns.upstream.base import AllUpstreamsFailed, UpstreamError
from filterproxy.dns.upstream.group import PairSink, UpstreamGroup
from filterproxy.dns.upstream.health import BACKOFF_MAX, BACKOFF_START, Upstream
from filterproxy.dns.upstream.https import HttpsUpstream
from filterproxy.dns.upstream.reactor import ThreadReactor
from filterproxy.dns.upstream.spec import parse_upstream, tls_context
from filterproxy.dns.upstream.stream import TcpUpstream
from filterproxy.dns.upstream.udp import UdpUpstream

__all__ = [
    "BACKOFF_MAX",
    "BACKOFF_START",
    "AllUpstreamsFailed",
    "HttpsUpstream",
    "PairSink",
    "TcpUpstream",
    "ThreadReactor",
    "UdpUpstream",
    "Upstream",
    "UpstreamError",
    "UpstreamGroup",
    "parse_upstream",
    "tls_context",
]
