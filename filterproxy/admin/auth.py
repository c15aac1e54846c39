"""Who calls the control API: bearer tokens for scripts, login sessions (cookie + CSRF token) for people.

* ``Authorization: Bearer <token>``: the token's user (``Store.token_user``); no CSRF check (a browser
  never sends it on its own).
* ``POST /api/v1/login {user, password}``: the argon2id check runs in a thread; success sets the session
  cookie (HttpOnly, SameSite=Strict, Secure under TLS) and answers the CSRF token, which every
  cookie-authenticated POST/PATCH/DELETE must send back as ``X-CSRF-Token`` (403 otherwise).
* Lockout: ``MAX_FAILURES`` wrong logins from one address within ``WINDOW`` seconds lock that address
  out for ``LOCKOUT`` seconds (429 with Retry-After), the right password included; counted in
  ``filterproxy_admin_logins_total{result}``.
"""

from __future__ import annotations

import datetime as dt
import hmac
import os
import shlex
import shutil
import sys
import threading
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from filterproxy.admin.errors import ApiError
from filterproxy.admin.fields import Field
from filterproxy.admin.routes import Call, Context, Endpoint, Principal, iso
from filterproxy.metrics.catalogue import ADMIN_LOGINS

if TYPE_CHECKING:
    from filterproxy.config import Config

COOKIE = "filterproxy_session"
COOKIE_PATH = "/"  # the API under /api/v1 and the console's pages under / (filterproxy.admin.console) read it
CSRF_HEADER = "x-csrf-token"
MAX_FAILURES = 5
WINDOW = 15 * 60.0
LOCKOUT = 15 * 60.0
_MAX_ADDRESSES = 10000  # addresses tracked at once (the oldest forgotten first): bounded memory
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class LoginLimiter:
    """Failed logins per client address, and the addresses locked out (thread-safe, bounded)."""

    def __init__(self, max_failures: int = MAX_FAILURES, window: float = WINDOW, lockout: float = LOCKOUT) -> None:
        self.max_failures, self.window, self.lockout = max_failures, window, lockout
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._locked: dict[str, float] = {}
        self._lock = threading.Lock()

    def retry_after(self, address: str, now: float | None = None) -> int | None:
        """Seconds ``address`` stays locked out, or None."""
        now = time.monotonic() if now is None else now
        with self._lock:
            until = self._locked.get(address)
            if until is None:
                return None
            if until <= now:
                del self._locked[address]
                return None
            return max(1, int(until - now + 0.999))

    def failed(self, address: str, now: float | None = None) -> bool:
        """Count a failure; True when it locks the address out."""
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._failures.setdefault(address, deque())
            self._failures.move_to_end(address)
            q.append(now)
            while q and q[0] <= now - self.window:
                q.popleft()
            while len(self._failures) > _MAX_ADDRESSES:
                self._failures.popitem(last=False)
            if len(q) >= self.max_failures:
                self._locked[address] = now + self.lockout
                q.clear()
                return True
            return False

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def authenticate(ctx: Context, request: Request) -> Principal:
    """The caller of a request (bearer token first, then the session cookie); 401 without either."""
    store = ctx.store
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if header:
        if scheme.lower() != "bearer" or not secret.strip():
            raise ApiError(401, "expected 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})
        user = await run_in_threadpool(store.token_user, secret.strip())
        if user is None:
            raise ApiError(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
        return Principal(user, "token")
    cookie = request.cookies.get(COOKIE)
    if cookie:
        found = await run_in_threadpool(store.session_user, cookie)
        if found is not None:
            return Principal(found[0], "session", csrf=found[1], secret=cookie)
        raise ApiError(401, "the session has ended: log in again")
    raise ApiError(401, "log in (POST /api/v1/login) or send 'Authorization: Bearer <token>'")


def check_csrf(principal: Principal, request: Request) -> None:
    """A cookie-authenticated change must carry the session's CSRF token (403 otherwise)."""
    if principal.via != "session" or request.method not in _UNSAFE:
        return
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent or principal.csrf is None or not hmac.compare_digest(sent.encode(), principal.csrf.encode()):
        raise ApiError(403, "missing or wrong X-CSRF-Token header (the csrf_token the login answered)")


_DUMMY_HASH: list[str] = []  # a hash to verify against for unknown users (same cost: no user enumeration)


def _verify(store: Any, name: str, password: str) -> Any:
    """The user when ``password`` is theirs, else None (runs in a thread: argon2id costs ~50 ms)."""
    from filterproxy.passwords import hash_password, verify_password

    user = store.user(name)
    if user is None:
        if not _DUMMY_HASH:
            _DUMMY_HASH.append(hash_password("not a password of anyone"))
        verify_password(_DUMMY_HASH[0], password)
        return None
    return user if verify_password(user.password_hash, password) else None


async def login(call: Call) -> JSONResponse:
    ctx, address = call.ctx, client_address(call.request)
    wait = ctx.limiter.retry_after(address)
    if wait is not None:
        ADMIN_LOGINS.inc("locked")
        raise ApiError(429, f"too many failed logins: try again in {wait} s", headers={"Retry-After": str(wait)})
    user = await call.run(_verify, ctx.store, call.body["user"], call.body["password"])
    if user is None:
        ADMIN_LOGINS.inc("failure")
        ctx.limiter.failed(address)
        raise ApiError(401, "wrong user name or password")
    ctx.limiter.succeeded(address)
    ADMIN_LOGINS.inc("success")
    hours = ctx.engine.config.admin.session_hours
    secret, csrf = await call.run(ctx.store.create_session, user.name, hours)
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)
    body = {"user": user.name, "role": user.role, "groups": list(user.groups), "csrf_token": csrf}
    resp = JSONResponse({**body, "expires_at": iso(expires)})
    resp.set_cookie(
        COOKIE, secret, max_age=int(hours * 3600), path=COOKIE_PATH, secure=ctx.tls, httponly=True, samesite="strict"
    )
    return resp


async def logout(call: Call) -> JSONResponse:
    p = call.principal
    if p is not None and p.via == "session" and p.secret:
        await call.run(call.ctx.store.end_session, p.secret)
    resp = JSONResponse({"logged_out": True})
    resp.delete_cookie(COOKIE, path=COOKIE_PATH, secure=call.ctx.tls, httponly=True, samesite="strict")
    return resp


async def me(call: Call) -> dict[str, Any]:
    p = call.principal
    assert p is not None  # not a public endpoint
    out: dict[str, Any] = {"user": p.user.name, "role": p.user.role, "groups": list(p.user.groups), "via": p.via}
    if p.via == "session":
        out["csrf_token"] = p.csrf
    return out


async def setup(call: Call) -> dict[str, Any]:
    """Whether any user exists (the console's first-start hint); no names: it needs no login."""
    users = await call.run(call.ctx.store.users)
    return {"users": bool(users)}


_LOGIN = {"user": Field(required=True, max_len=64), "password": Field(required=True, max_len=1024)}


def first_user_command(cfg: Config) -> str:
    """The command that creates the first admin of this very installation, ready to paste: this process's own
    ``filterproxy`` (``.venv/bin/filterproxy`` after ``./run.sh``, which is not on PATH) and its config file."""
    exe = sys.argv[0] if sys.argv else ""
    if os.path.basename(exe) == "filterproxy" and os.path.isfile(exe):
        full = os.path.abspath(exe)
        cmd = "filterproxy" if shutil.which("filterproxy") == full else shlex.quote(full)
    elif exe.endswith(os.path.join("filterproxy", "__main__.py")):  # python -m filterproxy
        cmd = f"{shlex.quote(sys.executable)} -m filterproxy"
    else:
        cmd = "filterproxy"
    config = f" --config {shlex.quote(cfg.path)}" if cfg.path else ""
    return f"{cmd} admin user add NAME --role admin{config}"


ENDPOINTS = [
    Endpoint("POST", "/login", login, "Log in: sets the session cookie, answers the CSRF token", "public", _LOGIN),
    Endpoint("POST", "/logout", logout, "End the session of the cookie", "user", {}),
    Endpoint("GET", "/setup", setup, "First start: whether any user exists yet ({users: bool}, no names)", "public"),
    Endpoint("GET", "/me", me, "Who am I: user, role, groups (and the CSRF token of a session)"),
]
