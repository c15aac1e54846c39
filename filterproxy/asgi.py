"""One ASGI app served by hypercorn on the running asyncio loop: the DoH listener and the admin server.

hypercorn is imported in :meth:`AsgiListener.start` only, so a process with neither on never loads it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any


class AsgiListener:
    """Binds one address and serves ``app`` in a task until :meth:`stop`; ``name`` is used in the log."""

    def __init__(self, name: str, logger: logging.Logger, *, errorlog: str, backlog: int = 64) -> None:
        self.name = name
        self.log = logger
        self.errorlog = errorlog  # hypercorn's own logger, kept at WARNING (its "Running on" line; ours is logged)
        self.backlog = backlog
        self.sock: socket.socket | None = None  # the listening socket, once started
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(
        self,
        app: Any,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        *,
        alpn: list[str] | None = None,
        idle_timeout: float | None = None,
        nodelay: bool = False,
    ) -> int:
        """Bind, start serving in a task; returns the bound port. ``tls``: the context loaded (and checked) by
        the caller; ``nodelay``: TCP_NODELAY on the accepted connections (they inherit it from the socket)."""
        from hypercorn.asyncio.run import worker_serve
        from hypercorn.config import Config, Sockets
        from hypercorn.utils import wrap_app

        class _Config(Config):
            def create_ssl_context(self) -> ssl.SSLContext:
                assert tls is not None
                return tls

        config = _Config()
        if tls is not None:
            config.certfile = config.keyfile = "-"  # "TLS on" for hypercorn; the context above is what is used
        if alpn is not None:
            config.alpn_protocols = alpn
        if idle_timeout is not None:
            config.keep_alive_timeout = idle_timeout
            config.ssl_handshake_timeout = idle_timeout
        config.graceful_timeout = 1.0
        config.include_server_header = False
        config.accesslog = None  # no per-client log (deploy/privacy.md)
        quiet = logging.getLogger(self.errorlog)
        quiet.setLevel(logging.WARNING)
        config.errorlog = quiet
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, reuse_port=False, backlog=self.backlog)
        sock.set_inheritable(False)
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        bound = int(sock.getsockname()[1])
        secure, insecure = ([sock], []) if tls is not None else ([], [sock])
        self._task = asyncio.get_running_loop().create_task(
            worker_serve(
                wrap_app(app, config.wsgi_max_body_size, "asgi"),
                config,
                sockets=Sockets(secure, insecure, []),
                shutdown_trigger=self._stop.wait,
            )
        )
        self._task.add_done_callback(self._ended)
        return bound

    def _ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None and not self._stop.is_set():
            self.log.error("%s stopped: %r", self.name, task.exception())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5.0)
            except (TimeoutError, asyncio.CancelledError):
                pass
            except Exception:
                self.log.exception("stopping %s failed", self.name)
