"""``filterproxy bundle ...`` and bundle installation on a gateway (``lists update --bundle``).

The ministry side: ``keygen`` → ``build`` → ``sign`` → publish. The gateway side: ``verify`` or
``lists update`` (with the config's ``bundle: {keys: [...], url: ...}``) installs a verified bundle;
its lists join the snapshot (category ``illegal`` ones as the legal list) with the bundle serial as
their version. A bad signature, tampering, expiry or an older serial is refused with a clear reason and
the last good bundle keeps serving.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import TYPE_CHECKING

from filterproxy.lists import bundle

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from filterproxy.config import Config
    from filterproxy.lists.store import ListSource


def _expires(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(
            f"filterproxy bundle build: --expires {text!r}: expected an ISO time like 2026-12-31T00:00Z"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _keygen(args: argparse.Namespace) -> int:
    priv, pub = bundle.keygen(args.out)
    print(f"private key: {priv}  (keep it offline; mode 0600)\npublic key:  {pub}  (pin it on every gateway)")
    return 0


def _build(args: argparse.Namespace) -> int:
    lists = []
    for spec in args.list:
        parts = spec.split(":", 2)
        if len(parts) != 3 or not all(parts):
            print(f"filterproxy bundle build: --list {spec!r}: expected FORMAT:CATEGORY:PATH", file=sys.stderr)
            return 2
        lists.append(tuple(parts))
    manifest = bundle.build(args.out, args.serial, lists, publisher=args.publisher, expires=_expires(args.expires))
    print(
        f"{args.out}: serial {manifest['serial']}, {len(manifest['lists'])} lists, expires "
        f"{manifest['expires']} (unsigned: run 'filterproxy bundle sign')"
    )
    return 0


def _sign(args: argparse.Namespace) -> int:
    bundle.sign(args.key, args.file)
    print(f"{args.file}: signed")
    return 0


def _verify(args: argparse.Namespace) -> int:
    vb = bundle.verify(args.file, args.key, min_serial=args.min_serial)
    m = vb.manifest
    print(
        f"{args.file}: valid — publisher {m['publisher']}, serial {m['serial']}, key {vb.key_id}, "
        f"expires {m['expires']}, {len(m['lists'])} lists"
    )
    for fmt, cat, path, lid in vb.list_files():
        print(f"  {lid:<28} {cat:<10} {fmt:<9} {path}")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "keygen": _keygen,
    "build": _build,
    "sign": _sign,
    "verify": _verify,
}


def cli(args: argparse.Namespace) -> int:
    cmd = args.bundle_command
    handler = _COMMANDS.get(cmd)
    if handler is None:
        raise SystemExit(f"unknown bundle command {cmd}")
    try:
        return handler(args)
    except bundle.BundleError as exc:
        print(
            f"filterproxy bundle {cmd}: {args.__dict__.get('file') or args.__dict__.get('out')}: "
            f"{getattr(exc, 'reason', 'error')}: {exc}",
            file=sys.stderr,
        )
        return 1
    except (OSError, ValueError) as exc:
        print(f"filterproxy bundle {cmd}: {exc}", file=sys.stderr)
        return 2


def install_bundle(cfg: Config, path: str, keys: list[str]) -> int:
    """``lists update --bundle FILE [--key PUB]``: verify + install; the last good bundle stays on failure."""
    from filterproxy import metrics

    keys = keys or cfg.bundle.keys
    if not keys:
        print(
            "filterproxy lists update: no pinned bundle key (--key PUBLIC or bundle.keys in the config)",
            file=sys.stderr,
        )
        return 2
    try:
        vb = bundle.install(path, keys, cfg.server.state_dir)
    except bundle.BundleError as exc:
        reason = getattr(exc, "reason", "signature")
        label = "signature" if reason in ("bad_signature", "unknown_key") else "other"
        metrics.LISTS_UPDATE_FAILURES.inc("bundle", label)
        print(
            f"filterproxy lists update: bundle refused ({reason}): {exc}; keeping the last good bundle", file=sys.stderr
        )
        return 1
    print(f"bundle serial {vb.serial} from {vb.manifest['publisher']} installed ({len(vb.manifest['lists'])} lists)")
    return 0


def bundle_sources(cfg: Config) -> list[ListSource]:
    """The installed bundle's lists as ListSources (re-verified on disk), or [] when none is installed."""
    from filterproxy.lists.store import ListSource

    if not cfg.bundle.keys:
        return []
    try:
        vb = bundle.installed(cfg.server.state_dir, cfg.bundle.keys)
    except bundle.BundleError as exc:
        logging.getLogger("filterproxy.lists").error("installed bundle unusable: %s", exc)
        return []
    if vb is None:
        return []
    pub = vb.manifest.get("publisher", "")
    return [
        ListSource(
            id=f"bundle-{lid}",
            category=cat,
            format=fmt,
            path=path,
            hashed=fmt in ("urlhash", "imagehash"),
            where=f"bundle serial {vb.serial} ({pub})",
            version=f"serial-{vb.serial}",
        )
        for fmt, cat, path, lid in vb.list_files()
    ]


def installed_info(cfg: Config) -> tuple[str, int] | None:
    """(publisher, serial) of the installed bundle, or None when none is installed or it is unusable."""
    if not cfg.bundle.keys:
        return None
    try:
        vb = bundle.installed(cfg.server.state_dir, cfg.bundle.keys)
    except bundle.BundleError:
        return None
    return (vb.manifest.get("publisher", ""), vb.serial) if vb else None
