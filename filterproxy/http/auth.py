"""Proxy users file: ``Proxy-Authorization: Basic`` → age group, for shared lab computers.

One user a line, ``#`` comments and blank lines ignored::

    # user:group:argon2id hash
    lan.6a:primary:$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$9wLV0OnWz...

The hash is argon2id in its standard form (:mod:`filterproxy.passwords`, the same scheme as the
``/metrics`` user); ``filterproxy passwd`` or ``python -m filterproxy.http.auth add`` make one. The old
scrypt ``salt$hash`` and ``pbkdf2_sha256$…`` entries are refused with the line and how to replace them.

A hash costs ~50 ms, so it runs off the event loop (``http/identity``) and a verified
``Proxy-Authorization`` value is remembered (bounded, keyed by an HMAC with a per-process key): the hash
runs once per credential and process, not per request. A failed value is remembered too, so a browser
resending a stale password costs no hashing; that cannot help guessing (each new guess is a new value).

Standalone helper::

    python -m filterproxy.http.auth add /etc/filterproxy/users.txt lan.6a primary   # password on stdin
    python -m filterproxy.http.auth check /etc/filterproxy/users.txt lan.6a         # exit 0 if it matches
    python -m filterproxy.http.auth remove /etc/filterproxy/users.txt lan.6a
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from typing import Literal

from filterproxy.passwords import check_hash, hash_password, read_password, verify_password

__all__ = ["UserEntry", "UsersFile", "UsersFileError", "hash_password", "verify_password", "parse_basic"]

_USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_GROUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CACHE_LIMIT = 4096
_TAG_KEY = os.urandom(32)  # cache keys are HMACs: a memory dump holds nothing to crack offline


class UsersFileError(ValueError):
    """An unusable users file or entry; the message names file:line."""


@dataclass(frozen=True)
class UserEntry:
    """One line of the users file."""

    user: str
    group: str
    hashed: str
    line: int = 0


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """``Basic base64(user:password)`` → (user, password); None when absent or malformed."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        text = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    user, sep, password = text.partition(":")
    if not sep or not user:
        return None
    return user, password


def _read_entries(path: str) -> list[UserEntry]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise UsersFileError(f"{path}: cannot read users file: {exc.strerror}") from None
    out: list[UserEntry] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(lines, 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split(":", 2)
        if len(parts) != 3:
            raise UsersFileError(f"{path}:{n}: expected user:group:$argon2id$...")
        user, group, hashed = (p.strip() for p in parts)
        if not _USER_RE.match(user):
            raise UsersFileError(f"{path}:{n}: invalid user name {user!r} (letters, digits, '_', '.', '@', '-')")
        if not _GROUP_RE.match(group):
            raise UsersFileError(f"{path}:{n}: invalid group {group!r}")
        try:
            check_hash(hashed)
        except ValueError as exc:
            raise UsersFileError(f"{path}:{n}: user {user!r}: {exc}") from None
        key = user.lower()
        if key in seen:
            raise UsersFileError(f"{path}:{n}: user {user!r} already defined on line {seen[key]}")
        seen[key] = n
        out.append(UserEntry(user, group, hashed, n))
    return out


class UsersFile:
    """Loaded users file: ``authenticate(header)`` → (user, group) or None.

    Entries are immutable once loaded (a reload builds a new object). User names compare
    case-insensitively; passwords exactly.
    """

    def __init__(self, path: str, entries: list[UserEntry]):
        self.path = path
        self.entries = {e.user.lower(): e for e in entries}
        self._ok: dict[bytes, tuple[str, str]] = {}  # tag(header) → (user, group)
        self._bad: dict[bytes, None] = {}  # tags of recent failures (no hash on replay)

    @classmethod
    def load(cls, path: str, groups: set[str] | None = None) -> UsersFile:
        """Read and check ``path``; with ``groups``, every entry's group must be one of them."""
        entries = _read_entries(path)
        if groups is not None:
            for e in entries:
                if e.group not in groups:
                    raise UsersFileError(
                        f"{path}:{e.line}: user {e.user!r}: unknown group {e.group!r} "
                        f"(groups: {', '.join(sorted(groups))})"
                    )
        return cls(path, entries)

    def __len__(self) -> int:
        return len(self.entries)

    def authenticate(self, header: str | None) -> tuple[str, str] | None:
        """(user, group) for a valid ``Basic`` credential, else None. Cached per header value."""
        hit = self.cached(header)
        if hit is not False:
            return hit
        assert header  # cached() answers None for an absent header
        tag = _tag(header)  # (hashed twice on a first sight only, next to a ~50 ms password hash)
        creds = parse_basic(header)
        result = None
        if creds is not None:
            entry = self.entries.get(creds[0].lower())
            if entry is not None and verify_password(entry.hashed, creds[1]):
                result = (entry.user, entry.group)
        cache = self._ok if result is not None else self._bad
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[tag] = result  # type: ignore[assignment]
        return result

    def cached(self, header: str | None) -> tuple[str, str] | None | Literal[False]:
        """Cheap look-up without hashing: (user, group), None (known bad), or False (not seen yet)."""
        if not header:
            return None
        tag = _tag(header)
        hit = self._ok.get(tag)
        if hit is not None:
            return hit
        return None if tag in self._bad else False


def _tag(header: str) -> bytes:
    """Cache key of a Proxy-Authorization value (never kept in clear)."""
    return hmac.new(_TAG_KEY, header.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()


# ---------------------------------------------------------------- command line helper


def _write_atomic(path: str, lines: list[str]) -> None:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".users-", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(line if line.endswith("\n") else line + "\n" for line in lines))
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _read_password(confirm: bool) -> str:
    try:
        return read_password(confirm)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m filterproxy.http.auth",
        description="Manage the filterproxy proxy users file (user:group:$argon2id$...).",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add", help="add or replace a user; the password is read from stdin")
    a.add_argument("file")
    a.add_argument("user")
    a.add_argument("group")
    c = sub.add_parser("check", help="exit 0 if the password on stdin is the user's")
    c.add_argument("file")
    c.add_argument("user")
    r = sub.add_parser("remove", help="remove a user")
    r.add_argument("file")
    r.add_argument("user")
    sub.add_parser("hash", help="print the $argon2id$ hash of the password on stdin")
    args = p.parse_args(argv)

    if args.cmd == "hash":
        print(hash_password(_read_password(True)))
        return 0
    if args.cmd == "add":
        if not _USER_RE.match(args.user):
            raise SystemExit(f"invalid user name {args.user!r}")
        if not _GROUP_RE.match(args.group):
            raise SystemExit(f"invalid group {args.group!r}")
    lines: list[str] = []
    if os.path.exists(args.file):
        _read_entries(args.file)  # refuse to edit a broken file
        with open(args.file, encoding="utf-8") as f:
            lines = f.read().splitlines()

    def is_user(line: str) -> bool:
        s = line.strip()
        return bool(s) and not s.startswith("#") and s.split(":", 1)[0].lower() == args.user.lower()

    if args.cmd == "check":
        entry = next((e for e in _read_entries(args.file) if e.user.lower() == args.user.lower()), None)
        ok = entry is not None and verify_password(entry.hashed, _read_password(False))
        print("ok" if ok else "no match")
        return 0 if ok else 1
    if args.cmd == "remove":
        kept = [line for line in lines if not is_user(line)]
        if len(kept) == len(lines):
            print(f"{args.user}: not found", file=sys.stderr)
            return 1
        _write_atomic(args.file, kept)
        return 0
    record = f"{args.user}:{args.group}:{hash_password(_read_password(True))}"
    out = [record if is_user(line) else line for line in lines]
    if record not in out:
        if not lines:
            out = ["# filterproxy proxy users: user:group:$argon2id$...; manage with python -m filterproxy.http.auth"]
        out.append(record)
    _write_atomic(args.file, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
