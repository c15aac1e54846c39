"""``GET /api/v1/stats`` through a real ``filterproxy run``: DNS answers counted by the running server
(``admin.stats_flush_seconds`` short), read back per step and in totals; teachers see only their groups;
a bad time or step is a 400 with ``error`` and ``detail``."""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

import dns.message
import dns.query
import pytest

from filterproxy.dns.testing import FakeUpstream

sys.path.insert(0, str(Path(__file__).parent))
from test_admin_e2e import Api, _start  # noqa: E402


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    up = FakeUpstream().start()
    tmp = tmp_path_factory.mktemp("stats-api")
    proc, cfg, tokens = _start(
        tmp, up, "--proxy-listen", "off", "--metrics-listen", "off", admin={"stats_flush_seconds": 0.5}
    )
    yield Api(proc, cfg, tokens)
    proc.stop()
    up.stop()


def _window() -> dict[str, str]:
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    return {"from": (now - dt.timedelta(hours=1)).isoformat(), "to": (now + dt.timedelta(minutes=2)).isoformat()}


def _ask(api: Api, name: str) -> None:
    dns.query.udp(dns.message.make_query(name, "A"), api.proc.host, port=api.proc.port, timeout=5)


def test_counts_by_step_and_totals_for_admins_and_teachers(api):
    for _ in range(3):
        _ask(api, "adult.example")  # blocked (kids: the default group)
    _ask(api, "example.org")
    boss = api.session(api.tokens["boss"])
    params = {**_window(), "step": "60"}
    deadline = time.monotonic() + 20
    while True:
        r = boss.get(f"{api.base}/stats", params=params, timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        blocked = sum(t["count"] for t in body["totals"] if t["action"] == "block" and t["group"] == "kids")
        if blocked >= 3:
            break
        assert time.monotonic() < deadline, body
        time.sleep(0.3)
    assert body["step"] == 60 and body["group"] is None and len(body["series"][0]["counts"]) == 62
    series = {s["action"]: sum(s["counts"]) for s in body["series"]}
    assert series["block"] >= 3 and series["allow"] >= 1
    assert {"group", "category", "action", "protocol", "count"} == set(body["totals"][0])
    assert any(t["category"] == "adult" and t["protocol"] == "udp" for t in body["totals"])

    teacher = api.session(api.tokens["ms"])  # a teacher of kids: their only group by default
    mine = teacher.get(f"{api.base}/stats", params=params, timeout=10)
    assert mine.status_code == 200 and mine.json()["group"] == "kids", mine.text
    assert {t["group"] for t in mine.json()["totals"]} == {"kids"}
    other = teacher.get(f"{api.base}/stats", params={**params, "group": "teens"}, timeout=10)
    assert other.status_code == 403 and other.json()["error"] == "forbidden"


@pytest.mark.parametrize(
    "change",
    [
        {"from": "yesterday"},
        {"to": "2026-12-01T08:00:00"},  # no offset
        {"step": "90"},  # not whole minutes
        {"step": "ten"},
        {"group": "nobody"},
    ],
)
def test_bad_parameters_are_400(api, change):
    params = {**_window(), "step": "60", **change}
    r = api.session(api.tokens["boss"]).get(f"{api.base}/stats", params=params, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_request" and r.json()["detail"]


def test_in_the_openapi_document(api):
    doc = api.session().get(f"{api.base}/openapi.json", timeout=10).json()
    assert "get" in doc["paths"]["/api/v1/stats"]


def test_admin_socket_sends_without_nagle(tmp_path):
    """The listening socket has TCP_NODELAY (accepted connections inherit it): without it every answer after
    the first on a keep-alive connection waited ~40 ms for the client's delayed ACK."""
    import asyncio
    import socket

    from filterproxy.admin.auth import LoginLimiter
    from filterproxy.admin.routes import Context
    from filterproxy.admin.server import AdminServer
    from filterproxy.state.store import Store

    async def main() -> int:
        server = AdminServer(Context(Store.open(f"sqlite:///{tmp_path / 'state.db'}"), None, LoginLimiter()), None)  # type: ignore[arg-type]
        await server.start("127.0.0.1", 0)
        try:
            assert server.sock is not None
            return server.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            await server.stop()

    assert asyncio.run(main()) != 0
