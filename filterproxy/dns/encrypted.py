"""Encrypted DNS for clients: DNS over TLS (RFC 7858) and DNS over HTTPS (RFC 8484) next to UDP/TCP.

Both listeners answer through the DNS service's chain (the same admission, decisions, cache and upstreams
as UDP/TCP; a reload that reconfigures the chain reaches them too) and count their queries with
``protocol="dot"`` / ``"doh"``. DoT is the TCP listener (:mod:`filterproxy.dns.tcp`: 2-byte framing,
pipelined queries, per-client caps, idle timeout) on a TLS context; DoH is :mod:`filterproxy.dns.doh`.
They run in the main ``filterproxy run`` process only (not in ``--dns-workers`` children), on the
certificate of ``server.tls_cert_file`` / ``server.tls_key_file``.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING, Protocol

from filterproxy.config.sections import tls_missing
from filterproxy.dns.tcp import TcpListener
from filterproxy.vocabulary import ConfigError

if TYPE_CHECKING:
    from filterproxy.config.model import ServerConfig
    from filterproxy.dns.service import DnsService

log = logging.getLogger("filterproxy.dns")


class Listener(Protocol):
    """What the service keeps of a started DoT or DoH listener."""

    async def stop(self) -> None: ...


def server_context(server: ServerConfig, alpn: list[str]) -> ssl.SSLContext:
    """The listeners' TLS context on the configured certificate; ConfigError naming the keys when unusable."""
    missing = tls_missing(server)
    if missing:
        raise ConfigError(f"'server.{missing}' is required when DoH or DoT is on (--doh-listen, --dot-listen)")
    assert server.tls_cert_file is not None and server.tls_key_file is not None  # tls_missing checked both
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8310 §9 and RFC 7540 §9.2
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")  # TLS 1.2 suites HTTP/2 accepts (RFC 7540 §9.2.2)
    ctx.set_alpn_protocols(alpn)
    try:
        ctx.load_cert_chain(server.tls_cert_file, server.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"'server.tls_cert_file' {server.tls_cert_file} / 'server.tls_key_file' {server.tls_key_file}: "
            f"cannot load the certificate and key (expected PEM files that match): {exc}"
        ) from None
    return ctx


class DotListener:
    """DNS over TLS: the TCP listener on a TLS context (ALPN ``dot``), with the TCP caps and idle timeout."""

    def __init__(self, service: DnsService) -> None:
        dns = service.cfg.dns
        self.tcp = TcpListener(
            service.chain,
            service.server.tally,
            idle_timeout=dns.tcp_idle_timeout,
            max_connections=dns.tcp_max_connections,
            max_per_client=dns.tcp_max_per_client,
            deadline=service.server.deadline,
            protocol="dot",
        )

    async def start(self, host: str, port: int, tls: ssl.SSLContext) -> int:
        await self.tcp.start(host, port, tls=tls)
        return self.tcp.port

    async def stop(self) -> None:
        self.tcp.close()


def _show(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def start_encrypted(service: DnsService) -> list[Listener]:
    """Start the DoT and DoH listeners that ``server.dot_listen`` / ``server.doh_listen`` turn on."""
    server = service.cfg.server
    out: list[Listener] = []
    if server.dot_listen is not None:
        dot = DotListener(service)
        host, port = server.dot_listen
        port = await dot.start(host, port, server_context(server, ["dot"]))
        out.append(dot)
        log.info("DoT listening on %s:%d (tls)", _show(host), port)
    if server.doh_listen is not None:
        from filterproxy.dns.doh import DohServer  # imports hypercorn: only when DoH is on

        doh = DohServer(service)
        host, port = server.doh_listen
        try:
            port = await doh.start(host, port, server_context(server, ["h2", "http/1.1"]))
        except BaseException:
            for x in out:
                await x.stop()
            raise
        out.append(doh)
        log.info("DoH listening on https://%s:%d/dns-query (h2, http/1.1)", _show(host), port)
    return out
