"""The web console in Debian's Chromium against a real ``filterproxy run`` (tests/browser.py): sign in (a
wrong password's message, then the dashboard), the dashboard's figures and chart, the language switch,
the first-start hint without users, the 360 px layout, the security headers and the static files."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).parent))
from browser import *  # noqa: E402,F403  (the fixtures)
from browser import PASSWORD, Console, allow_console_error, start_console  # noqa: E402

from filterproxy.admin.console import i18n  # noqa: E402
from filterproxy.dns.testing import FakeUpstream  # noqa: E402


def test_sign_in_wrong_password_then_right(console: Console, page):
    page.goto(console.url("/"))
    page.wait_for_url(console.url("/login?next=/"))  # not signed in: the sign-in page first
    assert page.locator("html").get_attribute("lang") == "vi"
    assert page.locator("#first-start").count() == 0  # users exist: no first-start hint
    allow_console_error(page, "401")  # the browser logs the refused POST /api/v1/login
    page.fill("#login-user", "boss")
    page.fill("#login-password", "not the password")
    page.click("#login button[type=submit]")
    error = page.locator("#login-error")
    error.wait_for(state="visible")
    assert error.inner_text() == i18n.VI["login.wrong"]
    page.fill("#login-password", PASSWORD)
    page.click("#login button[type=submit]")
    page.wait_for_url(console.url("/"))
    assert page.locator("h1").inner_text() == i18n.VI["dashboard.title"]
    assert "boss" in page.locator(".who").inner_text()


def test_the_lockout_says_when_to_try_again(tmp_path, page):
    up = FakeUpstream().start()
    c = start_console(tmp_path, up, stats=False)
    try:
        allow_console_error(page, "401")
        allow_console_error(page, "429")
        page.goto(c.url("/login?lang=en"))
        for _ in range(5):
            page.fill("#login-user", "boss")
            page.fill("#login-password", "wrong")
            page.click("#login button[type=submit]")
            page.locator("#login-error").wait_for(state="visible")
            page.locator("#login-error").evaluate("e => { e.hidden = true; }")
        page.fill("#login-password", PASSWORD)  # the right password, but the address is locked out
        page.click("#login button[type=submit]")
        page.locator("#login-error").wait_for(state="visible")
        assert page.locator("#login-error").inner_text() == i18n.EN["login.locked"].format(minutes=15)
        assert page.url.startswith(c.url("/login"))
    finally:
        c.proc.stop()
        up.stop()


def test_dashboard_shows_figures_chart_lists_and_upstreams(console: Console, signed_in):
    page = signed_in("boss")
    queries = int(page.locator("#queries-today").inner_text().replace(",", ""))
    blocked = int(page.locator("#blocked-today").inner_text().replace(",", ""))
    assert queries > blocked >= 2  # seeded: at least the current minute's blocks
    assert page.locator("#by-category td", has_text="adult").count() == 1
    assert page.locator("#by-group td", has_text="kids").count() == 1
    assert page.locator("#lists tr[data-list=adult]").count() == 1
    assert page.locator("#lists tr[data-list=national]").count() == 1
    assert page.locator("#upstreams .badge.ok").count() == 1
    assert page.locator("#reports-pending").inner_text() == "0"
    # the uPlot chart: a canvas with two series drawn from /api/v1/stats
    page.locator("#trend canvas").wait_for()
    assert page.locator("#trend .u-legend .u-series").count() == 3  # x and two series
    with page.expect_response(lambda r: "/api/v1/stats" in r.url and "step=86400" in r.url) as resp:
        page.click("button[data-range='2592000']")
    assert resp.value.status == 200
    page.locator("#trend canvas").wait_for()
    assert page.locator("button[data-range='2592000']").get_attribute("aria-pressed") == "true"
    # one group's trend, over the chosen range (admins: all groups by default, or any one)
    with page.expect_response(lambda r: "/api/v1/stats" in r.url and "group=kids" in r.url) as resp:
        page.select_option("#trend-group", "kids")
    assert resp.value.status == 200 and "step=86400" in resp.value.url
    page.locator("#trend canvas").wait_for()
    # every nav entry is there for an admin
    assert page.locator("nav.nav a").count() == 8


def test_teacher_sees_their_group_and_no_admin_entries(console: Console, signed_in):
    page = signed_in("ms")
    assert page.locator("nav.nav a").count() == 5  # devices, query log and audit are admins' only
    assert page.locator("#by-group td", has_text="teens").count() == 0
    page.locator("#trend canvas").wait_for()
    assert page.locator("#trend").get_attribute("data-group") == "kids"  # one group: no choice to make
    assert page.locator("#trend-group").count() == 0


def test_a_teacher_of_two_groups_picks_the_chart_group(console: Console, signed_in):
    from filterproxy.passwords import hash_password
    from filterproxy.state.model import Actor

    store = console.store()
    try:
        store.add_user(Actor("system", "system"), "mr", "teacher", hash_password(PASSWORD), ("kids", "teens"))
    finally:
        store.close()
    page = signed_in("mr")
    page.locator("#trend canvas").wait_for()
    options = page.locator("#trend-group option").evaluate_all("els => els.map(e => e.value)")
    assert sorted(options) == ["kids", "teens"]  # theirs only, and no "all groups"
    with page.expect_response(lambda r: "/api/v1/stats" in r.url and "group=teens" in r.url) as resp:
        page.select_option("#trend-group", "teens")
    assert resp.value.status == 200


def test_language_switch(console: Console, signed_in):
    page = signed_in("boss")
    assert page.locator("h1").inner_text() == i18n.VI["dashboard.title"]
    page.click("a[hreflang=en]")
    page.wait_for_url(console.url("/?lang=en"))
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.locator("h1").inner_text() == i18n.EN["dashboard.title"]
    page.goto(console.url("/"))  # the cookie keeps it
    assert page.locator("h1").inner_text() == i18n.EN["dashboard.title"]
    assert page.locator("nav.nav a", has_text=i18n.EN["nav.why"]).count() == 1
    page.click("a[hreflang=vi]")
    page.wait_for_url(console.url("/?lang=vi"))
    assert page.locator("h1").inner_text() == i18n.VI["dashboard.title"]


def test_first_start_walk_through_from_the_printed_command_to_a_policy_change(tmp_path, page):
    """A new user's first minutes: the run log (what ./run.sh prints) and the login page show the same
    ready-to-paste command (this installation's own executable and config; never a default password); running
    it creates the admin, who signs in, opens a group and blocks a name for it, and DNS answers the change."""
    import re
    import shlex
    import subprocess

    import dns.message
    import dns.query
    import dns.rcode

    up = FakeUpstream(zone={"games.example": [("A", "192.0.2.44")]}).start()
    c = start_console(tmp_path, up, users=False, stats=False)
    try:
        assert requests.get(c.url("/api/v1/setup"), timeout=10).json() == {"users": False}
        out = c.proc.output()
        m = re.search(r"no user yet: create one with '([^']+)' \(the password is read from stdin\)", out)
        assert m and c.url("/") in out, out[-3000:]
        printed = m.group(1)
        assert f"admin user add NAME --role admin --config {c.cfg}" in printed
        page.goto(c.url("/"))
        page.wait_for_url(c.url("/login?next=/"))
        hint = page.locator("#first-start")
        assert page.inner_text("#first-start code") == printed  # the page and the log agree
        assert "password" not in hint.inner_text().lower().replace("mật khẩu", "")  # never a default password
        argv = [a if a != "NAME" else "parent" for a in shlex.split(printed)]
        r = subprocess.run(argv, input=PASSWORD + "\n", capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        page.goto(c.url("/login"))
        assert page.locator("#first-start").count() == 0
        page.fill("#login-user", "parent")
        page.fill("#login-password", PASSWORD)
        page.click("#login button[type=submit]")
        page.wait_for_url(c.url("/"))
        page.click("nav.nav a[href='/groups']")
        page.click("#group-list a[href='/groups/kids']")
        page.wait_for_url(c.url("/groups/kids"))

        def rcode() -> int:
            q = dns.message.make_query("games.example", "A")
            return dns.query.udp(q, "127.0.0.1", port=c.proc.port, timeout=2).rcode()

        assert rcode() == dns.rcode.NOERROR
        page.fill("#block-name", "games.example")
        page.click("#block-form button[type=submit]")
        page.wait_for_selector("#overrides tr[data-name='games.example']")
        deadline = time.monotonic() + 5
        while rcode() != dns.rcode.NXDOMAIN:  # the group blocks with block_mode: nxdomain
            assert time.monotonic() < deadline, "games.example still answered 5 s after the block"
            time.sleep(0.1)
    finally:
        c.proc.stop()
        up.stop()


@pytest.mark.parametrize("path", ["/login", "/"])
def test_360_px_has_no_horizontal_scroll(console: Console, signed_in, path):
    page = signed_in("boss", width=360)
    page.goto(console.url(path))  # "/login" when signed in goes on to the dashboard
    page.wait_for_load_state("networkidle")
    if path == "/":
        page.locator("#trend canvas").wait_for()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 360, f"{path} is {width} px wide at 360 px"
    assert page.locator("nav.nav a").first.is_visible()


def test_login_inputs_have_labels_at_360_px(console: Console, page):
    page.set_viewport_size({"width": 360, "height": 800})
    page.goto(console.url("/login"))
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    for input_id in ("login-user", "login-password"):
        assert page.locator(f"label[for={input_id}]").count() == 1


def test_headers_and_static_files(console: Console):
    r = requests.get(console.url("/login"), timeout=10)
    assert r.status_code == 200 and "default-src 'self'" in r.headers["content-security-policy"]
    assert "unsafe-inline" not in r.headers["content-security-policy"]
    assert "<script>" not in r.text and " onclick=" not in r.text  # no inline script for the CSP to block
    r = requests.get(console.url("/"), timeout=10, allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/"
    for path in (
        "/static/vendor/htmx.org-2.0.11/htmx.min.js",
        "/static/vendor/uplot-1.6.32/uPlot.iife.min.js",
        "/static/vendor/uplot-1.6.32/uPlot.min.css",
        "/static/console.js",
        "/static/console.css",
    ):
        assert requests.get(console.url(path), timeout=10).status_code == 200, path
    # the session cookie now reaches the pages: its path is /
    s = requests.Session()
    s.trust_env = False
    login = s.post(console.url("/api/v1/login"), json={"user": "boss", "password": PASSWORD}, timeout=10)
    assert "Path=/;" in login.headers["set-cookie"] or login.headers["set-cookie"].endswith("Path=/")
    assert s.get(console.url("/"), timeout=10, allow_redirects=False).status_code == 200


def test_sign_out_is_an_htmx_call_with_the_csrf_token(console: Console, signed_in):
    page = signed_in("boss")
    token = page.locator("meta[name=csrf-token]").get_attribute("content")
    assert token
    with page.expect_request(lambda r: r.url.endswith("/api/v1/logout")) as req:
        page.click("#sign-out")
    assert req.value.headers.get("x-csrf-token") == token  # hx-headers on <body>
    assert req.value.headers.get("content-type") == "application/json"  # the json-enc extension
    page.wait_for_url(console.url("/login"))
    page.goto(console.url("/"))
    page.wait_for_url(console.url("/login?next=/"))  # the session is over


def test_a_refused_change_shows_the_api_detail(console: Console, signed_in):
    """console.js: an htmx call the API refuses shows its detail in #flash (here: a 403 without the token)."""
    page = signed_in("boss")
    allow_console_error(page, "403")
    page.locator("body").evaluate("b => b.setAttribute('hx-headers', '{}')")  # as if the token were missing
    page.click("#sign-out")
    flash = page.locator("#flash")
    flash.wait_for(state="visible")
    assert "X-CSRF-Token" in flash.inner_text() and i18n.VI["common.error_prefix"] in flash.inner_text()


def test_the_harness_catches_other_hosts_and_console_errors(browser):
    """tests/browser.py's watch: a request to another host and a console error are both recorded."""
    from browser import unexpected, watch

    context = browser.new_context()
    try:
        pg = context.new_page()
        watch(pg)
        pg.route("http://203.0.113.7/**", lambda route: route.abort())
        pg.set_content('<img src="http://203.0.113.7/pixel.png"><script>console.error("boom")</script>')
        pg.wait_for_timeout(300)
        found = unexpected(pg)
        assert any("request to another host: GET http://203.0.113.7/pixel.png" in p for p in found), found
        assert any("console error: boom" in p for p in found), found
    finally:
        context.close()
