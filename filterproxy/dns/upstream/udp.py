"""Plain DNS over UDP to one upstream, on the asyncio loop; a truncated reply is asked again over TCP.

(The UDP thread asks UDP upstreams through its own sockets: filterproxy.dns.upstream.reactor.)
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import Callable

from filterproxy import metrics
from filterproxy.dns.upstream.base import U16, UpstreamError, question_matches
from filterproxy.dns.upstream.health import Upstream
from filterproxy.dns.upstream.stream import TcpUpstream


class _UdpSocket:
    """A connected UDP socket with the queries in flight on it (ID → future)."""

    __slots__ = ("sock", "pending", "uses", "loop")

    def __init__(
        self, family: int, addr: tuple, loop: asyncio.AbstractEventLoop, on_readable: Callable[[_UdpSocket], None]
    ):
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect(addr)
        self.pending: dict[int, tuple[bytes, asyncio.Future]] = {}
        self.uses = 0
        self.loop = loop
        loop.add_reader(self.sock.fileno(), on_readable, self)

    def close(self) -> None:
        try:
            self.loop.remove_reader(self.sock.fileno())
        except Exception:
            pass
        self.sock.close()
        for _q, fut in self.pending.values():
            if not fut.done():
                fut.set_exception(UpstreamError("network", "socket closed"))
        self.pending.clear()


class UdpUpstream(Upstream):
    """Plain DNS over UDP; a truncated reply is asked again over TCP.

    A few connected sockets are shared by the queries in flight (matched by ID and question); each is
    replaced after 2,000 queries so the source port keeps changing (spoofing resistance).
    """

    POOL = 4
    REUSE = 2000

    def __init__(self, host: str, port: int, name: str | None = None):
        super().__init__(name or (f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"))
        self.addr = (host, port)
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socks: list[_UdpSocket] = []
        self._next = 0
        self.tcp = TcpUpstream(host, port, name=self.name)

    def _socket(self) -> _UdpSocket:
        loop = asyncio.get_running_loop()
        if len(self._socks) < self.POOL:
            s = _UdpSocket(self.family, self.addr, loop, self._readable)
            self._socks.append(s)
            return s
        self._next = (self._next + 1) % self.POOL
        s = self._socks[self._next]
        if s.uses >= self.REUSE and not s.pending:
            s.close()
            s = self._socks[self._next] = _UdpSocket(self.family, self.addr, loop, self._readable)
        return s

    def _readable(self, s: _UdpSocket) -> None:
        for _ in range(64):
            try:
                data = s.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP port unreachable → ECONNREFUSED on a connected socket
                for _q, fut in list(s.pending.values()):
                    if not fut.done():
                        fut.set_exception(
                            UpstreamError("refused" if isinstance(exc, ConnectionRefusedError) else "network", str(exc))
                        )
                s.pending.clear()
                return
            if len(data) < 12:
                continue
            item = s.pending.get(U16.unpack_from(data)[0])
            if item is None:
                continue
            query, fut = item
            if not data[2] & 0x80 or not question_matches(query, data):
                continue  # not our reply: keep waiting for the real one
            s.pending.pop(U16.unpack_from(data)[0], None)
            if not fut.done():
                fut.set_result(data)

    async def exchange(self, query: bytes, timeout: float) -> bytes:
        s = self._socket()
        qid = secrets.randbits(16)
        while qid in s.pending:
            qid = secrets.randbits(16)
        q = U16.pack(qid) + query[2:]
        fut = asyncio.get_running_loop().create_future()
        s.pending[qid] = (q, fut)
        s.uses += 1
        try:
            s.sock.send(q)
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise UpstreamError("timeout", f"no reply within {timeout:.1f}s") from None
        except ConnectionRefusedError as exc:
            raise UpstreamError("refused", str(exc)) from None
        except OSError as exc:
            raise UpstreamError("network", str(exc)) from None
        finally:
            if s.pending.get(qid, (None, None))[1] is fut:
                s.pending.pop(qid, None)
        if reply[2] & 0x02:  # TC: the full answer needs TCP (RFC 7766)
            metrics.DNS_UPSTREAM_ERRORS.inc(self.name, "truncated")
            return query[:2] + (await self.tcp.exchange(query, timeout))[2:]
        return query[:2] + reply[2:]

    async def close(self) -> None:
        for s in self._socks:
            s.close()
        self._socks.clear()
        await self.tcp.close()
