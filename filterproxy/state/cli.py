"""``filterproxy admin …``: users and bearer tokens of the control API, on the store named by the config.

``admin user add NAME --role admin|teacher [--groups G1,G2]`` (password on stdin: asked twice on a
terminal, else the first line), ``admin user list``, ``admin user remove NAME``, ``admin user passwd NAME``,
``admin token create NAME [--user U]`` (prints the secret once; ``--user`` defaults to the only admin),
``admin token list``, ``admin token revoke NAME``. Changes are audited as actor ``cli``.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from filterproxy.app import SetupError, load_config_with
from filterproxy.state.model import Actor

if TYPE_CHECKING:
    from filterproxy.config import Config
    from filterproxy.state.store import Store

CLI = Actor("cli", "admin")


def _open(args: argparse.Namespace) -> tuple[Config, Store]:
    from filterproxy.state.store import StateError, Store

    cfg = load_config_with(args.config, state_dir=args.state_dir)
    try:
        return cfg, Store.for_config(cfg)
    except StateError as exc:
        raise SetupError(str(exc)) from None
    except Exception as exc:  # an unreachable database, a file we may not write: say which
        raise SetupError(f"cannot open the state store: {exc}") from None


def _password() -> str:
    from filterproxy.passwords import hash_password, read_password

    try:
        return hash_password(read_password())
    except ValueError as exc:
        raise SetupError(str(exc)) from None


def _groups(cfg: Config, text: str | None) -> tuple[str, ...]:
    groups = tuple(g.strip() for g in (text or "").split(",") if g.strip())
    unknown = [g for g in groups if g not in cfg.groups]
    if unknown:
        raise SetupError(f"--groups: unknown group(s) {', '.join(unknown)} (groups: {', '.join(cfg.groups)})")
    return groups


def _default_user(store: Store) -> str:
    admins = [u.name for u in store.users() if u.role == "admin"]
    if len(admins) != 1:
        raise SetupError(f"--user: required ({len(admins)} admin users; a token acts as one user)")
    return admins[0]


def cmd_admin(args: argparse.Namespace) -> int:
    from filterproxy.state.store import StateError

    cfg, store = _open(args)
    try:
        return _run(args, cfg, store)
    except StateError as exc:
        raise SetupError(str(exc)) from None
    finally:
        store.close()


def _run(args: argparse.Namespace, cfg: Config, store: Store) -> int:
    what = (args.admin_command, args.action)
    if what == ("user", "add"):
        groups = _groups(cfg, args.groups)
        store.add_user(CLI, args.name, args.role, _password(), groups)
        print(f"user {args.name} added ({args.role}{': ' + ', '.join(groups) if groups else ''})")
    elif what == ("user", "list"):
        for u in store.users():
            print(f"{u.name}\t{u.role}\t{','.join(u.groups) or '-'}\t{u.created_at:%Y-%m-%d %H:%M}")
    elif what == ("user", "remove"):
        store.remove_user(CLI, args.name)
        print(f"user {args.name} removed (with its tokens and sessions)")
    elif what == ("user", "passwd"):
        store.set_password(CLI, args.name, _password())
        print(f"password of {args.name} changed (its sessions ended)")
    elif what == ("token", "create"):
        token, secret = store.create_token(CLI, args.name, args.user or _default_user(store))
        print(secret)
        print(f"token {token.name} acts as {token.user}; the secret above is shown once", file=sys.stderr)
    elif what == ("token", "list"):
        for t in store.tokens():
            used = f"{t.last_used:%Y-%m-%d %H:%M}" if t.last_used else "never"
            print(f"{t.name}\t{t.user}\t{t.created_at:%Y-%m-%d %H:%M}\tlast used {used}")
    elif what == ("token", "revoke"):
        store.revoke_token(CLI, args.name)
        print(f"token {args.name} revoked")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``filterproxy admin``: the control API's users and tokens."""
    ap = sub.add_parser("admin", help="control API users and tokens (state store)")
    ap.set_defaults(func=cmd_admin)
    asub = ap.add_subparsers(dest="admin_command", required=True)

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", metavar="FILE", help="configuration file (default: the embedded one)")
        p.add_argument("--state-dir", metavar="DIR", help="state folder to use instead of the configured one")
        return p

    user = asub.add_parser("user", help="users of the control API").add_subparsers(dest="action", required=True)
    add = common(user.add_parser("add", help="add a user (password on stdin)"))
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=("admin", "teacher"))
    add.add_argument("--groups", metavar="G1,G2", help="a teacher's groups")
    common(user.add_parser("list", help="list users"))
    for action, text in (("remove", "remove a user"), ("passwd", "set a user's password (on stdin)")):
        common(user.add_parser(action, help=text)).add_argument("name")

    token = asub.add_parser("token", help="bearer tokens for scripts").add_subparsers(dest="action", required=True)
    create = common(token.add_parser("create", help="create a token; prints its secret once"))
    create.add_argument("name")
    create.add_argument("--user", metavar="U", help="the user the token acts as (default: the only admin)")
    common(token.add_parser("list", help="list tokens"))
    common(token.add_parser("revoke", help="revoke a token")).add_argument("name")
