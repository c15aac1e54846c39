"""The last-good rule: a new snapshot whose lists collapsed is refused, whichever path swaps it in.

A list that shrinks to a fraction of itself between two snapshots is almost always a broken input (a
truncated download, a file overwritten with something else, a parser that no longer recognises the
format), and serving it would silently unblock everything it used to list. ``lists update``, SIGHUP /
``lists reload`` and start-up all compare the new snapshot with the last good one (``current``) here,
list by list, and keep the last good one when it looks broken. An intended shrink is
accepted by ``filterproxy lists update --min-ratio 0``, which makes the smaller snapshot the last good.
"""

from __future__ import annotations

from collections.abc import Sequence

from filterproxy.lists.snapshot import ListInfo

DEFAULT_MIN_RATIO = 0.5
GUARDED_MIN_ENTRIES = 100  # a list smaller than this may shrink freely (an admin's handful of names)


class SnapshotRefused(Exception):
    """The new snapshot looks broken next to the last good one; the message says which list and why."""


def shrink_problem(
    last_good: Sequence[ListInfo], new: Sequence[ListInfo], min_ratio: float = DEFAULT_MIN_RATIO
) -> str | None:
    """Why the lists ``new`` must not replace ``last_good``, or None. Lists are compared by id; a list
    that is new, or that left the configuration, is not a shrink."""
    if min_ratio <= 0:
        return None
    before = {li.id: li.entries + li.ips for li in last_good}
    for li in new:
        old = before.get(li.id)
        now = li.entries + li.ips
        if old is not None and old >= GUARDED_MIN_ENTRIES and now < min_ratio * old:
            return (
                f"list {li.id} shrank from {old:,} to {now:,} entries (below {min_ratio:.0%} of the last good "
                f"snapshot): the new file looks broken"
            )
    return None
