"""The console's browser-test harness: a real ``filterproxy run`` (DNS, proxy, admin on port 0, a state dir,
a fake upstream) and Debian's Chromium driven by Playwright (``/usr/bin/chromium``; never ``playwright
install``: test.sh's apt list brings the browser).

Use it from a test module::

    from browser import *  # noqa: F401,F403  (the fixtures: console, browser, page, signed_in)

    def test_groups_page(console, signed_in):
        page = signed_in("boss")            # an admin; "ms" is a teacher of kids
        page.goto(console.url("/groups"))
        ...

* ``console`` (module scope): the running server; ``console.url(path)``, ``console.store()`` (open the
  state store to add data; close it), ``console.api(user)`` (a ``requests`` session signed in through the
  API, for setting up data), ``console.tokens[user]`` (a bearer token), ``console.cfg`` (the config
  path). Users ``boss`` (admin) and ``ms`` (teacher of ``kids``) with password :data:`PASSWORD`;
  groups ``kids`` and ``teens``; lists ``adult`` (a local file) and ``national`` (legal); some
  statistics for today and the last 30 days.
* ``page`` (per test): a fresh browser context and page at 1280x900. Every console message of type
  ``error``, every uncaught page error, and every request to a host other than 127.0.0.1 is recorded
  and **fails the test** at teardown (``page.problems`` lists them); ``allow_console_error(page, text)``
  accepts one expected message (the browser's log line for a 4xx the test provokes, e.g.).
* ``signed_in(user, width=1280)``: ``page`` signed in through the login form (and resized).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from playwright.sync_api import Browser, Page, sync_playwright

from filterproxy.config import load_config
from filterproxy.dns.testing import FakeUpstream, ServerProcess
from filterproxy.passwords import hash_password
from filterproxy.state.model import Actor
from filterproxy.state.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from test_http_e2e import free_port  # noqa: E402

__all__ = [
    "PASSWORD",
    "Console",
    "allow_console_error",
    "browser",
    "console",
    "page",
    "signed_in",
    "start_console",
    "unexpected",
    "watch",
]

PASSWORD = "correct horse battery staple"
CHROMIUM = "/usr/bin/chromium"
LOCAL_HOSTS = frozenset({"127.0.0.1"})


def write_config(tmp: Path, upstream: FakeUpstream) -> Path:
    """Two groups, a local adult list and a legal list; the state in ``tmp/state``."""
    (tmp / "policies").mkdir(exist_ok=True)
    for g in ("kids", "teens"):
        (tmp / "policies" / f"{g}.yaml").write_text(f"name: {g}\nblock_categories: [adult]\nblock_mode: nxdomain\n")
    (tmp / "adult.txt").write_text("adult.example\nporn.example\n")
    (tmp / "illegal.txt").write_text("illegal.example\n")
    doc: dict[str, Any] = {
        "server": {"state_dir": str(tmp / "state")},
        "upstreams": {"servers": [upstream.address], "timeout": 1.0},
        "dns": {"allowed_networks": ["127.0.0.0/8"], "rate_limit": 0},
        "policies_dir": "policies",
        "groups": ["kids", "teens"],
        "default_group": "kids",
        "lists": [
            {"id": "adult", "category": "adult", "format": "domains", "match": "subdomains", "path": "adult.txt"},
            {
                "id": "national",
                "category": "illegal",
                "format": "domains",
                "match": "subdomains",
                "legal": True,
                "path": "illegal.txt",
            },
        ],
    }
    cfg = tmp / "filterproxy.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


def seed_stats(store: Store, days: int = 30) -> None:
    """Decisions over the last ``days`` days (a few per hour), and some for the current minute."""
    from filterproxy.state.stats import write

    now = int(time.time()) // 60 * 60
    counts: dict[tuple[int, str, str, str, str], int] = {}
    for h in range(days * 24):
        t = now - h * 3600
        counts[(t, "kids", "", "allow", "dns")] = 40 + (h * 7) % 23
        counts[(t, "teens", "", "allow", "dns")] = 30 + (h * 5) % 17
        counts[(t, "kids", "adult", "block", "dns")] = 3 + h % 5
        counts[(t, "teens", "adult", "block", "http")] = 1 + h % 3
    counts[(now, "kids", "illegal", "block", "dns")] = 2
    write(store.engine, counts)


def add_users(cfg: Path, users: bool = True, stats: bool = True) -> dict[str, str]:
    """``boss`` (admin) and ``ms`` (teacher of kids), a bearer token of each, and statistics, through the
    store; returns the tokens' secrets by user."""
    store = Store.for_config(load_config(str(cfg)))
    tokens: dict[str, str] = {}
    try:
        system = Actor("system", "system")
        if users:
            hashed = hash_password(PASSWORD)
            store.add_user(system, "boss", "admin", hashed)
            store.add_user(system, "ms", "teacher", hashed, ("kids",))
            tokens = {user: store.create_token(system, f"{user}-script", user)[1] for user in ("boss", "ms")}
        if stats:
            seed_stats(store)
    finally:
        store.close()
    return tokens


class Console:
    """A running ``filterproxy run`` with the console on its admin port."""

    def __init__(self, proc: ServerProcess, cfg: Path, port: int, tokens: dict[str, str] | None = None) -> None:
        self.proc, self.cfg, self.port = proc, cfg, port
        self.tokens = tokens or {}  # bearer token secrets by user (boss, ms)
        self.base = f"http://127.0.0.1:{port}"

    def url(self, path: str = "/") -> str:
        return self.base + path

    def store(self) -> Store:
        """The state store (the caller closes it)."""
        return Store.for_config(load_config(str(self.cfg)))

    def api(self, user: str) -> requests.Session:
        """A ``requests`` session signed in as ``user``, sending the CSRF token with every request."""
        s = requests.Session()
        s.trust_env = False
        r = s.post(f"{self.base}/api/v1/login", json={"user": user, "password": PASSWORD}, timeout=10)
        assert r.status_code == 200, r.text
        s.headers["X-CSRF-Token"] = r.json()["csrf_token"]
        return s


def start_console(tmp: Path, upstream: FakeUpstream, *, users: bool = True, stats: bool = True) -> Console:
    """``filterproxy run`` with DNS, the proxy (one worker) and the admin server on free ports."""
    import re

    cfg = write_config(tmp, upstream)
    tokens = add_users(cfg, users=users, stats=stats)
    proc = ServerProcess(
        [
            "--config",
            str(cfg),
            "--dns-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--proxy-listen",
            f"127.0.0.1:{free_port()}",
            "--proxy-workers",
            "1",
            "--metrics-listen",
            "off",
        ],
        log_path=str(tmp / "run.log"),
    ).start()
    deadline = time.monotonic() + 120
    while "admin API on" not in proc.output():
        assert proc.alive() and time.monotonic() < deadline, proc.output()[-3000:]
        time.sleep(0.1)
    m = re.search(r"admin API on http://127\.0\.0\.1:(\d+)/api/v1", proc.output())
    assert m, proc.output()[-3000:]
    return Console(proc, cfg, int(m.group(1)), tokens)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    up = FakeUpstream(zone={"example.org": [("A", "93.184.216.34")]}).start()
    c = start_console(tmp_path_factory.mktemp("console"), up)
    yield c
    c.proc.stop()
    up.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # one per module, closed at its end: Playwright's sync API keeps an event loop in the main thread while
    # it runs, so a second one (another module importing these fixtures) or a later test's asyncio.run would fail
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield b
        b.close()


def allow_console_error(page: Page, text: str) -> None:
    """Accept console errors containing ``text`` on ``page`` (a 4xx the test provokes on purpose)."""
    page.allowed_errors.append(text)  # type: ignore[attr-defined]


def watch(pg: Page) -> list[str]:
    """Record on ``pg`` its console errors, page errors and requests to another host; returns the record."""
    problems: list[str] = []
    pg.problems = problems  # type: ignore[attr-defined]
    pg.allowed_errors = []  # type: ignore[attr-defined]

    def on_console(msg: Any) -> None:
        if msg.type == "error":
            problems.append(f"console error: {msg.text} ({msg.location.get('url', '')})")

    def on_request(req: Any) -> None:
        host = urlsplit(req.url).hostname
        if req.url.startswith(("data:", "blob:", "about:")):
            return
        if host not in LOCAL_HOSTS:
            problems.append(f"request to another host: {req.method} {req.url}")

    pg.on("console", on_console)
    pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    pg.on("request", on_request)
    return problems


def unexpected(pg: Page) -> list[str]:
    """The problems :func:`watch` recorded on ``pg``, less those :func:`allow_console_error` accepted."""
    allowed = pg.allowed_errors  # type: ignore[attr-defined]
    return [p for p in pg.problems if not any(a in p for a in allowed)]  # type: ignore[attr-defined]


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    pg = context.new_page()
    watch(pg)
    yield pg
    left = unexpected(pg)
    context.close()
    assert not left, "the browser saw problems:\n" + "\n".join(left)


@pytest.fixture
def signed_in(console: Console, page: Page) -> Callable[..., Page]:
    """``signed_in(user, width=1280)``: ``page`` signed in through the login form, on the dashboard."""

    def sign_in(user: str, width: int = 1280) -> Page:
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(console.url("/login"))
        page.fill("#login-user", user)
        page.fill("#login-password", PASSWORD)
        page.click("#login button[type=submit]")
        page.wait_for_url(console.url("/"))
        return page

    return sign_in
