"""The control API's tables without a server: config defaults, the login limiter, the field tables, and
the OpenAPI document against every route the app mounts."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from conftest import write_config

from filterproxy.admin.auth import LoginLimiter
from filterproxy.admin.errors import ApiError
from filterproxy.admin.fields import Field, parse_body, parse_query
from filterproxy.config import ConfigError, load_config


def _cfg(tmp_path: Path, text: str) -> Path:
    return write_config(tmp_path, text, {"kids": "name: Kids\n"})


def test_admin_listens_on_localhost_by_default_and_can_be_turned_off(tmp_path):
    from filterproxy.runner import apply_overrides

    cfg = load_config()
    assert cfg.server.admin_listen == ("127.0.0.1", 8088)
    assert cfg.admin.tls_cert_file is None and cfg.admin.teacher_max_minutes == 480
    apply_overrides(argparse.Namespace(admin_listen="off"), cfg)
    assert cfg.server.admin_listen is None
    apply_overrides(argparse.Namespace(admin_listen="0.0.0.0:9000"), cfg)
    assert cfg.server.admin_listen == ("0.0.0.0", 9000)
    other = load_config(
        str(_cfg(tmp_path, "server: {admin_listen: '10.0.0.1:8443'}\nadmin: {teacher_max_minutes: 45}\n"))
    )
    assert other.server.admin_listen == ("10.0.0.1", 8443) and other.admin.teacher_max_minutes == 45


@pytest.mark.parametrize(
    "text, why",
    [
        ("admin: {tls_cert_file: cert.pem}\n", "'admin.tls_cert_file' needs 'admin.tls_key_file'"),
        ("admin: {tls_cert_file: a.pem, tls_key_file: b.pem}\n", "file not found"),
        ("admin: {teacher_max_minutes: 0}\n", "at least 1"),
        ("admin: {colour: red}\n", "colour"),
    ],
)
def test_admin_section_is_checked(tmp_path, text, why):
    with pytest.raises(ConfigError, match=why):
        load_config(str(_cfg(tmp_path, text)))


def test_limiter_locks_out_after_five_failures_in_the_window():
    lim = LoginLimiter(max_failures=5, window=900, lockout=900)
    for t in range(4):
        assert not lim.failed("10.0.0.1", now=float(t))
    assert lim.retry_after("10.0.0.1", now=4.0) is None
    assert lim.failed("10.0.0.1", now=5.0)  # the fifth
    assert lim.retry_after("10.0.0.1", now=6.0) == 899
    assert lim.retry_after("10.0.0.2", now=6.0) is None  # per address
    assert lim.retry_after("10.0.0.1", now=905.0) is None  # the lockout ends
    for t in range(4):  # failures spread wider than the window never lock
        assert not lim.failed("10.0.0.3", now=1000.0 + 300 * t)
    assert not lim.failed("10.0.0.3", now=2300.0)
    lim.failed("10.0.0.4", now=0.0)
    lim.succeeded("10.0.0.4")  # a good login forgets the failures
    assert not any(lim.failed("10.0.0.4", now=1.0) for _ in range(4))


TABLE = {
    "name": Field(required=True, max_len=5),
    "action": Field(choices=("allow", "block")),
    "minutes": Field("number", low=1, high=60),
    "limit": Field("int", low=1, high=10),
}


@pytest.mark.parametrize(
    "raw, detail",
    [
        (b"{", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"action": "allow"}', "'name': required"),
        (b'{"name": "a", "x": 1}', "unknown field: x"),
        (b'{"name": 1}', "expected string"),
        (b'{"name": "toolong"}', "longer than 5"),
        (b'{"name": "a", "action": "maybe"}', "one of allow, block"),
        (b'{"name": "a", "minutes": true}', "expected number"),
        (b'{"name": "a", "minutes": 61}', "between 1 and 60"),
        (b'{"name": "a", "limit": 1.5}', "expected integer"),
    ],
)
def test_bodies_are_checked_against_the_table(raw, detail):
    with pytest.raises(ApiError, match=detail) as e:
        parse_body(raw, TABLE)
    assert e.value.status == 400


def test_good_bodies_and_queries_pass():
    assert parse_body(b'{"name": "a", "minutes": 1.5, "action": null}', TABLE) == {"name": "a", "minutes": 1.5}
    assert parse_body(b"", {}) == {}
    assert parse_query({"name": "a", "limit": "3"}, TABLE) == {"name": "a", "limit": 3}
    with pytest.raises(ApiError, match="expected integer"):
        parse_query({"name": "a", "limit": "x"}, TABLE)
    with pytest.raises(ApiError, match="unknown parameter"):
        parse_query({"name": "a", "other": "1"}, TABLE)


def test_every_mounted_route_is_in_the_openapi_document():
    from starlette.routing import Route

    from filterproxy.admin.routes import Context
    from filterproxy.admin.server import build_app, endpoints
    from filterproxy.admin.spec import PREFIX, document, openapi_path

    app = build_app(Context(store=None, served=None, limiter=LoginLimiter()))  # type: ignore[arg-type]
    doc = document(endpoints())
    from filterproxy.admin import console

    mounted = set()
    pages = {p.path for p in console.all_pages()} | {"/static"}  # the web console's, outside the API
    for route in app.routes:
        if not getattr(route, "path", "").startswith(PREFIX):
            assert route.path in pages, route  # type: ignore[attr-defined]
            continue
        assert isinstance(route, Route), route
        for method in route.methods or ():
            if method != "HEAD":  # Starlette adds HEAD to every GET
                mounted.add((openapi_path(route.path.removeprefix(PREFIX)), method.lower()))
    described = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert mounted == described and len(mounted) >= 17
    for ops in doc["paths"].values():
        for op in ops.values():
            assert op["summary"] and op["responses"]
