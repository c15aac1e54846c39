"""Upstream addresses (``upstreams.servers``, ``upstreams.conditional``, ``--upstream``) → upstreams::

9.9.9.9            9.9.9.9:53          udp://[2620:fe::fe]:53     plain DNS (UDP, TCP on truncation)
tcp://10.0.0.1:53                                                  TCP only
tls://dns.quad9.net         tls://dns.quad9.net:853#9.9.9.9        DNS-over-TLS (#IP: where to connect)
https://dns.quad9.net/dns-query     https://host/dns-query{?dns}   DNS-over-HTTPS (POST; GET with {?dns})
"""

from __future__ import annotations

import os
import ssl
from urllib.parse import urlsplit

from filterproxy.config import parse_hostport
from filterproxy.dns.upstream.health import Upstream
from filterproxy.dns.upstream.https import HttpsUpstream
from filterproxy.dns.upstream.stream import TcpUpstream
from filterproxy.dns.upstream.udp import UdpUpstream


def tls_context() -> ssl.SSLContext:
    """Verifying client context (system CAs; ``SSL_CERT_FILE`` honoured), TLS 1.2+."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    cafile = os.environ.get("SSL_CERT_FILE")
    if cafile:
        ctx.load_verify_locations(cafile)
    return ctx


def parse_upstream(addr: str) -> Upstream:
    """An upstream address (see the module docstring) → an :class:`Upstream`; ValueError when invalid."""
    a = addr.strip()
    if a.startswith("https://"):
        parts = urlsplit(a.replace("{?dns}", ""))
        if not parts.hostname:
            raise ValueError(f"invalid DoH URL {addr!r}")
        return HttpsUpstream(a)
    scheme = "udp"
    for prefix in ("udp://", "tcp://", "tls://"):
        if a.startswith(prefix):
            scheme, a = prefix[:3], a[len(prefix) :]
            break
    a, _, ip = a.partition("#")
    host, port = parse_hostport(a, f"upstream {addr!r}", 853 if scheme == "tls" else 53)
    if scheme == "tls":
        return TcpUpstream(ip or host, port, tls=tls_context(), server_name=host, name=f"tls://{host}:{port}")
    if scheme == "tcp":
        return TcpUpstream(ip or host, port)
    return UdpUpstream(ip or host, port)
