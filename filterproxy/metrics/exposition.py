"""Exposition: serve the registry over HTTP(S) for Prometheus.

``/metrics`` may be protected by Basic auth (argon2id hashes, never plain passwords) and TLS (the
standard ``ssl`` module); ``/healthz`` stays open for load balancers and reveals nothing. A fleet runs a
Prometheus agent on each gateway that scrapes it locally and remote-writes (deploy/ministry.md §5).
"""

from __future__ import annotations

import base64
import gzip
import hmac
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from filterproxy.metrics.registry import REGISTRY
from filterproxy.passwords import VerifiedCache, check_hash, verify_password

log = logging.getLogger("filterproxy.metrics")

DEFAULT_LISTEN = "127.0.0.1:9108"


# --------------------------------------------------------------------------- serving


def parse_listen(listen: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``"HOST:PORT"``, ``"[V6]:PORT"``, ``":PORT"`` or ``"PORT"`` → (host, port); host defaults to loopback."""
    text = listen.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif text.isdigit():
        host, port = "", text
    else:
        raise ValueError(f"invalid listen address {listen!r} (expected HOST:PORT)")
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"invalid port in {listen!r}") from None
    if not 0 <= p < 65536:
        raise ValueError(f"invalid port in {listen!r}")
    return host or default_host, p


class _PasswordCheck:
    """Verify a Basic-auth password against an argon2id hash (:mod:`filterproxy.passwords`).

    Runs in the connection's thread (never on an event loop); a verified header value is remembered so
    a scrape every few seconds pays the ~50 ms hash once. Failures are not remembered.
    """

    def __init__(self, user: str, hashed: str) -> None:
        check_hash(hashed)  # ValueError: unsalted, bcrypt, malformed (with how to make a good one)
        self.user = user
        self.hashed = hashed.strip()
        self._ok = VerifiedCache(limit=64)

    def check_header(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        tag = self._ok.tag(header)
        if tag in self._ok:
            return True
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        ok_user = hmac.compare_digest(user.encode(), self.user.encode())
        ok_pw = verify_password(self.hashed, password)  # always hashed: a wrong user name costs the same time
        if ok_user and ok_pw:
            self._ok.add(tag)
            return True
        return False


_INDEX = b'<html><body><a href="/metrics">metrics</a> <a href="/healthz">healthz</a></body></html>\n'
_HTML = "text/html; charset=utf-8"


class _Handler(BaseHTTPRequestHandler):
    """``/metrics``, ``/healthz`` and an index; the registry and the password check live on the server."""

    server: _Server
    server_version = "filterproxy-metrics"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # no access log: it would hold client IPs
        pass

    def _send(
        self,
        code: int,
        body: bytes,
        ctype: str = "text/plain; charset=utf-8",
        extra: Mapping[str, str] | None = None,
        head: bool = False,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_GET(self, head: bool = False) -> None:
        page = _PAGES.get(self.path.split("?", 1)[0], _Handler._not_found)
        page(self, head)

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def _healthz(self, head: bool) -> None:
        self._send(200, b"ok\n", head=head)

    def _index(self, head: bool) -> None:
        self._send(200, _INDEX, _HTML, head=head)

    def _not_found(self, head: bool) -> None:
        self._send(404, b"not found\n", head=head)

    def _metrics(self, head: bool) -> None:
        check = self.server.check
        if check is not None and not check.check_header(self.headers.get("Authorization")):
            self._send(
                401,
                b"authentication required\n",
                extra={"WWW-Authenticate": 'Basic realm="filterproxy metrics"'},
                head=head,
            )
            return
        encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
        try:
            body = encoder(self.server.registry)
        except Exception:
            log.exception("metrics: collecting failed")
            self._send(500, b"collect failed\n", head=head)
            return
        extra = {}
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=5)
            extra["Content-Encoding"] = "gzip"
        self._send(200, body, ctype, extra, head=head)


_PAGES: dict[str, Callable[[_Handler, bool], None]] = {
    "/healthz": _Handler._healthz,
    "/metrics": _Handler._metrics,
    "/": _Handler._index,
}


class _Server(ThreadingHTTPServer):
    """One thread per connection; the TLS handshake happens in that thread, not in the accept loop."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        check: _PasswordCheck | None,
        ctx: ssl.SSLContext | None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.registry = registry
        self.check = check
        self.ctx = ctx
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(30)
        if self.ctx is not None:
            try:
                request = self.ctx.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)


class MetricsServer:
    """A running ``/metrics`` + ``/healthz`` HTTP(S) server in a daemon thread."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread, tls: bool) -> None:
        self.httpd = httpd
        self.thread = thread
        self.tls = tls

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def url(self) -> str:
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def serve(
    listen: str = DEFAULT_LISTEN,
    *,
    basic_auth: tuple[str, str] | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    registry: CollectorRegistry | None = None,
) -> MetricsServer:
    """Serve ``/metrics`` (Prometheus text or OpenMetrics, gzip when asked) and ``/healthz``.

    ``listen`` is ``"HOST:PORT"``; without a host it binds 127.0.0.1. ``basic_auth`` is
    ``(user, hash)`` with an argon2id hash (``filterproxy passwd``); it protects ``/metrics`` (``/healthz``
    reveals nothing and stays open for load balancers). ``certfile``/``keyfile`` turn on TLS.
    """
    host, port = parse_listen(listen)
    reg = registry if registry is not None else REGISTRY
    check = _PasswordCheck(*basic_auth) if basic_auth else None
    ctx: ssl.SSLContext | None = None
    if certfile:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(certfile, keyfile)
    httpd = _Server((host, port), reg, check, ctx)
    thread = threading.Thread(target=httpd.serve_forever, name="filterproxy-metrics-http", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread, ctx is not None)
