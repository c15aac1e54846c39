"""The resolver's single-thread promise (filterproxy.dns.deferred.Deferred): order, errors."""

from __future__ import annotations

from filterproxy.dns.deferred import Deferred


def results(d: Deferred) -> list:
    out: list = []
    d.add(lambda v, e: out.append(("err", type(e).__name__) if e is not None else ("ok", v)))
    return out


def test_callbacks_run_in_order_once_and_late_ones_at_once():
    d, seen = Deferred(), []
    d.add(lambda v, e: seen.append(("a", v)))
    d.add(lambda v, e: seen.append(("b", v)))
    assert not d.done and seen == []
    d.resolve(1)
    d.resolve(2)  # a second result is ignored
    d.fail(ValueError())
    assert seen == [("a", 1), ("b", 1)]
    d.add(lambda v, e: seen.append(("late", v)))
    assert seen[-1] == ("late", 1) and d.done


def test_a_failed_deferred_gives_its_error_to_late_callbacks():
    d = Deferred()
    d.fail(OSError("down"))
    assert results(d) == [("err", "OSError")]
