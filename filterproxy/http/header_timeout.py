"""A deadline for a client's request head, so slow clients cannot hold the proxy's connections.

mitmproxy closes a connection only after ten minutes *without a byte*; a client that sends one byte a
second ("slowloris") is never idle and holds its connection, and its worker's memory, forever. This
module gives each client connection ``http.header_timeout`` seconds to send a complete request head:

* from the moment it connects, until the first request's headers (or its CONNECT) have arrived;
* again on an HTTP/1 keep-alive connection once every exchange on it is finished, until the next head;
* again after a CONNECT was answered, until the tunnel's first request head (TLS handshake included).

A connection past its deadline is closed and counted (``filterproxy_http_slow_clients_total``).
Connections whose bytes are relayed rather than parsed as request heads are left to mitmproxy's idle
timer and to the far end's own timeouts: tunnels that were not intercepted, raw TCP/UDP/DNS layers,
upgraded connections (WebSocket, 101) and HTTP/2 and HTTP/3 connections once their first head arrived.
Why, and what was not kept: docs/decisions/http-header-timeout.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from mitmproxy import connection, http, tls
from mitmproxy.proxy import layer, layers

from filterproxy import metrics
from filterproxy.http.responses import HookErrors

log = logging.getLogger("filterproxy.http")

LOG_EVERY = 60.0  # seconds between log lines about closed connections (an attack closes thousands)
_RELAY_LAYERS = (layers.TCPLayer, layers.UDPLayer, layers.DNSLayer)  # bytes relayed, not request heads


def close_client(conn_id: str) -> bool:
    """Close client connection ``conn_id`` through mitmproxy's proxy server; False if it is not live.

    The same as a layer's ``CloseConnection(client)``: the connection's reader task is cancelled, which
    closes the socket (pending writes are flushed first) and runs ``client_disconnected``.
    """
    from mitmproxy import ctx

    server = ctx.master.addons.get("proxyserver")
    handler = server.connections.get(conn_id) if server is not None else None
    if handler is None:
        return False
    io = handler.transports.get(handler.client)
    if io is None or io.handler is None:
        return False
    handler.close_connection(handler.client)
    return True


class HeaderDeadlines:
    """Per-connection deadlines for request heads, keyed by mitmproxy's client connection id.

    ``timeout()`` gives the current ``http.header_timeout`` (read at every arm, so a reload applies to
    new waits; 0 turns the deadline off). ``close(conn_id)`` must close the connection and say whether it
    did. Timers are plain ``loop.call_later`` handles, one per connection waiting for a head. Each hook
    method fails closed (CONTRIBUTING.md rule 3): an error is counted and the connection is closed.
    """

    def __init__(
        self, timeout: Callable[[], float], close: Callable[[str], bool], errors: HookErrors | None = None
    ) -> None:
        self.timeout = timeout
        self._close = close
        self._errors = errors or HookErrors()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._in_flight: dict[str, set[str]] = {}  # connection → ids of its flows whose head arrived
        self._relayed: set[str] = set()  # connections left to mitmproxy's idle timer
        self._last_log = 0.0
        self.closed = 0  # connections this instance closed (tests; the metric counts across workers)

    def __len__(self) -> int:
        """Connections waiting for a request head."""
        return len(self._timers)

    # ------------------------------------------------------------ hooks
    def connected(self, client: connection.Client) -> None:
        """``client_connected``: a TCP connection has ``timeout()`` seconds for its first head."""
        try:
            if client.transport_protocol == "tcp":
                self._arm(client.id)
        except Exception:
            self._failed("client_connected", client.id)

    def head(self, flow: http.HTTPFlow, hook: str) -> None:
        """``requestheaders`` / ``http_connect``: a head arrived; the exchange is in flight until it is done."""
        cid = flow.client_conn.id
        try:
            self._disarm(cid)
            if flow.request.is_http2 or flow.request.is_http3:
                self._relayed.add(cid)  # multiplexed: frames of many streams interleave, left to mitmproxy
            elif not flow.is_replay:
                self._in_flight.setdefault(cid, set()).add(flow.id)
        except Exception:
            self._failed(hook, cid)

    def done(self, flow: http.HTTPFlow, hook: str) -> None:
        """``response`` / ``error`` / ``http_connected`` / ``http_connect_error``: an exchange finished.

        With nothing else in flight the connection waits for a head again: the next request on an HTTP/1
        keep-alive connection, or the first one inside a tunnel just opened. An upgraded connection
        (WebSocket, other 101) carries no more heads.
        """
        cid = flow.client_conn.id
        try:
            if flow.is_replay:
                return
            resp = flow.response
            if flow.websocket is not None or (resp is not None and resp.status_code == 101):
                self.relay(cid)
                return
            busy = self._in_flight.get(cid)
            if busy:
                busy.discard(flow.id)
            if not busy:
                self._arm(cid)
        except Exception:
            self._failed(hook, cid)

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """``next_layer`` (after mitmproxy's own choice): raw TCP/UDP/DNS relays carry no request heads."""
        cid = nextlayer.context.client.id
        try:
            if isinstance(nextlayer.layer, _RELAY_LAYERS):
                self.relay(cid)
        except Exception:
            self._failed("next_layer", cid)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """``tls_clienthello`` (after the filter's decision): a TLS connection not intercepted is relayed."""
        cid = data.context.client.id
        try:
            if data.ignore_connection:
                self.relay(cid)
        except Exception:
            self._failed("tls_clienthello", cid)

    def forget(self, client: connection.Client) -> None:
        """``client_disconnected``: the connection is gone."""
        self._disarm(client.id)
        self._in_flight.pop(client.id, None)
        self._relayed.discard(client.id)

    # ------------------------------------------------------------ deadlines
    def relay(self, conn_id: str) -> None:
        """The connection's bytes are relayed from now on: no more head deadlines for it."""
        self._disarm(conn_id)
        self._relayed.add(conn_id)

    def _arm(self, conn_id: str) -> None:
        """Start (or restart) the wait for a request head on ``conn_id``."""
        timeout = self.timeout()
        if timeout <= 0 or conn_id in self._relayed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a hook called directly, in a test): nothing can be timed
            return
        self._disarm(conn_id)
        self._timers[conn_id] = loop.call_later(timeout, self._expire, conn_id)

    def _disarm(self, conn_id: str) -> None:
        handle = self._timers.pop(conn_id, None)
        if handle is not None:
            handle.cancel()

    def _expire(self, conn_id: str) -> None:
        self._timers.pop(conn_id, None)
        if not self._close(conn_id):
            return
        self.closed += 1
        metrics.HTTP_SLOW_CLIENTS.inc()
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            log.info(  # routine for idle keep-alive connections: at most one line a minute
                "filterproxy http: closed a connection that sent no complete request head in %g s "
                "(%d so far by this worker; filterproxy_http_slow_clients_total counts them all)",
                self.timeout(),
                self.closed,
            )

    def _failed(self, hook: str, conn_id: str) -> None:
        # Fail closed (CONTRIBUTING.md rule 3): a connection whose deadline cannot be kept is closed, not
        # left unbounded; the error is counted in filterproxy_http_errors_total{hook}.
        self._errors.count(hook)
        try:
            self._disarm(conn_id)
            self._close(conn_id)
        except Exception:
            log.debug("could not close connection after a deadline error", exc_info=True)
