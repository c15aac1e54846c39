"""DNS over HTTPS for clients (RFC 8484): ``/dns-query`` and ``/dns-query/<id>``, over HTTP/2 and HTTP/1.1.

A plain ASGI app (:class:`DohApp`) served by hypercorn on the configured certificate; this module (and so
hypercorn) is imported only when DoH is on. A request's DNS message goes through the UDP/TCP admission and
the DNS service's chain, and is counted with ``protocol="doh"``. The ``<id>`` picks the client's group by
the ``clients: [{doh: ID, group: G}]`` rules (precedence: DoH id > MAC > IP > CIDR > default; an id with
no rule falls through to the address); the address must still be in ``dns.allowed_networks`` and is
rate-limited like any other, so an id is a label, not a key.

A bad request never reaches the chain: 400 (no or bad ``dns`` parameter, a message that does not parse),
404 (another path, a malformed id), 405 (not GET/POST), 413 (a body over 65535 bytes), 415 (a POST that
is not ``application/dns-message``). DNS-level refusals (ACL, rate limit) are DNS answers in a 200.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from filterproxy import metrics
from filterproxy.asgi import AsgiListener
from filterproxy.clients import Client
from filterproxy.dns import wire
from filterproxy.dns.admission import admit, limited, over_limit
from filterproxy.dns.answering import failed_reply, handle, pack
from filterproxy.dns.clients import ClientState
from filterproxy.dns.deferred import LoopReactor, to_future
from filterproxy.dns.responses import Reply, servfail
from filterproxy.state.seen import SEEN
from filterproxy.vocabulary import DOH_ID_RE

if TYPE_CHECKING:
    from filterproxy.dns.service import DnsService

log = logging.getLogger("filterproxy.dns")

MAX_MESSAGE = 65535  # a DNS message over TCP, DoT or DoH (RFC 8484 §6)
# An oversized body is read (and dropped) up to here before the 413: hypercorn 0.17 drops the whole HTTP/2
# connection when DATA arrives for a stream it already answered. Past this the connection goes anyway.
DRAIN_LIMIT = 1 << 20
CONTENT_TYPE = b"application/dns-message"
_PATH = re.compile(r"/dns-query(?:/([^/]*))?/?")
_HEADERS = [(b"content-type", CONTENT_TYPE), (b"cache-control", b"no-store")]  # answers depend on the group

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class HttpError(Exception):
    """A request answered with an HTTP error before it reaches the chain."""

    def __init__(self, status: int, why: str, *, read: bool = False) -> None:
        super().__init__(why)
        self.status = status
        self.read = read  # the request body was read (or given up on) before the error


def _get_message(query_string: bytes) -> bytes:
    """The ``dns`` parameter of a GET: base64url, padding optional (RFC 8484 §4.1)."""
    values = [
        v for k, v in urllib.parse.parse_qsl(query_string.decode("latin-1"), keep_blank_values=True) if k == "dns"
    ]
    if len(values) != 1 or not values[0]:
        raise HttpError(400, "expected one 'dns' parameter")
    v = values[0]
    if len(v) > (MAX_MESSAGE * 4 + 2) // 3:
        raise HttpError(413, "message too large")
    try:
        return base64.b64decode(v + "=" * (-len(v) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(400, "'dns' is not base64url") from None


async def _drain(receive: Receive) -> None:
    """Read and drop what is left of a request body, up to DRAIN_LIMIT (see there)."""
    size = 0
    while size <= DRAIN_LIMIT:
        msg = await receive()
        size += len(msg.get("body", b""))
        if msg["type"] != "http.request" or not msg.get("more_body", False):
            return


async def _post_message(scope: Scope, receive: Receive) -> bytes:
    """The body of a POST, ``application/dns-message``, at most MAX_MESSAGE bytes."""
    ctype = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
    if ctype.split(b";", 1)[0].strip().lower() != CONTENT_TYPE:
        raise HttpError(415, "expected content-type application/dns-message")
    body = bytearray()
    size = 0
    while True:
        msg = await receive()
        if msg["type"] != "http.request":  # the client went away
            raise HttpError(400, "request body not received", read=True)
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size <= MAX_MESSAGE:
            body += chunk
        elif size > DRAIN_LIMIT or not msg.get("more_body", False):
            raise HttpError(413, "message too large", read=True)
        if not msg.get("more_body", False):
            return bytes(body)


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class DohApp:
    """The ASGI app: an HTTP request → a DNS message → the chain → ``application/dns-message``."""

    def __init__(self, service: DnsService) -> None:
        self.service = service
        self.loop: asyncio.AbstractEventLoop | None = None
        self.reactor: LoopReactor | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            data, doh_id = await self._message(scope, receive)
        except HttpError as exc:
            metrics.DNS_MALFORMED.inc()
            if not exc.read and scope["method"] not in ("GET", "HEAD"):  # GET: the body is empty
                await _drain(receive)
            extra = [(b"allow", b"GET, POST")] if exc.status == 405 else []
            await _respond(send, exc.status, [(b"content-type", b"text/plain"), *extra], f"{exc}\n".encode())
            return
        out = await self.answer(data, (scope.get("client") or ("", 0))[0], doh_id)
        if out is None:  # did not parse, no header to answer with (counted by admission): dropped over UDP/TCP
            await _respond(send, 400, [(b"content-type", b"text/plain")], b"not a DNS query\n")
        else:
            await _respond(send, 200, _HEADERS, out)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                self.loop = asyncio.get_running_loop()
                self.reactor = LoopReactor(self.loop)
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _message(self, scope: Scope, receive: Receive) -> tuple[bytes, str | None]:
        m = _PATH.fullmatch(scope["path"])
        if m is None:
            raise HttpError(404, "not found (DNS queries go to /dns-query)")
        doh_id = m.group(1) or None
        if doh_id is not None and not DOH_ID_RE.match(doh_id):
            raise HttpError(404, "not found (invalid client id)")
        if scope["method"] == "GET":
            data = _get_message(scope["query_string"])
        elif scope["method"] == "POST":
            data = await _post_message(scope, receive)
        else:
            raise HttpError(405, "expected GET or POST")
        if len(data) < 12:
            raise HttpError(400, "not a DNS query", read=True)
        return data, doh_id

    def _state(self, ip: str, doh_id: str | None, now: float) -> tuple[ClientState, ClientState]:
        """(the address's state: ACL and rate limit; the state to answer with: its group by the id)."""
        table = self.service.chain.clients
        base = table.state(ip, now)
        if doh_id is None or not base.allowed:
            return base, base
        group, how = table.engine.clients.group_for(Client(doh=doh_id))
        if how != "doh":  # no rule for this id: the address decides
            return base, base
        SEEN.note_client(table.engine.live, Client(doh=doh_id))  # a named device by its DoH id: last seen now
        st = ClientState(base.ip, True, group, "doh", table.caches.for_group(group), base.limit, base.expires)
        return base, st

    async def answer(self, data: bytes, ip: str, doh_id: str | None) -> bytes | None:
        """The reply to one DNS message from ``ip`` (None: not a query); SERVFAIL on any failure (rule 3)."""
        now = time.monotonic()
        try:
            base, st = self._state(ip, doh_id, now)
            if over_limit(base, int(now)):
                return limited(base, data, always_answer=True)
            q, early = admit(data, st)
            if q is None:
                return early
            r = handle(self.service.chain, q, st, "doh", self.reactor, now)
            if type(r) is not Reply:
                r = await self._wait(q, r)
            msg, _ = pack(q, r, time.monotonic(), MAX_MESSAGE)
            assert st.group is not None  # admission.admit refuses clients without a group
            tally = self.service.server.tally
            tally.count(st.group, q.qtype, r, "doh")
            tally.record(q, r, st, now)  # the query log, when it is on
            return msg
        except Exception:  # fail closed: SERVFAIL, never an unchecked answer
            metrics.DNS_ERRORS.inc("exception")
            log.exception("dns: error handling a doh query; answered SERVFAIL")
            return wire.header_reply(data, wire.SERVFAIL)

    async def _wait(self, q: wire.Query, d: Any) -> Reply:
        assert self.loop is not None  # set at lifespan start-up, before any request
        try:
            return await asyncio.wait_for(to_future(d, self.loop), self.service.server.deadline)
        except TimeoutError:
            metrics.DNS_ERRORS.inc("timeout")
            return servfail(time.monotonic(), (wire.EDE_NETWORK_ERROR, "timeout"))
        except Exception as exc:
            return failed_reply(q, exc, time.monotonic())


class DohServer:
    """hypercorn serving :class:`DohApp` on one address, on the asyncio loop of ``filterproxy run``."""

    def __init__(self, service: DnsService) -> None:
        self.app = DohApp(service)
        self.idle_timeout = service.cfg.dns.tcp_idle_timeout
        self.listener = AsgiListener("dns: the DoH listener", log, errorlog="filterproxy.dns.doh", backlog=256)

    async def start(self, host: str, port: int, tls: ssl.SSLContext) -> int:
        """Bind, start serving in a task; returns the bound port."""
        app: Any = self.app  # a plain ASGI callable on dicts; hypercorn types its scopes as TypedDicts
        alpn = ["h2", "http/1.1"]
        return await self.listener.start(app, host, port, tls, alpn=alpn, idle_timeout=self.idle_timeout)

    async def stop(self) -> None:
        await self.listener.stop()
