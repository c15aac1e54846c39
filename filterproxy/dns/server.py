"""The DNS listeners of one address: a UDP and a TCP socket on the same port, sharing one chain.

UDP serving is :mod:`filterproxy.dns.udp` (its own thread), TCP serving :mod:`filterproxy.dns.tcp` (the
asyncio loop); both admit queries with :mod:`filterproxy.dns.admission` and answer with
:mod:`filterproxy.dns.answering`. The DNS side of ``filterproxy run`` (chain, listeners, housekeeping) is
:class:`filterproxy.dns.service.DnsService`, which builds on this one.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

from filterproxy.dns.answering import Tally, pack
from filterproxy.dns.tcp import TcpListener
from filterproxy.dns.udp import UdpListener, udp_socket

if TYPE_CHECKING:
    from filterproxy.dns.chain import Chain

__all__ = ["DnsServer", "Tally", "pack"]


class DnsServer:
    """The UDP and TCP listeners of one address, sharing one chain."""

    def __init__(
        self,
        chain: Chain,
        host: str,
        port: int,
        *,
        tcp_idle_timeout: float = 10.0,
        tcp_max_connections: int = 256,
        tcp_max_per_client: int = 16,
        reuse_port: bool = False,
        deadline: float = 8.0,
    ) -> None:
        self.chain = chain
        self.host, self.port = host, port
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.reuse_port = reuse_port
        self.deadline = deadline
        self.tally = Tally()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.udp = UdpListener(chain, self.tally)
        self.tcp = TcpListener(
            chain,
            self.tally,
            idle_timeout=tcp_idle_timeout,
            max_connections=tcp_max_connections,
            max_per_client=tcp_max_per_client,
            deadline=deadline,
        )

    def _bind_any_port(self) -> tuple[socket.socket, socket.socket]:
        """A UDP and a TCP socket bound to the same free port (the kernel picks the UDP one; retried
        while its TCP twin is taken)."""
        for _ in range(50):
            u = udp_socket(self.family, self.reuse_port)
            u.bind((self.host, 0))
            t = socket.socket(self.family, socket.SOCK_STREAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:  # DNS workers join this address
                t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                t.bind((self.host, u.getsockname()[1]))
                return u, t
            except OSError:
                u.close()
                t.close()
        raise OSError(f"no port free for both UDP and TCP on {self.host}")

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        tcp_sock = None
        if self.port == 0:  # any free port (tests): one whose TCP twin is free too
            s, tcp_sock = self._bind_any_port()
        else:
            s = udp_socket(self.family, self.reuse_port)
            s.bind((self.host, self.port))
        self.port = s.getsockname()[1]
        await self.tcp.start(self.host, self.port, sock=tcp_sock, reuse_port=self.reuse_port)
        self.udp.start(self.loop, s)

    async def stop(self) -> None:
        self.tcp.close()
        await self.udp.stop()
        self.tally.flush()
