"""Typed configuration. All validation happens here, at load; errors name file, line and what was expected.

A configuration is one YAML file (``filterproxy.yaml``) plus the age-group policies it points at
(``policies/*.yaml``). Relative paths are relative to the file that names them. Without ``--config``,
the embedded default (``filterproxy/defaults/filterproxy.yaml``) is used: every section has defaults.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any

import yaml

from filterproxy.vocabulary import ID_RE as _ID_RE
from filterproxy.vocabulary import ConfigError
from filterproxy.lists.parsers import FORMATS
from filterproxy.lists.store import ListSource
from filterproxy.policy.model import Policy, parse_policy

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "defaults", "filterproxy.yaml")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))




class _Map(dict):
    """A YAML mapping that remembers the line of every key (1-based)."""

    line: int = 0
    file: str = ""
    key_lines: dict

    def where(self, key: str | None = None) -> str:
        line = self.key_lines.get(key, self.line) if key is not None else self.line
        return f"{self.file}:{line}"


class _List(list):
    line: int = 0
    file: str = ""
    item_lines: list

    def where(self, i: int | None = None) -> str:
        line = self.item_lines[i] if i is not None and i < len(self.item_lines) else self.line
        return f"{self.file}:{line}"


def load_yaml(path: str) -> Any:
    """Load YAML keeping line numbers on mappings and sequences; syntax errors → ConfigError."""

    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _Map:
        loader.flatten_mapping(node)
        m = _Map()
        m.line = node.start_mark.line + 1
        m.file = path
        m.key_lines = {}
        for k_node, v_node in node.value:
            key = loader.construct_object(k_node, deep=True)
            if key in m:
                raise ConfigError(f"{path}:{k_node.start_mark.line + 1}: duplicate key {key!r}")
            m[key] = loader.construct_object(v_node, deep=True)
            m.key_lines[key] = k_node.start_mark.line + 1
        return m

    def construct_seq(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> _List:
        seq = _List(loader.construct_object(n, deep=True) for n in node.value)
        seq.line = node.start_mark.line + 1
        seq.file = path
        seq.item_lines = [n.start_mark.line + 1 for n in node.value]
        return seq

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, construct_seq)
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=Loader)  # noqa: S506 - SafeLoader subclass
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        context = ""
        if exc.context and exc.context_mark and exc.context_mark.line + 1 != line:
            context = f" ({exc.context} started at line {exc.context_mark.line + 1})"
        raise ConfigError(f"{path}:{line}: invalid YAML: {exc.problem or exc}{context}") from None


# ---------------------------------------------------------------- small typed readers

class Section:
    """Reads one mapping with type checks; unknown keys are errors (typos must not pass silently)."""

    def __init__(self, data: Any, name: str, where: str):
        if data is None:
            data = _Map()
            data.line, data.file, data.key_lines = 0, where.rsplit(":", 1)[0], {}
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: '{name}' must be a mapping, got {type(data).__name__}")
        self.data = data
        self.name = name
        self.where_default = where
        self.used: set[str] = set()

    def where(self, key: str | None = None) -> str:
        return self.data.where(key) if isinstance(self.data, _Map) else self.where_default

    def get(self, key: str, default: Any = None, *, types: tuple = (), choices: tuple = ()) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        v = self.data[key]
        if types and not isinstance(v, types) or (types and isinstance(v, bool) and bool not in types):
            names = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{self.where(key)}: '{self.name}.{key}' must be {names}, got {v!r}")
        if choices and v not in choices:
            raise ConfigError(f"{self.where(key)}: '{self.name}.{key}' must be one of {', '.join(map(str, choices))}, got {v!r}")
        return v

    def done(self) -> None:
        unknown = [k for k in self.data if k not in self.used]
        if unknown:
            k = unknown[0]
            raise ConfigError(f"{self.where(k)}: unknown key '{self.name}.{k}' (expected one of: {', '.join(sorted(self.used))})")


def parse_hostport(text: str, where: str, default_port: int) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT``, ``HOST`` → (host, port)."""
    t = str(text).strip()
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::(\d+))?", t)
    if m:
        host, port = m.group(1), m.group(2)
    elif t.count(":") == 1:
        host, port = t.split(":")
    elif t.count(":") > 1:
        host, port = t, None  # bare IPv6
    else:
        host, port = t, None
    try:
        p = int(port) if port else default_port
    except ValueError:
        raise ConfigError(f"{where}: invalid port in {text!r} (expected HOST:PORT)") from None
    if not host or not 0 < p < 65536:
        raise ConfigError(f"{where}: invalid address {text!r} (expected HOST:PORT)")
    return host, p


# ---------------------------------------------------------------- config sections

@dataclass
class ServerConfig:
    dns_listen: tuple[str, int] | None = ("127.0.0.1", 5353)
    proxy_listen: tuple[str, int] | None = ("127.0.0.1", 8080)
    proxy_workers: int = 1
    dns_workers: int = 1
    metrics_listen: tuple[str, int] | None = ("127.0.0.1", 9108)
    block_page_ipv4: str = "127.0.0.1"
    block_page_ipv6: str = "::1"
    gateway_id: str = field(default_factory=socket.gethostname)
    state_dir: str = ""


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
    allowed_networks: list[str] = field(default_factory=lambda: [
        "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
        "fc00::/7", "fe80::/10"])
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


@dataclass
class ReportsConfig:
    endpoint: str | None = None
    spool: str | None = None
    url_mode: str = "host"  # full | host | hashed | none
    include_client: bool = False


@dataclass
class MetricsConfig:
    push_url: str | None = None
    push_interval: int = 60
    push_grouping: dict[str, str] = field(default_factory=dict)
    basic_auth_user: str | None = None
    basic_auth_hash: str | None = None


@dataclass
class QueryLogConfig:
    enabled: bool = False
    path: str | None = None
    retention_days: int = 7
    anonymise: bool = True


@dataclass
class BundleConfig:
    """Signed list bundles from a ministry: pinned public keys (two during a key change-over), optional URL."""

    keys: list[str] = field(default_factory=list)
    url: str | None = None


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
    bundle: BundleConfig = field(default_factory=BundleConfig)

    def state_path(self, *parts: str) -> str:
        return os.path.join(self.server.state_dir, *parts)


_CATEGORY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def _resolve(base_file: str, p: str) -> str:
    p = os.path.expanduser(os.path.expandvars(str(p)))
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(base_file)), p))


def _listen(sec: Section, key: str, default: tuple[str, int] | None, port: int) -> tuple[str, int] | None:
    v = sec.get(key, "__default__")
    if v == "__default__":
        return default
    if v is False or v is None or str(v).lower() in ("off", "none", "false", ""):
        return None
    return parse_hostport(str(v), sec.where(key), port)


def load_config(path: str | None = None) -> Config:
    """Load and validate a configuration file (default: the embedded one)."""
    path = os.path.abspath(path or DEFAULT_CONFIG)
    raw = load_yaml(path)
    top = Section(raw, "config", f"{path}:1")

    s = Section(top.get("server"), "server", top.where("server"))
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
    )
    for key in ("block_page_ipv4", "block_page_ipv6"):
        try:
            ipaddress.ip_address(getattr(server, key))
        except ValueError:
            raise ConfigError(f"{s.where(key)}: 'server.{key}' must be an IP address") from None
    s.done()
    server.state_dir = _resolve(path, server.state_dir) if server.state_dir else os.path.join(
        os.environ.get("XDG_STATE_HOME", os.path.expanduser("~/.local/state")), "filterproxy")

    u = Section(top.get("upstreams"), "upstreams", top.where("upstreams"))
    servers = u.get("servers", None, types=(list,))
    cond = u.get("conditional", {}, types=(dict,))
    upstreams = UpstreamConfig(
        servers=[str(x) for x in servers] if servers is not None else UpstreamConfig().servers,
        strategy=u.get("strategy", "failover", choices=("failover", "parallel")),
        timeout=float(u.get("timeout", 2.0, types=(int, float))),
        conditional={str(k).lower().rstrip("."): [str(x) for x in (v if isinstance(v, list) else [v])]
                     for k, v in cond.items()},
    )
    u.done()
    for addr in upstreams.servers + [a for v in upstreams.conditional.values() for a in v]:
        check_upstream(addr, u.where("servers"))

    c = Section(top.get("cache"), "cache", top.where("cache"))
    cache = CacheConfig(**{k: c.get(k, getattr(CacheConfig(), k), types=(int,)) for k in
                           ("size", "min_ttl", "max_ttl", "negative_ttl", "blocked_ttl", "sweep_interval")})
    if cache.sweep_interval < 1:
        raise ConfigError(f"{c.where('sweep_interval')}: 'cache.sweep_interval' must be at least 1 (seconds), "
                          f"got {cache.sweep_interval}")
    c.done()

    d = Section(top.get("dns"), "dns", top.where("dns"))
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
        raise ConfigError(f"{d.where('tcp_max_per_client')}: 'dns.tcp_max_per_client' must be at least 1 "
                          f"(connections), got {dns.tcp_max_per_client}")
    for net in dns.allowed_networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"{d.where('allowed_networks')}: invalid network {net!r} (expected CIDR like 10.0.0.0/8)") from None
    d.done()

    h = Section(top.get("http"), "http", top.where("http"))
    hd = HttpConfig()
    http = HttpConfig(
        users_file=h.get("users_file", None, types=(str,)),
        hotline=str(h.get("hotline", hd.hotline, types=(str, int))),
        report_url=h.get("report_url", hd.report_url, types=(str,)),
        review_url=h.get("review_url", None, types=(str,)),
        ca_help_url=h.get("ca_help_url", hd.ca_help_url, types=(str,)),
        default_language=h.get("default_language", "vi", choices=("vi", "en")),
        passthrough=[str(x) for x in h.get("passthrough", [], types=(list,))],
        max_image_bytes=h.get("max_image_bytes", hd.max_image_bytes, types=(int,)),
        image_hashing=h.get("image_hashing", True, types=(bool,)),
        pdq_max_distance=h.get("pdq_max_distance", 31, types=(int,)),
    )
    if http.users_file:
        http.users_file = _resolve(path, http.users_file)
    h.done()

    r = Section(top.get("reports"), "reports", top.where("reports"))
    reports = ReportsConfig(
        endpoint=r.get("endpoint", None, types=(str,)),
        spool=r.get("spool", None, types=(str,)),
        url_mode=r.get("url_mode", "host", choices=("full", "host", "hashed", "none")),
        include_client=r.get("include_client", False, types=(bool,)),
    )
    if reports.spool:
        reports.spool = _resolve(path, reports.spool)
    r.done()

    m = Section(top.get("metrics"), "metrics", top.where("metrics"))
    metrics = MetricsConfig(
        push_url=m.get("push_url", None, types=(str,)),
        push_interval=m.get("push_interval", 60, types=(int,)),
        push_grouping={str(k): str(v) for k, v in m.get("push_grouping", {}, types=(dict,)).items()},
        basic_auth_user=m.get("basic_auth_user", None, types=(str,)),
        basic_auth_hash=m.get("basic_auth_hash", None, types=(str,)),
    )
    m.done()

    q = Section(top.get("querylog"), "querylog", top.where("querylog"))
    querylog = QueryLogConfig(
        enabled=q.get("enabled", False, types=(bool,)),
        path=q.get("path", None, types=(str,)),
        retention_days=q.get("retention_days", 7, types=(int,)),
        anonymise=q.get("anonymise", True, types=(bool,)),
    )
    q.done()

    b = Section(top.get("bundle"), "bundle", top.where("bundle"))
    bundle_cfg = BundleConfig(keys=[_resolve(path, k) for k in b.get("keys", [], types=(list,))],
                              url=b.get("url", None, types=(str,)))
    for k in bundle_cfg.keys:
        if not os.path.exists(k):
            raise ConfigError(f"{b.where('keys')}: pinned bundle key not found: {k}")
    b.done()

    timezone = top.get("timezone", "Asia/Ho_Chi_Minh", types=(str,))
    try:
        import zoneinfo

        zoneinfo.ZoneInfo(timezone)
    except Exception:
        raise ConfigError(f"{top.where('timezone')}: unknown time zone {timezone!r} (expected e.g. Asia/Ho_Chi_Minh)") from None

    sources_file = top.get("sources", None, types=(str,))
    if sources_file:
        sources_file = _resolve(path, sources_file)
    lists = _load_lists(top, path, server.state_dir, sources_file)
    groups = _load_groups(top, path)
    clients = _load_clients(top, path, groups)
    default_group = top.get("default_group", None, types=(str,))
    if default_group is not None and default_group not in groups:
        raise ConfigError(f"{top.where('default_group')}: default_group {default_group!r} is not a defined group "
                          f"(groups: {', '.join(groups)})")
    categories = {li.category for li in lists}
    for g in groups.values():
        g.check_categories(categories)
    top.done()
    return Config(path, server, upstreams, cache, dns, http, reports, metrics, querylog, lists, groups, clients,
                  default_group, timezone, sources_file, bundle_cfg)


def check_upstream(addr: str, where: str) -> None:
    """Upstream syntax: ``IP[:PORT]``, ``tcp://IP[:PORT]``, ``tls://HOST[:PORT][#IP]``, ``https://HOST/PATH``."""
    a = addr.strip()
    if a.startswith("https://"):
        return
    for prefix in ("tls://", "tcp://", "udp://"):
        if a.startswith(prefix):
            a = a[len(prefix):]
            break
    a = a.split("#", 1)[0]
    host, _port = parse_hostport(a, where, 53)
    if not host:
        raise ConfigError(f"{where}: invalid upstream {addr!r}")


def _catalogue(sources_file: str | None, where: str) -> dict:
    """The list catalogue (``sources:``, e.g. blocklists/sources.yaml) by id."""
    if not sources_file:
        raise ConfigError(f"{where}: 'source:' needs the top-level 'sources:' catalogue file")
    from filterproxy.lists.fetch import SourcesError, load_sources

    try:
        return {s.id: s for s in load_sources(sources_file)}
    except (SourcesError, OSError) as exc:
        raise ConfigError(f"{sources_file}: {exc}") from None


def _load_lists(top: Section, path: str, state_dir: str, sources_file: str | None = None) -> list[ListSource]:
    raw = top.get("lists", [], types=(list,))
    out: list[ListSource] = []
    catalogue: dict | None = None
    for i, item in enumerate(raw):
        where = raw.where(i) if isinstance(raw, _List) else f"{path}:?"
        sec = Section(item, f"lists[{i}]", where)
        ref = sec.get("source", None, types=(str,))
        if ref is not None:
            # "- source: hagezi-nsfw": id, url, format, category, match come from the catalogue;
            # keys given here (category, legal, allow, match, path) override them
            catalogue = catalogue if catalogue is not None else _catalogue(sources_file, sec.where("source"))
            if ref not in catalogue:
                raise ConfigError(f"{sec.where('source')}: unknown source {ref!r} in {sources_file} "
                                  f"(known: {', '.join(sorted(catalogue)[:12])}, ...)")
            c = catalogue[ref]
            for key, val in (("id", c.id), ("url", c.url), ("format", c.format), ("category", c.category),
                             ("match", c.match)):
                if val is not None and sec.data.get(key) is None:
                    sec.data[key] = val
        lid = sec.get("id", None, types=(str,))
        if not lid or not _ID_RE.match(lid):
            raise ConfigError(f"{sec.where('id')}: list needs an 'id' (letters, digits, '-', '_', '.'), got {lid!r}")
        fmt = sec.get("format", None, types=(str,))
        if fmt not in FORMATS:
            raise ConfigError(f"{sec.where('format')}: list {lid!r}: 'format' must be one of {', '.join(FORMATS)}, got {fmt!r}")
        cat = sec.get("category", None, types=(str,))
        if not cat or not _CATEGORY_RE.match(cat):
            raise ConfigError(f"{sec.where('category')}: list {lid!r}: 'category' must be a lower-case id like 'adult', got {cat!r}")
        p = sec.get("path", None, types=(str,))
        url = sec.get("url", None, types=(str,))
        if not p and not url:
            raise ConfigError(f"{sec.where()}: list {lid!r} needs 'path' or 'url'")
        if p:
            p = _resolve(path, p)
            if not os.path.exists(p):
                raise ConfigError(f"{sec.where('path')}: list {lid!r}: file not found: {p}")
        else:
            p = os.path.join(state_dir, "lists", f"{lid}.txt")  # written by 'filterproxy lists update'
        out.append(ListSource(
            id=lid, category=cat, format=fmt, path=p, url=url,
            match=sec.get("match", None, choices=("exact", "subdomains")),
            allow=sec.get("allow", False, types=(bool,)),
            legal=sec.get("legal", False, types=(bool,)),
            hashed=sec.get("hashed", fmt in ("urlhash", "imagehash"), types=(bool,)),
            where=where,
        ))
        for k in ("licence", "license", "refresh", "max_bytes", "sha256", "description", "source"):
            sec.get(k)
        sec.done()
    return out


def _load_groups(top: Section, path: str) -> dict[str, Policy]:
    pdir = _resolve(path, top.get("policies_dir", "policies", types=(str,)))
    raw = top.get("groups", None, types=(dict, list))
    groups: dict[str, Policy] = {}
    if raw is None:
        # every policy file in the policies folder is a group
        if not os.path.isdir(pdir):
            raise ConfigError(f"{top.where()}: no 'groups' and policies folder {pdir} not found")
        names = sorted(f[:-5] for f in os.listdir(pdir) if f.endswith(".yaml"))
        raw = {n: {"policy": n} for n in names}
    if isinstance(raw, list):
        raw = {str(n): {"policy": str(n)} for n in raw}
    for gid, spec in raw.items():
        where = raw.where(gid) if isinstance(raw, _Map) else f"{path}:?"
        if not _ID_RE.match(str(gid)):
            raise ConfigError(f"{where}: invalid group id {gid!r}")
        if isinstance(spec, str):
            spec = {"policy": spec}
        sec = Section(spec, f"groups.{gid}", where)
        pfile = sec.get("policy", gid, types=(str,))
        sec.done()
        ppath = pfile if pfile.endswith(".yaml") else os.path.join(pdir, pfile + ".yaml")
        ppath = _resolve(path, ppath) if not os.path.isabs(ppath) else ppath
        if not os.path.exists(ppath):
            raise ConfigError(f"{where}: group {gid!r}: policy file not found: {ppath}")
        groups[str(gid)] = parse_policy(load_yaml(ppath), str(gid), ppath, Section, ConfigError)
    if not groups:
        raise ConfigError(f"{top.where('groups')}: at least one group is required")
    return groups


def _load_clients(top: Section, path: str, groups: dict[str, Policy]) -> list[ClientRule]:
    raw = top.get("clients", [], types=(list,))
    out: list[ClientRule] = []
    for i, item in enumerate(raw):
        where = raw.where(i) if isinstance(raw, _List) else f"{path}:?"
        sec = Section(item, f"clients[{i}]", where)
        group = sec.get("group", None, types=(str,))
        if group not in groups:
            raise ConfigError(f"{sec.where('group')}: clients[{i}]: unknown group {group!r} (groups: {', '.join(groups)})")
        kinds = [k for k in ("user", "doh", "mac", "ip", "cidr") if sec.get(k) is not None]
        if len(kinds) != 1:
            raise ConfigError(f"{where}: clients[{i}] needs exactly one of user, doh, mac, ip, cidr")
        kind = kinds[0]
        value = str(sec.get(kind))
        try:
            if kind == "ip":
                value = str(ipaddress.ip_address(value))
            elif kind == "cidr":
                value = str(ipaddress.ip_network(value, strict=False))
            elif kind == "mac":
                if not re.fullmatch(r"(?:[0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}", value):
                    raise ValueError
                value = value.lower().replace("-", ":")
        except ValueError:
            raise ConfigError(f"{sec.where(kind)}: clients[{i}]: invalid {kind} {value!r}") from None
        sec.done()
        out.append(ClientRule(kind, value, group, where))
    return out
