"""Who is asking, on the HTTP path: proxy users (``Proxy-Authorization``), listener groups, IP/CIDR/MAC rules.

:class:`Identity` keeps what each client connection established (:class:`Conn`: its proxy user and group,
a host verdict for TLS tunnels) and checks new credentials off the event loop (a slow password hash, one
check per credential however many requests wait for it).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from mitmproxy import connection, http
from mitmproxy.proxy import mode_specs

from filterproxy.clients import Client, mac_for_ip

if TYPE_CHECKING:
    from filterproxy.http.auth import UsersFile
    from filterproxy.http.state import HttpState
    from filterproxy.verdict import Verdict

AUTH_REQUIRED = "407"  # what identify() returns when a proxy login is required


class Conn:
    """What one client connection established: who (proxy user), and a host verdict for TLS tunnels."""

    __slots__ = ("user", "group", "block", "block_host", "kill", "error", "connect_host")

    def __init__(self) -> None:
        self.user: str | None = None
        self.group: str | None = None
        self.block: Verdict | None = None  # CONNECT/SNI host blocked: every request in the tunnel gets the page
        self.block_host: str | None = None
        self.kill = False  # blocked pass-through connection: refuse the upstream connection (closes it)
        self.error = False  # a TLS/CONNECT hook failed: block everything on this connection
        self.connect_host: str | None = None  # the CONNECT target name: every request in the tunnel must name it


def peer_ip(conn: connection.Client) -> str | None:
    """The client's IP address as text (IPv4-mapped IPv6 addresses unmapped)."""
    peer = conn.peername
    if not peer:
        return None
    ip = str(peer[0])
    if ip.startswith("::ffff:") and "." in ip:
        ip = ip[7:]
    return ip


class Identity:
    """Per-connection state and client identification for the hooks."""

    def __init__(self) -> None:
        self.conns: dict[str, Conn] = {}
        self._auth_pending: dict[bytes, asyncio.Future] = {}

    def conn(self, client: connection.Client) -> Conn:
        c = self.conns.get(client.id)
        if c is None:
            c = self.conns[client.id] = Conn()
        return c

    def forget(self, client: connection.Client) -> None:
        self.conns.pop(client.id, None)

    def identify(
        self, flow: http.HTTPFlow, st: HttpState, conn: Conn | None, listener_groups: dict[int, str]
    ) -> tuple[Client, str | None] | str | Awaitable[None]:
        """(client, group); :data:`AUTH_REQUIRED` when a login is required; an awaitable when a new
        credential must be checked first (slow hash in a thread; call again afterwards)."""
        ip = peer_ip(flow.client_conn)
        user = group = None
        explicit = isinstance(flow.client_conn.proxy_mode, mode_specs.RegularMode)
        if st.users is not None and explicit:
            header = flow.request.headers.get("proxy-authorization")
            if header:
                hit = st.users.cached(header)
                if hit is False:
                    return self._verify(st.users, header)
                if hit is None:
                    return AUTH_REQUIRED
                user, group = hit
                rule_group, how = st.engine.clients.group_for(Client(user=user))
                if how == "user":  # a 'clients: - {user: NAME}' rule in the configuration wins
                    group = rule_group
                if conn is None:
                    conn = self.conn(flow.client_conn)
                conn.user, conn.group = user, group
            elif conn is not None and conn.user:
                user, group = conn.user, conn.group
        clients = st.engine.clients
        mac = mac_for_ip(ip) if group is None and clients.uses_mac and ip else None
        client = Client(ip=ip, user=user, mac=mac)
        if group is None and listener_groups:
            group = listener_groups.get(flow.client_conn.proxy_mode.custom_listen_port)  # type: ignore[arg-type]
            if group is not None:
                return client, group
        if group is None:
            group, how = clients.group_for(client)
            if st.users is not None and explicit and how not in ("ip", "cidr", "mac", "user"):
                return AUTH_REQUIRED
        return client, group

    def tls_client(
        self, client_conn: connection.Client, conn: Conn | None, st: HttpState, listener_groups: dict[int, str]
    ) -> tuple[Client, str | None]:
        """(client, group) at a TLS ClientHello: the CONNECT's login if there was one, else the address rules."""
        if conn is not None and conn.group is not None:
            return Client(ip=peer_ip(client_conn), user=conn.user), conn.group
        ip = peer_ip(client_conn)
        mac = mac_for_ip(ip) if ip and st.engine.clients.uses_mac else None
        client = Client(ip=ip, mac=mac)
        group = listener_groups.get(client_conn.proxy_mode.custom_listen_port)  # type: ignore[arg-type]
        if group is None:
            group = st.engine.clients.group_for(client)[0]
        return client, group

    async def _verify(self, users: UsersFile, header: str) -> None:
        tag = hashlib.sha256(header.encode("utf-8", "surrogateescape")).digest()
        pending = self._auth_pending.get(tag)
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = loop.run_in_executor(None, users.authenticate, header)
            self._auth_pending[tag] = pending
            pending.add_done_callback(lambda _f: self._auth_pending.pop(tag, None))
        await asyncio.shield(pending)
