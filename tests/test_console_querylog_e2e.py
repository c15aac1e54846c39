"""The console's query log page in Chromium while ``querylog.enabled`` is on: the banner with the retention,
records with their (anonymised) addresses, and the filters by group, action and name (the name filter is
``GET /api/v1/querylog?name=``)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import browser as harness
import dns.message
import dns.query
import dns.rcode
import pytest
import yaml
from browser import *  # noqa: F401,F403  (the fixtures: console, browser, page, signed_in)

from filterproxy.dns.testing import FakeUpstream

_DNS_RE = re.compile(r"DNS listening on 127\.0\.0\.1:(\d+)")


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Console]:
    """The harness's server with ``querylog: {enabled: true, retention_days: 3}`` (a restart-only setting)."""
    plain = harness.write_config

    def with_querylog(tmp: Path, upstream: FakeUpstream) -> Path:
        cfg = plain(tmp, upstream)
        doc = yaml.safe_load(cfg.read_text())
        doc["querylog"] = {"enabled": True, "retention_days": 3}
        cfg.write_text(yaml.safe_dump(doc))
        return cfg

    up = FakeUpstream(zone={"example.org": [("A", "93.184.216.34")]}).start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness, "write_config", with_querylog)
        c = harness.start_console(tmp_path_factory.mktemp("querylog"), up, stats=False)
    yield c
    c.proc.stop()
    up.stop()


def _queries(console: harness.Console) -> None:
    m = _DNS_RE.search(console.proc.output())
    assert m, console.proc.output()[-3000:]
    port = int(m.group(1))
    for name, rcode in (("adult.example", dns.rcode.NXDOMAIN), ("example.org", dns.rcode.NOERROR)):
        answer = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=3)
        assert answer.rcode() == rcode, name
    boss = console.api("boss")
    deadline = time.monotonic() + 30  # the writers flush every 0.2 s
    while len(boss.get(console.url("/api/v1/querylog"), timeout=10).json()) < 2:
        assert time.monotonic() < deadline, "no query-log records"
        time.sleep(0.2)


def test_the_query_log_page_shows_and_filters(console, signed_in):
    _queries(console)
    admin = signed_in("boss", width=360)
    admin.goto(console.url("/querylog?lang=en"))
    banner = admin.locator("#querylog-on").inner_text()
    assert "ON" in banner and "3 days" in banner and "anonymised" in banner
    table = admin.locator("#querylog").inner_text()
    assert "adult.example" in table and "example.org" in table
    assert "127.0.0.1" not in table  # addresses as stored: anonymised
    admin.select_option("#ql-action", "block")
    admin.click("form.filters button[type=submit]")
    admin.wait_for_url(re.compile(r"action=block"))
    table = admin.locator("#querylog").inner_text()
    assert "adult.example" in table and "example.org" not in table
    admin.select_option("#ql-action", "")
    admin.fill("#ql-name", "example.org")
    admin.click("form.filters button[type=submit]")
    admin.wait_for_url(re.compile(r"name=example\.org"))
    table = admin.locator("#querylog").inner_text()
    assert "example.org" in table and "adult.example" not in table
    admin.goto(console.url("/querylog?group=teens"))
    assert admin.locator("#querylog-empty").count() == 1  # every query came from kids (the default group)
    assert admin.evaluate("document.documentElement.scrollWidth") <= 360
