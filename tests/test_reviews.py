"""Review requests, the unit layer: the block page's form per tone and reason, the message clean-up, the
per-address limit, and the checks of what a student sends (host, reason code)."""

from __future__ import annotations

import pytest

from filterproxy.http import blockpage
from filterproxy.state import reviews, shapes
from filterproxy.verdict import Action, Reason, Verdict

ADULT = Verdict(Action.BLOCK, Reason.CATEGORY, "g", category="adult", list_id="ut1-adult")
ON = blockpage.BlockPageSettings(review_form=True, review_url="https://school.example/ask")


@pytest.mark.parametrize(
    "verdict,tone,form,message",
    [
        (ADULT, "teen", True, True),
        (ADULT, "adult", True, True),
        (ADULT, "child", True, False),  # one button, no text box
        (Verdict(Action.BLOCK, Reason.LEGAL, "g", category="illegal", list_id="national", legal=True), "teen", 0, 0),
        (Verdict(Action.BLOCK, Reason.ERROR, "g"), "teen", False, False),
        (Verdict(Action.BLOCK, Reason.UNKNOWN_CLIENT, ""), "teen", False, False),
    ],
)
def test_the_form_per_tone_and_reason(verdict, tone, form, message):
    _status, headers, body = blockpage.render(verdict, "blocked.example", lang="en", tone=tone, settings=ON)
    text = body.decode()
    assert ('id="review-form"' in text) is bool(form)
    assert ('name="message"' in text) is bool(message)
    assert ("form-action 'self'" in headers["Content-Security-Policy"]) is bool(form)
    if form:
        assert f'action="{blockpage.REVIEW_PATH}"' in text and 'name="host" value="blocked.example"' in text
        assert f'name="reason" value="{verdict.short_id}"' in text


def test_no_form_when_off():
    off = blockpage.BlockPageSettings(review_url="https://school.example/ask")
    _s, headers, body = blockpage.render(ADULT, "blocked.example", lang="vi", tone="teen", settings=off)
    assert b"review-form" not in body and b'id="review"' in body
    assert "form-action 'none'" in headers["Content-Security-Policy"]


def test_the_form_is_in_both_languages():
    vi = blockpage.render(ADULT, "b.example", lang="vi", tone="teen", settings=ON)[2].decode()
    en = blockpage.render(ADULT, "b.example", lang="en", tone="teen", settings=ON)[2].decode()
    assert "Gửi yêu cầu mở trang" in vi and "Ask to open this page" in en


@pytest.mark.parametrize(
    "raw,cap,want",
    [
        (None, 500, None),
        ("   ", 500, None),
        (" hi\x00\x07 there\u202e ", 500, "hi there"),
        ("line1\r\nline2\tend", 500, "line1\nline2 end"),
        ("x" * 600, 500, "x" * 500),
        ("x" * 600, None, "x" * 600),
    ],
)
def test_clean_message(raw, cap, want):
    assert reviews.clean_message(raw, cap) == want


def test_limiter_per_address_and_window():
    lim = reviews.RequestLimiter(limit=2, window=10)
    assert [lim.allow("a", now=t) for t in (0, 1)] == [None, None]
    assert lim.allow("a", now=2) == 8 and lim.allow("b", now=2) is None
    assert lim.allow("a", now=10.5) is None  # the first one left the window


@pytest.mark.parametrize(
    "value,want",
    [("Blocked.Example", "blocked.example"), ("https://wiki.example/p?token=1", "wiki.example"), ("", None)],
)
def test_clean_host(value, want):
    if want is None:
        with pytest.raises(shapes.ShapeError):
            reviews.clean_host(value)
    else:
        assert reviews.clean_host(value) == want


def test_clean_reason():
    assert reviews.clean_reason(" category/adult/ut1-adult ") == "category/adult/ut1-adult"
    with pytest.raises(shapes.ShapeError):
        reviews.clean_reason("<script>")
