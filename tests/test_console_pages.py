"""The groups, devices and why-blocked pages' presentation tables: the weekly grid agrees with
``Schedule.active``, "until tomorrow morning" is the next 07:00 in the configured zone, and every reason a
verdict can carry has a plain sentence in both languages."""

from __future__ import annotations

import datetime as dt
import types
import zoneinfo

import pytest

from filterproxy.admin.api_groups import _schedule
from filterproxy.admin.console import i18n
from filterproxy.admin.console.pages.devices import minutes_until_morning
from filterproxy.admin.console.pages.groups import SLOT, week_grid
from filterproxy.admin.console.pages.why import sentence
from filterproxy.policy.model import Schedule
from filterproxy.verdict import Action, Reason

SCHEDULES = [
    Schedule("bedtime", frozenset({0, 1, 2, 3, 6}), 21 * 60 + 30, 6 * 60 + 30, allow_only=True),
    Schedule("school", frozenset(range(5)), 7 * 60, 11 * 60 + 15, block=frozenset({"games"})),
    Schedule("sunday", frozenset({6}), 0, 0, block=frozenset({"social"})),
]


def test_the_week_grid_marks_every_half_hour_a_schedule_touches():
    grid = week_grid([_schedule(s) for s in SCHEDULES])
    monday = dt.datetime(2026, 11, 30)  # a Monday
    for day, row in enumerate(grid):
        for slot, cell in enumerate(row["cells"]):
            start = monday + dt.timedelta(days=day, minutes=slot * SLOT)
            on = [s for s in SCHEDULES if any(s.active(start + dt.timedelta(minutes=m)) for m in range(SLOT))]
            assert cell["kind"] == ("only" if any(s.allow_only for s in on) else "block" if on else ""), (day, slot)
    friday = [c["kind"] for c in grid[4]["cells"]]
    assert friday[2] == friday[12] == "only"  # 01:00 and 06:00: the morning after Thursday's bedtime
    assert friday[13] == "" and friday[14] == "block"  # 06:30 free, 07:00 school
    assert grid[5]["cells"][0]["kind"] == ""  # Saturday 00:00: no bedtime on Friday evening


@pytest.mark.parametrize(
    "now, minutes",
    [
        ("2026-12-06T13:00:00+00:00", 11 * 60),  # 20:00 in Hanoi → 07:00 tomorrow
        ("2026-12-06T23:30:00+00:00", 30),  # 06:30 in Hanoi → 07:00 today
        ("2026-12-07T00:00:00+00:00", 24 * 60),  # exactly 07:00 → tomorrow's
    ],
)
def test_until_tomorrow_morning_is_the_next_seven_oclock_in_the_zone(now, minutes):
    got = minutes_until_morning("Asia/Ho_Chi_Minh", dt.datetime.fromisoformat(now))
    assert got == minutes
    end = dt.datetime.fromisoformat(now) + dt.timedelta(minutes=got)
    assert end.astimezone(zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh")).time() == dt.time(7, 0)


@pytest.mark.parametrize("lang", i18n.LANGS)
@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_has_a_plain_sentence(lang, reason):
    view = types.SimpleNamespace(lang=lang, t=lambda key, **v: i18n.t(lang, key, **v))
    assert f"why.because.{reason.value}" in i18n.CATALOGUE[lang]
    answer = {
        "input": "www.bad.example",
        "action": Action.BLOCK.value,
        "reason": reason.value,
        "category": "adult",
        "list": "adult",
        "rule": "bad.example",
        "source": "/etc/filterproxy/adult.txt:7",
        "schedule": "evening" if reason is Reason.SCHEDULE else None,
        "rewrite": None,
    }
    said = sentence(view, answer, "Tiểu học")  # type: ignore[arg-type]
    assert "Tiểu học" in said and "{" not in said
    if reason in (Reason.CATEGORY, Reason.LEGAL):
        assert "bad.example" in said and "adult" in said
    for action in Action:
        assert f"why.verdict.{action.value}" in i18n.CATALOGUE[lang]
