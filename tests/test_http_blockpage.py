"""Block page rendering: status, language, tone, escaping, what must never appear."""

from __future__ import annotations

import html
import re

import pytest

from filterproxy.http.blockpage import BlockPageSettings, category_name, pick_language, render
from filterproxy.verdict import Action, Reason, Verdict

SETTINGS = BlockPageSettings(
    hotline="111",
    report_url="https://tongdai111.vn",
    review_url="https://school.example/review?x=1",
    ca_help_url="http://mitm.it/",
)
ADULT = Verdict(Action.BLOCK, Reason.CATEGORY, "teen", category="adult", list_id="ut1-adult", rule="porn.example")
LEGAL = Verdict(
    Action.BLOCK, Reason.LEGAL, "teen", category="illegal", list_id="national", rule="x.example", legal=True
)
HASHED = Verdict(Action.BLOCK, Reason.CATEGORY, "teen", category="adult", list_id="iwf-hashes", rule=None, hashed=True)
SCHED = Verdict(Action.BLOCK, Reason.SCHEDULE, "teen", category="social", list_id="social", schedule="school-nights")


@pytest.mark.parametrize(
    "header,default,want",
    [
        (None, "vi", "vi"),
        ("", "en", "en"),
        ("en", "vi", "en"),
        ("en-GB,en;q=0.8", "vi", "en"),
        ("vi-VN,vi;q=0.9,en;q=0.8", "vi", "vi"),
        ("de,fr;q=0.9", "vi", "vi"),
        ("de,fr;q=0.9", "en", "en"),
        ("en;q=0.2,vi;q=0.3", "en", "vi"),
        ("*", "vi", "vi"),
        ("en;q=0", "vi", "vi"),
        ("EN-us", "vi", "en"),
        ("en;q=abc, vi", "en", "vi"),
    ],
)
def test_pick_language(header, default, want):
    assert pick_language(header, default) == want


@pytest.mark.parametrize(
    "verdict,status",
    [
        (ADULT, 403),
        (LEGAL, 451),
        (HASHED, 403),
        (SCHED, 403),
        (Verdict(Action.BLOCK, Reason.ERROR, "teen"), 403),
        (Verdict(Action.BLOCK, Reason.UNKNOWN_CLIENT, ""), 403),
    ],
)
@pytest.mark.parametrize("lang", ["vi", "en"])
@pytest.mark.parametrize("tone", ["child", "teen", "adult"])
def test_render_everywhere(verdict, status, lang, tone):
    code, headers, body = render(
        verdict, "blocked.example", lang=lang, tone=tone, settings=SETTINGS, policy_name="Teen (home)"
    )
    text = body.decode("utf-8")
    assert code == status
    assert headers["Cache-Control"] == "no-store" and headers["Content-Language"] == lang
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert text.startswith("<!DOCTYPE html>") and f'lang="{lang}"' in text
    assert 'href="tel:111"' in text and 'href="https://tongdai111.vn"' in text and 'href="http://mitm.it/"' in text
    assert f'<code id="reason-id">{html.escape(verdict.short_id)}</code>' in text
    review = 'id="review"' in text
    assert review == (tone != "child" and status != 451 and verdict.reason is not Reason.UNKNOWN_CLIENT) or (
        tone == "child" and verdict.reason in (Reason.ERROR,) and review
    )
    assert "$" not in re.sub(r"<style>.*</style>", "", text, flags=re.S)  # no unfilled placeholder


@pytest.mark.parametrize(
    "lang,words",
    [
        (
            "vi",
            ["Trang này", "Nội dung người lớn", "Tổng đài quốc gia bảo vệ trẻ em", "Mã lý do", "yêu cầu xem xét lại"],
        ),
        (
            "en",
            [
                "This page is blocked",
                "Adult content",
                "national child protection hotline",
                "Reason code",
                "request a review",
            ],
        ),
    ],
)
def test_words_per_language(lang, words):
    text = render(ADULT, "blocked.example", lang=lang, tone="teen", settings=SETTINGS)[2].decode()
    for w in words:
        assert w in text


PRIMARY_NAMES = {"vi": "Tiểu học (6–10 tuổi)", "en": "Primary school, ages 6–10"}


@pytest.mark.parametrize(
    "name,names,lang,line,absent",
    [
        ("Primary school (6–10)", PRIMARY_NAMES, "vi", "Chính sách áp dụng: Tiểu học (6–10 tuổi).", "Primary"),
        ("Primary school (6–10)", PRIMARY_NAMES, "en", "Policy: Primary school, ages 6–10.", "Tiểu học"),
        ("Teen (home)", None, "vi", "Chính sách áp dụng: Teen (home).", None),  # no names: the default name
        ("Teen (home)", None, "en", "Policy: Teen (home).", None),
        ("Teen (home)", {}, "vi", "Chính sách áp dụng: Teen (home).", None),
        ("Staff", {"vi": "Giáo viên"}, "vi", "Chính sách áp dụng: Giáo viên.", "Staff"),
        ("Staff", {"vi": "Giáo viên"}, "en", "Policy: Staff.", "Giáo viên"),  # language missing: the default name
    ],
)
def test_policy_name_in_page_language(name, names, lang, line, absent):
    text = render(
        ADULT, "blocked.example", lang=lang, tone="teen", settings=SETTINGS, policy_name=name, policy_names=names
    )[2].decode()
    assert f"<p>{line}</p>" in text
    if absent:
        assert absent not in text


def test_child_tone_is_simple():
    text = render(ADULT, "blocked.example", lang="vi", tone="child", settings=SETTINGS)[2].decode()
    assert "không dành cho em" in text and "thầy cô" in text and "111" in text
    assert 'id="review"' not in text and "blocked.example" not in text  # no jargon, no review form


def test_legal_page():
    code, headers, body = render(LEGAL, "x.example", lang="en", tone="child", settings=SETTINGS)
    assert code == 451 and b"required by Vietnamese law" in body and b'id="review"' not in body


def test_hashed_list_never_revealed():
    text = render(HASHED, "evil.example", lang="en", tone="adult", settings=SETTINGS)[2].decode()
    assert "iwf-hashes" not in text and "category/adult" in text


def test_values_are_escaped_and_links_checked():
    evil_host = 'x"><script>alert(1)</script>.example'
    v = Verdict(Action.BLOCK, Reason.CATEGORY, "g", category="<img src=x onerror=alert(1)>", list_id="l")
    s = BlockPageSettings(
        hotline='111"><b>',
        report_url="javascript:alert(1)",
        review_url="https://r.example/?a=<b>",
        ca_help_url="ftp://x",
    )
    text = render(v, evil_host, lang="en", tone="teen", settings=s, policy_name="<i>p</i>")[2].decode()
    assert "&lt;i&gt;p&lt;/i&gt;" in text
    text = render(v, evil_host, lang="en", tone="teen", settings=s, policy_name="p", policy_names={"en": "<i>p</i>"})[
        2
    ].decode()
    assert "<script>" not in text and "<img" not in text and "<i>p</i>" not in text and "<b>" not in text
    assert "javascript:" not in text and "ftp://x" not in text
    assert "&lt;script&gt;" in text


def test_review_link_carries_host_and_reason_only():
    text = render(ADULT, "blocked.example", lang="en", tone="teen", settings=SETTINGS)[2].decode()
    href = html.unescape(re.search(r'id="review" href="([^"]+)"', text).group(1))
    assert href == "https://school.example/review?x=1&host=blocked.example&reason=category%2Fadult%2Fut1-adult"


@pytest.mark.parametrize(
    "cat,lang,name",
    [
        ("adult", "vi", "Nội dung người lớn"),
        ("gambling", "en", "Gambling"),
        ("social_networks", "vi", "Mạng xã hội"),
        ("newcat", "en", "newcat"),
        (None, "vi", ""),
    ],
)
def test_category_names(cat, lang, name):
    assert category_name(cat, lang) == name
