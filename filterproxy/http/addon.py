"""The mitmproxy addon: hooks that adapt proxy events to :meth:`Engine.decide`, and nothing else.

Loaded by ``filterproxy run`` (its proxy workers, :mod:`filterproxy.http.server`) and by ``mitmdump -s
addons/filterproxy_addon.py``. Options, loading and hot swap live in :mod:`~filterproxy.http.state`, who is
asking in :mod:`~filterproxy.http.identity`, the proxy's own answers in :mod:`~filterproxy.http.responses`.

* ``http_connect`` (explicit proxy): the client and the CONNECT host. Blocked → the tunnel is accepted
  without contacting the server (block page inside), or refused (403) for a pass-through host.
* ``tls_clienthello`` (every TLS connection): the SNI host; allowed pass-through or ``inspect_https`` off →
  not intercepted; blocked pass-through → closed (``server_connect`` refuses the upstream connection).
* ``requestheaders``: ambiguous ``Host`` → 400; host rules, URL rules and hashes on the full URL,
  SafeSearch rewrites, the block page. ``request`` decides again if the URL changed since.
* ``responseheaders`` / ``response``: response checks (:meth:`FilterAddon.add_response_check`, images);
  every other body streams, never buffered.
* ``client_connected`` … ``client_disconnected``: request-head deadlines (:mod:`~filterproxy.http.header_timeout`).

Every hook fails closed (see :mod:`~filterproxy.http.responses`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from mitmproxy import connection, http, tls
from mitmproxy.proxy import layer, server_hooks

from filterproxy import metrics
from filterproxy.clients import Client
from filterproxy.http import responses, review, safesearch
from filterproxy.http.fullhash import FullHashConfirmer
from filterproxy.http.header_timeout import HeaderDeadlines, close_client
from filterproxy.http.identity import Conn, Identity
from filterproxy.http.responses import KEY, ResponseCheck
from filterproxy.http.state import HttpState, StateKeeper, declare_options, load_state, reload_all
from filterproxy.http.target import fingerprint, host_problem
from filterproxy.http.target import target as _target
from filterproxy.state.seen import SEEN
from filterproxy.verdict import Action, Reason, Verdict

if TYPE_CHECKING:
    from filterproxy.reports import ReportSpool

__all__ = ["FilterAddon", "HttpState", "ResponseCheck", "load_state", "reload_all", "KEY"]


async def _settle(pending: Awaitable) -> None:
    res = await pending
    while res is not None:  # a second credential check is not expected, but stay correct
        res = await res


async def _after(first: Awaitable, then: Callable[[http.HTTPFlow], Any], flow: http.HTTPFlow) -> Any:
    await first
    return then(flow)


def _for_url(confirmed: tuple[str, frozenset[tuple[str, bytes]]] | None, url: str) -> frozenset | None:
    """The full-hash answers kept on a flow, if they were for this URL (``request`` decides again when
    an addon changed the URL: its prefix hits are asked about afresh)."""
    return confirmed[1] if confirmed is not None and confirmed[0] == url else None


class FilterAddon:
    """Child-safety filtering for mitmproxy: decisions by :class:`Engine`, block page, SafeSearch, pass-through."""

    def __init__(self, state: HttpState | None = None) -> None:
        from filterproxy.http.images import ImageCheck

        self.images = ImageCheck(lambda: self.keeper.state)  # the first response check (image hashing)
        self.keeper = StateKeeper(self.images, state)
        self.response_checks: list[ResponseCheck] = [self.images]
        self.identity = Identity()
        self._conns = self.identity.conns
        self.errors = responses.HookErrors()
        self.heads = HeaderDeadlines(lambda: self.keeper.header_timeout, close_client, self.errors)
        self.fullhash = FullHashConfirmer()
        self.reviews = review.ReviewDesk()  # the block page's "blocked by mistake" form

    @property
    def state(self) -> HttpState | None:
        """The current (hot-swapped) state; hooks read it once per event."""
        return self.keeper.state

    @state.setter
    def state(self, st: HttpState | None) -> None:
        self.keeper.state = st

    @property
    def last_reload_error(self) -> str | None:
        return self.keeper.last_reload_error

    @property
    def spool(self) -> ReportSpool | None:
        return self.keeper.spool

    # ------------------------------------------------------------ lifecycle
    def load(self, loader: Any) -> None:
        from filterproxy.http.protocol import cap_buffered_responses, refuse_trailers

        refuse_trailers()  # a request with HTTP trailers gets 400, not a mitmproxy crash
        cap_buffered_responses()  # a check's body cap holds for chunked bodies too (flow.metadata[BODY_CAP])
        declare_options(loader)

    def configure(self, updated: set[str]) -> None:
        self.keeper.configure(updated)

    def running(self) -> None:
        self.keeper.running()

    def done(self) -> None:
        self.keeper.done()
        self.images.close()
        self.fullhash.close()
        self.reviews.close()

    def reload(self) -> Future:
        """Rebuild the state in a thread and swap it in (a ``Future`` of True/False); see :class:`StateKeeper`."""
        return self.keeper.reload()

    def add_response_check(self, check: ResponseCheck) -> None:
        """Register a response inspector (the image-hashing hook point)."""
        self.response_checks.append(check)

    def _identify(
        self, flow: http.HTTPFlow, st: HttpState, conn: Conn | None
    ) -> tuple[Client, str | None] | str | Awaitable[None]:
        return self.identity.identify(flow, st, conn, self.keeper.listener_groups)

    def _loaded(self) -> HttpState:
        st = self.keeper.state
        if st is None:
            raise RuntimeError("filterproxy: no configuration loaded")
        return st

    # ------------------------------------------------------------ HTTP requests
    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable | None:
        self.heads.head(flow, "requestheaders")
        try:
            res = self._on_request(flow)
        except Exception:
            self.errors.fail_flow(flow, "requestheaders", self.keeper.state)
            return None
        return None if res is None else self._guard(res, flow, "requestheaders")

    def request(self, flow: http.HTTPFlow) -> Awaitable | None:
        try:
            if flow.response is not None:
                return None
            if review.MARK in flow.metadata:  # the review form's body is read now: store it, answer
                return self._guard(self.reviews.submit(flow, self._loaded()), flow, "request")
            seen = flow.__dict__.get("_filterproxy_seen")
            if seen is not None and seen == fingerprint(flow.request):
                return None
            res = self._on_request(flow)  # not decided yet, or the URL changed since
        except Exception:
            self.errors.fail_flow(flow, "request", self.keeper.state)
            return None
        return None if res is None else self._guard(res, flow, "request")

    async def _guard(self, pending: Awaitable, flow: http.HTTPFlow, hook: str) -> None:
        try:
            await _settle(pending)
        except Exception:
            self.errors.fail_flow(flow, hook, self.keeper.state)

    def _on_request(self, flow: http.HTTPFlow) -> Awaitable | None:
        st = self._loaded()
        req = flow.request
        if responses.is_self(flow, self.keeper.proxy_names) and not review.is_review(req):
            responses.serve_self(flow)
            return None
        conn = self._conns.get(flow.client_conn.id)
        who = self._identify(flow, st, conn)
        if not isinstance(who, tuple):
            if isinstance(who, str):  # AUTH_REQUIRED, the one string identify() returns
                responses.challenge(flow)
                return None
            return _after(who, self._on_request, flow)
        client, group = who
        SEEN.note_client(st.engine.live, client)  # a named device: last seen now (one dict store)
        if group is not None and review.is_review(req):  # the block page's form, on any host: never forwarded
            self.reviews.start(flow, st, group)
            return None
        host, url, has_auth = _target(req)
        if has_auth:
            del req.headers["proxy-authorization"]  # never forward proxy credentials upstream
        tunnel_host = conn.connect_host if conn is not None else None
        if conn is not None and (conn.block is not None or conn.error):
            v = conn.block if conn.block is not None else Verdict(Action.BLOCK, Reason.ERROR, group or "")
            host = conn.block_host or host
        elif (problem := host_problem(req, flow.client_conn, tunnel_host)) is not None:
            responses.bad_request(flow, problem)
            return None
        elif group is None:
            v = Verdict(Action.BLOCK, Reason.UNKNOWN_CLIENT, "")
        else:
            confirmed = flow.__dict__.get("_filterproxy_fullhash")
            v = st.engine.decide(client, host, url, group=group, confirmed=_for_url(confirmed, url))
            if v.pending:  # URL-hash prefix hits: confirm them off the loop, then decide again (docs/fullhash.md)
                return _after(self._confirm(flow, url, v), self._on_request, flow)
            dest = req.host
            if v.action is not Action.BLOCK and dest != host and dest.lower() != host.lower():
                # the address actually connected to: IP lists apply, not block_ip_literals (the client named `host`)
                v2 = st.engine.decide(client, dest, None, group=group, ip_literals=False)
                if v2.action is Action.BLOCK:
                    v, host = v2, dest
        if v.action is Action.BLOCK:
            responses.respond_block(flow, v, host.lower(), st)
        else:
            if v.action is Action.REWRITE and (
                eng := safesearch.rewrite(req, host, st.levels.get(v.group or "", ("strict", "strict")))
            ):
                metrics.HTTP_SAFESEARCH_REWRITES.inc(v.group or "unknown", eng)
                url = _target(req)[1]
            flow.metadata[KEY] = {
                "group": v.group,
                "action": v.action.value,
                "reason": v.reason.value,
                "category": v.category,
                "short_id": v.short_id,
                "url": url,
            }
            flow._filterproxy_seen = fingerprint(req)  # type: ignore[attr-defined]  # for the request() guard
        responses.count(v, req.scheme)  # http, or https inside a tunnel
        self.keeper.log_decision(flow.client_conn, v, host.lower(), req.method)
        return None

    async def _confirm(self, flow: http.HTTPFlow, url: str, v: Verdict) -> None:
        """Ask the lists' endpoints about ``v.pending``; the answer is kept on the flow for this URL only."""
        flow._filterproxy_fullhash = (url, await self.fullhash.confirm(v.pending))  # type: ignore[attr-defined]

    # ------------------------------------------------------------ CONNECT and TLS
    def http_connect(self, flow: http.HTTPFlow) -> Awaitable | None:
        self.heads.head(flow, "http_connect")
        try:
            res = self._on_connect(flow)
        except Exception:
            self.errors.fail_connect(flow)
            return None
        return None if res is None else self._guard_connect(res, flow)

    async def _guard_connect(self, pending: Awaitable, flow: http.HTTPFlow) -> None:
        try:
            await _settle(pending)
        except Exception:
            self.errors.fail_connect(flow)

    def _on_connect(self, flow: http.HTTPFlow) -> Awaitable | None:
        st = self._loaded()
        conn = self.identity.conn(flow.client_conn)
        who = self._identify(flow, st, conn)
        if not isinstance(who, tuple):
            if isinstance(who, str):  # AUTH_REQUIRED, the one string identify() returns
                responses.challenge(flow)
                return None
            return _after(who, self._on_connect, flow)
        client, group = who
        SEEN.note_client(st.engine.live, client)  # a tunnel (maybe never intercepted): last seen now
        if "proxy-authorization" in flow.request.headers:
            del flow.request.headers["proxy-authorization"]
        conn.group = group
        host = flow.request.host.lower()
        conn.connect_host = host.rstrip(".")
        if group is None:
            v = Verdict(Action.BLOCK, Reason.UNKNOWN_CLIENT, "")
        else:
            v = st.engine.decide(client, host, None, group=group)
        responses.count(v, "connect")
        self.keeper.log_decision(flow.client_conn, v, host, "CONNECT")
        if v.action is not Action.BLOCK:
            return None
        if st.is_passthrough(host, group):
            responses.refuse_connect(flow, v.short_id)  # a pass-through host cannot show a page
            return None
        conn.block, conn.block_host = v, host
        responses.accept_tunnel(flow)
        return None

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        try:
            self._on_clienthello(data)
        except Exception:
            self.errors.count("tls_clienthello")
            data.ignore_connection = False  # intercept: every request on it gets the (error) block page
            data.establish_server_tls_first = False
            try:
                self.identity.conn(data.context.client).error = True
            except Exception:
                pass
        self.heads.tls_clienthello(data)

    def _on_clienthello(self, data: tls.ClientHelloData) -> None:
        st = self._loaded()
        client_conn = data.context.client
        conn = self._conns.get(client_conn.id)
        if conn is not None and (conn.block is not None or conn.error):
            data.establish_server_tls_first = False  # the CONNECT host is blocked: no upstream contact
            return
        addr = data.context.server.address
        host = (data.client_hello.sni or (str(addr[0]) if addr else "")).lower()
        if not host:
            return  # no name at all: intercept, and decide per request
        client, group = self.identity.tls_client(client_conn, conn, st, self.keeper.listener_groups)
        if group is None:
            v = Verdict(Action.BLOCK, Reason.UNKNOWN_CLIENT, "")
        else:
            v = st.engine.decide(client, host, None, group=group)
        if v.action is Action.BLOCK:
            conn = conn or self.identity.conn(client_conn)
            conn.block, conn.block_host = v, host
            data.establish_server_tls_first = False
            if st.is_passthrough(host, group):
                # Do not intercept a pinned client; close it: server_connect refuses the upstream connection.
                data.ignore_connection = True
                conn.kill = True
                responses.count(v, "connect")
                self.keeper.log_decision(client_conn, v, host, "TLS")  # the SNI of a closed pass-through
            return
        inspect = self.keeper.inspect_https
        if v.action is Action.REWRITE and inspect:
            return  # SafeSearch needs the requests: always intercept search engines
        if not inspect or st.is_passthrough(host, group):
            data.ignore_connection = True

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        try:
            conn = self._conns.get(data.client.id)
            if conn is not None and (conn.kill or conn.block is not None or conn.error):
                data.server.error = "blocked by filterproxy"
        except Exception:
            self.errors.count("server_connect")
            data.server.error = "blocked by filterproxy (internal error)"

    def client_disconnected(self, client: connection.Client) -> None:
        self.identity.forget(client)
        self.heads.forget(client)

    # ------------------------------------------------------------ request-head deadlines (slow clients)
    def client_connected(self, client: connection.Client) -> None:
        self.heads.connected(client)

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        self.heads.next_layer(nextlayer)

    def http_connected(self, flow: http.HTTPFlow) -> None:
        self.heads.done(flow, "http_connected")

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        self.heads.done(flow, "http_connect_error")

    def error(self, flow: http.HTTPFlow) -> None:
        self.heads.done(flow, "error")

    # ------------------------------------------------------------ responses (hook point)
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        try:
            resp = flow.response
            if resp is None:
                return
            for k, _v in resp.data.headers.fields:  # (one pass over raw fields: cheaper than `in headers`)
                if len(k) == 7 and k.lower() == b"alt-svc":
                    del resp.headers["alt-svc"]  # keep browsers on TCP through the proxy (HTTP/3 would bypass it)
                    break
            resp.stream = True  # every body streams, unless a check asks for it (the image check, under its cap)
            if self.response_checks:
                info = flow.metadata.get(KEY) or {}
                for check in self.response_checks:
                    check.responseheaders(flow, info)
        except Exception:
            # fail closed: a block page set here would carry the upstream body (mitmproxy reads it into the
            # new response, or streams it after its headers): close the connection, forward no body byte
            self.errors.kill_flow(flow, "responseheaders")

    def response(self, flow: http.HTTPFlow) -> Awaitable | None:
        """Hook point for response checks (image hashing): a BLOCK verdict replaces the response."""
        self.heads.done(flow, "response")
        if not self.response_checks:
            return None
        try:
            info = flow.metadata.get(KEY) or {}
            if info.get("action") in responses.ANSWERED:
                return None
            pending = []
            for check in self.response_checks:
                r = check.response(flow, info)
                if isinstance(r, Verdict):
                    if r.action is Action.BLOCK:
                        self._block_response(flow, r)
                        return None
                elif r is not None:
                    pending.append(r)
        except Exception:
            self._fail_response(flow)
            return None
        return self._await_checks(pending, flow) if pending else None

    async def _await_checks(self, pending: list, flow: http.HTTPFlow) -> None:
        try:
            for r in pending:
                v = await r
                if isinstance(v, Verdict) and v.action is Action.BLOCK:
                    self._block_response(flow, v)
                    return
        except Exception:
            self._fail_response(flow)

    def _fail_response(self, flow: http.HTTPFlow) -> None:
        """Fail closed in ``response``: a buffered body is replaced by the block page; a streamed one already
        left with its headers, so the connection is closed before the end of the message (a truncated body)."""
        resp = flow.response
        if resp is not None and resp.stream:
            self.errors.kill_flow(flow, "response")
        else:
            self.errors.fail_flow(flow, "response", self.keeper.state)

    def _block_response(self, flow: http.HTTPFlow, v: Verdict) -> None:
        responses.respond_block(flow, v, flow.request.pretty_host.lower(), self.keeper.state)
        metrics.HTTP_BLOCKED.inc(v.group or "unknown", v.category)
