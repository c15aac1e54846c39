"""Peers of the proxy's end-to-end tests: a recording HTTP backend and the ``mitmdump`` command line.

The backend is a plain-socket HTTP/1.1 server on 127.0.0.1 (no framework between the test and the bytes
it receives): it counts connections and request heads and records every raw ``Host`` line, so a test can
assert that nothing of a refused request ever reached it.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

from conftest import REPO
from test_http_e2e import MITMDUMP, free_port, wait_port

ROUTE = """
# test only: every name goes to the local backend (after filterproxy decided)
PORT = {port}

class Route:
    def server_connect(self, data):
        if data.server.error is None:
            data.server.address = ("127.0.0.1", PORT)

addons = [Route()]
"""


class RecordingBackend:
    """Counts ``connections`` and request heads (``requests``), records raw ``Host`` values (``hosts``),
    and answers every head with ``200`` and ``body`` (then closes)."""

    def __init__(self, body: bytes = b"ok") -> None:
        self.body = body
        self.connections = 0
        self.requests = 0
        self.hosts: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c: socket.socket) -> None:
        with c:
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = c.recv(4096)
                if not chunk:
                    return
                buf += chunk
            head = buf.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            self.requests += 1
            self.hosts += [line.split(b":", 1)[1].strip() for line in head[1:] if line[:5].lower() == b"host:"]
            c.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(self.body) + self.body
            )

    def close(self) -> None:
        self.sock.close()


def mitmdump_cmd(tmp: Path, port: int, config: Path, *extra: str) -> list[str]:
    """``mitmdump`` on 127.0.0.1:``port`` with the filterproxy addon on ``config`` (its CA in ``tmp``), then
    ``extra`` arguments (more ``-s`` scripts, ``--set`` options)."""
    assert MITMDUMP, "mitmdump not installed"
    return [
        MITMDUMP,
        "-q",
        "--listen-host",
        "127.0.0.1",
        "-p",
        str(port),
        "--set",
        f"confdir={tmp / 'conf'}",
        "-s",
        str(REPO / "addons" / "filterproxy_addon.py"),
        *extra,
        "--set",
        f"filterproxy_config={config}",
    ]


def routed_proxy(
    tmp: Path, config: Path, backend_port: int, *scripts: Path, group: str = "pupil"
) -> tuple[int, subprocess.Popen]:
    """A real ``mitmdump`` with the addon on ``config`` whose every allowed connection goes to the local
    backend (``ROUTE``), more addon ``scripts`` after it, and 127.0.0.0/8 in ``group``; returns (port, process)
    once it listens. Stop it with ``test_http_e2e.stop``."""
    (tmp / "route.py").write_text(ROUTE.format(port=backend_port))
    port = free_port()
    extra = [a for s in (tmp / "route.py", *scripts) for a in ("-s", str(s))]
    cmd = mitmdump_cmd(tmp, port, config, *extra, "--set", f"filterproxy_client_group=127.0.0.0/8={group}")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_port(port, p)
    return port, p
