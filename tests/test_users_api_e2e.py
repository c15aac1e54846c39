"""Users and tokens through the control API of a real ``filterproxy run``: admins list, add (argon2id),
change, remove users and revoke tokens; teachers are refused (403); bad fields are 400; every change is in
the audit; a new teacher can log in with the password given, a revoked token stops working."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from filterproxy.config import load_config
from filterproxy.dns.testing import FakeUpstream
from filterproxy.state.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from test_admin_e2e import PASSWORD, Api, _start  # noqa: E402


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    up = FakeUpstream().start()
    tmp = tmp_path_factory.mktemp("users")
    proc, cfg, tokens = _start(tmp, up, "--proxy-listen", "off", "--metrics-listen", "off")
    yield Api(proc, cfg, tokens)
    proc.stop()
    up.stop()


def test_admin_manages_users(api):
    boss = api.session(api.tokens["boss"])
    r = boss.post(
        f"{api.base}/users", json={"name": "tam", "role": "teacher", "groups": ["teens"], "password": PASSWORD}
    )
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "tam" and r.json()["groups"] == ["teens"] and "password_hash" not in r.json()
    users = {u["name"]: u for u in boss.get(f"{api.base}/users", timeout=10).json()}
    assert users["tam"]["role"] == "teacher" and users["ms"]["groups"] == ["kids"]
    assert all("password_hash" not in u for u in users.values())
    store = Store.for_config(load_config(str(api.cfg)))
    try:
        assert store.user("tam").password_hash.startswith("$argon2id$")  # hashed server-side
    finally:
        store.close()
    s, login = api.login("tam")  # the password given works
    assert login.json()["groups"] == ["teens"]
    r = boss.patch(f"{api.base}/users/tam", json={"groups": ["kids", "teens"]}, timeout=10)
    assert r.status_code == 200 and r.json()["groups"] == ["kids", "teens"], r.text
    assert s.get(f"{api.base}/me", timeout=10).json()["groups"] == ["kids", "teens"]  # at once
    r = boss.delete(f"{api.base}/users/tam", timeout=10)
    assert r.status_code == 200 and r.json() == {"name": "tam", "removed": True}
    assert s.get(f"{api.base}/me", timeout=10).status_code == 401  # their session ended with them
    actions = [(a["action"], a["actor"]) for a in boss.get(f"{api.base}/audit", timeout=10).json()]
    for action in ("user.add", "user.update", "user.remove"):
        assert (action, "boss") in actions


def test_admin_revokes_a_token(api):
    boss = api.session(api.tokens["boss"])
    store = Store.for_config(load_config(str(api.cfg)))
    try:
        from filterproxy.state.model import Actor

        tok, secret = store.create_token(Actor("system", "system"), "ms-backup", "ms")
    finally:
        store.close()
    listed = boss.get(f"{api.base}/tokens", timeout=10).json()
    assert {"id": tok.id, "name": "ms-backup", "user": "ms"}.items() <= next(
        t for t in listed if t["id"] == tok.id
    ).items()
    assert all("secret" not in k for t in listed for k in t)
    assert api.session(secret).get(f"{api.base}/me", timeout=10).status_code == 200
    r = boss.delete(f"{api.base}/tokens/{tok.id}", timeout=10)
    assert r.status_code == 200 and r.json()["name"] == "ms-backup", r.text
    assert api.session(secret).get(f"{api.base}/me", timeout=10).status_code == 401
    assert boss.delete(f"{api.base}/tokens/{tok.id}", timeout=10).status_code == 404
    audit = boss.get(f"{api.base}/audit", timeout=10).json()
    assert any(a["action"] == "token.revoke" and a["target"] == "token ms-backup" for a in audit)


def test_teachers_are_refused(api):
    ms = api.session(api.tokens["ms"])
    for method, path, body in (
        ("GET", "/users", None),
        ("POST", "/users", {"name": "x1", "role": "admin", "password": PASSWORD}),
        ("PATCH", "/users/ms", {"groups": ["kids", "teens"]}),
        ("DELETE", "/users/boss", None),
        ("GET", "/tokens", None),
        ("DELETE", "/tokens/1", None),
    ):
        r = ms.request(method, f"{api.base}{path}", json=body, timeout=10)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", (method, path, r.text)
    boss = api.session(api.tokens["boss"])
    assert {u["name"]: u for u in boss.get(f"{api.base}/users", timeout=10).json()}["ms"]["groups"] == ["kids"]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x2", "role": "teacher", "password": PASSWORD},  # a teacher without groups
        {"name": "x2", "role": "teacher", "groups": ["nope"], "password": PASSWORD},  # unknown group
        {"name": "x2", "role": "teacher", "groups": "kids", "password": PASSWORD},  # not a list
        {"name": "x2", "role": "root", "password": PASSWORD},
        {"name": "x2", "role": "admin", "password": "short"},
        {"name": "x 2", "role": "admin", "password": PASSWORD},
        {"name": "x2", "role": "admin", "password": PASSWORD, "password_hash": "$argon2id$"},  # unknown field
        {"role": "admin", "password": PASSWORD},
        {"name": "boss", "role": "admin", "password": PASSWORD},  # exists
    ],
)
def test_bad_user_fields_are_400(api, body):
    r = api.session(api.tokens["boss"]).post(f"{api.base}/users", json=body, timeout=10)
    assert r.status_code == 400 and r.json()["error"] == "bad_request", r.text


def test_the_last_admin_stays(api):
    boss = api.session(api.tokens["boss"])
    assert boss.patch(f"{api.base}/users/ms", json={"role": "root"}, timeout=10).status_code == 400
    assert boss.patch(f"{api.base}/users/ms", json={}, timeout=10).status_code == 400
    assert boss.patch(f"{api.base}/users/nobody", json={"groups": ["kids"]}, timeout=10).status_code == 404
    r = boss.patch(f"{api.base}/users/boss", json={"role": "teacher", "groups": ["kids"]}, timeout=10)
    assert r.status_code == 403, r.text
    assert boss.delete(f"{api.base}/users/boss", timeout=10).status_code == 403
    assert boss.get(f"{api.base}/me", timeout=10).json()["role"] == "admin"


def test_the_openapi_document_names_them(api):
    doc = api.session().get(f"{api.base}/openapi.json", timeout=10).json()
    paths = doc["paths"]
    assert set(paths["/api/v1/users"]) == {"get", "post"}
    assert set(paths["/api/v1/users/{name}"]) == {"patch", "delete"}
    assert paths["/api/v1/users/{name}"]["patch"]["parameters"][0]["schema"] == {"type": "string"}
    assert paths["/api/v1/tokens/{id}"]["delete"]["parameters"][0]["schema"] == {"type": "integer"}
    groups = paths["/api/v1/users"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert groups["groups"]["type"] == "array"
