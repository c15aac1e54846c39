"""The console's lists, query-log and audit pages in Chromium against a real ``filterproxy run``: "Update now"
runs the lists update and shows it done; the query log page says it is off and how to turn it on; the
audit page lists the changes and revokes a token; teachers see no "Update now" and no admin pages."""

from __future__ import annotations

from browser import *  # noqa: F401,F403  (the fixtures: console, browser, page, signed_in)
from browser import allow_console_error

from filterproxy.state.model import Actor


def test_lists_page_updates_now(console, signed_in):
    admin = signed_in("boss", width=360)
    admin.goto(console.url("/lists?lang=en"))
    row = admin.locator("#lists tr[data-list=adult]").inner_text()
    assert "adult" in row and "2" in row and "Local file" in row and "Unsigned" in row
    assert admin.locator("#update-state").inner_text() in ("Not updated from the console yet.", "Done.")
    admin.click("#update-now")
    admin.wait_for_selector("#lists-update[data-state=done]", timeout=60000)
    job = console.api("boss").get(console.url("/api/v1/lists/update"), timeout=10).json()
    assert job["state"] == "done" and job["by"] == "boss" and job["reloaded"] is True, job
    assert admin.evaluate("document.documentElement.scrollWidth") <= 360


def test_teachers_see_no_update_button_nor_admin_pages(console, signed_in):
    teacher = signed_in("ms")
    teacher.goto(console.url("/lists"))
    assert teacher.locator("#lists tr[data-list=adult]").count() == 1
    assert teacher.locator("#update-now").count() == 0
    for path in ("/querylog", "/admin", "/audit"):
        r = teacher.goto(console.url(path))
        assert r is not None and r.status == 403, path
        teacher.wait_for_load_state()
    allow_console_error(teacher, "status of 403")


def test_querylog_page_says_it_is_off(console, signed_in):
    admin = signed_in("boss")
    admin.goto(console.url("/querylog?lang=en"))
    off = admin.locator("#querylog-off").inner_text()
    assert "OFF" in off and "enabled: true" in off
    assert admin.locator("#querylog").count() == 0
    admin.goto(console.url("/querylog?lang=vi"))
    assert "TẮT" in admin.locator("#querylog-off").inner_text()


def test_audit_page_lists_changes_and_revokes_a_token(console, signed_in):
    store = console.store()
    try:
        store.create_token(Actor("system", "system"), "backup-script", "boss")
    finally:
        store.close()
    admin = signed_in("boss")
    admin.goto(console.url("/audit?lang=en"))
    assert admin.locator("#users tr[data-user=ms]").inner_text().count("kids") == 1
    assert "user.add" in admin.locator("#audit").inner_text()
    admin.on("dialog", lambda d: d.accept())
    admin.click("#tokens tr[data-token=backup-script] button")
    admin.wait_for_selector("#tokens tr[data-token=backup-script]", state="detached")
    tokens = console.api("boss").get(console.url("/api/v1/tokens"), timeout=10).json()
    assert "backup-script" not in {t["name"] for t in tokens}
    assert "token.revoke" in admin.locator("#audit").inner_text()
