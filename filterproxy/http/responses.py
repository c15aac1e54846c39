"""What the proxy answers itself: the block page, its own PAC file, 400/403/407 answers, fail-closed errors.

Every answer also records this addon's verdict in ``flow.metadata[KEY]`` (plain values only), which the
response hooks read. **Fail closed on purpose**: mitmproxy logs an exception raised in a hook and lets the
flow continue, so every hook catches its own exceptions and answers with :func:`fail_flow` (the block page
with reason ``error``, or a killed flow), counted in ``filterproxy_http_errors_total{hook}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol

from mitmproxy import http
from mitmproxy.proxy import mode_specs

from filterproxy import metrics
from filterproxy.http import blockpage
from filterproxy.http.pac import PAC_CONTENT_TYPE, PAC_PATHS, render_pac
from filterproxy.state import stats
from filterproxy.verdict import Action, Reason, Verdict

if TYPE_CHECKING:
    from filterproxy.http.state import HttpState

log = logging.getLogger("filterproxy.http")

KEY = "filterproxy"  # flow.metadata[KEY]: this addon's verdict for the flow (plain values only)
AUTH_REALM = "filterproxy"
SELF_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
LOG_EVERY = 60.0  # seconds between repeated exception logs of one hook
NO_STORE = {"Cache-Control": "no-store"}
ANSWERED = ("block", "internal", "auth", "invalid")  # metadata actions of answers the proxy made itself


class ResponseCheck(Protocol):
    """A response inspector (image hashing is the first). Registered with
    :meth:`FilterAddon.add_response_check`.

    Bodies stream by default (the addon sets ``flow.response.stream`` before the checks run). A check that
    needs the body, or may replace the response, asks for it in ``responseheaders``: ``flow.response.stream
    = False`` and a byte cap in ``flow.metadata[protocol.BODY_CAP]`` (past it the body streams: skip it);
    ``response`` returns a BLOCK verdict to replace the response with the block page, or None; it may
    return an awaitable (CPU-heavy work belongs in a thread). ``info`` is ``flow.metadata[KEY]``.
    ``responseheaders`` never replaces the response (mitmproxy 11 would send the upstream body in it); an
    exception there closes the client connection (:meth:`HookErrors.kill_flow`).
    """

    def responseheaders(self, flow: http.HTTPFlow, info: dict) -> None: ...

    def response(self, flow: http.HTTPFlow, info: dict) -> Verdict | None | Awaitable[Verdict | None]: ...


def _mark(flow: http.HTTPFlow, action: str) -> None:
    flow.metadata[KEY] = {
        "group": None,
        "action": action,
        "reason": action,
        "category": None,
        "short_id": action,
        "url": None,
    }


def count(v: Verdict, protocol: str = "http") -> None:
    """A proxy decision into the metrics and the statistics (``protocol``: http, https, or connect for a tunnel)."""
    group = v.group or "unknown"
    metrics.HTTP_REQUESTS.inc(group, v.action.value, v.reason.value)
    if v.action is Action.BLOCK:
        metrics.HTTP_BLOCKED.inc(group, v.category)
    stats.COUNTER.add(group, v.category or "none", v.action.value, protocol)


def respond_block(flow: http.HTTPFlow, v: Verdict, host: str, st: HttpState | None) -> None:
    """The block page for ``v`` in the client's language and its group's tone."""
    tone = "child"  # unknown group: the most protective wording
    policy_name, policy_names, description = None, None, None
    page = blockpage.BlockPageSettings()
    if st is not None:
        page = st.page
        tone = st.tones.get(v.group, "child")
        policy_name, policy_names = st.policy_names.get(v.group, (None, None))
        description = st.descriptions.get(v.group)
    lang = blockpage.pick_language(flow.request.headers.get("accept-language"), page.default_language)
    status, headers, body = blockpage.render(
        v,
        host,
        lang=lang,
        tone=tone,
        settings=page,
        policy_name=policy_name,
        policy_names=policy_names,
        policy_description=description,
    )
    flow.response = http.Response.make(status, body, headers)
    flow.metadata[KEY] = {
        "group": v.group,
        "action": "block",
        "reason": v.reason.value,
        "category": v.category,
        "short_id": v.short_id,
        "url": None,
    }


def bad_request(flow: http.HTTPFlow, problem: str) -> None:
    """400 with a short plain reason; nothing is forwarded."""
    flow.response = http.Response.make(
        400,
        f"filterproxy: bad request: {problem}\n".encode(),
        {"Content-Type": "text/plain; charset=utf-8", **NO_STORE, "Connection": "close"},
    )
    _mark(flow, "invalid")


def challenge(flow: http.HTTPFlow) -> None:
    """407: a proxy login is required."""
    flow.response = http.Response.make(
        407,
        "Cần đăng nhập vào bộ lọc / Proxy login required\n".encode(),
        {
            "Proxy-Authenticate": f'Basic realm="{AUTH_REALM}", charset="UTF-8"',
            "Content-Type": "text/plain; charset=utf-8",
            **NO_STORE,
        },
    )
    _mark(flow, "auth")


def refuse_connect(flow: http.HTTPFlow, short_id: str) -> None:
    """403 to a CONNECT: the tunnel is refused, nothing reaches the server."""
    flow.response = http.Response.make(
        403, f"filterproxy: blocked ({short_id})\n".encode(), {**NO_STORE, "X-Filterproxy-Reason": short_id}
    )


def accept_tunnel(flow: http.HTTPFlow) -> None:
    """200 to a CONNECT without contacting the server: the client then gets the block page if it trusts the
    CA, or fails its TLS handshake at once if it does not (no hang)."""
    flow.response = http.Response(
        flow.request.data.http_version,
        200,
        b"Connection established",
        http.Headers(),
        b"",
        None,
        time.time(),
        time.time(),
    )


def is_self(flow: http.HTTPFlow, proxy_names: frozenset[str]) -> bool:
    """Is the request addressed to this proxy (its listening address, or one of its names)?

    Only the explicit proxy serves itself: in transparent and WireGuard modes mitmproxy reports the
    original destination as the socket address, so every request there would look addressed to us."""
    sock = flow.client_conn.sockname
    if not sock or flow.request.port != sock[1] or not isinstance(flow.client_conn.proxy_mode, mode_specs.RegularMode):
        return False
    host = flow.request.host.lower()
    return host in SELF_NAMES or host == str(sock[0]) or host in proxy_names


def serve_self(flow: http.HTTPFlow) -> None:
    """The proxy's own answers: the PAC file, else a short 404 (never forwarded to itself)."""
    req = flow.request
    path = req.path.split("?", 1)[0]
    if path in PAC_PATHS:
        sock = flow.client_conn.sockname
        fallback = f"{sock[0]}:{sock[1]}" if ":" not in str(sock[0]) else f"[{sock[0]}]:{sock[1]}"
        flow.response = http.Response.make(
            200,
            render_pac(req.headers.get("host"), fallback),
            {"Content-Type": PAC_CONTENT_TYPE, "Cache-Control": "max-age=300"},
        )
    else:
        flow.response = http.Response.make(
            404,
            b"filterproxy: this is a filtering proxy; the proxy configuration file is at /proxy.pac\n",
            {"Content-Type": "text/plain; charset=utf-8", **NO_STORE},
        )
    _mark(flow, "internal")


class HookErrors:
    """Counts exceptions per hook and logs them at most once a minute per hook."""

    def __init__(self) -> None:
        self._last_log: dict[str, float] = {}

    def count(self, hook: str) -> None:
        try:
            metrics.HTTP_ERRORS.inc(hook)
        except Exception:
            pass
        now = time.monotonic()
        if now - self._last_log.get(hook, 0.0) >= LOG_EVERY:
            self._last_log[hook] = now
            log.exception("filterproxy http: exception in %s; failing closed", hook)

    def fail_flow(self, flow: http.HTTPFlow, hook: str, st: HttpState | None) -> None:
        """Fail closed: the block page (reason ``error``), or kill the flow if even that fails."""
        self.count(hook)
        try:
            info = flow.metadata.get(KEY) or {}
            v = Verdict(Action.BLOCK, Reason.ERROR, info.get("group") or "")
            respond_block(flow, v, flow.request.pretty_host, st)
            count(v)
        except Exception:
            log.debug("block page failed; killing the flow", exc_info=True)
            try:
                if flow.killable:
                    flow.kill()
                else:
                    flow.response = http.Response.make(403, b"blocked\n", NO_STORE)
            except Exception:
                pass

    def kill_flow(self, flow: http.HTTPFlow, hook: str) -> None:
        """Fail closed once the response is under way: close the client connection, forward nothing more.

        A block page set in ``responseheaders`` is not sent alone: mitmproxy 11 then reads the upstream body
        into it (or streams it after its headers). On a streamed body the headers and bytes already left."""
        self.count(hook)
        try:
            info = flow.metadata.get(KEY) or {}
            count(Verdict(Action.BLOCK, Reason.ERROR, info.get("group") or ""))
        except Exception:
            pass  # the kill below must happen whatever the counting did
        if flow.killable:
            flow.kill()

    def fail_connect(self, flow: http.HTTPFlow) -> None:
        """A CONNECT whose hook failed: refused (403)."""
        self.count("http_connect")
        flow.response = http.Response.make(403, b"filterproxy: blocked (internal error)\n", NO_STORE)
