"""The console's groups, devices and why-blocked pages in Chromium, against a real ``filterproxy run``: an
admin allows a blocked name for 10 minutes on a group's page and the running DNS server answers it; adds a
device for 127.0.0.1 and pauses it, and the next DNS query from here is blocked; asks why a name is blocked
and reads the list in the fold. Every page fits 360 px, its controls are labelled, a teacher sees their
own group only. DNS is asked with dnspython over the server's own port."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest
from browser import *  # noqa: F401,F403  (the fixtures: console, browser, page, signed_in)
from browser import Console, allow_console_error, start_console

from filterproxy.dns.testing import FakeUpstream

BLOCKED = "porn.example"  # on the harness's adult list, which kids and teens block (block_mode: nxdomain)
ZONE = {"example.org": [("A", "93.184.216.34")], BLOCKED: [("A", "192.0.2.10")]}


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """The harness's server, with an upstream that also answers the blocked name (so an allow shows)."""
    up = FakeUpstream(zone=ZONE).start()
    c = start_console(tmp_path_factory.mktemp("pages"), up, stats=False)
    yield c
    c.proc.stop()
    up.stop()


def _answer(console: Console, name: str) -> tuple[int, list[str]]:
    q = dns.message.make_query(name, "A")
    r = dns.query.udp(q, "127.0.0.1", port=console.proc.port, timeout=2)
    return r.rcode(), [rr.to_text() for rrset in r.answer for rr in rrset]


def _until(check: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _resolves(console: Console, name: str, address: str) -> bool:
    rcode, answers = _answer(console, name)
    return rcode == dns.rcode.NOERROR and address in answers


def _blocked(console: Console, name: str) -> bool:
    return _answer(console, name)[0] == dns.rcode.NXDOMAIN


def test_allowing_a_blocked_name_for_ten_minutes_reaches_dns(console, signed_in):
    assert _blocked(console, BLOCKED)
    page = signed_in("boss")
    page.goto(console.url("/groups"))
    page.click("#group-list a[href='/groups/kids']")
    page.wait_for_url(console.url("/groups/kids"))
    assert "adult.txt" not in page.inner_text("#policy")  # the policy file, not the list's, is named
    assert "kids.yaml:2" in page.inner_text("#policy")  # block_categories, read-only with file:line
    page.fill("#allow-name", BLOCKED)
    assert page.is_checked("#allow-form input[name=minutes][value='10']")  # 10 minutes is the first choice
    page.click("#allow-form button[type=submit]")
    page.wait_for_selector(f"#overrides tr[data-name='{BLOCKED}']")
    _until(lambda: _resolves(console, BLOCKED, "192.0.2.10"), f"{BLOCKED} still blocked 5 s after the allow")
    [o] = [o for o in console.api("boss").get(console.url("/api/v1/overrides"), timeout=10).json()]
    assert o["group"] == "kids" and o["name"] == BLOCKED and o["action"] == "allow" and o["created_by"] == "boss"
    lasts = dt.datetime.fromisoformat(o["expires_at"]) - dt.datetime.fromisoformat(o["created_at"])
    assert abs(lasts.total_seconds() - 600) < 5
    page.once("dialog", lambda d: d.accept())  # the remove button asks first
    page.click(f"#overrides tr[data-name='{BLOCKED}'] button")
    page.wait_for_selector("#no-overrides")
    _until(lambda: _blocked(console, BLOCKED), f"{BLOCKED} still allowed 5 s after removing the override")


def test_a_paused_device_is_blocked_at_its_next_query(console, signed_in):
    assert _resolves(console, "example.org", "93.184.216.34")
    page = signed_in("boss")
    page.goto(console.url("/devices"))
    page.fill("#add-name", "laptop")
    page.select_option("#add-group", "kids")
    page.fill("#add-ip", "127.0.0.1")  # where this test's DNS queries come from
    page.click("#add-device button[type=submit]")
    card = page.locator("#device-list li.device[data-name='laptop']")
    card.wait_for()
    card.get_by_role("button", name="15").click()
    card.locator(".notice").wait_for()
    _until(lambda: _blocked(console, "example.org"), "example.org still answered 5 s after pausing the device")
    api = console.api("boss")
    [p] = api.get(console.url("/api/v1/pause"), timeout=10).json()
    assert p["client"].startswith("device:") and p["group"] is None
    lasts = dt.datetime.fromisoformat(p["expires_at"]) - dt.datetime.fromisoformat(p["created_at"])
    assert abs(lasts.total_seconds() - 900) < 5
    page.once("dialog", lambda d: d.accept())
    card.get_by_role("button", name="Kết thúc tạm dừng").click()
    page.wait_for_selector("#device-list li.device[data-name='laptop'] .notice", state="detached")
    _until(lambda: _resolves(console, "example.org", "93.184.216.34"), "example.org still blocked after the pause")


def test_pausing_a_group_in_one_tap_blocks_its_clients(console, signed_in):
    assert _resolves(console, "example.org", "93.184.216.34")  # 127.0.0.1 is in kids (the default group)
    page = signed_in("boss")
    page.goto(console.url("/groups/kids"))
    assert page.input_value("#pause-minutes") == "30"  # the default: one tap
    page.click("#pause-form button[type=submit]")
    page.wait_for_selector("#group-pauses")
    _until(lambda: _blocked(console, "example.org"), "example.org still answered 5 s after pausing kids")
    [p] = console.api("boss").get(console.url("/api/v1/pause"), timeout=10).json()
    assert p["group"] == "kids" and p["client"] is None
    lasts = dt.datetime.fromisoformat(p["expires_at"]) - dt.datetime.fromisoformat(p["created_at"])
    assert abs(lasts.total_seconds() - 1800) < 5
    page.once("dialog", lambda d: d.accept())
    page.click("#group-pauses button")
    page.wait_for_selector("#group-pauses", state="detached")
    _until(lambda: _resolves(console, "example.org", "93.184.216.34"), "example.org still blocked after the pause")


def test_why_blocked_says_it_in_words_and_folds_the_list(console, signed_in):
    page = signed_in("boss")
    page.goto(console.url("/why"))
    page.fill("#why-q", f"https://www.{BLOCKED}/page")
    page.select_option("#why-who", "group:kids")
    page.click("#why-form button[type=submit]")
    said = page.inner_text("#why-said")
    assert said.startswith("Bị chặn cho nhóm kids") and BLOCKED in said and "adult" in said, said
    assert not page.locator("#why-detail").get_attribute("open")  # the detail is folded
    assert not page.is_visible("#why-detail dd")
    page.click("#why-detail summary")
    detail = page.inner_text("#why-detail")
    assert "adult.txt:2" in detail and "category/adult/adult" in detail, detail
    page.goto(console.url("/why?q=example.org&who=group:kids&lang=en"))
    assert page.inner_text("#why-said") == "Allowed for group kids because no list blocks this name."


@pytest.mark.parametrize("path", ["/groups", "/groups/kids", "/devices", "/why?q=porn.example&who=group:teens"])
def test_pages_fit_360_px_with_labelled_controls(console, signed_in, path):
    page = signed_in("boss", width=360)
    page.goto(console.url(path))
    page.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")  # folds open too
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    unlabelled = page.evaluate(
        """[...document.querySelectorAll('main input:not([type=hidden]), main select, main button')]
             .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim()
                          && !e.closest('label'))
             .map(e => e.outerHTML)"""
    )
    assert unlabelled == []


def test_a_teacher_sees_their_group_and_allows_only(console, signed_in):
    page = signed_in("ms")
    page.goto(console.url("/groups"))
    assert page.locator("#group-list li").count() == 1 and page.inner_text("#group-list").startswith("kids")
    page.goto(console.url("/groups/kids"))
    assert page.is_visible("#allow-form") and not page.is_visible("#block-form") and not page.is_visible("#pause-form")
    assert page.locator("#allow-form input[name=minutes][value='']").count() == 0  # no "always" for teachers
    allow_console_error(page, "status of 403")  # the browser logs the two refusals below
    assert page.goto(console.url("/groups/teens")).status == 403
    assert page.goto(console.url("/devices")).status == 403
