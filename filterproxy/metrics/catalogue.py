"""The catalogue: every filterproxy metric, defined once, and the bounded label sets they use.

Label values come from bounded sets only (domains, URLs and client addresses are never labels). Each
label has a :class:`LabelSet`: known values, plus at most ``extra`` further values learned at run time
(custom groups, configured list ids); anything beyond folds to ``"other"``. The known categories,
reasons, actions and DNS query types are derived from the modules that define them
(:mod:`filterproxy.vocabulary`, :mod:`filterproxy.verdict`, :mod:`filterproxy.dns.wire`), so a copy
here cannot drift from them.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable

from filterproxy.dns.wire import QTYPE_NAMES
from filterproxy.metrics.types import Counter, Derived, Gauge, Histogram, Info, LabelSet
from filterproxy.verdict import Action, Reason
from filterproxy.vocabulary import KNOWN_CATEGORIES

# --------------------------------------------------------------------------- label sets

DEFAULT_GROUPS = ("primary", "lower-secondary", "upper-secondary", "staff", "child", "teen", "adult")
CATEGORIES = (*sorted(KNOWN_CATEGORIES), "none")  # "none": a verdict without a category
QTYPES = tuple(QTYPE_NAMES.values())
REASONS = tuple(r.value for r in Reason)
ACTIONS = tuple(a.value for a in Action)

GROUP = LabelSet("group", DEFAULT_GROUPS + ("default", "unknown"), extra=32)
CATEGORY = LabelSet("category", CATEGORIES, extra=16)
LIST = LabelSet("list", (), extra=128)
UPSTREAM = LabelSet("upstream", (), extra=16)
# numeric codes and lower-case names fold to the upper-case name
QTYPE = LabelSet("qtype", QTYPES, aliases={**QTYPE_NAMES, **{q.lower(): q for q in QTYPES}})
ACTION = LabelSet("action", ACTIONS, extra=4)
PROTOCOL = LabelSet("protocol", ("udp", "tcp", "dot", "doh", "doq"))
REASON = LabelSet("reason", REASONS, extra=4)
REFUSED_REASON = LabelSet(
    "reason",
    ("acl", "unknown-client", "ratelimit", "qtype", "opcode", "any", "name", "tcp-limit", "tcp-client-limit"),
    extra=4,
)
LIST_FAILURE_REASON = LabelSet(
    "reason",
    ("download", "http", "timeout", "parse", "empty", "signature", "expired", "too-large", "sha256", "io", "config"),
    extra=4,
)
DISTRIBUTION_FAILURE_REASON = LabelSet(
    "reason",
    ("signature", "rollback", "expired", "delegation", "category", "hash", "download", "metadata", "install"),
)
DISTRIBUTION_ROLE = LabelSet("role", ("national", "province"))
RELOAD_RESULT = LabelSet("result", ("success", "failure", "unchanged"))
DATA_PATH = LabelSet("role", ("dns", "proxy"))
UPSTREAM_ERROR_KIND = LabelSet(
    "kind", ("timeout", "refused", "servfail", "network", "tls", "protocol", "http", "truncated"), extra=4
)
DNS_ERROR_KIND = LabelSet("kind", ("exception", "timeout", "policy", "cache", "upstream", "encode", "decode"), extra=16)
HTTP_HOOK = LabelSet(
    "hook",
    (
        "requestheaders",
        "request",
        "responseheaders",
        "response",
        "error",
        "http_connect",
        "tls_clienthello",
        "tls_start_client",
        "tls_start_server",
        "websocket_message",
        "client_connected",
        "server_connect",
        "configure",
        "next_layer",
        "http_connected",
        "http_connect_error",
    ),
    extra=8,
)
ENGINE = LabelSet(
    "engine",
    ("google", "youtube", "bing", "duckduckgo", "yandex", "yahoo", "ecosia", "brave", "qwant", "coccoc"),
    extra=8,
)
DNS_CACHE_KIND = LabelSet("cache", ("answers", "packed"))
IMAGE_MATCH_KIND = LabelSet("kind", ("exact", "pdq", "md5", "sha1", "sha256"), extra=4)
FULLHASH_RESULT = LabelSet("result", ("confirmed", "not_listed", "failed_closed", "failed_open"))


def configure_labels(
    *,
    groups: Iterable[str] = (),
    lists: Iterable[str] = (),
    upstreams: Iterable[str] = (),
    categories: Iterable[str] = (),
) -> None:
    """Declare the configured group ids, list ids, upstream names and categories as label values.

    Call it after loading the configuration. Values not declared are still learned (bounded); this
    only makes sure configured ones never fold to ``"other"`` because of the learning limit.
    """
    GROUP.add(groups)
    LIST.add(lists)
    UPSTREAM.add(upstreams)
    CATEGORY.add(categories)


# --------------------------------------------------------------------------- the metrics

_DNS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_IMAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# ---- build
BUILD_INFO = Info(
    "filterproxy_build_info",
    "filterproxy version and Python version (value is always 1).",
    keys=(),
    infos=("version", "python"),
)

# ---- dns
DNS_QUERIES = Counter(
    "filterproxy_dns_queries_total",
    "DNS queries answered, by age group, query type, action and transport.",
    (("group", GROUP), ("qtype", QTYPE), ("action", ACTION), ("protocol", PROTOCOL)),
)
DNS_BLOCKED = Counter(
    "filterproxy_dns_blocked_total",
    "DNS queries blocked, by age group, category and reason.",
    (("group", GROUP), ("category", CATEGORY), ("reason", REASON)),
)
DNS_CACHE_HITS = Counter("filterproxy_dns_cache_hits_total", "DNS answers served from the cache.")
DNS_CACHE_MISSES = Counter("filterproxy_dns_cache_misses_total", "DNS lookups not found in the cache.")
DNS_CACHE_ENTRIES = Gauge(
    "filterproxy_dns_cache_entries",
    "Live entries in the DNS caches: upstream answers (shared by all groups) and "
    "packed replies (all groups); expired ones are swept within seconds.",
    (("cache", DNS_CACHE_KIND),),
    multiprocess_mode="sum",
)
DNS_UPSTREAM_DURATION = Histogram(
    "filterproxy_dns_upstream_duration_seconds",
    "Time of each exchange with an upstream resolver, failures included (until the error).",
    (("upstream", UPSTREAM),),
    buckets=_DNS_BUCKETS,
)
DNS_UPSTREAM_ERRORS = Counter(
    "filterproxy_dns_upstream_errors_total",
    "Failed exchanges with an upstream resolver, by kind.",
    (("upstream", UPSTREAM), ("kind", UPSTREAM_ERROR_KIND)),
)
DNS_RATELIMITED = Counter(
    "filterproxy_dns_ratelimited_total", "DNS queries dropped by the per-client rate limit.", (("group", GROUP),)
)
DNS_REFUSED = Counter(
    "filterproxy_dns_refused_total", "DNS queries answered REFUSED, by reason.", (("reason", REFUSED_REASON),)
)
DNS_MALFORMED = Counter("filterproxy_dns_malformed_total", "DNS messages that could not be parsed.")
DNS_ERRORS = Counter(
    "filterproxy_dns_errors_total",
    "Internal errors in the DNS path, answered SERVFAIL (fail closed).",
    (("kind", DNS_ERROR_KIND),),
)

# ---- http
HTTP_REQUESTS = Counter(
    "filterproxy_http_requests_total",
    "HTTP(S) requests seen by the proxy, by age group, action and reason.",
    (("group", GROUP), ("action", ACTION), ("reason", REASON)),
)
HTTP_BLOCKED = Counter(
    "filterproxy_http_blocked_total",
    "HTTP(S) requests blocked, by age group and category.",
    (("group", GROUP), ("category", CATEGORY)),
)
HTTP_ERRORS = Counter(
    "filterproxy_http_errors_total",
    "Exceptions in a proxy hook that blocked the flow (fail closed), by hook.",
    (("hook", HTTP_HOOK),),
)
HTTP_SAFESEARCH_REWRITES = Counter(
    "filterproxy_http_safesearch_rewrites_total",
    "Search requests rewritten to SafeSearch, by group and engine.",
    (("group", GROUP), ("engine", ENGINE)),
)
HTTP_SLOW_CLIENTS = Counter(
    "filterproxy_http_slow_clients_total",
    "Client connections closed for sending no complete request head within http.header_timeout.",
)

# ---- lists
LISTS_ENTRIES = Gauge(
    "filterproxy_lists_entries",
    "Entries in the loaded snapshot, by list and category.",
    (("list", LIST), ("category", CATEGORY)),
)
LISTS_INFO = Info(
    "filterproxy_lists_info",
    "Version of each loaded list (value is always 1).",
    keys=(("list", LIST),),
    infos=("version",),
)
LISTS_LAST_SUCCESS = Gauge(
    "filterproxy_lists_last_success_timestamp_seconds",
    "When each list was last fetched and verified (Unix time).",
    (("list", LIST),),
    multiprocess_mode="max",
)
LISTS_AGE = Derived(
    "filterproxy_lists_age_seconds",
    "Seconds since each list was last fetched and verified (computed at scrape).",
    LISTS_LAST_SUCCESS,
    lambda ts, now: max(0.0, now - ts),
)
LISTS_UPDATE_FAILURES = Counter(
    "filterproxy_lists_update_failures_total",
    "Failed list updates (the last good copy stays in use), by reason.",
    (("list", LIST), ("reason", LIST_FAILURE_REASON)),
)
LISTS_RELOADS = Counter("filterproxy_lists_reloads_total", "Snapshot reloads, by result.", (("result", RELOAD_RESULT),))
CONFIG_RELOADS = Counter(
    "filterproxy_config_reloads_total",
    "Configuration reloads (SIGHUP), by result; a failure keeps the running configuration.",
    (("result", RELOAD_RESULT),),
)
CONFIG_GENERATION = Gauge(
    "filterproxy_config_generation",
    "Config generation served (1 at start, +1 per successful reload): the lowest of the role's processes.",
    (("role", DATA_PATH),),
    multiprocess_mode="min",
)

# ---- distribution (lists from the ministry's TUF repository, filterproxy/distribution)
DISTRIBUTION_LIST_VERSION = Gauge(
    "filterproxy_distribution_list_version",
    "Version of each served list installed from the distribution repository, by list and role.",
    (("list", LIST), ("role", DISTRIBUTION_ROLE)),
)
DISTRIBUTION_ROOT_VERSION = Gauge(
    "filterproxy_distribution_root_version", "Version of the trusted root metadata (changes when keys rotate)."
)
DISTRIBUTION_SNAPSHOT_VERSION = Gauge(
    "filterproxy_distribution_snapshot_version", "Version of the repository snapshot the gateway last verified."
)
DISTRIBUTION_LAST_SUCCESS = Gauge(
    "filterproxy_distribution_last_success_timestamp_seconds",
    "When the gateway last completed an update from the distribution repository (Unix time).",
)
DISTRIBUTION_FAILURES = Counter(
    "filterproxy_distribution_failures_total",
    "Refused distribution updates or lists (the last good lists stay in use), by reason.",
    (("reason", DISTRIBUTION_FAILURE_REASON),),
)

# ---- imagehash
IMAGEHASH_IMAGES = Counter("filterproxy_imagehash_images_total", "Images hashed by the proxy.")
IMAGEHASH_MATCHES = Counter(
    "filterproxy_imagehash_matches_total",
    "Images matching a hash list (blocked and reported), by list and kind.",
    (("list", LIST), ("kind", IMAGE_MATCH_KIND)),
)
IMAGEHASH_DURATION = Histogram(
    "filterproxy_imagehash_duration_seconds", "Time to decode and hash one image.", buckets=_IMAGE_BUCKETS
)

# ---- fullhash (URL-hash prefix hits confirmed by the list's endpoint, docs/fullhash.md)
FULLHASH_CHECKS = Counter(
    "filterproxy_fullhash_checks_total",
    "URL-hash prefix hits checked against the list's full-hash endpoint or its cached answers, by list and "
    "result: confirmed (blocks), not_listed (a prefix collision, allowed), failed_closed / failed_open "
    "(endpoint unreachable or invalid answer: blocked / allowed as the list says).",
    (("list", LIST), ("result", FULLHASH_RESULT)),
)

# ---- reports
REPORTS_QUEUE_DEPTH = Gauge("filterproxy_reports_queue_depth", "Reports waiting for delivery.", multiprocess_mode="sum")
REPORTS_DELIVERED = Counter("filterproxy_reports_delivered_total", "Reports delivered.")
REPORTS_DELIVERY_FAILURES = Counter("filterproxy_reports_delivery_failures_total", "Failed report deliveries.")

# ---- querylog (aggregate counts only: the records themselves never leave the log files)
QUERYLOG_WRITTEN = Counter("filterproxy_querylog_written_total", "Query log records written to disk.")
QUERYLOG_DROPPED = Counter(
    "filterproxy_querylog_dropped_total", "Query log records dropped because the writer could not keep up."
)

# ---- admin (the control API)
ADMIN_LOGINS = Counter(
    "filterproxy_admin_logins_total",
    "Control API logins, by result (locked: refused while the address is locked out).",
    (("result", LabelSet("result", ("success", "failure", "locked"))),),
)
ADMIN_ERRORS = Counter("filterproxy_admin_errors_total", "Control API requests that failed with an internal error.")


def _version() -> str:
    """The installed package's version, else the source tree's."""
    try:
        from importlib.metadata import version

        return version("filterproxy")
    except Exception:
        import sys

        return getattr(sys.modules.get("filterproxy"), "__version__", "unknown")


BUILD_INFO.set(_version(), platform.python_version())
