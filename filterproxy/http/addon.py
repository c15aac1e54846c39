"""The mitmproxy addon: an adapter from proxy events to :meth:`Engine.decide` (STYLE rule 1).

Loaded by ``filterproxy run`` (its proxy workers, :mod:`filterproxy.http.server`) and by
``mitmdump -s addons/filterproxy_addon.py --set filterproxy_config=FILE``. Options are declared with
types in :meth:`FilterAddon.load`; :meth:`FilterAddon.configure` loads and checks the configuration, the
lists and the users file (a bad value → ``OptionsError``); hooks only look things up.

Where each decision happens:

=================== =====================================================================================
``http_connect``    explicit proxy, HTTPS: who is asking (IP/CIDR or ``Proxy-Authorization`` → 407) and
                    the CONNECT host. Blocked → the tunnel is accepted *without* contacting the server, so
                    a client that trusts the CA sees the block page, one that does not fails its TLS
                    handshake at once (no hang). Blocked pass-through host → the CONNECT is refused (403).
``tls_clienthello`` every TLS connection (explicit and transparent): the SNI host. Allowed pass-through
                    host (``http.passthrough`` + the group's ``passthrough``, suffix match) →
                    ``ignore_connection``; blocked → intercepted (block page), or closed if it is a
                    pass-through host (``server_connect`` refuses the upstream connection).
``requestheaders``  every HTTP request: host rules, UT1 URL rules and URL hashes on the full URL
                    (``engine.decide(client, host, url)``), SafeSearch rewrites, the block page.
``request``         guard: a flow that reaches it without this addon's verdict for its current URL
                    (another addon changed it, or ``requestheaders`` never ran) is decided again.
``responseheaders`` / ``response``: the response hook point (:meth:`FilterAddon.add_response_check`);
                    image hashing plugs in there.
=================== =====================================================================================

**Fail closed on purpose**: mitmproxy logs an exception raised in a hook and lets the flow continue, so
every hook catches its own exceptions and blocks (block page, refused tunnel or killed connection), and
counts them in ``filterproxy_http_errors_total{hook}``.

**Hot swap**: :meth:`FilterAddon.reload` (SIGHUP, or :func:`reload_all`) rebuilds configuration, lists
and users file in a thread and swaps one reference; hooks read that reference once per event.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.net.http import url as murl
from mitmproxy.proxy import mode_specs, server_hooks

from filterproxy import metrics
from filterproxy.clients import Client, mac_for_ip
from filterproxy.http import blockpage, safesearch
from filterproxy.http.auth import UsersFile
from filterproxy.http.pac import PAC_CONTENT_TYPE, PAC_PATHS, render_pac
from filterproxy.names import self_and_parents
from filterproxy.verdict import Action, Reason, Verdict

log = logging.getLogger("filterproxy.http")

KEY = "filterproxy"  # flow.metadata[KEY]: this addon's verdict for the flow (plain values only)
AUTH_REALM = "filterproxy"
_SELF_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_LOG_EVERY = 60.0  # seconds between repeated exception logs of one hook

__all__ = ["FilterAddon", "HttpState", "ResponseCheck", "load_state", "reload_all", "KEY"]


# ---------------------------------------------------------------- loaded state (swapped as one reference)

@dataclass(frozen=True)
class HttpState:
    """Everything the hooks need, built off the serving path and swapped in as one reference."""

    engine: Any  # filterproxy.policy.engine.Engine
    users: UsersFile | None
    page: blockpage.BlockPageSettings
    passthrough: dict[str, frozenset[str]]  # group → host names (global + policy), suffix match
    passthrough_any: frozenset[str]  # the global http.passthrough names (groups not known yet)
    tones: dict[str, str]
    policy_names: dict[str, tuple[str, dict[str, str]]]  # group → (name, language → localized name)
    levels: dict[str, tuple[str, str]]  # group → (safesearch, youtube)
    generation: int = 0
    loaded_at: float = field(default_factory=time.time)

    @property
    def config(self):
        return self.engine.config


def load_state(config_path: str | None, extra_lists: Sequence[str] = (), client_groups: Sequence[str] = (),
               *, state_dir: str | None = None, generation: int = 0) -> HttpState:
    """Load configuration, lists, engine and users file (slow: run it off the event loop).

    Raises ``ConfigError``, ``ListError``, ``CliError`` or ``UsersFileError`` with a file:line message.
    """
    from filterproxy.cli import load_engine
    from filterproxy.config import ConfigError
    from filterproxy.names import NameError_, normalize_host

    cfg, engine = load_engine(config_path, list(extra_lists), list(client_groups), state_dir=state_dir)
    if state_dir and os.path.abspath(state_dir) != cfg.server.state_dir:
        # the same --state-dir handling as 'filterproxy run': downloaded lists follow the state folder
        old = cfg.server.state_dir
        cfg.server.state_dir = os.path.abspath(state_dir)
        try:
            from filterproxy.runner import _repoint_downloads
        except ImportError:
            _repoint_downloads = None
        if _repoint_downloads is not None and _repoint_downloads(cfg, old):
            from filterproxy.lists.snapshot import load_or_build

            engine.swap(load_or_build(cfg, extra=bool(extra_lists)))
    users = UsersFile.load(cfg.http.users_file, set(cfg.groups)) if cfg.http.users_file else None
    glob: set[str] = set()
    for name in cfg.http.passthrough:
        try:
            glob.add(normalize_host(name.removeprefix("*.")))
        except NameError_ as exc:
            raise ConfigError(f"{cfg.path}: http.passthrough: {exc} (expected a domain name)") from None
    passthrough = {g: frozenset(glob | set(p.passthrough)) for g, p in cfg.groups.items()}
    try:
        metrics.configure_labels(groups=list(cfg.groups) + ["unknown"],
                                 lists=[li.id for li in engine.snapshot.lists],
                                 categories=sorted({li.category for li in engine.snapshot.lists}))
    except Exception:  # labels are cosmetic; never fail a load on them
        log.debug("metrics labels not configured", exc_info=True)
    return HttpState(
        engine=engine, users=users, page=blockpage.BlockPageSettings.from_config(cfg.http),
        passthrough=passthrough, passthrough_any=frozenset(glob),
        tones={g: p.tone for g, p in cfg.groups.items()},
        policy_names={g: (p.name, p.names) for g, p in cfg.groups.items()},
        levels={g: (p.safesearch, p.youtube) for g, p in cfg.groups.items()},
        generation=generation)


def _freeze_heap() -> None:
    """After a (re)load: collect once, then move every surviving object (lists, matchers, config) out of
    the collector's generations. mitmproxy allocates many short-lived objects per request, and each
    full collection would otherwise walk the loaded state again. Frozen objects are still freed by
    reference counting when a reload drops them; unfreezing first lets the collection reclaim the
    reference cycles of the state a reload replaced."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _suffix_in(host: str, names: frozenset[str]) -> bool:
    return bool(names) and any(name in names for name in self_and_parents(host))


# ---------------------------------------------------------------- per-connection state

class _Conn:
    """What one client connection established: who (proxy user), and a host verdict for TLS tunnels."""

    __slots__ = ("user", "group", "block", "block_host", "kill", "error")

    def __init__(self) -> None:
        self.user: str | None = None
        self.group: str | None = None
        self.block: Verdict | None = None  # CONNECT/SNI host blocked: every request in the tunnel gets the page
        self.block_host: str | None = None
        self.kill = False  # blocked pass-through connection: refuse the upstream connection (closes it)
        self.error = False  # a TLS/CONNECT hook failed: block everything on this connection


class ResponseCheck(Protocol):
    """A response inspector (image hashing is the first). Registered with :meth:`FilterAddon.add_response_check`.

    ``responseheaders`` may ask for the body (e.g. leave ``flow.response.stream`` off, cap the size);
    ``response`` returns a BLOCK verdict to replace the response with the block page, or None; it may
    return an awaitable (CPU-heavy work belongs in a thread). ``info`` is ``flow.metadata[KEY]``.
    """

    def responseheaders(self, flow: http.HTTPFlow, info: dict) -> None: ...

    def response(self, flow: http.HTTPFlow, info: dict) -> "Verdict | None | Awaitable[Verdict | None]": ...


_INSTANCES: "weakref.WeakSet[FilterAddon]" = weakref.WeakSet()


def reload_all() -> list[Future]:
    """Reload every live :class:`FilterAddon` in this process (what SIGHUP does); returns their futures."""
    return [a.reload() for a in list(_INSTANCES)]


def _peer_ip(conn: connection.Client) -> str | None:
    peer = conn.peername
    if not peer:
        return None
    ip = str(peer[0])
    if ip.startswith("::ffff:") and "." in ip:
        ip = ip[7:]
    return ip


_H2 = (b"HTTP/2.0", b"HTTP/3", b"HTTP/3.0")


def _fingerprint(req: http.Request) -> tuple:
    """What the decision depended on; compared by identity first, so an unchanged request costs ~0.3 µs."""
    d = req.data
    return d.host, d.port, d.scheme, d.authority, d.path, d.headers.fields


def _target(req: http.Request) -> tuple[str, str, bool]:
    """(host to decide on, full URL, has Proxy-Authorization) in one pass over the headers.

    The same as mitmproxy's ``pretty_host``/``pretty_url`` (Host header, or ``:authority`` on HTTP/2 and
    3, before the connection address), at a third of their cost: three header look-ups per request
    are a measurable part of the filter's overhead.
    """
    d = req.data
    hh = d.authority if d.authority and d.http_version in _H2 else None
    auth = False
    for k, v in d.headers.fields:
        n = len(k)
        if n == 4 and hh is None and k.lower() == b"host":
            hh = v
        elif n == 19 and k.lower() == b"proxy-authorization":
            auth = True
    scheme = d.scheme.decode("ascii", "replace") or "http"
    if hh:
        head, colon, tail = hh.rpartition(b":")
        if colon and tail.isdigit() and head and b"[" not in head and hh.isascii():  # name:port (fast path)
            host, port = head.decode("ascii").lower(), int(tail)
        elif not colon and hh.isascii():  # name
            host, port = hh.decode("ascii").lower(), None
        else:  # IPv6, IDN, odd spellings
            host, port = murl.parse_authority(hh.decode("utf-8", "surrogateescape"), check=False)
        if port is None:
            port = murl.default_port(scheme) or d.port
    else:
        host, port = d.host, d.port
    shown = f"[{host}]" if ":" in host else host
    if murl.default_port(scheme) != port:
        shown = f"{shown}:{port}"
    return host, f"{scheme}://{shown}{d.path.decode('utf-8', 'surrogateescape')}", auth


# ---------------------------------------------------------------- the addon

class FilterAddon:
    """Child-safety filtering for mitmproxy: decisions by :class:`Engine`, block page, SafeSearch, pass-through."""

    def __init__(self, state: HttpState | None = None) -> None:
        self.state: HttpState | None = state
        self.response_checks: list[ResponseCheck] = []
        self._conns: dict[str, _Conn] = {}
        self._reload_lock = threading.Lock()
        self._reload_future: Future | None = None
        self._last_error_log: dict[str, float] = {}
        self._auth_pending: dict[bytes, asyncio.Future] = {}
        self._loaded_options: tuple | None = None
        self._signal_installed = False
        self.last_reload_error: str | None = None
        # image hashing (filterproxy.http.images): the first response check; reports go to a durable spool
        from filterproxy.http.images import ImageCheck

        self.images = ImageCheck(lambda: self.state)
        self.response_checks.append(self.images)
        self.spool = None  # filterproxy.reports.ReportSpool, set when the configuration is loaded
        self._spool_key: tuple | None = None
        self._deliver_stop: threading.Event | None = None
        _INSTANCES.add(self)

    # ------------------------------------------------------------ options
    def load(self, loader) -> None:
        loader.add_option("filterproxy_config", Optional[str], None,
                          "filterproxy configuration file (default: the embedded one).")
        loader.add_option("filterproxy_extra_list", Sequence[str], [],
                          "Extra list for this run, FORMAT:CATEGORY:PATH (repeatable), as 'filterproxy run --extra-list'.")
        loader.add_option("filterproxy_client_group", Sequence[str], [],
                          "Map a client network to a group, CIDR=GROUP (repeatable), as 'filterproxy run --client-group'.")
        loader.add_option("filterproxy_state_dir", Optional[str], None,
                          "State folder (overrides server.state_dir).")
        loader.add_option("filterproxy_proxy_names", Sequence[str], [],
                          "Extra names of this proxy: requests to NAME:listen-port are answered by the proxy "
                          "itself (/proxy.pac, /wpad.dat), never forwarded.")
        loader.add_option("filterproxy_listener_group", Sequence[str], [],
                          "Map a listener to a group, PORT=GROUP (repeatable): every client of the mode listening "
                          "on PORT (e.g. wireguard@51821, one tunnel per child) gets GROUP, after proxy login.")
        loader.add_option("filterproxy_inspect_https", bool, True,
                          "Open allowed HTTPS connections (URL rules, URL hashes, SafeSearch parameters, images). "
                          "Off: only the host (CONNECT/SNI) is decided, allowed connections pass through untouched "
                          "and blocked ones get the page if the CA is trusted, else are closed - for devices "
                          "without the CA.")
        loader.add_option("filterproxy_reload_signal", bool, True,
                          "Reload configuration, lists and users file on SIGHUP.")
        loader.add_option("filterproxy_spool", Optional[str], None,
                          "Folder of the durable image-match report spool (default: reports.spool, else "
                          "<state_dir>/reports).")
        loader.add_option("filterproxy_report_endpoint", Optional[str], None,
                          "HTTPS endpoint that receives image-match reports (default: reports.endpoint).")
        loader.add_option("filterproxy_deliver_reports", bool, True,
                          "Deliver spooled reports from this process. 'filterproxy run' turns it off in its "
                          "proxy workers: the main process delivers.")

    def configure(self, updated: set[str]) -> None:
        keys = {"filterproxy_config", "filterproxy_extra_list", "filterproxy_client_group", "filterproxy_state_dir"}
        if "filterproxy_inspect_https" in updated:
            self._inspect_https = bool(ctx.options.filterproxy_inspect_https)
        if "filterproxy_proxy_names" in updated:
            self._proxy_names = frozenset(n.strip().lower().rstrip(".") for n in ctx.options.filterproxy_proxy_names)
        if (keys & updated) or self.state is None:
            self._load()
        if self.state is not None and ({"filterproxy_spool", "filterproxy_report_endpoint",
                                        "filterproxy_deliver_reports"} & updated or keys & updated):
            self._setup_spool()
        if "filterproxy_listener_group" in updated or (keys & updated):
            self._listener_groups = self._parse_listener_groups(ctx.options.filterproxy_listener_group)

    def _load(self) -> None:
        opts = self._option_values()
        if opts == self._loaded_options and self.state is not None:
            return
        t0 = time.monotonic()
        try:
            state = load_state(*opts[:3], state_dir=opts[3],
                               generation=(self.state.generation + 1) if self.state else 1)
        except Exception as exc:
            raise exceptions.OptionsError(f"filterproxy: {exc}") from None
        self.state = state
        self._loaded_options = opts
        _freeze_heap()
        snap = state.engine.snapshot
        log.info("filterproxy http: %s loaded in %.1f s — %d groups, %d lists, %d entries%s",
                 state.config.path, time.monotonic() - t0, len(state.config.groups), len(snap.lists),
                 snap.total_entries, f", {len(state.users)} proxy users" if state.users is not None else "")

    def _parse_listener_groups(self, specs: Sequence[str]) -> dict[int, str]:
        out: dict[int, str] = {}
        groups = set(self.state.config.groups) if self.state is not None else None
        for spec in specs:
            port, sep, group = spec.partition("=")
            if not sep or not port.strip().isdigit() or not 0 < int(port) < 65536:
                raise exceptions.OptionsError(f"filterproxy_listener_group {spec!r}: expected PORT=GROUP")
            if groups is not None and group not in groups:
                raise exceptions.OptionsError(f"filterproxy_listener_group {spec!r}: unknown group {group!r} "
                                              f"(groups: {', '.join(sorted(groups))})")
            out[int(port)] = group
        return out

    def _setup_spool(self) -> None:
        """(Re)create the report spool from the options and the configuration (``configure`` only)."""
        from filterproxy.reports import ReportSpool

        cfg = self.state.config
        o = ctx.options
        endpoint = (o.filterproxy_report_endpoint or cfg.reports.endpoint) if o.filterproxy_deliver_reports else None
        key = (o.filterproxy_spool, endpoint, cfg.reports, cfg.server.state_dir, cfg.server.gateway_id)
        if key == self._spool_key:
            return
        try:
            spool = ReportSpool.from_config(cfg, endpoint, o.filterproxy_spool)
        except (OSError, ValueError) as exc:  # pictures on a hash list are still blocked; reports are lost
            log.error("filterproxy: cannot use the report spool: %s (image matches will be blocked but not "
                      "reported)", exc)
            return
        self._stop_delivery()
        self.spool = self.images.spool = spool
        self._spool_key = key
        if endpoint and self._deliver_stop is None and getattr(self, "_running", False):
            self._start_delivery()

    def _start_delivery(self) -> None:
        if self.spool is not None and self.spool.endpoint:
            self._deliver_stop = threading.Event()
            self.spool.start(self._deliver_stop)

    def _stop_delivery(self) -> None:
        if self._deliver_stop is not None:
            self._deliver_stop.set()
            self._deliver_stop = None

    @staticmethod
    def _option_values() -> tuple:
        o = ctx.options
        return (o.filterproxy_config or None, tuple(o.filterproxy_extra_list), tuple(o.filterproxy_client_group),
                o.filterproxy_state_dir or None)

    _proxy_names: frozenset[str] = frozenset()
    _listener_groups: dict[int, str] = {}
    _inspect_https = True

    # ------------------------------------------------------------ lifecycle / hot swap
    def running(self) -> None:
        self._running = True
        self._start_delivery()
        if not ctx.options.filterproxy_reload_signal or threading.current_thread() is not threading.main_thread():
            return
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)
            self._signal_installed = True
        except (NotImplementedError, RuntimeError, ValueError):  # not on this platform / no loop
            log.debug("SIGHUP handler not installed", exc_info=True)

    def done(self) -> None:
        self._stop_delivery()
        self.images.close()
        if self._signal_installed:
            try:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            except (RuntimeError, ValueError):
                pass
            self._signal_installed = False

    def reload(self) -> Future:
        """Rebuild the state in a thread and swap it in; a reload already running is reused.

        On failure the current state stays (last known good) and the error is logged. Thread-safe.
        """
        with self._reload_lock:
            if self._reload_future is not None and not self._reload_future.done():
                return self._reload_future
            fut: Future = Future()
            self._reload_future = fut
        threading.Thread(target=self._reload_worker, args=(fut,), name="filterproxy-http-reload", daemon=True).start()
        return fut

    def _reload_worker(self, fut: Future) -> None:
        opts = self._loaded_options or (None, (), (), None)
        t0 = time.monotonic()
        try:
            old = self.state
            state = load_state(*opts[:3], state_dir=opts[3], generation=(old.generation + 1) if old else 1)
        except BaseException as exc:  # keep serving with the last good state
            self.last_reload_error = str(exc)
            log.error("filterproxy http: reload failed, keeping the current lists: %s", exc)
            fut.set_result(False)
            return
        self.state = state  # the swap: one reference
        self.last_reload_error = None
        del old
        _freeze_heap()
        log.info("filterproxy http: reloaded in %.1f s (generation %d, %d entries)", time.monotonic() - t0,
                 state.generation, state.engine.snapshot.total_entries)
        fut.set_result(True)

    def add_response_check(self, check: ResponseCheck) -> None:
        """Register a response inspector (the image-hashing hook point)."""
        self.response_checks.append(check)

    # ------------------------------------------------------------ helpers
    def _count_error(self, hook: str) -> None:
        try:
            metrics.HTTP_ERRORS.inc(hook)
        except Exception:
            pass
        now = time.monotonic()
        if now - self._last_error_log.get(hook, 0.0) >= _LOG_EVERY:
            self._last_error_log[hook] = now
            log.exception("filterproxy http: exception in %s; failing closed", hook)

    def _fail_flow(self, flow: http.HTTPFlow, hook: str) -> None:
        """Fail closed: the block page (reason ``error``), or kill the flow if even that fails."""
        self._count_error(hook)
        try:
            info = flow.metadata.get(KEY) or {}
            group = info.get("group") or ""
            v = Verdict(Action.BLOCK, Reason.ERROR, group)
            self._respond_block(flow, v, flow.request.pretty_host, self.state)
            self._count(v)
        except Exception:
            log.debug("block page failed; killing the flow", exc_info=True)
            try:
                if flow.killable:
                    flow.kill()
                else:
                    flow.response = http.Response.make(403, b"blocked\n", {"Cache-Control": "no-store"})
            except Exception:
                pass

    @staticmethod
    def _count(v: Verdict) -> None:
        group = v.group or "unknown"
        metrics.HTTP_REQUESTS.inc(group, v.action.value, v.reason.value)
        if v.action is Action.BLOCK:
            metrics.HTTP_BLOCKED.inc(group, v.category)

    def _respond_block(self, flow: http.HTTPFlow, v: Verdict, host: str, st: HttpState | None) -> None:
        tone = "child"  # unknown group: the most protective wording
        policy_name, policy_names = None, None
        page = blockpage.BlockPageSettings()
        if st is not None:
            page = st.page
            tone = st.tones.get(v.group, "child")
            policy_name, policy_names = st.policy_names.get(v.group, (None, None))
        lang = blockpage.pick_language(flow.request.headers.get("accept-language"), page.default_language)
        status, headers, body = blockpage.render(v, host, lang=lang, tone=tone, settings=page, policy_name=policy_name,
                                                 policy_names=policy_names)
        flow.response = http.Response.make(status, body, headers)
        flow.metadata[KEY] = {"group": v.group, "action": "block", "reason": v.reason.value, "category": v.category,
                              "short_id": v.short_id, "url": None}

    def _is_self(self, flow: http.HTTPFlow) -> bool:
        sock = flow.client_conn.sockname
        if not sock or flow.request.port != sock[1]:
            return False
        host = flow.request.host.lower()
        return host in _SELF_NAMES or host == str(sock[0]) or host in self._proxy_names

    def _serve_self(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        path = req.path.split("?", 1)[0]
        if path in PAC_PATHS:
            sock = flow.client_conn.sockname
            fallback = f"{sock[0]}:{sock[1]}" if ":" not in str(sock[0]) else f"[{sock[0]}]:{sock[1]}"
            flow.response = http.Response.make(200, render_pac(req.headers.get("host"), fallback),
                                               {"Content-Type": PAC_CONTENT_TYPE, "Cache-Control": "max-age=300"})
        else:
            flow.response = http.Response.make(
                404, b"filterproxy: this is a filtering proxy; the proxy configuration file is at /proxy.pac\n",
                {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"})
        flow.metadata[KEY] = {"group": None, "action": "internal", "reason": "internal", "category": None,
                              "short_id": "internal", "url": None}

    @staticmethod
    def _challenge(flow: http.HTTPFlow) -> None:
        flow.response = http.Response.make(
            407, "Cần đăng nhập vào bộ lọc / Proxy login required\n".encode(),
            {"Proxy-Authenticate": f'Basic realm="{AUTH_REALM}", charset="UTF-8"',
             "Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"})

    def _identify(self, flow: http.HTTPFlow, st: HttpState, conn: _Conn | None
                  ) -> tuple[Client, str | None] | str | Awaitable[None]:
        """(client, group); ``"407"`` when a login is required; an awaitable when a new credential must be
        checked first (slow hash in a thread; call again afterwards)."""
        ip = _peer_ip(flow.client_conn)
        user = group = None
        explicit = isinstance(flow.client_conn.proxy_mode, mode_specs.RegularMode)
        if st.users is not None and explicit:
            header = flow.request.headers.get("proxy-authorization")
            if header:
                hit = st.users.cached(header)
                if hit is False:
                    return self._verify(st.users, header)
                if hit is None:
                    return "407"
                user, group = hit
                rule_group, how = st.engine.clients.group_for(Client(user=user))
                if how == "user":  # a 'clients: - {user: NAME}' rule in the configuration wins
                    group = rule_group
                if conn is None:
                    conn = self._conns.setdefault(flow.client_conn.id, _Conn())
                conn.user, conn.group = user, group
            elif conn is not None and conn.user:
                user, group = conn.user, conn.group
        mac = None
        clients = st.engine.clients
        if group is None and clients.uses_mac and ip:
            mac = mac_for_ip(ip)
        client = Client(ip=ip, user=user, mac=mac)
        if group is None and self._listener_groups:
            group = self._listener_groups.get(flow.client_conn.proxy_mode.custom_listen_port)  # type: ignore[arg-type]
            if group is not None:
                return client, group
        if group is None:
            group, how = clients.group_for(client)
            if st.users is not None and explicit and how not in ("ip", "cidr", "mac", "user"):
                return "407"
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

    def _conn(self, client: connection.Client) -> _Conn:
        c = self._conns.get(client.id)
        if c is None:
            c = self._conns[client.id] = _Conn()
        return c

    def _passthrough(self, st: HttpState, host: str, group: str | None) -> bool:
        names = st.passthrough.get(group, st.passthrough_any) if group else st.passthrough_any
        return _suffix_in(host, names)

    # ------------------------------------------------------------ HTTP requests
    def requestheaders(self, flow: http.HTTPFlow):
        try:
            res = self._on_request(flow)
        except Exception:
            self._fail_flow(flow, "requestheaders")
            return None
        return None if res is None else self._guard(res, flow, "requestheaders")

    def request(self, flow: http.HTTPFlow):
        try:
            if flow.response is not None:
                return None
            seen = flow.__dict__.get("_filterproxy_seen")
            if seen is not None and seen == _fingerprint(flow.request):
                return None
            res = self._on_request(flow)  # not decided yet, or the URL changed since
        except Exception:
            self._fail_flow(flow, "request")
            return None
        return None if res is None else self._guard(res, flow, "request")

    async def _guard(self, pending: Awaitable, flow: http.HTTPFlow, hook: str) -> None:
        try:
            res = await pending
            while res is not None:  # a second credential check is not expected, but stay correct
                res = await res
        except Exception:
            self._fail_flow(flow, hook)

    def _on_request(self, flow: http.HTTPFlow) -> Awaitable | None:
        st = self.state
        if st is None:
            raise RuntimeError("filterproxy: no configuration loaded")
        req = flow.request
        if self._is_self(flow):
            self._serve_self(flow)
            return None
        conn = self._conns.get(flow.client_conn.id)
        who = self._identify(flow, st, conn)
        if type(who) is not tuple:
            if who == "407":
                self._challenge(flow)
                flow.metadata[KEY] = {"group": None, "action": "auth", "reason": "auth", "category": None,
                                      "short_id": "auth", "url": None}
                return None
            return self._after(who, self._on_request, flow)  # type: ignore[arg-type]
        client, group = who
        host, url, has_auth = _target(req)
        if has_auth:
            del req.headers["proxy-authorization"]  # never forward proxy credentials upstream
        engine = st.engine
        if conn is not None and (conn.block is not None or conn.error):
            v = conn.block if conn.block is not None else Verdict(Action.BLOCK, Reason.ERROR, group or "")
            host = conn.block_host or host
        elif group is None:
            v = Verdict(Action.BLOCK, Reason.UNKNOWN_CLIENT, "")
        else:
            v = engine.decide(client, host, url, group=group)
            target = req.host
            if v.action is not Action.BLOCK and target != host and target.lower() != host.lower():
                v2 = engine.decide(client, target, None, group=group)  # the address actually connected to
                if v2.action is Action.BLOCK:
                    v, host = v2, target

        if v.action is Action.BLOCK:
            self._respond_block(flow, v, host.lower(), st)
        else:
            if v.action is Action.REWRITE:
                eng = safesearch.engine_of(host.lower())
                if eng is not None:
                    levels = st.levels.get(group or "", ("strict", "strict"))
                    if safesearch.apply(req, eng, levels[0], levels[1]):
                        metrics.HTTP_SAFESEARCH_REWRITES.inc(v.group or "unknown", eng)
                        url = _target(req)[1]
            flow.metadata[KEY] = {"group": v.group, "action": v.action.value, "reason": v.reason.value,
                                  "category": v.category, "short_id": v.short_id, "url": url}
            flow._filterproxy_seen = _fingerprint(req)  # type: ignore[attr-defined]  # for the request() guard
        self._count(v)
        return None

    @staticmethod
    async def _after(first: Awaitable, then: Callable[[http.HTTPFlow], Any], flow: http.HTTPFlow):
        await first
        return then(flow)

    # ------------------------------------------------------------ CONNECT and TLS
    def http_connect(self, flow: http.HTTPFlow):
        try:
            res = self._on_connect(flow)
        except Exception:
            self._count_error("http_connect")
            flow.response = http.Response.make(403, b"filterproxy: blocked (internal error)\n",
                                               {"Cache-Control": "no-store"})
            return None
        return None if res is None else self._guard_connect(res, flow)

    async def _guard_connect(self, pending: Awaitable, flow: http.HTTPFlow) -> None:
        try:
            res = await pending
            while res is not None:
                res = await res
        except Exception:
            self._count_error("http_connect")
            flow.response = http.Response.make(403, b"filterproxy: blocked (internal error)\n",
                                               {"Cache-Control": "no-store"})

    def _on_connect(self, flow: http.HTTPFlow) -> Awaitable | None:
        st = self.state
        if st is None:
            raise RuntimeError("filterproxy: no configuration loaded")
        conn = self._conn(flow.client_conn)
        who = self._identify(flow, st, conn)
        if type(who) is not tuple:
            if who == "407":
                self._challenge(flow)
                return None
            return self._after(who, self._on_connect, flow)  # type: ignore[arg-type]
        client, group = who
        if "proxy-authorization" in flow.request.headers:
            del flow.request.headers["proxy-authorization"]
        conn.group = group
        host = flow.request.host.lower()
        if group is None:
            v = Verdict(Action.BLOCK, Reason.UNKNOWN_CLIENT, "")
        else:
            v = st.engine.decide(client, host, None, group=group)
        self._count(v)
        if v.action is not Action.BLOCK:
            return None
        if self._passthrough(st, host, group):
            # A pass-through host cannot show a page: refuse the tunnel, nothing reaches the server.
            flow.response = http.Response.make(403, f"filterproxy: blocked ({v.short_id})\n".encode(),
                                               {"Cache-Control": "no-store", "X-Filterproxy-Reason": v.short_id})
            return None
        # Accept the tunnel without connecting upstream (connection_strategy=eager would): the client then
        # gets the block page if it trusts the CA, or fails the TLS handshake at once if it does not.
        conn.block, conn.block_host = v, host
        flow.response = http.Response(flow.request.data.http_version, 200, b"Connection established",
                                      http.Headers(), b"", None, time.time(), time.time())
        return None

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        try:
            self._on_clienthello(data)
        except Exception:
            self._count_error("tls_clienthello")
            data.ignore_connection = False  # intercept: every request on it gets the (error) block page
            data.establish_server_tls_first = False
            try:
                self._conn(data.context.client).error = True
            except Exception:
                pass

    def _on_clienthello(self, data: tls.ClientHelloData) -> None:
        st = self.state
        if st is None:
            raise RuntimeError("filterproxy: no configuration loaded")
        client_conn = data.context.client
        conn = self._conns.get(client_conn.id)
        if conn is not None and (conn.block is not None or conn.error):
            data.establish_server_tls_first = False  # the CONNECT host is blocked: no upstream contact
            return
        sni = data.client_hello.sni
        addr = data.context.server.address
        host = (sni or (str(addr[0]) if addr else "")).lower()
        if not host:
            return  # no name at all: intercept, and decide per request
        if conn is not None and conn.group is not None:
            client, group = Client(ip=_peer_ip(client_conn), user=conn.user), conn.group
        else:
            ip = _peer_ip(client_conn)
            mac = mac_for_ip(ip) if ip and st.engine.clients.uses_mac else None
            client = Client(ip=ip, mac=mac)
            group = self._listener_groups.get(client_conn.proxy_mode.custom_listen_port)  # type: ignore[arg-type]
            if group is None:
                group = st.engine.clients.group_for(client)[0]
        if group is None:
            v = Verdict(Action.BLOCK, Reason.UNKNOWN_CLIENT, "")
        else:
            v = st.engine.decide(client, host, None, group=group)
        if v.action is Action.BLOCK:
            conn = conn or self._conn(client_conn)
            conn.block, conn.block_host = v, host
            data.establish_server_tls_first = False
            if self._passthrough(st, host, group):
                # Do not intercept a pinned client; close it: server_connect refuses the upstream connection.
                data.ignore_connection = True
                conn.kill = True
                self._count(v)
            return
        if v.action is Action.REWRITE and self._inspect_https:
            return  # SafeSearch needs the requests: always intercept search engines
        if not self._inspect_https or self._passthrough(st, host, group):
            data.ignore_connection = True

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        try:
            conn = self._conns.get(data.client.id)
            if conn is not None and (conn.kill or conn.block is not None or conn.error):
                data.server.error = "blocked by filterproxy"
        except Exception:
            self._count_error("server_connect")
            data.server.error = "blocked by filterproxy (internal error)"

    def client_disconnected(self, client: connection.Client) -> None:
        self._conns.pop(client.id, None)

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
            if self.response_checks:
                info = flow.metadata.get(KEY) or {}
                for check in self.response_checks:
                    check.responseheaders(flow, info)
        except Exception:
            self._fail_flow(flow, "responseheaders")

    def response(self, flow: http.HTTPFlow):
        """Hook point for response checks (image hashing): a BLOCK verdict replaces the response."""
        if not self.response_checks:
            return None
        try:
            info = flow.metadata.get(KEY) or {}
            if info.get("action") in ("block", "internal", "auth"):
                return None
            pending = []
            for check in self.response_checks:
                r = check.response(flow, info)
                if r is None:
                    continue
                if isinstance(r, Verdict):
                    if r.action is Action.BLOCK:
                        self._block_response(flow, r)
                        return None
                else:
                    pending.append(r)
        except Exception:
            self._fail_flow(flow, "response")
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
            self._fail_flow(flow, "response")

    def _block_response(self, flow: http.HTTPFlow, v: Verdict) -> None:
        self._respond_block(flow, v, flow.request.pretty_host.lower(), self.state)
        metrics.HTTP_BLOCKED.inc(v.group or "unknown", v.category)
