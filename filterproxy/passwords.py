"""Password hashes: argon2id (argon2-cffi) in the standard ``$argon2id$v=19$m=…,t=…,p=…$salt$hash`` form.

One scheme for every password filterproxy checks: the ``/metrics`` Basic-auth user
(``metrics.basic_auth_hash``) and the proxy users (``http.users_file``). ``filterproxy passwd`` prints a
hash for a password read from stdin. Older forms (unsalted ``sha256:HEX``, bcrypt, the users file's
scrypt ``salt$hash`` and ``pbkdf2_sha256$…``) are refused with a message saying how to make a new one.

A verification costs ~50 ms and 64 MiB, so at most two run at once in a process and a *successful*
one is remembered in a bounded :class:`VerifiedCache`, keyed by an HMAC with a per-process random key
(never the password, nor a fast unkeyed hash of it). Failures are never remembered: every new guess
pays the full hash. This module imports nothing from filterproxy (the bottom layer, beside vocabulary).
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
import re
import sys
import threading
from collections import OrderedDict

from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["HOW_TO_HASH", "VerifiedCache", "check_hash", "hash_password", "read_password", "verify_password"]

HOW_TO_HASH = "make one with 'filterproxy passwd' (reads the password on stdin, prints $argon2id$...)"
MIN_MEMORY_KIB = 19 * 1024  # OWASP's floor for argon2id (m=19 MiB, t=2); the default hash uses 64 MiB, t=3

_HASHER = PasswordHasher(type=Type.ID)  # RFC 9106 "low memory" defaults: t=3, m=64 MiB, p=4
_VERIFY_SLOTS = threading.BoundedSemaphore(2)  # bounds the memory many parallel bad logins can take
_OLD_FORMS = (
    (re.compile(r"(?i)^(sha256:)?[0-9a-f]{64}$"), "an unsalted SHA-256 hash is not accepted (cracked at GPU speed)"),
    (re.compile(r"^\$2[aby]\$"), "bcrypt hashes are no longer accepted"),
    (re.compile(r"^[0-9a-fA-F]+\$[0-9a-fA-F]+$"), "the old scrypt salt$hash form is no longer accepted"),
    (re.compile(r"^pbkdf2_sha256\$"), "pbkdf2_sha256 hashes are no longer accepted"),
    (re.compile(r"^\$argon2(i|d)\$"), "only argon2id is accepted, not argon2i or argon2d"),
)


def hash_password(password: str) -> str:
    """The ``$argon2id$…`` hash of ``password`` (a fresh random salt each time)."""
    return _HASHER.hash(password)


def read_password(confirm: bool = True) -> str:
    """One password from stdin: with ``getpass`` (no echo, asked twice) on a terminal, else its first line."""
    if sys.stdin.isatty():
        pw = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Repeat: ") != pw:
            raise ValueError("the passwords differ")
    else:
        pw = sys.stdin.readline().rstrip("\r\n")
    if not pw:
        raise ValueError("empty password")
    return pw


def check_hash(hashed: str) -> None:
    """Raise ValueError (saying what is wrong and how to make a good one) unless ``hashed`` is argon2id."""
    h = hashed.strip()
    for pattern, why in _OLD_FORMS:
        if pattern.search(h):
            raise ValueError(f"{why}; {HOW_TO_HASH}")
    if not h.startswith("$argon2id$"):
        raise ValueError(f"expected an argon2id hash ($argon2id$v=19$m=...,t=...,p=...$salt$hash); {HOW_TO_HASH}")
    try:
        params = extract_parameters(h)
    except (InvalidHashError, ValueError):
        raise ValueError(f"malformed argon2id hash; {HOW_TO_HASH}") from None
    if params.memory_cost < MIN_MEMORY_KIB:
        raise ValueError(f"argon2id hash too weak (m={params.memory_cost} KiB < {MIN_MEMORY_KIB}); {HOW_TO_HASH}")


def verify_password(hashed: str, password: str) -> bool:
    """True when ``password`` matches the argon2id ``hashed`` (False for a mismatch or a malformed hash)."""
    with _VERIFY_SLOTS:
        try:
            return bool(_HASHER.verify(hashed.strip(), password))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


class VerifiedCache:
    """A bounded, thread-safe set of credentials already verified (least recently used dropped first).

    Keys are ``HMAC-SHA256(per-process random key, parts)``: a memory dump reveals no password and
    nothing that can be attacked offline faster than the argon2id hash itself. Only successes go in.
    """

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._key = os.urandom(32)
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def tag(self, *parts: str) -> bytes:
        """The cache key of e.g. (user, password) or a whole ``Authorization`` header value."""
        data = b"\0".join(p.encode("utf-8", "surrogateescape") for p in parts)
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def __contains__(self, tag: bytes) -> bool:
        with self._lock:
            if tag in self._seen:
                self._seen.move_to_end(tag)
                return True
            return False

    def add(self, tag: bytes) -> None:
        with self._lock:
            self._seen[tag] = None
            self._seen.move_to_end(tag)
            while len(self._seen) > self.limit:
                self._seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)
