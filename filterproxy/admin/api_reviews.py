"""Review requests: a student asks for a blocked page, a teacher of their group (or an admin) decides.

``POST /reviews`` needs no login (the block page's own form posts to the proxy instead,
:mod:`filterproxy.http.review`): the group comes from the caller's address through the running engine's
client map, the address only counts against the per-address limit (429) and is never stored. Approving
makes a temporary allow override for the review's group and host (teachers: at most
``admin.teacher_max_minutes``; never past the legal list, 403) and closes the review; denying closes it.
"""

from __future__ import annotations

from typing import Any

from filterproxy.admin.auth import client_address
from filterproxy.admin.errors import ApiError
from filterproxy.admin.fields import Field
from filterproxy.admin.routes import Call, Endpoint, record
from filterproxy.clients import Client
from filterproxy.state import reviews as R
from filterproxy.state.shapes import ShapeError

MAX_MINUTES = 525600  # a year


async def add_review(call: Call) -> dict[str, Any]:
    address = client_address(call.request)
    wait = call.ctx.review_limiter.allow(address)
    if wait is not None:
        raise ApiError(429, f"too many review requests: try again in {wait} s", headers={"Retry-After": str(wait)})
    group, _how = call.ctx.engine.clients.group_for(Client(ip=address))
    if group is None:
        raise ApiError(403, "this device is in no group: a review request needs one")
    b = call.body
    try:
        host, reason = R.clean_host(b["host_or_url"]), R.clean_reason(b["reason_id"])
    except ShapeError as exc:
        raise ApiError(400, str(exc)) from None
    message = R.clean_message(b.get("message"), cap=None)  # the field's max_len refused a longer one (400)
    r = await call.run(call.ctx.store.add_review, group, host, reason, message)
    return {"id": r.id, "status": r.status, "group": r.group, "host_or_url": r.host_or_url}


async def list_reviews(call: Call) -> list[dict[str, Any]]:
    rows = await call.run(call.ctx.store.reviews, call.query.get("status"), call.groups())
    return [record(r) for r in rows]


async def _open_review(call: Call) -> Any:
    """The review of the path, once the caller may decide it (404 unknown, 403 another group, 409 decided)."""
    rid = call.path("id")
    found = [r for r in await call.run(call.ctx.store.reviews) if r.id == rid]
    if not found:
        raise ApiError(404, f"review {rid}: not found")
    review = found[0]
    call.may_manage(review.group)
    if review.status != "open":
        raise ApiError(409, f"review {rid} is already {review.status} (by {review.decided_by})")
    return review


async def approve_review(call: Call) -> dict[str, Any]:
    from filterproxy.state.live import check_override

    review = await _open_review(call)
    minutes = call.body.get("minutes")
    if call.actor.role == "teacher":
        limit = call.ctx.engine.config.admin.teacher_max_minutes
        minutes = limit if minutes is None else minutes
        if minutes > limit:
            raise ApiError(403, f"teachers may allow for at most {limit} minutes ('minutes' ≤ {limit})")
    # the canonical host; Forbidden (403) when the legal list blocks it, StateError (400) for an unknown group
    check_override(call.ctx.engine, review.group, R.clean_host(review.host_or_url))
    done = await call.run(call.ctx.store.decide_review, call.actor, review.id, True, minutes, call.body.get("note"))
    return record(done)


async def deny_review(call: Call) -> dict[str, Any]:
    review = await _open_review(call)
    done = await call.run(call.ctx.store.decide_review, call.actor, review.id, False, None, call.body.get("note"))
    return record(done)


_ADD = {
    "host_or_url": Field(required=True, max_len=2048, doc="the blocked page (only its host is kept)"),
    "reason_id": Field(required=True, max_len=200, doc="the reason code the block page showed"),
    "message": Field(max_len=R.MAX_MESSAGE, doc=f"optional, at most {R.MAX_MESSAGE} characters (400 above)"),
}
_STATUS = {"status": Field(choices=("open", "approved", "denied"), doc="only reviews in this state")}
_APPROVE = {
    "minutes": Field("number", low=0.01, high=MAX_MINUTES, doc="the allow's length (teachers: default their limit)"),
    "note": Field(max_len=500),
}
_DENY = {"note": Field(max_len=500)}

ENDPOINTS = [
    Endpoint("POST", "/reviews", add_review, "Ask for a blocked page (no login; limited)", "public", _ADD, status=201),
    Endpoint("GET", "/reviews", list_reviews, "Review requests (a teacher's: their groups')", query=_STATUS),
    Endpoint("POST", "/reviews/{id:int}/approve", approve_review, "Approve: allow the host", body=_APPROVE),
    Endpoint("POST", "/reviews/{id:int}/deny", deny_review, "Deny: close the review", body=_DENY),
]
