"""Protocol gaps of mitmproxy 11 that filterproxy closes itself (installed once per process by the addon).

HTTP/1 trailers: mitmproxy's body reader raises ``NotImplementedError("HTTP trailers ...")`` while it parses
the message, below every addon hook, so no hook can catch it ("mitmproxy has crashed!", the connection is
dropped without an answer). :func:`refuse_trailers` wraps the reader: a request with trailers is answered
``400`` (a response with trailers gets mitmproxy's ``502``) and the connection is closed; nothing of the
message is forwarded past the point the trailers were found.

Per-flow body caps: mitmproxy either buffers a whole response body (``flow.response.stream`` off) or streams
it; its only size limit (``stream_large_bodies``) is one global option that also streams request bodies.
:func:`cap_buffered_responses` adds a per-flow limit: a response whose ``flow.metadata[BODY_CAP]`` is set
is buffered up to that many bytes, then what was buffered is sent and the rest streams (as mitmproxy does
for ``stream_large_bodies``), so a chunked image larger than ``http.max_image_bytes`` is never held whole
(docs/decisions/http-body-streaming.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

log = logging.getLogger("filterproxy.http")

TRAILERS_MESSAGE = "filterproxy: HTTP trailers are not supported"
BODY_CAP = "filterproxy_body_cap"  # flow.metadata: buffer at most this many response-body bytes, then stream


def refuse_trailers() -> bool:
    """Install the trailer guard on mitmproxy's HTTP/1 reader (idempotent); False if this mitmproxy differs."""
    from mitmproxy.proxy.layers.http import _http1
    from mitmproxy.proxy.layers.http._base import ReceiveHttp
    from mitmproxy.proxy.layers.http._events import ResponseProtocolError

    cls = _http1.Http1Connection
    original: Callable[..., Generator[Any, Any, None]] = cls.read_body
    if getattr(original, "_filterproxy_trailers", False):
        return True
    if not hasattr(_http1.Http1Server, "ReceiveProtocolError") or not hasattr(cls, "read_body"):
        log.warning("this mitmproxy version reads HTTP/1 bodies differently; trailer guard not installed")
        return False

    def read_body(self, event):  # type: ignore[no-untyped-def]
        try:
            yield from original(self, event)
        except NotImplementedError as exc:
            if "trailers" not in str(exc):
                raise
            yield ReceiveHttp(self.ReceiveProtocolError(self.stream_id, TRAILERS_MESSAGE))
            if isinstance(self, _http1.Http1Server):  # answer the client ourselves, then close
                yield from self.send(ResponseProtocolError(self.stream_id, TRAILERS_MESSAGE, 400))
            else:
                from mitmproxy.proxy import commands

                yield commands.CloseConnection(self.conn)

    read_body._filterproxy_trailers = True  # type: ignore[attr-defined]
    cls.read_body = read_body  # type: ignore[method-assign]
    return True


def cap_buffered_responses() -> bool:
    """Install the per-flow response-body cap (:data:`BODY_CAP`; idempotent); False if this mitmproxy differs."""
    from mitmproxy.proxy.layers.http import HttpStream
    from mitmproxy.proxy.layers.http._events import ResponseData

    original: Callable[..., Generator[Any, Any, bool]] = HttpStream.check_body_size
    if getattr(original, "_filterproxy_cap", False):
        return True
    if not all(hasattr(HttpStream, n) for n in ("start_response_stream", "state_consume_response_body")):
        log.warning("this mitmproxy version buffers bodies differently; chunked images are buffered whole")
        return False

    def check_body_size(self, request: bool):  # type: ignore[no-untyped-def]
        stop = yield from original(self, request)
        resp = self.flow.response
        if stop or request or resp is None or resp.stream:
            return stop
        cap = self.flow.metadata.get(BODY_CAP)
        if cap is not None and len(self.response_body_buf) > cap:
            # over the cap: send what was buffered, stream the rest (the checks see no body: they skip it)
            resp.stream = True
            body = bytes(self.response_body_buf)
            self.response_body_buf.clear()
            yield from self.start_response_stream()
            yield from self.handle_event(ResponseData(self.stream_id, body))
        return stop

    check_body_size._filterproxy_cap = True  # type: ignore[attr-defined]
    HttpStream.check_body_size = check_body_size  # type: ignore[method-assign]
    return True
