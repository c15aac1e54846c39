"""Every filterproxy metric, defined once, exposed through one registry.

- :mod:`.types`: bounded label sets, the hot-path metric classes and the collector;
- :mod:`.multiprocess`: counters shared by several processes through state files;
- :mod:`.catalogue`: every metric and its label sets, derived from the shared vocabulary;
- :mod:`.registry`: the process-wide registry, fork and exit hooks;
- :mod:`.exposition`: ``/metrics`` over HTTP(S) with Basic auth, and the Pushgateway pusher.

Callers use ``from filterproxy import metrics`` and the names below.
"""

from __future__ import annotations

from filterproxy.metrics.catalogue import (
    ACTION, ACTIONS, BUILD_INFO, BUNDLE_INFO, BUNDLE_SERIAL, CATEGORIES, CATEGORY, DEFAULT_GROUPS, DNS_BLOCKED,
    DNS_CACHE_ENTRIES, DNS_CACHE_HITS, DNS_CACHE_KIND, DNS_CACHE_MISSES, DNS_ERROR_KIND, DNS_ERRORS, DNS_MALFORMED,
    DNS_QUERIES, DNS_RATELIMITED, DNS_REFUSED, DNS_UPSTREAM_DURATION, DNS_UPSTREAM_ERRORS, ENGINE, GROUP,
    HTTP_BLOCKED, HTTP_ERRORS, HTTP_HOOK, HTTP_REQUESTS, HTTP_SAFESEARCH_REWRITES, IMAGE_MATCH_KIND,
    IMAGEHASH_DURATION, IMAGEHASH_IMAGES, IMAGEHASH_MATCHES, LIST, LIST_FAILURE_REASON, LISTS_AGE, LISTS_ENTRIES,
    LISTS_INFO, LISTS_LAST_SUCCESS, LISTS_RELOADS, LISTS_UPDATE_FAILURES, PROTOCOL, QTYPE, QTYPES, REASON, REASONS,
    REFUSED_REASON, RELOAD_RESULT, REPORTS_DELIVERED, REPORTS_DELIVERY_FAILURES, REPORTS_QUEUE_DEPTH, UPSTREAM,
    UPSTREAM_ERROR_KIND, configure_labels,
)
from filterproxy.metrics.exposition import DEFAULT_LISTEN, MetricsServer, Pusher, parse_listen, serve
from filterproxy.metrics.registry import REGISTRY, enable_multiprocess, flush
from filterproxy.metrics.types import (
    COLLECTOR, OTHER, Counter, Derived, Gauge, Histogram, Info, LabelSet, MetricsCollector)

__all__ = [
    "ACTION", "ACTIONS", "BUILD_INFO", "BUNDLE_INFO", "BUNDLE_SERIAL", "CATEGORIES", "CATEGORY", "COLLECTOR",
    "Counter", "DEFAULT_GROUPS", "DEFAULT_LISTEN", "DNS_BLOCKED", "DNS_CACHE_ENTRIES", "DNS_CACHE_HITS",
    "DNS_CACHE_KIND", "DNS_CACHE_MISSES", "DNS_ERRORS", "DNS_ERROR_KIND", "DNS_MALFORMED", "DNS_QUERIES",
    "DNS_RATELIMITED", "DNS_REFUSED", "DNS_UPSTREAM_DURATION", "DNS_UPSTREAM_ERRORS", "Derived", "ENGINE", "GROUP",
    "Gauge", "HTTP_BLOCKED", "HTTP_ERRORS", "HTTP_HOOK", "HTTP_REQUESTS", "HTTP_SAFESEARCH_REWRITES", "Histogram",
    "IMAGEHASH_DURATION", "IMAGEHASH_IMAGES", "IMAGEHASH_MATCHES", "IMAGE_MATCH_KIND", "Info", "LIST", "LISTS_AGE",
    "LISTS_ENTRIES", "LISTS_INFO", "LISTS_LAST_SUCCESS", "LISTS_RELOADS", "LISTS_UPDATE_FAILURES",
    "LIST_FAILURE_REASON", "LabelSet", "MetricsCollector", "MetricsServer", "OTHER", "PROTOCOL", "Pusher", "QTYPE",
    "QTYPES", "REASON", "REASONS", "REFUSED_REASON", "REGISTRY", "RELOAD_RESULT", "REPORTS_DELIVERED",
    "REPORTS_DELIVERY_FAILURES", "REPORTS_QUEUE_DEPTH", "UPSTREAM", "UPSTREAM_ERROR_KIND", "configure_labels",
    "enable_multiprocess", "flush", "parse_listen", "serve",
]
