"""One parsing function per top-level section of ``filterproxy.yaml`` (server, upstreams, cache, ...).

Each reads its mapping through :class:`~filterproxy.config.loader.Section` (unknown keys are errors),
validates it and returns the section's dataclass; relative paths are resolved against the config file.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import socket

from filterproxy.config.loader import Section, check_upstream, parse_hostport
from filterproxy.config.model import (
    CacheConfig,
    DistributionConfig,
    DnsConfig,
    HttpConfig,
    MetricsConfig,
    QueryLogConfig,
    ReportsConfig,
    ServerConfig,
    UpstreamConfig,
)
from filterproxy.config.proxy import parse_listener_groups, parse_proxy_modes
from filterproxy.config.secrets import secret_file
from filterproxy.passwords import HOW_TO_HASH, check_hash
from filterproxy.vocabulary import LANGUAGES, ConfigError


def resolve_path(base_file: str, p: str) -> str:
    """``p`` with ``~`` and ``$VARS`` expanded, relative to the folder of ``base_file``."""
    p = os.path.expanduser(os.path.expandvars(str(p)))
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(base_file)), p))


def _listen(sec: Section, key: str, default: tuple[str, int] | None, port: int) -> tuple[str, int] | None:
    v = sec.get(key, "__default__")
    if v == "__default__":
        return default
    if v is False or v is None or str(v).lower() in ("off", "none", "false", ""):
        return None
    return parse_hostport(str(v), sec.where(key), port)


def default_state_dir() -> str:
    return os.path.join(os.environ.get("XDG_STATE_HOME", os.path.expanduser("~/.local/state")), "filterproxy")


def parse_server(s: Section, path: str) -> ServerConfig:
    server = ServerConfig(
        dns_listen=_listen(s, "dns_listen", ("127.0.0.1", 5353), 53),
        proxy_listen=_listen(s, "proxy_listen", ("127.0.0.1", 8080), 8080),
        proxy_workers=s.get("proxy_workers", 1, types=(int,)),
        dns_workers=s.get("dns_workers", 1, types=(int,)),
        metrics_listen=_listen(s, "metrics_listen", ("127.0.0.1", 9108), 9108),
        block_page_ipv4=s.get("block_page_ipv4", "127.0.0.1", types=(str,)),
        block_page_ipv6=s.get("block_page_ipv6", "::1", types=(str,)),
        gateway_id=s.get("gateway_id", socket.gethostname(), types=(str,)),
        state_dir=s.get("state_dir", "", types=(str,)),
        state_db=s.get("state_db", None, types=(str,)),
        doh_listen=_listen(s, "doh_listen", None, 443),
        dot_listen=_listen(s, "dot_listen", None, 853),
        tls_cert_file=s.get("tls_cert_file", None, types=(str,)),
        tls_key_file=s.get("tls_key_file", None, types=(str,)),
        admin_listen=_listen(s, "admin_listen", ("127.0.0.1", 8088), 8088),
    )
    server.proxy_modes = parse_proxy_modes(s, server.proxy_listen, server.proxy_workers)
    for key in ("block_page_ipv4", "block_page_ipv6"):
        try:
            ipaddress.ip_address(getattr(server, key))
        except ValueError:
            raise ConfigError(f"{s.where(key)}: 'server.{key}' must be an IP address") from None
    for key in ("tls_cert_file", "tls_key_file"):
        if getattr(server, key):
            setattr(server, key, resolve_path(path, getattr(server, key)))
            if not os.path.isfile(getattr(server, key)):
                raise ConfigError(f"{s.where(key)}: 'server.{key}': file not found: {getattr(server, key)}")
    if server.state_db is not None and not server.state_db.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"{s.where('state_db')}: 'server.state_db' must be postgresql://user@host[:port]/db "
            "(leave it out for sqlite at <state_dir>/state.db)"
        )
    for key in ("doh_listen", "dot_listen"):
        missing = tls_missing(server) if getattr(server, key) else None
        if missing:
            raise ConfigError(f"{s.where(key)}: 'server.{key}' needs 'server.{missing}' (the listener's certificate)")
    s.done()
    server.state_dir = resolve_path(path, server.state_dir) if server.state_dir else default_state_dir()
    return server


def tls_missing(server: ServerConfig) -> str | None:
    """The first of ``server.tls_cert_file`` / ``tls_key_file`` that DoH/DoT need and is not set."""
    return next((k for k in ("tls_cert_file", "tls_key_file") if not getattr(server, k)), None)


def parse_upstreams(u: Section, path: str) -> UpstreamConfig:
    servers = u.get("servers", None, types=(list,))
    cond = u.get("conditional", {}, types=(dict,))
    upstreams = UpstreamConfig(
        servers=[str(x) for x in servers] if servers is not None else UpstreamConfig().servers,
        strategy=u.get("strategy", "failover", choices=("failover", "parallel")),
        timeout=float(u.get("timeout", 2.0, types=(int, float))),
        conditional={
            str(k).lower().rstrip("."): [str(x) for x in (v if isinstance(v, list) else [v])] for k, v in cond.items()
        },
    )
    u.done()
    for addr in upstreams.servers + [a for v in upstreams.conditional.values() for a in v]:
        check_upstream(addr, u.where("servers"))
    return upstreams


def parse_cache(c: Section, path: str) -> CacheConfig:
    cache = CacheConfig(
        **{
            k: c.get(k, getattr(CacheConfig(), k), types=(int,))
            for k in ("size", "min_ttl", "max_ttl", "negative_ttl", "blocked_ttl", "sweep_interval")
        }
    )
    if cache.sweep_interval < 1:
        raise ConfigError(
            f"{c.where('sweep_interval')}: 'cache.sweep_interval' must be at least 1 (seconds), "
            f"got {cache.sweep_interval}"
        )
    c.done()
    return cache


def parse_dns(d: Section, path: str) -> DnsConfig:
    dd = DnsConfig()
    dns = DnsConfig(
        allowed_networks=[str(x) for x in d.get("allowed_networks", dd.allowed_networks, types=(list,))],
        rate_limit=d.get("rate_limit", dd.rate_limit, types=(int,)),
        tcp_idle_timeout=float(d.get("tcp_idle_timeout", dd.tcp_idle_timeout, types=(int, float))),
        tcp_max_connections=d.get("tcp_max_connections", dd.tcp_max_connections, types=(int,)),
        tcp_max_per_client=d.get("tcp_max_per_client", dd.tcp_max_per_client, types=(int,)),
        strip_ech=d.get("strip_ech", True, types=(bool,)),
        strip_h3=d.get("strip_h3", False, types=(bool,)),
    )
    if dns.tcp_max_per_client < 1:
        raise ConfigError(
            f"{d.where('tcp_max_per_client')}: 'dns.tcp_max_per_client' must be at least 1 "
            f"(connections), got {dns.tcp_max_per_client}"
        )
    for net in dns.allowed_networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(
                f"{d.where('allowed_networks')}: invalid network {net!r} (expected CIDR like 10.0.0.0/8)"
            ) from None
    d.done()
    return dns


def parse_http(h: Section, path: str) -> HttpConfig:
    hd = HttpConfig()
    http = HttpConfig(
        users_file=h.get("users_file", None, types=(str,)),
        hotline=str(h.get("hotline", hd.hotline, types=(str, int))),
        report_url=h.get("report_url", hd.report_url, types=(str,)),
        review_url=h.get("review_url", None, types=(str,)),
        ca_help_url=h.get("ca_help_url", hd.ca_help_url, types=(str,)),
        default_language=h.get("default_language", "vi", choices=LANGUAGES),
        passthrough=[str(x) for x in h.get("passthrough", [], types=(list,))],
        max_image_bytes=h.get("max_image_bytes", hd.max_image_bytes, types=(int,)),
        image_hashing=h.get("image_hashing", True, types=(bool,)),
        pdq_max_distance=h.get("pdq_max_distance", 31, types=(int,)),
        header_timeout=float(h.get("header_timeout", hd.header_timeout, types=(int, float))),
        inspect_https=h.get("inspect_https", True, types=(bool,)),
        listener_groups=parse_listener_groups(h),
    )
    if not 0 <= http.header_timeout < float("inf"):  # also NaN
        raise ConfigError(
            f"{h.where('header_timeout')}: 'http.header_timeout' must be a non-negative number of seconds "
            f"(0 = off), got {h.data['header_timeout']!r}"
        )
    if http.users_file:
        http.users_file = resolve_path(path, http.users_file)
    h.done()
    return http


def parse_reports(r: Section, path: str) -> ReportsConfig:
    reports = ReportsConfig(
        endpoint=r.get("endpoint", None, types=(str,)),
        spool=r.get("spool", None, types=(str,)),
        url_mode=r.get("url_mode", "host", choices=("full", "host", "hashed", "none")),
        include_client=r.get("include_client", False, types=(bool,)),
        token_file=secret_file(r, "token_file", functools.partial(resolve_path, path)),
    )
    if reports.spool:
        reports.spool = resolve_path(path, reports.spool)
    r.done()
    return reports


_PUSH_REMOVED = (
    "the Pushgateway push was removed; run a Prometheus agent that scrapes this gateway and remote-writes "
    "(deploy/ministry.md §5), and delete the 'metrics.push_*' keys"
)


def parse_metrics(m: Section, path: str) -> MetricsConfig:
    resolve = functools.partial(resolve_path, path)
    for key in m.data:
        if str(key).startswith("push_"):  # before the generic unknown-key error: say what replaced it
            raise ConfigError(f"{m.where(key)}: 'metrics.{key}': {_PUSH_REMOVED}")
    if "basic_auth_password" in m.data:
        raise ConfigError(
            f"{m.where('basic_auth_password')}: 'metrics.basic_auth_password': no password in the configuration; "
            f"set 'metrics.basic_auth_hash' to its hash instead: {HOW_TO_HASH}"
        )
    cert = m.get("tls_cert_file", None, types=(str,))
    metrics = MetricsConfig(
        basic_auth_user=m.get("basic_auth_user", None, types=(str,)),
        basic_auth_hash=m.get("basic_auth_hash", None, types=(str,)),
        tls_cert_file=resolve(cert) if cert else None,
        tls_key_file=secret_file(m, "tls_key_file", resolve),
    )
    _check_metrics(m, metrics)
    m.done()
    return metrics


def _check_metrics(m: Section, metrics: MetricsConfig) -> None:
    """Keys that go in pairs and the password hash's scheme."""
    for a, b in (("basic_auth_user", "basic_auth_hash"), ("tls_cert_file", "tls_key_file")):
        if (getattr(metrics, a) is None) != (getattr(metrics, b) is None):
            have, need = (a, b) if getattr(metrics, a) is not None else (b, a)
            raise ConfigError(f"{m.where(have)}: 'metrics.{have}' needs 'metrics.{need}' as well")
    if metrics.basic_auth_hash is not None:
        try:
            check_hash(metrics.basic_auth_hash)
        except ValueError as exc:
            raise ConfigError(f"{m.where('basic_auth_hash')}: 'metrics.basic_auth_hash': {exc}") from None


def parse_querylog(q: Section, path: str) -> QueryLogConfig:
    querylog = QueryLogConfig(
        enabled=q.get("enabled", False, types=(bool,)),
        path=q.get("path", None, types=(str,)),
        retention_days=q.get("retention_days", 7, types=(int,)),
        anonymise=q.get("anonymise", True, types=(bool,)),
    )
    if querylog.retention_days < 1:
        raise ConfigError(f"{q.where('retention_days')}: 'querylog.retention_days' must be a whole number of days >= 1")
    if querylog.path:
        querylog.path = resolve_path(path, querylog.path)
    q.done()
    return querylog


_PROVINCE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def parse_distribution(d: Section, path: str) -> DistributionConfig:
    """The ``distribution:`` section: a TUF repository URL needs its trusted root file."""
    cfg = DistributionConfig(
        url=d.get("url", None, types=(str,)),
        mirrors=list(d.get("mirrors", [], types=(list,))),
        root=d.get("root", None, types=(str,)),
        province=d.get("province", None, types=(str,)),
        refresh=d.get("refresh", 3600, types=(int,)),
        jitter=d.get("jitter", 900, types=(int,)),
    )
    for key, url in [("url", cfg.url), *(("mirrors", m) for m in cfg.mirrors)]:
        if url is not None and (not isinstance(url, str) or not url.startswith(("https://", "http://"))):
            raise ConfigError(f"{d.where(key)}: distribution.{key}: expected an http(s):// URL, got {url!r}")
    if cfg.url is None and (cfg.mirrors or cfg.root or cfg.province):
        raise ConfigError(f"{d.where('url')}: distribution needs url (the repository) when any other key is set")
    if cfg.url is not None:
        if not cfg.root:
            raise ConfigError(f"{d.where('url')}: distribution.root is required: the trusted root file (1.root.json)")
        # read at the first update only (later ones trust the verified chain in the state folder)
        cfg.root = resolve_path(path, cfg.root)
    if cfg.province is not None and not _PROVINCE_RE.match(cfg.province):
        raise ConfigError(f"{d.where('province')}: distribution.province: a role name like ha-noi")
    if cfg.refresh < 60 or cfg.jitter < 0:
        raise ConfigError(f"{d.where('refresh')}: distribution.refresh must be >= 60 s and jitter >= 0")
    d.done()
    return cfg


def parse_timezone(top: Section) -> str:
    timezone: str = top.get("timezone", "Asia/Ho_Chi_Minh", types=(str,))
    try:
        import zoneinfo

        zoneinfo.ZoneInfo(timezone)
    except Exception:
        raise ConfigError(
            f"{top.where('timezone')}: unknown time zone {timezone!r} (expected e.g. Asia/Ho_Chi_Minh)"
        ) from None
    return timezone
