"""SafeSearch targets: which search host is rewritten to which safe host, per level.

DNS answers a CNAME to the target; the HTTP path also adds the engine's parameters/headers
(``safe=active``, ``YouTube-Restrict``, ``adlt=strict``, ``kp=1``).
"""

from __future__ import annotations

# Google's documented SafeSearch VIP (support.google.com/websearch/answer/186669)
GOOGLE_TARGET = "forcesafesearch.google.com"
_GOOGLE_TLDS = (
    "com",
    "com.vn",
    "vn",
    "co.uk",
    "com.au",
    "ca",
    "de",
    "fr",
    "co.jp",
    "co.kr",
    "com.sg",
    "co.th",
    "co.id",
    "com.my",
    "com.ph",
    "co.in",
    "com.hk",
    "com.tw",
    "cn",
    "ru",
    "es",
    "it",
    "nl",
    "pl",
    "com.br",
    "com.mx",
    "com.ar",
    "co.nz",
    "ch",
    "be",
    "at",
    "se",
    "no",
    "dk",
    "fi",
    "ie",
    "pt",
    "gr",
    "tr",
    "com.tr",
    "cz",
    "com.kh",
    "la",
    "com.sa",
    "ae",
    "co.za",
    "com.eg",
    "co.il",
    "com.pk",
    "com.bd",
    "lk",
    "com.ua",
)
YOUTUBE_HOSTS = (
    "www.youtube.com",
    "m.youtube.com",
    "youtubei.googleapis.com",
    "youtube.googleapis.com",
    "www.youtube-nocookie.com",
)
YOUTUBE_TARGETS = {"strict": "restrict.youtube.com", "moderate": "restrictmoderate.youtube.com"}
BING_HOSTS = ("www.bing.com", "bing.com")
BING_TARGET = "strict.bing.com"
DDG_HOSTS = ("duckduckgo.com", "www.duckduckgo.com", "start.duckduckgo.com")
DDG_TARGET = "safe.duckduckgo.com"

GOOGLE_HOSTS = tuple(h for tld in _GOOGLE_TLDS for h in (f"google.{tld}", f"www.google.{tld}"))


def engine_of(host: str) -> str | None:
    """'google' | 'youtube' | 'bing' | 'duckduckgo' | None for a canonical host."""
    return _ENGINE.get(host)


_ENGINE: dict[str, str] = {}
for _h in GOOGLE_HOSTS:
    _ENGINE[_h] = "google"
for _h in YOUTUBE_HOSTS:
    _ENGINE[_h] = "youtube"
for _h in BING_HOSTS:
    _ENGINE[_h] = "bing"
for _h in DDG_HOSTS:
    _ENGINE[_h] = "duckduckgo"


def target(host: str, safesearch: str, youtube: str) -> tuple[str, str] | None:
    """(engine, safe host) when ``host`` must be rewritten under the given levels, else None."""
    eng = _ENGINE.get(host)
    if eng is None:
        return None
    if eng == "youtube":
        return (eng, YOUTUBE_TARGETS[youtube]) if youtube != "off" else None
    if safesearch == "off":
        return None
    # Google, Bing and DuckDuckGo have one safe host for both strict and moderate enforcement at DNS level
    return eng, {"google": GOOGLE_TARGET, "bing": BING_TARGET, "duckduckgo": DDG_TARGET}[eng]


# Names whose blocking disables a bypass (built in, per group when bypass_defences is on).
BYPASS_CANARIES = {
    "use-application-dns.net": "nxdomain",  # Firefox: disables automatic DoH
    "mask.icloud.com": "nxdomain",  # iCloud Private Relay
    "mask-h2.icloud.com": "nxdomain",
    "_dns.resolver.arpa": "nodata",  # RFC 9462 DDR: no upgrade to encrypted DNS
}
