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
