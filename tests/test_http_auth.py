"""Proxy users file: hashing, parsing with file:line errors, caching, the standalone helper."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import time

import pytest

from filterproxy.http import auth
from filterproxy.http.auth import UsersFile, UsersFileError, hash_password, parse_basic, verify_password


def basic(u: str, p: str) -> str:
    return "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode()


def test_hash_and_verify():
    h = hash_password("s3cret ✓")
    assert h.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert verify_password(h, "s3cret ✓") and not verify_password(h, "s3cret")
    assert hash_password("x") != hash_password("x")  # salted


OLD_SCRYPT = "2f1c0e0a0b0c0d0e0f10111213141516$" + "9a" * 32
OLD_PBKDF2 = "pbkdf2_sha256$20000$" + "aa" * 12 + "$" + "bb" * 32


@pytest.mark.parametrize(
    "hashed,why",
    [
        (OLD_SCRYPT, "old scrypt"),
        (OLD_PBKDF2, "pbkdf2_sha256 hashes are no longer accepted"),
        ("sha256:" + hashlib.sha256(b"pw").hexdigest(), "unsalted SHA-256"),
        ("$2b$04$" + "a" * 53, "bcrypt"),
        ("$argon2i$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$" + "A" * 43, "only argon2id"),
        ("$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$" + "A" * 43, "too weak"),
        ("$argon2id$garbage", "malformed"),
    ],
)
def test_old_and_weak_entries_refused_with_how_to(tmp_path, hashed, why):
    p = tmp_path / "users.txt"
    p.write_text(f"# lab\nalice:kid:{hashed}\n")
    with pytest.raises(UsersFileError, match=r"users.txt:2: user 'alice': .*") as err:
        UsersFile.load(str(p))
    assert why in str(err.value) and "filterproxy passwd" in str(err.value)
    assert not verify_password(hashed, "pw")


@pytest.mark.parametrize(
    "header,want",
    [
        (basic("a", "b"), ("a", "b")),
        (basic("a", "b:c"), ("a", "b:c")),
        ("basic " + base64.b64encode(b"x:y").decode(), ("x", "y")),
        ("Bearer xyz", None),
        ("Basic !!!", None),
        (basic("", "x"), None),
        ("Basic " + base64.b64encode(b"nocolon").decode(), None),
        (None, None),
        ("", None),
    ],
)
def test_parse_basic(header, want):
    assert parse_basic(header) == want


@pytest.mark.parametrize(
    "text,error",
    [
        ("alice:kid\n", r"users.txt:1: expected user:group:\$argon2id\$"),
        ("# c\n\nbad user:kid:{h}\n", r"users.txt:3: invalid user name"),
        ("alice:k!d:{h}\n", r"users.txt:1: invalid group"),
        ("alice:kid:nothex$zz\n", r"users.txt:1: user 'alice': expected an argon2id hash"),
        ("alice:kid:{h}\nALICE:kid:{h}\n", r"users.txt:2: user 'ALICE' already defined on line 1"),
    ],
)
def test_users_file_errors(tmp_path, text, error):
    p = tmp_path / "users.txt"
    p.write_text(text.replace("{h}", hash_password("x")))
    with pytest.raises(UsersFileError, match=error):
        UsersFile.load(str(p))


def test_unknown_group_and_missing_file(tmp_path):
    p = tmp_path / "users.txt"
    p.write_text(f"alice:nosuch:{hash_password('x')}\n")
    with pytest.raises(UsersFileError, match="users.txt:1: user 'alice': unknown group 'nosuch'"):
        UsersFile.load(str(p), {"kid", "teen"})
    with pytest.raises(UsersFileError, match="cannot read"):
        UsersFile.load(str(tmp_path / "none.txt"))


def test_authenticate_caches(tmp_path):
    p = tmp_path / "users.txt"
    p.write_text(f"Alice:kid:{hash_password('pw')}\n")
    u = UsersFile.load(str(p))
    assert u.cached(basic("alice", "pw")) is False
    t = time.perf_counter()
    assert u.authenticate(basic("alice", "pw")) == ("Alice", "kid")
    slow = time.perf_counter() - t
    t = time.perf_counter()
    assert u.authenticate(basic("alice", "pw")) == ("Alice", "kid")
    assert time.perf_counter() - t < slow / 10
    assert u.cached(basic("alice", "pw")) == ("Alice", "kid")
    assert u.authenticate(basic("alice", "nope")) is None
    assert u.cached(basic("alice", "nope")) is None
    assert u.authenticate(basic("bob", "pw")) is None


def _cli(*args, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "filterproxy.http.auth", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.path.dirname(os.path.dirname(auth.__file__)),
    )


def test_cli_add_check_remove(tmp_path):
    f = str(tmp_path / "users.txt")
    assert _cli("add", f, "lab.6a", "primary", stdin="pw1\n").returncode == 0
    assert _cli("add", f, "teacher", "staff", stdin="pw2\n").returncode == 0
    assert _cli("add", f, "lab.6a", "lower-secondary", stdin="pw3\n").returncode == 0  # replace
    lines = [x for x in open(f).read().splitlines() if x and not x.startswith("#")]
    assert [x.split(":")[:2] for x in lines] == [["lab.6a", "lower-secondary"], ["teacher", "staff"]]
    assert oct(os.stat(f).st_mode & 0o777) == "0o640"
    assert _cli("check", f, "lab.6a", stdin="pw3\n").returncode == 0
    assert _cli("check", f, "lab.6a", stdin="pw1\n").returncode == 1
    assert _cli("remove", f, "teacher").returncode == 0
    assert _cli("remove", f, "teacher").returncode == 1
    assert UsersFile.load(f).authenticate(basic("lab.6a", "pw3")) == ("lab.6a", "lower-secondary")
    assert _cli("add", f, "bad name", "g", stdin="x\n").returncode != 0
    assert _cli("add", f, "x", "g", stdin="\n").returncode != 0  # empty password refused


def test_module_imports_only_the_password_scheme_from_filterproxy():
    """The helper stays small: from filterproxy it needs only the shared argon2id scheme (the bottom layer)."""
    import ast

    tree = ast.parse(open(auth.__file__).read())
    mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {m for m in mods if m.startswith("filterproxy")} == {"filterproxy.passwords"}
