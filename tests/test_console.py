"""The web console without a browser: the string catalogue, list freshness on the dashboard, the language
choice and the page registry (the browser tests are tests/test_console_e2e.py)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request

from filterproxy.admin import console
from filterproxy.admin.console import NAV, View, i18n, language
from filterproxy.admin.console.pages.dashboard import _lists


def test_the_catalogue_has_every_key_in_both_languages():
    assert set(i18n.VI) == set(i18n.EN)
    assert all(i18n.VI[k] and i18n.EN[k] for k in i18n.VI)
    assert all(f"nav.{item.key}" in i18n.VI for item in NAV)


@pytest.mark.parametrize(
    "seconds, vi, en",
    [(5, "5 giây", "5 s"), (120, "2 phút", "2 min"), (7200, "2 giờ", "2 h"), (3 * 86400, "3 ngày", "3 days")],
)
def test_durations(seconds, vi, en):
    assert i18n.duration("vi", seconds) == vi and i18n.duration("en", seconds) == en


def _request(query: str = "", cookie: str = "") -> Request:
    headers = [(b"cookie", cookie.encode())] if cookie else []
    return Request({"type": "http", "method": "GET", "path": "/", "query_string": query.encode(), "headers": headers})


@pytest.mark.parametrize(
    "query, cookie, want",
    [
        ("", "", ("vi", False)),
        ("lang=en", "", ("en", True)),
        ("", "lang=en", ("en", False)),
        ("lang=vi", "lang=en", ("vi", True)),
        ("lang=xx", "lang=yy", ("vi", False)),  # unknown: the default
    ],
)
def test_language(query, cookie, want):
    assert language(_request(query, cookie)) == want


def test_a_downloaded_list_older_than_its_refresh_is_stale():
    view = View(None, _request(), None, "en", "dashboard")  # type: ignore[arg-type]
    rows: list[dict[str, Any]] = [
        {"id": "old", "age_seconds": 90_000, "refresh_seconds": 86_400},
        {"id": "new", "age_seconds": 600, "refresh_seconds": 86_400},
        {"id": "never", "age_seconds": None, "refresh_seconds": 86_400},
        {"id": "local", "age_seconds": 10**7, "refresh_seconds": None},
    ]
    got = {r["id"]: r for r in _lists(view, rows)}
    assert [k for k, r in got.items() if r["stale"]] == ["old", "never"]
    assert got["old"]["age"] == "1 day ago" and got["old"]["refresh"] == "1 day"


def test_every_nav_entry_and_page_path_is_unique():
    paths = [p.path for p in console.all_pages()]
    assert len(paths) == len(set(paths))
    assert {"/", "/login", "/logout"} <= set(paths)
    assert all(p.nav in {n.key for n in NAV} for p in console.all_pages() if p.nav is not None)


def test_unnamed_devices_are_the_neighbours_no_named_device_matches():
    """One row per MAC (IPv4 first), newest first; a MAC or an address of a named device leaves it out."""
    import time
    from types import SimpleNamespace

    from filterproxy.admin.api_devices import _unnamed

    named = [SimpleNamespace(mac="02:00:00:00:00:01", ip=None), SimpleNamespace(mac=None, ip="10.0.0.9")]
    present = [
        ("fd00::5", "02:00:00:00:00:05", 2.0),
        ("10.0.0.5", "02:00:00:00:00:05", 1.0),
        ("10.0.0.1", "02:00:00:00:00:01", 0.0),  # named by its MAC
        ("10.0.0.9", "02:00:00:00:00:09", 0.0),  # named by its address
        ("10.0.0.7", "02:00:00:00:00:07", 60.0),
    ]
    rows = _unnamed(named, present)
    assert [(r["mac"], r["addresses"]) for r in rows] == [
        ("02:00:00:00:00:05", ["10.0.0.5", "fd00::5"]),
        ("02:00:00:00:00:07", ["10.0.0.7"]),
    ]
    seen = dt_parse(rows[0]["last_seen"])
    assert abs(seen - (time.time() - 1.0)) < 5  # the newest confirmation of its addresses


def dt_parse(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text).timestamp()


def test_the_devices_page_offers_to_name_each_new_device_by_its_mac():
    """The page lists what ``GET /devices/unnamed`` answers, each with a form that posts its MAC, a name and a
    group to ``POST /api/v1/devices`` (the browser tests drive the same form kind for added devices)."""
    import asyncio
    import re
    from types import SimpleNamespace

    from filterproxy.admin.console.pages.devices import devices_page

    answers: dict[str, Any] = {
        "/groups": [{"id": "kids", "name": "Kids", "names": {}}, {"id": "teens", "name": "Teens", "names": {}}],
        "/pause": [],
        "/devices": [],
        "/devices/unnamed": [
            {
                "mac": "02:00:00:99:00:02",
                "addresses": ["10.99.0.2", "fd00:99::2"],
                "last_seen": "2026-12-06T01:00:00+00:00",
            }
        ],
    }
    ctx = SimpleNamespace(engine=SimpleNamespace(config=SimpleNamespace(timezone="Asia/Ho_Chi_Minh")))
    view = View(ctx, _request(), None, "en", "devices")  # type: ignore[arg-type]

    async def api(path: str, query: dict[str, Any] | None = None) -> Any:
        return answers[path]

    view.api = api  # type: ignore[method-assign]
    html = bytes(asyncio.run(devices_page(view)).body).decode()
    form = re.search(r'<li class="card device unnamed" data-mac="02:00:00:99:00:02">(.*?)</li>', html, re.S)
    assert form, html
    body = form.group(1)
    assert 'hx-post="/api/v1/devices"' in body and 'name="mac" value="02:00:00:99:00:02"' in body
    assert "10.99.0.2, fd00:99::2" in body and 'name="name"' in body and 'value="teens"' in body
    assert "New on the network" in html
    answers["/devices/unnamed"] = []
    assert "unnamed" not in bytes(asyncio.run(devices_page(view)).body).decode()  # nothing new: no section
