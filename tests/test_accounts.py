"""Users' roles and groups, token revocation by id and the last-admin guard (filterproxy.state.accounts),
and the admin API's ``list`` field kind that carries a teacher's groups (filterproxy.admin.fields)."""

from __future__ import annotations

import pytest

from filterproxy.admin.errors import ApiError
from filterproxy.admin.fields import Field, parse_body, parse_query, schema
from filterproxy.state import accounts
from filterproxy.state.model import Actor
from filterproxy.state.store import Forbidden, NotFound, StateError, Store

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"  # the form only; never verified
BOSS = Actor("boss", "admin")
MS = Actor("ms", "teacher", frozenset({"kids"}))


@pytest.fixture
def store(tmp_path):
    s = Store.open(f"sqlite:///{tmp_path}/state.db")
    s.add_user(Actor("system", "system"), "boss", "admin", HASH)
    s.add_user(Actor("system", "system"), "ms", "teacher", HASH, ("kids",))
    yield s
    s.close()


def test_update_user_changes_role_and_groups_and_is_audited(store):
    u = accounts.update_user(store, BOSS, "ms", groups=("kids", "teens", "kids"))
    assert (u.role, u.groups) == ("teacher", ("kids", "teens"))
    u = accounts.update_user(store, BOSS, "ms", role="admin")
    assert (u.role, u.groups) == ("admin", ())  # an admin has every group
    assert store.user("ms").role == "admin"
    entries = [(a.actor, a.action, a.target) for a in store.audit()]
    assert ("boss", "user.update", "user ms") in entries


@pytest.mark.parametrize(
    ("name", "changes", "error"),
    [
        ("ms", {"role": "root"}, StateError),
        ("ms", {"groups": ()}, StateError),  # a teacher needs a group
        ("ms", {"groups": ("bad group",)}, StateError),
        ("nobody", {"groups": ("kids",)}, NotFound),
        ("boss", {"role": "teacher", "groups": ("kids",)}, Forbidden),  # the only admin
    ],
)
def test_update_user_refuses(store, name, changes, error):
    with pytest.raises(error):
        accounts.update_user(store, BOSS, name, **changes)


def test_only_admins_change_users_and_tokens(store):
    with pytest.raises(Forbidden):
        accounts.update_user(store, MS, "ms", groups=("kids", "teens"))
    with pytest.raises(Forbidden):
        accounts.remove_user(store, MS, "boss")
    with pytest.raises(Forbidden):
        accounts.revoke_token_id(store, MS, 1)


def test_the_last_admin_cannot_be_removed(store):
    with pytest.raises(Forbidden):
        accounts.remove_user(store, BOSS, "boss")
    accounts.update_user(store, BOSS, "ms", role="admin")
    accounts.remove_user(store, BOSS, "ms")  # another admin is left
    assert store.user("ms") is None


def test_revoke_token_by_id(store):
    tok, secret = store.create_token(BOSS, "backup", "ms")
    assert store.token_user(secret) is not None
    assert accounts.revoke_token_id(store, BOSS, tok.id) == "backup"
    assert store.token_user(secret) is None
    with pytest.raises(NotFound):
        accounts.revoke_token_id(store, BOSS, tok.id)
    revoked = [a for a in store.audit() if a.action == "token.revoke"]
    assert revoked[0].target == "token backup" and revoked[0].detail == {"name": "backup", "user": "ms"}


def test_list_fields():
    fields = {"groups": Field("list", max_len=5)}
    assert parse_body(b'{"groups": ["a", "b"]}', fields) == {"groups": ["a", "b"]}
    assert parse_query({"groups": "a,b"}, fields) == {"groups": ["a", "b"]}
    for bad in (b'{"groups": "a"}', b'{"groups": [1]}', b'{"groups": ["toolong"]}'):
        with pytest.raises(ApiError) as exc:
            parse_body(bad, fields)
        assert exc.value.status == 400
    assert schema(fields)["properties"]["groups"]["type"] == "array"
