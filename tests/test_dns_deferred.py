"""The resolver's single-thread promise (filterproxy.dns.deferred.Deferred): order, errors, chaining."""

from __future__ import annotations

import pytest

from filterproxy.dns.deferred import Deferred


def results(d: Deferred) -> list:
    out: list = []
    d.add(lambda v, e: out.append(("err", type(e).__name__) if e is not None else ("ok", v)))
    return out


def test_callbacks_run_in_order_once_and_late_ones_at_once():
    d, seen = Deferred(), []
    d.add(lambda v, e: seen.append(("a", v)))
    d.then(lambda v: seen.append(("then", v)))
    d.add(lambda v, e: seen.append(("b", v)))
    assert not d.done and seen == []
    d.resolve(1)
    d.resolve(2)  # a second result is ignored
    d.fail(ValueError())
    assert seen == [("a", 1), ("then", 1), ("b", 1)]
    d.add(lambda v, e: seen.append(("late", v)))
    assert seen[-1] == ("late", 1) and d.done


@pytest.mark.parametrize("resolved_first", [False, True])
def test_then_maps_values_and_passes_errors_through(resolved_first):
    ok, bad = Deferred(), Deferred()
    if resolved_first:
        ok.resolve(20)
        bad.fail(KeyError("x"))
    r_ok = results(ok.then(lambda v: v + 1).then(lambda v: v * 2))
    r_bad = results(bad.then(lambda v: v + 1))  # no on_error: the error goes on
    r_handled = results(bad.then(lambda v: v, lambda e: f"handled {type(e).__name__}"))
    if not resolved_first:
        ok.resolve(20)
        bad.fail(KeyError("x"))
    assert r_ok == [("ok", 42)]
    assert r_bad == [("err", "KeyError")]
    assert r_handled == [("ok", "handled KeyError")]


def test_a_failing_step_fails_its_result_not_the_resolver():
    d = Deferred()
    r = results(d.then(lambda v: 1 / v))
    after = results(d)
    d.resolve(0)  # must not raise here
    assert r == [("err", "ZeroDivisionError")] and after == [("ok", 0)]


def test_a_step_may_return_a_deferred():
    d, inner = Deferred(), Deferred()
    r = results(d.then(lambda v: inner))
    d.resolve("outer")
    assert r == []  # waits for the inner one
    inner.resolve("inner")
    assert r == [("ok", "inner")]
    d2, inner2 = Deferred(), Deferred()
    r2 = results(d2.then(lambda v: inner2))
    d2.resolve(None)
    inner2.fail(TimeoutError())
    assert r2 == [("err", "TimeoutError")]


def test_failed_constructor():
    assert results(Deferred.failed(OSError("down"))) == [("err", "OSError")]
