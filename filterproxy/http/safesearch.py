"""SafeSearch at the HTTP layer: the request goes to the host the child asked for, made safe.

A REWRITE verdict on the DNS path is a CNAME to the engine's safe host; on the HTTP path it means
*forward to the original host* with the engine's own switch:

========== ====================================== ==========================================
engine     strict                                 moderate
========== ====================================== ==========================================
google     ``safe=active``                        ``safe=active`` (Google has one filter level)
youtube    header ``YouTube-Restrict: Strict``    header ``YouTube-Restrict: Moderate``
bing       ``adlt=strict``                        ``adlt=moderate``
duckduckgo ``kp=1``                               ``kp=-1``
========== ====================================== ==========================================

Query parameters are set on search requests only (a search path or a ``q`` parameter), replacing
whatever the page asked for (``safe=off`` → ``safe=active``); the YouTube header goes on every
request to a YouTube host. Which host is which engine comes from :func:`filterproxy.policy.safesearch.engine_of`.
"""

from __future__ import annotations

from mitmproxy import http

from filterproxy.policy import safesearch as policy_safesearch

__all__ = ["apply", "engine_of"]

engine_of = policy_safesearch.engine_of

_SEARCH_PATHS = {
    "google": ("/search", "/webhp", "/complete/search", "/images", "/imghp", "/videohp", "/async/"),
    "bing": ("/search", "/images/search", "/videos/search", "/news/search", "/AS/Suggestions", "/shop"),
    "duckduckgo": ("/html", "/lite", "/d.js", "/i.js", "/v.js", "/ac/"),
}
_PARAMS = {
    "google": ("safe", {"strict": "active", "moderate": "active"}),
    "bing": ("adlt", {"strict": "strict", "moderate": "moderate"}),
    "duckduckgo": ("kp", {"strict": "1", "moderate": "-1"}),
}
YOUTUBE_HEADER = "YouTube-Restrict"
_YOUTUBE_VALUES = {"strict": "Strict", "moderate": "Moderate"}


def _is_search(engine: str, path: str, request: http.Request) -> bool:
    p = path.split("?", 1)[0]
    if p.startswith(_SEARCH_PATHS[engine]):
        return True
    if engine == "duckduckgo" and p == "/":
        return True
    return "q" in request.query


def apply(request: http.Request, engine: str, safesearch: str, youtube: str) -> bool:
    """Make ``request`` safe for ``engine`` at the given levels; True when something was set."""
    if engine == "youtube":
        value = _YOUTUBE_VALUES.get(youtube)
        if value is None:
            return False
        request.headers[YOUTUBE_HEADER] = value
        return True
    spec = _PARAMS.get(engine)
    if spec is None or safesearch not in ("strict", "moderate"):
        return False
    if not _is_search(engine, request.path, request):
        return False
    name, values = spec
    want = values[safesearch]
    query = request.query
    if query.get_all(name) != [want]:
        query[name] = want  # replaces every earlier value (safe=off&safe=off → safe=active)
    return True


def rewrite(request: http.Request, host: str, levels: tuple[str, str]) -> str | None:
    """Apply (safesearch, youtube) ``levels`` if ``host`` is a search engine; the engine's name when set."""
    engine = engine_of(host.lower())
    if engine is not None and apply(request, engine, levels[0], levels[1]):
        return engine
    return None
