"""HTTP-layer SafeSearch: parameters and headers per engine and level."""

from __future__ import annotations

import pytest
from mitmproxy import http

from filterproxy.http.safesearch import apply, engine_of


@pytest.mark.parametrize(
    "url,level,yt,changed,param,value",
    [
        ("https://www.google.com/search?q=cats", "strict", "strict", True, "safe", "active"),
        ("https://www.google.com/search?q=cats&safe=off&safe=images", "moderate", "off", True, "safe", "active"),
        ("https://www.google.com/webhp", "strict", "strict", True, "safe", "active"),
        ("https://www.google.com/images/branding/logo.png", "strict", "strict", True, "safe", "active"),
        ("https://www.google.com/maps/place/x", "strict", "strict", False, "safe", None),
        ("https://www.google.com/search?q=x&safe=off", "off", "strict", False, "safe", "off"),
        ("https://www.bing.com/search?q=x", "strict", "off", True, "adlt", "strict"),
        ("https://www.bing.com/images/search?q=x&adlt=off", "moderate", "off", True, "adlt", "moderate"),
        ("https://duckduckgo.com/?q=x", "strict", "off", True, "kp", "1"),
        ("https://duckduckgo.com/html/?q=x&kp=-2", "moderate", "off", True, "kp", "-1"),
        ("https://duckduckgo.com/about", "strict", "off", False, "kp", None),
    ],
)
def test_query_parameters(url, level, yt, changed, param, value):
    req = http.Request.make("GET", url)
    eng = engine_of(req.host)
    assert apply(req, eng, level, yt) is changed
    assert req.query.get(param) == value
    if value is not None and changed:
        assert req.query.get_all(param) == [value]
    assert req.host == http.Request.make("GET", url).host  # same host: the DNS path does the CNAME


@pytest.mark.parametrize(
    "host,yt,want",
    [
        ("www.youtube.com", "strict", "Strict"),
        ("m.youtube.com", "moderate", "Moderate"),
        ("youtubei.googleapis.com", "strict", "Strict"),
        ("www.youtube.com", "off", None),
    ],
)
def test_youtube_header(host, yt, want):
    req = http.Request.make("GET", f"https://{host}/watch?v=x")
    assert apply(req, "youtube", "strict", yt) is (want is not None)
    assert req.headers.get("YouTube-Restrict") == want


def test_engine_of():
    assert engine_of("www.google.com.vn") == "google" and engine_of("www.youtube.com") == "youtube"
    assert engine_of("bing.com") == "bing" and engine_of("example.com") is None
