"""Protocol gaps of mitmproxy 11 that filterproxy closes itself (installed once per process by the addon).

HTTP/1 trailers: mitmproxy's body reader raises ``NotImplementedError("HTTP trailers ...")`` while it parses
the message, below every addon hook, so no hook can catch it ("mitmproxy has crashed!", the connection is
dropped without an answer). :func:`refuse_trailers` wraps the reader: a request with trailers is answered
``400`` (a response with trailers gets mitmproxy's ``502``) and the connection is closed; nothing of the
message is forwarded past the point the trailers were found.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

log = logging.getLogger("filterproxy.http")

TRAILERS_MESSAGE = "filterproxy: HTTP trailers are not supported"


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
