"""Live rules in the engine: legal > override > allowlist > pause > schedule > category; devices; expiry."""

from __future__ import annotations

import datetime as dt

import pytest
from test_engine import MONDAY_10, MONDAY_18, engine  # noqa: F401  (the module-scoped engine fixture)

from filterproxy.clients import Client
from filterproxy.state.model import EMPTY, Device, LiveRules, Override, Pause
from filterproxy.verdict import Action, Reason

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 11, 23, 0, 0, tzinfo=dt.UTC)
LATER = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def _ov(id_: int, group: str, name: str, action: str, expires: dt.datetime | None = LATER) -> Override:
    return Override(id_, group, name, action, "lan", "teacher", T0, expires)  # type: ignore[arg-type]


def _pause(id_: int, client: str | None = None, group: str | None = None, expires: dt.datetime = LATER) -> Pause:
    return Pause(id_, client, group, "lan", T0, expires)


@pytest.fixture
def live(engine):  # noqa: F811
    yield engine
    engine.set_live(EMPTY)


RULES = LiveRules(
    serial=7,
    overrides=(
        _ov(1, "kid", "illegal.example", "allow"),  # refused by the legal list regardless
        _ov(2, "kid", "porn.example", "allow"),  # beats the category (and covers subdomains)
        _ov(3, "kid", "friendly.example", "block"),  # beats the allowlist
        _ov(4, "grown", "games.example", "block"),
        _ov(5, "kid", "gone.example", "block", expires=T0),  # expired: no effect
        _ov(6, "kid", "games.example", "allow"),  # beats the school-hours schedule
    ),
    pauses=(_pause(1, client="10.1.2.3"), _pause(2, group="grown"), _pause(3, client="device:1")),
    devices=(Device(1, "tab", "grown", ip="10.1.9.9", mac="aa:bb:cc:dd:ee:01"),),
)


@pytest.mark.parametrize(
    "client,host,at,action,reason",
    [
        ("10.2.0.1", "illegal.example", MONDAY_18, Action.BLOCK, Reason.LEGAL),  # legal beats an allow override
        ("10.2.0.1", "porn.example", MONDAY_18, Action.ALLOW, Reason.OVERRIDE),  # override beats category
        ("10.2.0.1", "cdn.porn.example", MONDAY_18, Action.ALLOW, Reason.OVERRIDE),  # and covers subdomains
        ("10.2.0.1", "friendly.example", MONDAY_18, Action.BLOCK, Reason.OVERRIDE),  # override beats allowlist
        ("10.2.0.1", "games.example", MONDAY_10, Action.ALLOW, Reason.OVERRIDE),  # and the schedule
        ("10.2.0.1", "gone.example", MONDAY_18, Action.ALLOW, Reason.DEFAULT),  # expired
        ("10.2.0.1", "example.org", MONDAY_18, Action.ALLOW, Reason.DEFAULT),  # not paused
        ("10.1.2.3", "example.org", MONDAY_18, Action.BLOCK, Reason.PAUSE),  # paused client
        ("10.1.2.3", "school-approved.example", MONDAY_18, Action.ALLOW, Reason.ALLOWLIST),  # allowlist still open
        ("10.1.2.3", "porn.example", MONDAY_18, Action.ALLOW, Reason.OVERRIDE),  # an allow override still open
        ("10.1.2.3", "illegal.example", MONDAY_18, Action.BLOCK, Reason.LEGAL),
        ("10.9.5.5", "example.org", MONDAY_18, Action.BLOCK, Reason.PAUSE),  # paused group (grown)
        ("10.9.5.5", "games.example", MONDAY_18, Action.BLOCK, Reason.OVERRIDE),  # grown's own override
    ],
)
def test_live_precedence(live, client, host, at, action, reason):
    before = live.decide(client, host, at=at)
    live.set_live(RULES)
    v = live.decide(client, host, at=at)
    assert (v.action, v.reason) == (action, reason), v
    live.set_live(EMPTY)
    assert live.decide(client, host, at=at) == before  # removing the rules restores the old verdict


def test_override_names_itself(live):
    live.set_live(RULES)
    v = live.decide("10.2.0.1", "friendly.example", at=MONDAY_18)
    assert v.list_id == "override:3" and v.short_id == "override/override/override:3"
    assert v.source is not None and v.source.startswith("override 3 by teacher lan, until ")
    p = live.decide("10.1.2.3", "example.org", at=MONDAY_18)
    assert p.source is not None and p.source.startswith("pause 1 by lan, until ") and p.category == "pause"


def test_devices_join_the_client_map(live):
    assert live.group_for("10.1.9.9") == "kid"
    live.set_live(RULES)
    assert live.group_for("10.1.9.9") == "grown"  # the device's ip rule beats the config's CIDR
    assert live.group_for(Client(mac="AA:BB:CC:DD:EE:01", ip="10.2.2.2")) == "grown"
    assert live.group_for("10.9.1.1") == "kid"  # config rules stay
    # the device is paused by id: its ip and its mac are paused
    assert (
        live.decide(Client(ip="10.5.5.5", mac="aa:bb:cc:dd:ee:01"), "example.org", at=MONDAY_18).reason is Reason.PAUSE
    )
    live.set_live(EMPTY)
    assert live.group_for("10.1.9.9") == "kid"


def test_expiry_at_its_minute(live):
    ends = dt.datetime(2026, 11, 23, 11, 0, tzinfo=dt.UTC)  # 18:00 in Asia/Ho_Chi_Minh
    live.set_live(LiveRules(1, overrides=(_ov(9, "kid", "porn.example", "allow", expires=ends),)))
    assert live.decide("10.2.0.1", "porn.example", at=ends - dt.timedelta(minutes=1)).reason is Reason.OVERRIDE
    assert live.decide("10.2.0.1", "porn.example", at=ends).reason is Reason.CATEGORY


def test_live_rules_survive_a_swap(live):
    live.set_live(RULES)
    live.swap(live.snapshot, live.config)
    assert live.decide("10.2.0.1", "porn.example", at=MONDAY_18).reason is Reason.OVERRIDE
    assert live.group_for("10.1.9.9") == "grown"


def test_check_override_refuses_the_legal_list_and_unknown_groups(live):
    from filterproxy.state.live import check_override
    from filterproxy.state.store import Forbidden, StateError

    assert check_override(live, "kid", "WWW.Porn.Example.") == "www.porn.example"
    with pytest.raises(Forbidden, match="national legal list"):
        check_override(live, "grown", "sub.illegal.example")  # nobody, admin included
    assert check_override(live, "kid", "illegal.example", "block") == "illegal.example"  # blocking it is harmless
    with pytest.raises(StateError, match="unknown"):
        check_override(live, "nobody", "x.example")
    with pytest.raises(StateError):
        check_override(live, "kid", "not a name")


@pytest.mark.parametrize(
    "category,vi,en",
    [("override", "Thầy cô hoặc quản trị viên", "teacher or an administrator"), ("pause", "tạm dừng", "paused")],
)
def test_block_page_names_live_reasons(category, vi, en):
    from filterproxy.http.blockpage import category_name

    assert vi in category_name(category, "vi") and en in category_name(category, "en")
