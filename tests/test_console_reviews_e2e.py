"""The console's review inbox and users page in Chromium, against a real ``filterproxy run``: a student's
browser (a second context using the running proxy) asks for a blocked page from the block page; the teacher
of their group approves it for an hour in ``/reviews`` and the student's page then loads; a teacher of another
group neither sees nor may approve it; an admin adds a teacher in ``/admin`` who can then sign in."""

from __future__ import annotations

import http.server
import re
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from browser import *  # noqa: F401,F403  (the fixtures: console, browser, page, signed_in)
from browser import PASSWORD

_PROXY_RE = re.compile(r"proxy listening on 127\.0\.0\.1:(\d+)")
STUDENT_HOSTS = frozenset({"localhost", "127.0.0.1"})  # loopback backends only, reached through the proxy


class _Homework(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"<!doctype html><title>homework</title><p id='homework'>the homework page</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def backend():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Homework)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


@pytest.fixture(scope="module")
def school(console):
    """``localhost`` on the adult list (swapped in through ``POST /api/v1/lists/update``) and ``tt``, a teacher
    of teens (added through ``POST /api/v1/users``); the proxy's port."""
    adult = console.cfg.parent / "adult.txt"
    adult.write_text(adult.read_text() + "localhost\n")
    boss = console.api("boss")
    assert boss.post(console.url("/api/v1/lists/update"), timeout=10).status_code == 202
    deadline = time.monotonic() + 120
    while (job := boss.get(console.url("/api/v1/lists/update"), timeout=10).json())["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["state"] == "done", job
    body = {"name": "tt", "role": "teacher", "groups": ["teens"], "password": PASSWORD}
    assert boss.post(console.url("/api/v1/users"), json=body, timeout=10).status_code == 201
    m = _PROXY_RE.search(console.proc.output())
    assert m, console.proc.output()[-3000:]
    return int(m.group(1))


@pytest.fixture
def student(browser, school):
    """A student's browser: every request through the proxy; console errors and other hosts are failures."""
    ctx = browser.new_context(proxy={"server": f"http://127.0.0.1:{school}"}, locale="en-US")
    pg = ctx.new_page()
    problems: list[str] = []

    def on_request(req: Any) -> None:
        if urlsplit(req.url).hostname not in STUDENT_HOSTS:
            problems.append(f"request to another host: {req.method} {req.url}")

    def on_console(msg: Any) -> None:
        blocked = "status of 403" in msg.text and urlsplit(msg.location.get("url", "")).hostname == "localhost"
        if msg.type == "error" and not blocked:  # the block page itself (and its favicon) answer 403
            problems.append(f"console error: {msg.text} ({msg.location.get('url', '')})")

    pg.on("console", on_console)
    pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    pg.on("request", on_request)
    yield pg
    ctx.close()
    assert not problems, "the student's browser saw problems:\n" + "\n".join(problems)


def _ask(student, url: str) -> None:
    """Open the blocked page and send its review form; the answer says "Request sent" and nothing more."""
    r = student.goto(url)
    assert r is not None and r.status == 403, r and r.status
    assert student.locator("#review-form").count() == 1, student.content()
    student.click("#review-form button[type=submit]")
    student.wait_for_selector("#review-answer")
    assert student.locator("h1").inner_text() == "Request sent"
    assert student.locator("a, form, input, button").count() == 0  # nothing to follow, nothing about others
    assert "homework" not in student.content()


def _open_reviews(console) -> list[dict]:
    r = console.api("boss").get(console.url("/api/v1/reviews"), params={"status": "open"}, timeout=10)
    return r.json()


def test_a_student_asks_and_the_teacher_of_their_group_approves(console, signed_in, student, backend):
    url = f"http://localhost:{backend}/homework"
    _ask(student, url)
    review = next(r for r in _open_reviews(console) if r["host_or_url"] == "localhost")
    assert review["group"] == "kids"

    teacher = signed_in("ms", width=360)
    teacher.goto(console.url("/reviews"))
    card = teacher.locator(f"#review-{review['id']}")
    assert "localhost" in card.inner_text() and "kids" in card.inner_text()
    assert card.locator(".approve-always").count() == 0  # "always" is for admins only
    assert teacher.evaluate("document.documentElement.scrollWidth") <= 360  # usable at 360 px
    card.locator(".approve-hour button").click()
    teacher.wait_for_selector(f"#review-{review['id']}", state="detached")  # the page reloaded without it

    done = console.api("ms").get(console.url("/api/v1/reviews"), params={"status": "approved"}, timeout=10).json()
    approved = next(r for r in done if r["id"] == review["id"])
    assert approved["decided_by"] == "ms"
    override = next(
        o
        for o in console.api("ms").get(console.url("/api/v1/overrides"), timeout=10).json()
        if o["id"] == approved["override_id"]
    )
    assert (override["group"], override["name"], override["action"]) == ("kids", "localhost", "allow")
    from datetime import datetime

    length = datetime.fromisoformat(override["expires_at"]) - datetime.fromisoformat(override["created_at"])
    assert abs(length.total_seconds() - 3600) < 5, length  # one hour

    deadline = time.monotonic() + 15  # the watcher applies it within 2 s
    while True:
        r = student.goto(url)
        if r is not None and r.status == 200:
            break
        assert time.monotonic() < deadline, "the approved page is still blocked"
        time.sleep(0.3)
    assert student.locator("#homework").inner_text() == "the homework page"


def test_a_teacher_of_another_group_neither_sees_nor_approves(console, signed_in, school):
    r = console.api("boss").post(  # a request from 127.0.0.1: group kids (the default group)
        console.url("/api/v1/reviews"), json={"host_or_url": "porn.example", "reason_id": "category/adult/adult"}
    )
    assert r.status_code == 201 and r.json()["group"] == "kids", r.text
    rid = r.json()["id"]
    other = signed_in("tt")
    other.goto(console.url("/reviews"))
    assert other.locator(f"#review-{rid}").count() == 0
    assert other.locator("#reviews-empty").count() == 1
    refused = console.api("tt").post(console.url(f"/api/v1/reviews/{rid}/approve"), json={"minutes": 60}, timeout=10)
    assert refused.status_code == 403, refused.text
    assert any(x["id"] == rid for x in _open_reviews(console))  # still open


def test_an_admin_adds_a_teacher_who_can_sign_in(console, signed_in, page):
    admin = signed_in("boss", width=360)
    admin.goto(console.url("/admin"))
    admin.fill("#user-name", "lan")
    admin.select_option("#user-role", "teacher")
    admin.check("#user-groups input[value=teens]")
    admin.fill("#user-password", PASSWORD)
    admin.click("#add-user button[type=submit]")
    admin.wait_for_selector("#users tr[data-user=lan]")
    row = admin.locator("#users tr[data-user=lan]").inner_text()
    assert "teens" in row and "kids" not in row
    assert admin.evaluate("document.documentElement.scrollWidth") <= 360
    audit = console.api("boss").get(console.url("/api/v1/audit"), timeout=10).json()
    assert any(a["action"] == "user.add" and a["target"] == "user lan" and a["actor"] == "boss" for a in audit)

    page.context.clear_cookies()
    teacher = signed_in("lan")
    assert teacher.locator(".who").inner_text().startswith(("Đã đăng nhập: lan", "Signed in: lan"))
    me = console.api("lan").get(console.url("/api/v1/me"), timeout=10).json()
    assert (me["role"], me["groups"]) == ("teacher", ["teens"])
