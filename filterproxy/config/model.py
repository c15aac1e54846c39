"""The typed configuration: plain dataclasses, one per section, and :class:`Config` holding them all.

Parsing and validation live in :mod:`filterproxy.config.sections`; these objects are what the rest of
filterproxy reads (``cfg.server.state_dir``, ``cfg.groups``, ``cfg.lists`` ...).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from filterproxy.config.secrets import SecretFile
    from filterproxy.lists.source import ListSource
    from filterproxy.policy.model import Policy


@dataclass
class ServerConfig:
    dns_listen: tuple[str, int] | None = ("127.0.0.1", 5353)
    proxy_listen: tuple[str, int] | None = ("127.0.0.1", 8080)
    proxy_workers: int = 1
    proxy_modes: list[str] = field(default_factory=lambda: ["regular"])  # the first on proxy_listen, then MODE@PORT
    dns_workers: int = 1
    metrics_listen: tuple[str, int] | None = ("127.0.0.1", 9108)
    block_page_ipv4: str = "127.0.0.1"
    block_page_ipv6: str = "::1"
    gateway_id: str = field(default_factory=socket.gethostname)
    state_dir: str = ""
    state_db: str | None = None  # postgresql://… for a shared state store; None: sqlite at <state_dir>/state.db
    doh_listen: tuple[str, int] | None = None  # DNS over HTTPS (RFC 8484), on tls_cert_file/tls_key_file
    dot_listen: tuple[str, int] | None = None  # DNS over TLS (RFC 7858)
    tls_cert_file: str | None = None  # PEM certificate chain of the DoH/DoT listeners
    tls_key_file: str | None = None
    admin_listen: tuple[str, int] | None = ("127.0.0.1", 8088)  # the control API (filterproxy.admin)


@dataclass
class AdminConfig:
    """The control API (``admin:``): its own TLS certificate, session length, teachers' longest allow."""

    tls_cert_file: str | None = None  # PEM chain: the admin API over HTTPS (with tls_key_file)
    tls_key_file: str | None = None
    session_hours: float = 8.0  # a login session (cookie) lasts this long
    teacher_max_minutes: int = 480  # the longest temporary allow a teacher may make: one school day
    stats_retention_days: int = 90  # statistics rows older than this are deleted (filterproxy.state.stats)
    stats_flush_seconds: float = 30.0  # each process adds its counts to the state database this often
    devices_seen_seconds: float = 30.0  # each process writes named devices' last-seen times this often


@dataclass
class UpstreamConfig:
    servers: list[str] = field(default_factory=lambda: ["9.9.9.9:53", "149.112.112.112:53"])
    strategy: str = "failover"  # failover | parallel
    timeout: float = 2.0
    conditional: dict[str, list[str]] = field(default_factory=dict)  # zone → servers


@dataclass
class CacheConfig:
    size: int = 20000
    min_ttl: int = 0
    max_ttl: int = 86400
    negative_ttl: int = 300
    blocked_ttl: int = 30  # short so schedule changes take effect within a minute
    sweep_interval: int = 30  # seconds per pass dropping expired entries (memory follows the live answers)


@dataclass
class DnsConfig:
    allowed_networks: list[str] = field(
        default_factory=lambda: [
            "127.0.0.0/8",
            "::1/128",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "fc00::/7",
            "fe80::/10",
        ]
    )
    rate_limit: int = 300  # queries per second per client address; 0 = off
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 256
    tcp_max_per_client: int = 16  # TCP connections at once from one client address
    strip_ech: bool = True
    strip_h3: bool = False


@dataclass
class HttpConfig:
    users_file: str | None = None  # proxy authentication: user → group
    hotline: str = "111"
    report_url: str = "https://tongdai111.vn"
    review_url: str | None = None
    ca_help_url: str = "http://mitm.it/"
    default_language: str = "vi"
    passthrough: list[str] = field(default_factory=list)
    max_image_bytes: int = 8 * 1024 * 1024
    image_hashing: bool = True
    pdq_max_distance: int = 31
    header_timeout: float = 30.0  # seconds a client connection gets to send each request head; 0 = off
    inspect_https: bool = True  # off: HTTPS decided on the host (CONNECT/SNI) only, allowed tunnels pass through
    listener_groups: dict[int, str] = field(default_factory=dict)  # port of a server.proxy_modes listener → group


@dataclass
class ReportsConfig:
    endpoint: str | None = None
    spool: str | None = None
    url_mode: str = "host"  # full | host | hashed | none
    include_client: bool = False
    token_file: SecretFile | None = None  # bearer token for the endpoint (read at start-up, config/secrets)


@dataclass
class MetricsConfig:
    basic_auth_user: str | None = None
    basic_auth_hash: str | None = None  # argon2id ($argon2id$...), filterproxy.passwords
    tls_cert_file: str | None = None  # /metrics over HTTPS (PEM chain) with tls_key_file
    tls_key_file: SecretFile | None = None


@dataclass
class QueryLogConfig:
    enabled: bool = False
    path: str | None = None
    retention_days: int = 7
    anonymise: bool = True


@dataclass
class DistributionConfig:
    """Lists from a ministry's TUF repository (docs/distribution.md): where, which root to trust, what to follow."""

    url: str | None = None
    mirrors: list[str] = field(default_factory=list)
    root: str | None = None  # the trusted root metadata shipped with the installation (1.root.json)
    province: str | None = None  # the province role followed besides the national lists
    refresh: int = 3600  # seconds between updates while filterproxy run serves
    jitter: int = 900  # up to this many seconds added at random to each wait (spreads a fleet)


@dataclass
class ClientRule:
    """One client → group mapping. Precedence: user > doh > mac > ip > cidr (longest prefix)."""

    kind: str  # user | doh | mac | ip | cidr
    value: str
    group: str
    where: str = ""


@dataclass
class Config:
    """A loaded, validated configuration."""

    path: str
    server: ServerConfig
    upstreams: UpstreamConfig
    cache: CacheConfig
    dns: DnsConfig
    http: HttpConfig
    reports: ReportsConfig
    metrics: MetricsConfig
    querylog: QueryLogConfig
    lists: list[ListSource]
    groups: dict[str, Policy]
    clients: list[ClientRule]
    default_group: str | None
    timezone: str
    sources_file: str | None = None
    distribution: DistributionConfig = field(default_factory=DistributionConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    digest: str = ""  # short sha256 of every file this configuration was read from (the reload log names it)

    def state_path(self, *parts: str) -> str:
        return os.path.join(self.server.state_dir, *parts)
