"""``filterproxy publish ...``: the publisher's commands over a TUF repository of lists (docs/distribution.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

_HELP = """\
Publish lists to gateways as a TUF repository (static files for nginx under REPO/public).

  keygen --out NAME                  write NAME.key (private, keep offline) and NAME.pub
  init REPO --root-key PUB... --root-threshold N --targets-key PUB... --online-key PUB
                                     create root v1 + empty targets (staged, unsigned)
  delegate REPO --province P --key PUB... --category C...
                                     let province P publish provinces/P/* in categories C
  add REPO --id ID --format F --category C FILE [--role P]
                                     stage a new version of a list (big lists: delta segments)
  remove REPO --id ID [--role P]     stage the removal of a list
  compact REPO --id ID [--role P]    stage a new base of a delta list (drops its segments)
  rotate REPO --role R [--add-key PUB] [--revoke-key PUB] [--threshold N]
                                     stage the next root with changed keys of a top-level role
  sign REPO --role R --key PRIVATE   add one signature to the staged role R (root, targets, P)
  commit REPO --key ONLINE           publish every fully signed role + new snapshot/timestamp;
                                     run it from cron at least daily (the timestamp expires)
  status REPO [--json] [--warn D] [--warn-online D]
                                     published roles and lists, staged roles and their signatures;
                                     exit 1 when a role expires within its warning (14d; online 6h)

Typical release: add → sign --role targets → commit.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``publish`` command and its sub-commands."""
    sp = sub.add_parser(
        "publish",
        help="publish lists to gateways (TUF repository)",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    psub = sp.add_subparsers(dest="publish_command", required=True)

    def sub_parser(name: str, helptext: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = psub.add_parser(name, help=helptext)
        p.set_defaults(func=cli)
        if name != "keygen":
            p.add_argument("repo", metavar="REPO", help="the repository folder")
        return p

    p = sub_parser("keygen", "write an Ed25519 key pair NAME.key / NAME.pub")
    p.add_argument("--out", required=True, metavar="NAME")
    p = sub_parser("init", "create a repository (root and targets staged, unsigned)")
    p.add_argument("--root-key", action="append", required=True, metavar="PUB")
    p.add_argument("--root-threshold", type=int, default=1)
    p.add_argument("--targets-key", action="append", required=True, metavar="PUB")
    p.add_argument("--targets-threshold", type=int, default=1)
    p.add_argument("--online-key", required=True, metavar="PUB", help="snapshot + timestamp key (online)")
    for role, default in (("root", "365d"), ("targets", "90d"), ("snapshot", "7d"), ("timestamp", "1d")):
        p.add_argument(f"--{role}-expiry", default=default, metavar="DURATION", help=f"default {default}")
    p.add_argument("--delta-min-bytes", type=int, default=1 << 20, help="lists this big use delta segments")
    p.add_argument("--compact-after", type=int, default=30, help="segments before a new base is made")
    p = sub_parser("delegate", "delegate provinces/P/* to a province's key(s)")
    p.add_argument("--province", required=True)
    p.add_argument("--key", action="append", required=True, metavar="PUB")
    p.add_argument("--threshold", type=int, default=1)
    p.add_argument("--category", action="append", required=True, help="a category the province may publish")
    p = sub_parser("add", "stage a new version of a list")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--id", required=True)
    p.add_argument("--format", required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--role", default="targets", help="targets (the ministry, default) or a province")
    p.add_argument("--delta", action=argparse.BooleanOptionalAction, default=None, help="force delta segments or not")
    for name, helptext in (("remove", "stage the removal of a list"), ("compact", "stage a new base of a delta list")):
        p = sub_parser(name, helptext)
        p.add_argument("--id", required=True)
        p.add_argument("--role", default="targets")
    p = sub_parser("rotate", "stage the next root with keys added to / revoked from a role")
    p.add_argument("--role", required=True)
    p.add_argument("--add-key", action="append", default=[], metavar="PUB")
    p.add_argument("--revoke-key", action="append", default=[], metavar="PUB")
    p.add_argument("--threshold", type=int)
    p = sub_parser("sign", "add a signature to a staged role")
    p.add_argument("--role", required=True)
    p.add_argument("--key", required=True, metavar="PRIVATE")
    p = sub_parser("commit", "publish signed roles, a new snapshot and timestamp (online key)")
    p.add_argument("--key", required=True, metavar="ONLINE_PRIVATE")
    p.add_argument(
        "--timestamp-expiry", metavar="DURATION", help="this timestamp's lifetime (default: the repository's)"
    )
    p = sub_parser("status", "what is published, staged and expiring (exit 1 on a warning)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p.add_argument("--warn", default="14d", metavar="DURATION", help="offline-signed roles (default 14d)")
    p.add_argument("--warn-online", default="6h", metavar="DURATION", help="snapshot, timestamp (default 6h)")


def _keygen(args: argparse.Namespace) -> str:
    from filterproxy.distribution.keys import keygen

    priv, pub = keygen(args.out)
    return f"private key: {priv}  (keep it offline; mode 0600)\npublic key:  {pub}"


def _init(args: argparse.Namespace) -> str:
    from filterproxy.distribution import publish

    expiry = {r: publish.duration(getattr(args, f"{r}_expiry")) for r in publish.TOP_ROLES}
    publish.init(
        args.repo,
        root_keys=args.root_key,
        root_threshold=args.root_threshold,
        targets_keys=args.targets_key,
        targets_threshold=args.targets_threshold,
        online_key=args.online_key,
        expiry=expiry,
        delta_min_bytes=args.delta_min_bytes,
        compact_after=args.compact_after,
    )
    return (
        f"{args.repo}: root v1 and targets v1 staged; sign root with {args.root_threshold} root key(s) and "
        "targets with its key, then commit"
    )


def _delegate(args: argparse.Namespace) -> str:
    from filterproxy.distribution import publish

    publish.delegate(publish.Repository(args.repo), args.province, args.key, args.threshold, args.category)
    return (
        f"delegation to {args.province} staged (paths provinces/{args.province}/*/*, categories "
        f"{', '.join(sorted(set(args.category)))}): sign --role targets, and --role {args.province} with its key"
    )


def _add(args: argparse.Namespace) -> str:
    from filterproxy.distribution import publish

    st = publish.add(
        publish.Repository(args.repo), args.role, args.id, args.format, args.category, args.file, use_delta=args.delta
    )
    if st is None:
        return f"{args.id}: unchanged, nothing staged"
    detail = f" (+{st.added:,} −{st.removed:,} lines)" if st.kind == "delta" else ""
    notes = "".join(f"; {n}" for n in st.notes)
    staged = f"{args.id}: version {st.version} staged as {st.kind}, {st.bytes:,} bytes{detail}{notes}"
    return f"{staged}; sign --role {args.role}"


def _remove(args: argparse.Namespace) -> str:
    from filterproxy.distribution import publish

    n = publish.remove(publish.Repository(args.repo), args.role, args.id)
    return f"{args.id}: removal staged ({n} target(s)); sign --role {args.role}"


def _compact(args: argparse.Namespace) -> str:
    from filterproxy.distribution import publish

    st = publish.compact(publish.Repository(args.repo), args.role, args.id)
    return f"{args.id}: new base at version {st.version} staged ({st.bytes:,} bytes); sign --role {args.role}"


def _rotate(args: argparse.Namespace) -> str:
    from filterproxy.distribution import publish

    md = publish.rotate(publish.Repository(args.repo), args.role, args.add_key, args.revoke_key, args.threshold)
    return (
        f"root v{md.signed.version} staged: sign it with the threshold of the old root keys and of the new ones, "
        "then commit"
    )


def _sign(args: argparse.Namespace) -> str:
    from filterproxy.distribution import publish

    md = publish.sign(publish.Repository(args.repo), args.role, args.key)
    return f"{args.role} v{md.signed.version}: {len(md.signatures)} signature(s)"


def _commit(args: argparse.Namespace) -> str:
    from filterproxy.distribution import publish

    expiry = publish.duration(args.timestamp_expiry) if args.timestamp_expiry else None
    c = publish.commit(publish.Repository(args.repo), args.key, timestamp_expiry=expiry)
    out = f"published: {', '.join(c.published) or 'no role changes'}; snapshot v{c.snapshot}, timestamp v{c.timestamp}"
    if c.waiting:
        out += f"\nwaiting for signatures (still staged): {', '.join(c.waiting)}"
    for e in c.expiring:
        out += f"\nwarning: {e}: re-sign it (publish sign --role ..., then commit) before gateways refuse it"
    return out


def _status(args: argparse.Namespace) -> str:
    import json
    from datetime import timedelta

    from filterproxy.distribution import publish, status

    st = status.status(
        publish.Repository(args.repo),
        offline_warning=timedelta(seconds=publish.duration(args.warn)),
        online_warning=timedelta(seconds=publish.duration(args.warn_online)),
    )
    args.exit_status = 1 if st.warnings else 0
    return json.dumps(st.as_dict(), indent=1) if args.json else status.render(st)


_COMMANDS: dict[str, Callable[[argparse.Namespace], str]] = {
    "keygen": _keygen,
    "init": _init,
    "delegate": _delegate,
    "add": _add,
    "remove": _remove,
    "compact": _compact,
    "rotate": _rotate,
    "sign": _sign,
    "commit": _commit,
    "status": _status,
}


def cli(args: argparse.Namespace) -> int:
    """Run one ``publish`` sub-command: 0, or 1 with the reason on stderr."""
    from filterproxy.distribution.keys import PublishError

    try:
        print(_COMMANDS[args.publish_command](args))
    except (PublishError, OSError, ValueError) as exc:
        print(f"filterproxy publish {args.publish_command}: {exc}", file=sys.stderr)
        return 1
    return int(getattr(args, "exit_status", 0))
