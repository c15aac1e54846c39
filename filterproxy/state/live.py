"""Checks on live rules that need the running engine (the store knows no lists and no configuration).

:func:`check_override` is what the admin server calls before ``Store.add_override``: the group must
exist, and nobody, admin included, may allow a name the national legal list blocks (the engine keeps
legal first regardless; this answers the request with a clear 403 instead of a rule that never applies).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from filterproxy.state import shapes
from filterproxy.state.store import Forbidden, StateError
from filterproxy.verdict import Reason

if TYPE_CHECKING:
    from filterproxy.policy.engine import Engine


def check_override(engine: Engine, group: str, name: str, action: str = "allow") -> str:
    """The canonical name, once ``group`` is known to ``engine`` and an allow does not touch the legal list.

    StateError for an unknown group or a malformed name; Forbidden for an allow of a legally blocked name.
    """
    if group not in engine.config.groups:
        raise StateError(f"group {group!r}: unknown (groups: {', '.join(engine.config.groups)})")
    try:
        host = shapes.host(name)
    except shapes.ShapeError as exc:
        raise StateError(str(exc)) from None
    if action == "allow":
        v = engine.decide(None, host, group=group, canonical=True)
        if v.reason is Reason.LEGAL:
            raise Forbidden(f"{host} is on the national legal list ({v.list_id}): nobody can allow it")
    return host
