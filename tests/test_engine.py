"""Decision engine: precedence legal > allowlist > schedule > category/blocklists > safesearch > default."""

from __future__ import annotations

import datetime as dt

import pytest
from conftest import write_config

from filterproxy.config import load_config
from filterproxy.lists.snapshot import build_snapshot
from filterproxy.policy.engine import Engine
from filterproxy.verdict import Action, Reason

POLICIES = {
    "kid": """
        name: Kid
        tone: child
        block_categories: [adult, social, bypass]
        allow: [friendly.example, =exact-only.example, illegal.example]
        block: [custom-bad.example]
        schedules:
          - {name: school-hours, days: weekdays, from: "07:00", to: "17:00", block_categories: [games]}
          - {name: bedtime, days: all, from: "21:00", to: "06:30", allow_only: true}
    """,
    "grown": """
        name: Grown
        tone: adult
        block_categories: [malware]
        safesearch: "off"
        youtube: "off"
        bypass_defences: false
    """,
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engine")
    (tmp / "adult.txt").write_text("# adult\nporn.example\nfriendly.example\n")
    (tmp / "social.txt").write_text("||social.example^\n@@||ok.social.example^\n")
    (tmp / "games.txt").write_text("games.example\n")
    (tmp / "illegal.txt").write_text("0.0.0.0 illegal.example\n")
    (tmp / "allow.txt").write_text("school-approved.example\n")
    (tmp / "malware.txt").write_text("*.malware.example\n")
    cfg = write_config(
        tmp,
        """
        timezone: Asia/Ho_Chi_Minh
        default_group: kid
        clients:
          - {cidr: 10.0.0.0/8, group: kid}
          - {cidr: 10.9.0.0/16, group: grown}
          - {ip: 10.9.1.1, group: kid}
          - {user: teacher, group: grown}
        lists:
          - {id: adult, category: adult, format: domains, match: subdomains, path: adult.txt}
          - {id: social, category: social, format: adblock, path: social.txt}
          - {id: games, category: games, format: domains, match: subdomains, path: games.txt}
          - {id: national, category: illegal, format: hosts, match: subdomains, path: illegal.txt}
          - {id: approved, category: education, format: domains, allow: true, path: allow.txt}
          - {id: malware, category: malware, format: wildcard, path: malware.txt}
    """,
        POLICIES,
    )
    config = load_config(str(cfg))
    return Engine(config, build_snapshot(config.lists))


MONDAY_10 = dt.datetime(2026, 11, 23, 10, 0)  # a Monday, school hours
MONDAY_18 = dt.datetime(2026, 11, 23, 18, 0)
SATURDAY_10 = dt.datetime(2026, 11, 28, 10, 0)
MONDAY_23 = dt.datetime(2026, 11, 23, 23, 0)
TUESDAY_05 = dt.datetime(2026, 11, 24, 5, 0)


@pytest.mark.parametrize(
    "group,host,at,action,reason,extra",
    [
        # 1. legal beats everything, even the group's allowlist ("illegal.example" is allowlisted for kid)
        ("kid", "illegal.example", MONDAY_18, Action.BLOCK, Reason.LEGAL, {"legal": True, "list_id": "national"}),
        ("kid", "sub.illegal.example", MONDAY_18, Action.BLOCK, Reason.LEGAL, {"category": "illegal"}),
        ("grown", "illegal.example", MONDAY_18, Action.BLOCK, Reason.LEGAL, {}),
        ("kid", "illegal.example", MONDAY_23, Action.BLOCK, Reason.LEGAL, {}),
        # 2. allowlist beats schedule and category
        ("kid", "friendly.example", MONDAY_18, Action.ALLOW, Reason.ALLOWLIST, {}),
        ("kid", "www.friendly.example", MONDAY_23, Action.ALLOW, Reason.ALLOWLIST, {}),
        ("kid", "exact-only.example", MONDAY_18, Action.ALLOW, Reason.ALLOWLIST, {}),
        ("kid", "school-approved.example", MONDAY_18, Action.ALLOW, Reason.ALLOWLIST, {"list_id": "approved"}),
        # 3. schedules
        (
            "kid",
            "games.example",
            MONDAY_10,
            Action.BLOCK,
            Reason.SCHEDULE,
            {"schedule": "school-hours", "category": "games"},
        ),
        ("kid", "games.example", MONDAY_18, Action.ALLOW, Reason.DEFAULT, {}),
        ("kid", "games.example", SATURDAY_10, Action.ALLOW, Reason.DEFAULT, {}),
        ("kid", "anything.example", MONDAY_23, Action.BLOCK, Reason.SCHEDULE, {"schedule": "bedtime"}),
        ("kid", "anything.example", TUESDAY_05, Action.BLOCK, Reason.SCHEDULE, {"schedule": "bedtime"}),
        # 4. categories, exceptions, own block additions, bypass canaries
        ("kid", "porn.example", MONDAY_18, Action.BLOCK, Reason.CATEGORY, {"category": "adult", "list_id": "adult"}),
        ("kid", "cdn.porn.example", MONDAY_18, Action.BLOCK, Reason.CATEGORY, {"category": "adult"}),
        ("kid", "social.example", MONDAY_18, Action.BLOCK, Reason.CATEGORY, {"category": "social"}),
        ("kid", "ok.social.example", MONDAY_18, Action.ALLOW, Reason.DEFAULT, {}),
        ("kid", "custom-bad.example", MONDAY_18, Action.BLOCK, Reason.BLOCKLIST, {"category": "custom"}),
        ("kid", "use-application-dns.net", MONDAY_18, Action.BLOCK, Reason.BYPASS, {"category": "bypass"}),
        ("grown", "use-application-dns.net", MONDAY_18, Action.ALLOW, Reason.DEFAULT, {}),
        ("grown", "porn.example", MONDAY_18, Action.ALLOW, Reason.DEFAULT, {}),
        ("grown", "x.malware.example", MONDAY_18, Action.BLOCK, Reason.CATEGORY, {"category": "malware"}),
        ("grown", "malware.example", MONDAY_18, Action.BLOCK, Reason.CATEGORY, {}),
        # 5. SafeSearch
        (
            "kid",
            "www.google.com",
            MONDAY_18,
            Action.REWRITE,
            Reason.SAFESEARCH,
            {"rewrite": "forcesafesearch.google.com"},
        ),
        (
            "kid",
            "www.google.com.vn",
            MONDAY_18,
            Action.REWRITE,
            Reason.SAFESEARCH,
            {"rewrite": "forcesafesearch.google.com"},
        ),
        ("kid", "www.youtube.com", MONDAY_18, Action.REWRITE, Reason.SAFESEARCH, {"rewrite": "restrict.youtube.com"}),
        ("kid", "www.bing.com", MONDAY_18, Action.REWRITE, Reason.SAFESEARCH, {"rewrite": "strict.bing.com"}),
        ("kid", "duckduckgo.com", MONDAY_18, Action.REWRITE, Reason.SAFESEARCH, {"rewrite": "safe.duckduckgo.com"}),
        ("grown", "www.google.com", MONDAY_18, Action.ALLOW, Reason.DEFAULT, {}),
        # 6. default
        ("kid", "example.org", MONDAY_18, Action.ALLOW, Reason.DEFAULT, {}),
    ],
)
def test_precedence(engine, group, host, at, action, reason, extra):
    v = engine.decide(None, host, at=at, group=group)
    assert (v.action, v.reason) == (action, reason), v
    for k, val in extra.items():
        assert getattr(v, k) == val, (k, v)
    # the DNS path's names are canonical already (wire.policy_name): same verdict without normalising
    assert engine.decide(None, host, at=at, group=group, canonical=True) == v


def test_nothing_matched_is_one_object_per_group(engine):
    a = engine.decide(None, "example.org", at=MONDAY_18, group="kid")
    b = engine.decide(None, "example.net", at=MONDAY_18, group="kid")
    c = engine.decide(None, "example.org", at=MONDAY_18, group="grown")
    assert a is b and a.reason is Reason.DEFAULT and a.group == "kid"
    assert c is not a and c.group == "grown"


@pytest.mark.parametrize(
    "client,group",
    [
        ("10.1.2.3", "kid"),  # CIDR
        ("10.9.5.5", "grown"),  # longest prefix wins
        ("10.9.1.1", "kid"),  # exact IP beats CIDR
        ("teacher", "grown"),  # proxy user
        ("192.0.2.1", "kid"),  # default group
    ],
)
def test_client_precedence(engine, client, group):
    assert engine.group_for(client) == group


def test_every_verdict_explains_itself(engine):
    v = engine.decide("10.1.2.3", "porn.example", at=MONDAY_18, explain=True)
    assert v.source.endswith("adult.txt:2") and v.rule == "porn.example" and v.group == "kid"
    assert v.short_id == "category/adult/adult"


def test_names_are_normalised_at_the_edge(engine):
    assert engine.decide(None, "PORN.Example.", at=MONDAY_18, group="kid").reason is Reason.CATEGORY


def test_fail_closed_on_internal_error(engine, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "_decide", boom)
    v = engine.decide(None, "example.org", group="kid")
    assert v.action is Action.BLOCK and v.reason is Reason.ERROR


def test_swap_replaces_lists(engine, tmp_path):
    from filterproxy.lists.snapshot import ListSource

    old = engine.snapshot
    (tmp_path / "new.txt").write_text("new-bad.example\n")
    engine.swap(build_snapshot([ListSource("adult2", "adult", "domains", str(tmp_path / "new.txt"))]))
    try:
        assert engine.decide(None, "new-bad.example", at=MONDAY_18, group="kid").reason is Reason.CATEGORY
        assert engine.decide(None, "porn.example", at=MONDAY_18, group="kid").reason is Reason.DEFAULT
    finally:
        engine.swap(old)
