"""``GET /api/v1/groups``: each group's policy as the engine holds it, every rule with its file:line, a
teacher's own groups only (the console's group pages read it)."""

from __future__ import annotations

import asyncio
import threading
import types
from typing import Any

import pytest
from conftest import write_config

from filterproxy.admin import api_groups
from filterproxy.admin.errors import ApiError
from filterproxy.config import load_config
from filterproxy.state.model import Actor

POLICY = """\
name: Kids
names: {vi: Tiểu học}
block_categories: [adult]
safesearch: strict
youtube: moderate
allow:
  - school.example
  - =exact.example
block:
  - games.example
schedules:
  - name: bedtime
    days: weekdays
    from: "21:00"
    to: "06:30"
    allow_only: true
"""


def _run(coro: Any) -> Any:
    """``asyncio.run`` in a thread of its own: Playwright's session may hold this thread's loop."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def _call(tmp_path, role: str = "admin", groups: frozenset[str] = frozenset(), name: str | None = None):
    cfg = load_config(
        str(
            write_config(
                tmp_path,
                "groups: [kids, teens]\nclients: [{ip: 10.0.0.5, group: kids}]\ntimezone: Asia/Ho_Chi_Minh\n",
                {"kids": POLICY, "teens": "name: Teens\n"},
            )
        )
    )
    engine = types.SimpleNamespace(config=cfg, snapshot=types.SimpleNamespace(lists=[]))
    actor = Actor("u", role, groups)  # type: ignore[arg-type]

    def may_manage(group: str) -> None:
        if not actor.may_manage(group):
            raise ApiError(403, f"group {group!r} is not one of yours")

    call = types.SimpleNamespace(
        ctx=types.SimpleNamespace(engine=engine),
        groups=lambda: None if role == "admin" else groups,
        path=lambda _key: name,
        may_manage=may_manage,
    )
    return call, str(tmp_path / "policies" / "kids.yaml")


def test_a_group_says_every_rule_and_where_it_was_written(tmp_path):
    call, path = _call(tmp_path, name="kids")
    g = _run(api_groups.get_group(call))
    assert g["names"] == {"vi": "Tiểu học"} and g["safesearch"] == "strict" and g["youtube"] == "moderate"
    assert g["block_categories"] == [{"category": "adult", "lists": []}]
    assert g["sources"]["block_categories"] == f"{path}:3"
    assert g["allow"] == [
        {"name": "exact.example", "subdomains": False, "source": f"{path}:8"},
        {"name": "school.example", "subdomains": True, "source": f"{path}:7"},
    ]
    assert g["block"] == [{"name": "games.example", "subdomains": True, "source": f"{path}:10"}]
    assert g["schedules"] == [
        {
            "name": "bedtime",
            "days": ["mon", "tue", "wed", "thu", "fri"],
            "from": "21:00",
            "to": "06:30",
            "block_categories": [],
            "allow_only": True,
            "source": f"{path}:12",
        }
    ]
    assert g["clients"][0]["kind"] == "ip" and g["clients"][0]["value"] == "10.0.0.5"
    assert g["timezone"] == "Asia/Ho_Chi_Minh"


def test_teachers_see_their_groups_only(tmp_path):
    call, _ = _call(tmp_path, "teacher", frozenset({"teens"}), name="kids")
    assert [g["id"] for g in _run(api_groups.list_groups(call))] == ["teens"]
    with pytest.raises(ApiError) as err:
        _run(api_groups.get_group(call))
    assert err.value.status == 403
    call.path = lambda _key: "nobody"
    with pytest.raises(ApiError) as err:
        _run(api_groups.get_group(call))
    assert err.value.status == 404


def test_the_openapi_document_has_the_groups_with_a_string_name():
    from filterproxy.admin.server import endpoints
    from filterproxy.admin.spec import document

    paths = document(endpoints())["paths"]
    assert "/api/v1/groups" in paths
    [param] = paths["/api/v1/groups/{name}"]["get"]["parameters"]
    assert param["name"] == "name" and param["schema"] == {"type": "string"}
    [param] = paths["/api/v1/devices/{id}"]["patch"]["parameters"]
    assert param["schema"] == {"type": "integer"}
