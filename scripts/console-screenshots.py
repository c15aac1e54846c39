#!/usr/bin/env python3
"""Screenshots of the web console for the docs: starts a demo ``filterproxy run`` (the test harness's
configuration, tests/browser.py) with some data (statistics, overrides, a pause, devices, review requests),
signs in as an admin in Debian's Chromium and saves the sign-in page and every page of the nav at 1280 px
and 360 px to ``docs/console/<page>-<width>.png``.

    .venv/bin/python scripts/console-screenshots.py [--out docs/console] [--lang vi|en]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from browser import CHROMIUM, PASSWORD, Console, start_console, watch  # noqa: E402
from playwright.sync_api import Page, sync_playwright  # noqa: E402

from filterproxy.admin.console import NAV  # noqa: E402
from filterproxy.dns.testing import FakeUpstream  # noqa: E402
from filterproxy.state.model import Actor  # noqa: E402

WIDTHS = (1280, 360)


def demo_data(console: Console) -> None:
    """Overrides, a pause, devices and review requests (the statistics come with the harness)."""
    store = console.store()
    try:
        boss = Actor("boss", "admin")
        ms = Actor("ms", "teacher", frozenset({"kids"}))
        store.add_override(boss, "kids", "khanacademy.org", "allow", note="bài tập toán")
        store.add_override(ms, "kids", "youtube.com", "allow", minutes=45, note="tiết sinh học")
        store.add_override(boss, "teens", "game.example", "block", note="giờ học")
        store.add_device(boss, "lop3a-pc21", "kids", ip="10.0.3.21")
        store.add_device(boss, "thu-vien-ipad", "teens", mac="02:00:00:aa:bb:cc")
        store.add_pause(boss, 30, group="teens")
        store.add_review("kids", "wikipedia.org", "category:adult", "Em cần trang này cho bài tập")
        store.add_review("teens", "reddit.com", "list:adult", None)
    finally:
        store.close()


def sign_in(page: Page, console: Console, lang: str) -> None:
    page.goto(console.url(f"/login?lang={lang}"))
    page.fill("#login-user", "boss")
    page.fill("#login-password", PASSWORD)
    page.click("#login button[type=submit]")
    page.wait_for_url(console.url("/"))


def shoot(page: Page, console: Console, path: str, out: Path) -> bool:
    resp = page.goto(console.url(path))
    if resp is None or resp.status >= 400:
        print(f"skipped {path}: {resp.status if resp else 'no answer'}", file=sys.stderr)
        return False
    page.wait_for_load_state("networkidle")
    if page.locator("#trend").count():
        page.locator("#trend canvas").wait_for(timeout=10_000)
    page.screenshot(path=str(out), full_page=True)
    print(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)
    wide = page.evaluate("document.documentElement.scrollWidth")
    if wide > page.viewport_size["width"] if page.viewport_size else False:
        print(f"  warning: {path} is {wide} px wide (scrolls sideways)", file=sys.stderr)
    for problem in page.problems:  # type: ignore[attr-defined]  (tests/browser.py's watch)
        print(f"  warning: {path}: {problem}", file=sys.stderr)
    page.problems.clear()  # type: ignore[attr-defined]
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "console"), help="where the PNG files go")
    ap.add_argument("--lang", default="vi", choices=("vi", "en"), help="the console's language (default vi)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    up = FakeUpstream().start()
    with tempfile.TemporaryDirectory(prefix="fp-console-shots-") as tmp:
        console = start_console(Path(tmp), up)
        try:
            demo_data(console)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
                for width in WIDTHS:
                    ctx = browser.new_context(viewport={"width": width, "height": 900}, device_scale_factor=1)
                    page = ctx.new_page()
                    watch(page)
                    page.goto(console.url(f"/login?lang={args.lang}"))
                    page.screenshot(path=str(out / f"login-{width}.png"), full_page=True)
                    sign_in(page, console, args.lang)
                    for item in NAV:
                        shoot(page, console, item.path, out / f"{item.key}-{width}.png")
                    ctx.close()
                browser.close()
        finally:
            console.proc.stop()
            up.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
