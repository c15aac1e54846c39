"""``load_config``: one YAML file (plus the policies and catalogue it names) → a validated :class:`Config`.

Relative paths are relative to the file that names them. Without a path the embedded default
(``filterproxy/defaults/filterproxy.yaml``) is used; every section has defaults.
"""

from __future__ import annotations

import hashlib
import os

from filterproxy.config.admin import parse_admin
from filterproxy.config.groups import parse_clients, parse_groups
from filterproxy.config.lists import parse_lists
from filterproxy.config.loader import Section, load_yaml
from filterproxy.config.model import Config
from filterproxy.config.policy import check_categories
from filterproxy.config.proxy import check_listener_groups
from filterproxy.config.sections import (
    parse_cache,
    parse_distribution,
    parse_dns,
    parse_http,
    parse_metrics,
    parse_querylog,
    parse_reports,
    parse_server,
    parse_timezone,
    parse_upstreams,
    resolve_path,
)
from filterproxy.vocabulary import ConfigError

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(_PACKAGE, "defaults", "filterproxy.yaml")
REPO_ROOT = os.path.dirname(_PACKAGE)


def load_config(path: str | None = None) -> Config:
    """Load and validate a configuration file (default: the embedded one)."""
    path = os.path.abspath(path or DEFAULT_CONFIG)
    top = Section(load_yaml(path), "config", f"{path}:1")
    # the simple sections first, in this order (the first error found is the one reported)
    server = parse_server(top.section("server"), path)
    upstreams = parse_upstreams(top.section("upstreams"), path)
    cache = parse_cache(top.section("cache"), path)
    dns = parse_dns(top.section("dns"), path)
    http = parse_http(top.section("http"), path)
    reports = parse_reports(top.section("reports"), path)
    metrics = parse_metrics(top.section("metrics"), path)
    querylog = parse_querylog(top.section("querylog"), path)
    distribution = parse_distribution(top.section("distribution"), path)
    admin = parse_admin(top.section("admin"), path)
    timezone = parse_timezone(top)
    sources_file = top.get("sources", None, types=(str,))
    if sources_file:
        sources_file = resolve_path(path, sources_file)
    lists = parse_lists(top.get("lists", [], types=(list,)), path, sources_file)
    groups = parse_groups(top, path)
    clients = parse_clients(top.get("clients", [], types=(list,)), path, groups)
    check_listener_groups(top.data.get("http"), path, server.proxy_modes, groups)
    default_group = top.get("default_group", None, types=(str,))
    if default_group is not None and default_group not in groups:
        raise ConfigError(
            f"{top.where('default_group')}: default_group {default_group!r} is not a defined group "
            f"(groups: {', '.join(groups)})"
        )
    categories = {li.category for li in lists}
    for g in groups.values():
        check_categories(g, categories)
    top.done()
    cfg = Config(
        path,
        server,
        upstreams,
        cache,
        dns,
        http,
        reports,
        metrics,
        querylog,
        lists,
        groups,
        clients,
        default_group,
        timezone,
        sources_file,
        distribution,
        admin,
    )
    cfg.digest = config_digest([path, sources_file, *(g.file for g in groups.values())])
    return cfg


def config_digest(files: list[str | None]) -> str:
    """12 hex digits of a sha256 over the content of ``files`` (each once): which configuration is served."""
    h = hashlib.sha256()
    for f in dict.fromkeys(x for x in files if x):
        h.update(f.encode() + b"\0")
        try:
            with open(f, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
        except OSError:  # read a moment ago; gone now: the digest says so by differing
            h.update(b"?")
    return h.hexdigest()[:12]
