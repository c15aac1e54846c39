"""DNS over TCP and over TLS (DoT, RFC 7858): one reused connection per upstream, queries pipelined."""

from __future__ import annotations

import asyncio
import secrets
import ssl
import time

from filterproxy.dns.upstream.base import U16, UpstreamError, question_matches
from filterproxy.dns.upstream.health import Upstream


class _StreamConn:
    """One TCP/TLS connection carrying pipelined queries (RFC 7766 §6.2.1.1), replies matched by ID."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future] = {}
        self.closed = False
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        err: Exception = UpstreamError("network", "connection closed")
        try:
            while True:
                hdr = await self.reader.readexactly(2)
                data = await self.reader.readexactly(U16.unpack(hdr)[0])
                if len(data) < 12:
                    raise UpstreamError("protocol", "short reply")
                fut = self.pending.pop(U16.unpack_from(data)[0], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            err = UpstreamError("network", f"connection lost: {exc}")
        except UpstreamError as exc:
            err = exc
        except asyncio.CancelledError:
            pass
        finally:
            self.closed = True
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(err)
            self.pending.clear()
            try:
                self.writer.close()
            except Exception:
                pass


class TcpUpstream(Upstream):
    """DNS over TCP, or over TLS (DoT, RFC 7858) when ``tls`` is given; one reused connection."""

    proto = "tcp"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
        name: str | None = None,
    ):
        super().__init__(name or f"{'tls' if tls else 'tcp'}://{host}:{port}")
        self.host, self.port = host, port
        self.tls = tls
        self.server_name = server_name
        self.proto = "tls" if tls else "tcp"
        self._conn: _StreamConn | None = None
        self._lock: asyncio.Lock | None = None

    async def _connection(self, timeout: float) -> _StreamConn:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            c = self._conn
            if c is not None and not c.closed:
                return c
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        self.host, self.port, ssl=self.tls, server_hostname=self.server_name if self.tls else None
                    ),
                    timeout,
                )
            except TimeoutError:
                raise UpstreamError("timeout", "connect timed out") from None
            except ssl.SSLError as exc:
                raise UpstreamError("tls", str(exc)) from None
            except ConnectionRefusedError as exc:
                raise UpstreamError("refused", str(exc)) from None
            except OSError as exc:
                raise UpstreamError("network", str(exc)) from None
            self._conn = _StreamConn(reader, writer)
            return self._conn

    async def exchange(self, query: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        for attempt in (0, 1):
            reused = self._conn is not None and not self._conn.closed
            c = await self._connection(max(0.05, deadline - time.monotonic()))
            qid = secrets.randbits(16)
            while qid in c.pending:
                qid = secrets.randbits(16)
            q = U16.pack(qid) + query[2:]
            fut = asyncio.get_running_loop().create_future()
            c.pending[qid] = fut
            try:
                c.writer.write(U16.pack(len(q)) + q)
                reply = await asyncio.wait_for(fut, max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                c.pending.pop(qid, None)
                raise UpstreamError("timeout", f"no reply within {timeout:.1f}s") from None
            except (UpstreamError, OSError) as exc:
                c.pending.pop(qid, None)
                if attempt == 0 and reused:  # the server closed an idle connection: once more, fresh
                    continue
                if isinstance(exc, UpstreamError):
                    raise
                raise UpstreamError("network", str(exc)) from None
            if not question_matches(q, reply):
                raise UpstreamError("protocol", "reply to another question")
            return query[:2] + reply[2:]
        raise UpstreamError("network", "connection lost")

    async def close(self) -> None:
        c = self._conn
        if c is not None:
            c.task.cancel()
            try:
                c.writer.close()
            except Exception:
                pass
        self._conn = None
