"""Command line: ``filterproxy run | check | passwd | explain | urlhash | imagehash | lists | publish | export``
and ``reports | mobileconfig``.

The argument shapes here are contracts (acceptance checks and admins' scripts use them): keep them stable
and documented in README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from typing import TYPE_CHECKING

from filterproxy import __version__
from filterproxy.app import SetupError
from filterproxy.app import load_engine as app_load_engine

if TYPE_CHECKING:
    from filterproxy.config import Config

log = logging.getLogger("filterproxy")


# A user error: printed as one line, exit status 2 (the composition root raises it for bad overrides).
CliError = SetupError

# ``run``, ``explain``, ``export`` and the mitmproxy addon all build (Config, Engine) in the composition root.
load_engine = app_load_engine


def _parse_at(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--at {text!r}: expected an ISO time like 2026-11-23T10:30 or 2026-11-23T10:30+07:00") from None


def split_input(item: str) -> tuple[str, str | None]:
    """A name or a URL → (host, url or None) (:func:`filterproxy.policy.explain.split_input`)."""
    from filterproxy.policy.explain import split_input as split

    try:
        return split(item)
    except ValueError as exc:
        raise CliError(str(exc)) from None


# ---------------------------------------------------------------- commands


def cmd_check(args: argparse.Namespace) -> int:
    from filterproxy.config import load_config
    from filterproxy.lists.snapshot import build_snapshot

    cfg = load_config(args.config)
    _check_secrets(cfg)
    local = [s for s in (src.resolved(cfg.server.state_dir) for src in cfg.lists) if os.path.exists(s.path or "")]
    snap = build_snapshot(local, strict=True)
    missing = [s.id for s in cfg.lists if s.id not in {li.id for li in local}]
    print(
        f"{cfg.path}: OK — {len(cfg.groups)} groups ({', '.join(cfg.groups)}), {len(cfg.clients)} client rules, "
        f"{len(snap.lists)} lists, {snap.total_entries} entries"
    )
    for li in snap.lists:
        extra = f", {li.skipped} lines skipped (first: {li.errors[0]})" if li.skipped else ""
        print(f"  list {li.id:<28} {li.category:<10} {li.source.format:<9} {li.entries:>9} entries{extra}")
    if missing:
        print(f"  not downloaded yet (run 'filterproxy lists update'): {', '.join(missing)}")
    return 0


def _check_secrets(cfg: Config) -> None:
    """The secret files ``run`` reads and the proxy users file (argon2id hashes only), as ``run`` uses them."""
    from filterproxy.config.secrets import load_secrets
    from filterproxy.http.auth import UsersFile, UsersFileError

    load_secrets(cfg)
    if cfg.http.users_file:
        try:
            UsersFile.load(cfg.http.users_file, set(cfg.groups))
        except UsersFileError as exc:
            raise CliError(str(exc)) from None


def cmd_passwd(args: argparse.Namespace) -> int:
    from filterproxy.passwords import hash_password, read_password

    try:
        print(hash_password(read_password()))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return 0


def _description(cfg: Config, group: str) -> str | None:
    """The ``description`` of ``group``'s policy file (None without one)."""
    pol = cfg.groups.get(group)
    return (pol.description or None) if pol is not None else None


def cmd_explain(args: argparse.Namespace) -> int:
    from filterproxy.clients import Client
    from filterproxy.policy.explain import explain_item, explain_json

    cfg, engine = load_engine(args.config, args.extra_list, args.client_group, strict_lists=False)
    from filterproxy.state.watch import load_live

    load_live(cfg, engine)  # the control API's overrides, pauses and devices, as `filterproxy run` applies them
    at = _parse_at(args.at)
    if args.group and args.group not in cfg.groups:
        raise CliError(f"--group {args.group!r}: unknown group (groups: {', '.join(cfg.groups)})")
    client = Client.parse(args.client) if args.client else None
    group = args.group
    how = "--group"
    if group is None:
        assert client is not None  # argparse requires --client or --group
        group, how = engine.clients.group_for(client)
        if group is None:
            raise CliError(f"--client {args.client}: matches no client rule and there is no default_group")
    items = list(args.names)
    if not items or items == ["-"]:
        items = [line.strip() for line in sys.stdin if line.strip()]
    status = 0
    for item in items:
        if args.json:  # the same object GET /api/v1/explain answers (filterproxy.policy.explain)
            d = explain_json(engine, item, client, group, how, at)
            status = 1 if "error" in d else status
            print(json.dumps(d, ensure_ascii=False))
            continue
        try:
            v, host, address = explain_item(engine, item, client, group, at)
        except (CliError, ValueError) as exc:
            status = 1
            print(f"{item}: error: {exc}", file=sys.stderr)
            continue
        desc = _description(cfg, v.group)
        print(f"{item}: {v.action.value.upper()} for group {v.group} ({how}) — reason: {v.reason.value}")
        for label, val in (
            ("address", address if address != host else None),
            ("category", v.category),
            ("list", v.list_id),
            ("rule", v.rule),
            ("source", v.source),
            ("schedule", v.schedule),
            ("rewrite to", v.rewrite),
            ("policy", desc and f"{cfg.groups[v.group].name} — {desc}"),
        ):
            if val:
                print(f"    {label:<10} {val}")
        if v.legal:
            print("    legal      national/legal list: applies to every group, no allowlist overrides it")
        for list_id in dict.fromkeys(c.list_id for c in v.pending):  # docs/fullhash.md
            print(f"    prefix     {list_id}: a 4-byte prefix matched; the proxy asks the list's fullhash_url")
    return status


def cmd_urlhash(args: argparse.Namespace) -> int:
    from filterproxy.match.urlhash import urlhash_lines

    status = 0
    for url in args.urls:
        try:
            lines = urlhash_lines(url)
        except ValueError as exc:
            print(f"filterproxy urlhash: {url!r}: {exc}", file=sys.stderr)
            status = 2
            continue
        for line in lines:
            print(line)
    return status


def cmd_imagehash(args: argparse.Namespace) -> int:
    from filterproxy.match.imagehash.cli import run

    return run(args.files, args.list, args.max_distance)


def cmd_run(args: argparse.Namespace) -> int:
    from filterproxy.runner import run

    return run(args)


def cmd_lists(args: argparse.Namespace) -> int:
    from filterproxy.lists import commands

    return commands.cli(args)


def cmd_export(args: argparse.Namespace) -> int:
    from filterproxy.lists.rpz import RpzSerialError, export_rpz, write_rpz_file

    if args.serial is not None and not 0 <= args.serial < 1 << 32:
        raise CliError(f"--serial {args.serial}: a SOA serial is between 0 and 4294967295")
    cfg, engine = load_engine(args.config, args.extra_list, None)
    if args.group not in cfg.groups:
        raise CliError(f"--group {args.group!r}: unknown group (groups: {', '.join(cfg.groups)})")
    if not args.out:
        export_rpz(engine, args.group, sys.stdout, serial=args.serial)
        return 0
    try:
        res = write_rpz_file(engine, args.group, args.out, serial=args.serial)
    except RpzSerialError as exc:
        raise CliError(str(exc)) from None
    state = "written" if res.changed else "unchanged, not rewritten"
    print(f"{args.out}: serial {res.serial} ({state}), {res.counts['block']} blocked names", file=sys.stderr)
    return 0


def cmd_reports(args: argparse.Namespace) -> int:
    from filterproxy.config import load_config
    from filterproxy.reports import ReportSpool

    cfg = load_config(args.config)
    listing = ReportSpool.from_config(cfg, None, args.spool).list()
    if args.json:
        print(json.dumps({k: [r.__dict__ for r in v] for k, v in listing.items()}, indent=1))
    else:
        for state in ("pending", "sent"):
            print(f"{state}: {len(listing.get(state, []))}")
            for r in listing.get(state, []):
                print(f"  {r.time} {r.id} list={r.list_id} item={r.item_id} {r.match_kind} d={r.distance} url={r.url}")
    return 0


def cmd_querylog(args: argparse.Namespace) -> int:
    from filterproxy import querylog
    from filterproxy.app import load_config_with

    cfg = load_config_with(args.config, state_dir=args.state_dir)
    try:
        return querylog.command(
            cfg,
            since=args.since,
            group=args.group,
            action=args.action,
            as_json=args.json,
            out=sys.stdout,
            err=sys.stderr,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None


# ---------------------------------------------------------------- parser


def _config_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--config", "-c", metavar="FILE", help="configuration file (default: the embedded one)")


def _extra_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--extra-list",
        action="append",
        default=[],
        metavar="FORMAT:CATEGORY:PATH",
        help="add a list for this run only (formats: hosts, domains, adblock, wildcard, rpz, ut1, "
        "regex, urls, urlhash, imagehash, threatexchange, md5, sha1)",
    )


def _add_run(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("run", help="run the DNS resolver, the HTTP(S) proxy and the metrics endpoint")
    _config_arg(sp)
    _extra_arg(sp)
    sp.add_argument("--dns-listen", metavar="HOST:PORT|off")
    sp.add_argument("--proxy-listen", metavar="HOST:PORT|off")
    sp.add_argument("--proxy-workers", type=int, metavar="N")
    sp.add_argument(
        "--proxy-mode",
        action="append",
        default=[],
        metavar="MODE",
        help="proxy mode (repeatable): regular (default, on --proxy-listen), transparent@PORT, "
        "wireguard@PORT (see deploy/transparent-proxy.md, deploy/wireguard.md)",
    )
    sp.add_argument(
        "--dns-workers",
        type=int,
        metavar="N",
        help="DNS processes sharing --dns-listen (SO_REUSEPORT); default 1, one per core at most",
    )
    sp.add_argument("--worker-of", type=int, help=argparse.SUPPRESS)  # internal: a DNS worker of this PID
    sp.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # internal: write "ready" here
    sp.add_argument("--config-generation", type=int, help=argparse.SUPPRESS)  # internal: the parent's generation
    sp.add_argument("--metrics-listen", metavar="HOST:PORT|off")
    sp.add_argument("--doh-listen", metavar="HOST:PORT|off", help="DNS over HTTPS (needs server.tls_cert_file)")
    sp.add_argument("--dot-listen", metavar="HOST:PORT|off", help="DNS over TLS (needs server.tls_cert_file)")
    sp.add_argument("--admin-listen", metavar="HOST:PORT|off", help="the control API (default 127.0.0.1:8088)")
    sp.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="ADDR",
        help="upstream resolver (repeatable): 127.0.0.1:5399, tcp://IP:PORT, tls://host:853, https://host/dns-query",
    )
    sp.add_argument("--client-group", action="append", default=[], metavar="CIDR=GROUP")
    sp.add_argument("--report-endpoint", metavar="URL")
    sp.add_argument("--spool", metavar="DIR")
    sp.add_argument("--state-dir", metavar="DIR")
    sp.set_defaults(func=cmd_run)


def _add_check_explain_hashes(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("check", help="validate a configuration and its lists without starting anything")
    _config_arg(sp)
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("passwd", help="print the argon2id hash of a password read from stdin (no echo on a tty)")
    sp.set_defaults(func=cmd_passwd)

    sp = sub.add_parser("explain", help="print the verdict for names or URLs, and why")
    _config_arg(sp)
    _extra_arg(sp)
    who = sp.add_mutually_exclusive_group(required=True)
    who.add_argument("--client", metavar="IP|USER", help="client address or proxy user (user:NAME, mac:AA:.., doh:ID)")
    who.add_argument("--group", metavar="NAME")
    sp.add_argument("--client-group", action="append", default=[], metavar="CIDR=GROUP")
    sp.add_argument("--at", metavar="ISO-TIME", help="decide as at this time (schedules); default now")
    sp.add_argument("--json", action="store_true", help="one JSON object per input")
    sp.add_argument("names", nargs="*", metavar="NAME_OR_URL", help="names or URLs ('-' or none: read stdin)")
    sp.set_defaults(func=cmd_explain)

    sp = sub.add_parser("urlhash", help="canonical URL and Safe Browsing expressions with their SHA-256")
    sp.add_argument("urls", nargs="+", metavar="URL")
    sp.set_defaults(func=cmd_urlhash)

    sp = sub.add_parser("imagehash", help="MD5/SHA-1/SHA-256 and PDQ hashes of image files, and hash-list matches")
    sp.add_argument("--list", action="append", default=[], metavar="FORMAT:PATH", help="hash list to match (repeat)")
    sp.add_argument("--max-distance", type=int, metavar="N", help="PDQ match distance (default 31, the proxy's)")
    sp.add_argument("files", nargs="+", metavar="FILE")
    sp.set_defaults(func=cmd_imagehash)


def _add_lists(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("lists", help="download, compile, reload and show lists")
    lsub = sp.add_subparsers(dest="lists_command", required=True)
    for name, helptext in (
        ("update", "fetch sources and distributed lists, compile a snapshot (keeps the last good one)"),
        ("reload", "tell the running filterproxy to re-read configuration, policies and lists (SIGHUP)"),
        ("show", "lists in the current snapshot with counts and versions"),
    ):
        lp = lsub.add_parser(name, help=helptext)
        _config_arg(lp)
        lp.add_argument("--state-dir", metavar="DIR", help="state folder to use instead of the configured one")
        if name == "update":
            lp.add_argument(
                "--min-ratio",
                type=float,
                default=None,
                help="refuse an update with fewer than this fraction of the previous entries (default 0.5)",
            )
        lp.set_defaults(func=cmd_lists)


def _add_export_reports(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("export", help="export a group's effective block policy")
    esub = sp.add_subparsers(dest="export_command", required=True)
    ep = esub.add_parser("rpz", help="Response Policy Zone for BIND/Unbound/PowerDNS/Knot, to stdout or --out")
    _config_arg(ep)
    _extra_arg(ep)
    ep.add_argument("--group", required=True)
    ep.add_argument(
        "--out",
        metavar="FILE",
        help="write the zone to FILE atomically; its serial (YYYYMMDDnn) increases only when the content changes",
    )
    ep.add_argument("--serial", type=int, metavar="N", help="SOA serial to use (e.g. a list version) instead")
    ep.set_defaults(func=cmd_export)

    sp = sub.add_parser("reports", help="list pending and sent image-match reports")
    _config_arg(sp)
    sp.add_argument("--spool", metavar="DIR")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_reports)

    sp = sub.add_parser("querylog", help="print the query log (when querylog.enabled is on), oldest first")
    _config_arg(sp)
    sp.add_argument("--state-dir", metavar="DIR", help="state folder to use instead of the configured one")
    sp.add_argument("--since", metavar="ISO", help="records from this date or time on (configured timezone)")
    sp.add_argument("--group", metavar="G", help="records of this group only")
    sp.add_argument("--action", choices=("block", "allow", "rewrite", "refused", "error"), help="this action only")
    sp.add_argument("--json", action="store_true", help="one JSON object a line")
    sp.set_defaults(func=cmd_querylog)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="filterproxy", description="DNS resolver and HTTP(S) filtering proxy for child safety"
    )
    p.add_argument("--version", action="version", version=f"filterproxy {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_check_explain_hashes, _add_lists, _add_export_reports):
        add(sub)
    from filterproxy.distribution.cli import add_parser as add_publish  # imports tuf only when run

    add_publish(sub)
    from filterproxy.mobileconfig import add_parser as add_mobileconfig  # plistlib and uuid: cheap

    add_mobileconfig(sub)
    from filterproxy.state.cli import add_parser as add_admin  # imports SQLAlchemy only when run

    add_admin(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from filterproxy.config import ConfigError
    from filterproxy.lists.parsers import ListError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if args.command == "run" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args) or 0
    except (ConfigError, ListError, CliError) as exc:
        print(f"filterproxy: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
