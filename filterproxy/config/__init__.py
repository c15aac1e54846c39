"""Typed configuration. All validation happens at load; errors name file, line and what was expected.

A configuration is one YAML file (``filterproxy.yaml``) plus the age-group policies it points at
(``policies/*.yaml``) and optionally a sources catalogue. Modules: ``loader`` (YAML with lines,
Section), ``model`` (the dataclasses), ``sections`` (one parser per simple section), ``lists``,
``groups`` (lists, groups and clients), ``policy`` (policy files), ``sources`` (the catalogue),
``load`` (load_config). Callers import from here.
"""

from filterproxy.config.load import DEFAULT_CONFIG, REPO_ROOT, load_config
from filterproxy.config.loader import Section, check_upstream, load_yaml, parse_hostport
from filterproxy.config.model import (
    CacheConfig,
    ClientRule,
    Config,
    DistributionConfig,
    DnsConfig,
    HttpConfig,
    MetricsConfig,
    QueryLogConfig,
    ReportsConfig,
    ServerConfig,
    UpstreamConfig,
)
from filterproxy.vocabulary import ConfigError

__all__ = [
    "DEFAULT_CONFIG",
    "REPO_ROOT",
    "CacheConfig",
    "ClientRule",
    "Config",
    "ConfigError",
    "DistributionConfig",
    "DnsConfig",
    "HttpConfig",
    "MetricsConfig",
    "QueryLogConfig",
    "ReportsConfig",
    "Section",
    "ServerConfig",
    "UpstreamConfig",
    "check_upstream",
    "load_config",
    "load_yaml",
    "parse_hostport",
]
