"""The gateway side of signed bundles: verify-and-install into the state folder, and re-verify at start-up.

``install`` extracts while verifying into ``state_dir/bundles/.tmp-*``, renames that to
``bundles/<serial>/`` and atomically repoints the ``bundles/current`` symlink (the commit point), then
records the serial in ``bundle-state.json``.  A serial not above the installed one is a rollback and is
refused; any failure leaves the previous bundle current.  One installer at a time per state folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from filterproxy.fsutil import atomic_write, fsync_dir
from filterproxy.lists.bundle.format import (
    CHUNK,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE,
    BundleError,
    Malformed,
    Tampered,
    VerifiedBundle,
    check_signature,
    fmt_time,
    load_public_keys,
    manifest_members,
    parse_manifest,
    verify_archive,
)

log = logging.getLogger("filterproxy.bundle")

STATE_FILE = "bundle-state.json"


@contextlib.contextmanager
def _locked(state_dir: str) -> Iterator[None]:
    """One installer at a time per state_dir (cron refresh vs. an admin running the CLI)."""
    fd = os.open(os.path.join(state_dir, ".bundle.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- serials ------------------------------------------------------------------------------------


def _read_state(state_dir: str) -> dict[str, Any]:
    path = os.path.join(state_dir, STATE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        # Fail closed: without the high-water mark we cannot refuse a rollback.
        raise BundleError(f"{path}: unreadable ({exc}); fix or remove it to accept bundles again") from None
    if not isinstance(state, dict) or not isinstance(state.get("serial"), int):
        raise BundleError(f"{path}: no integer 'serial'; fix or remove it to accept bundles again")
    return state


def _current_serial(bundles_dir: str) -> int | None:
    try:
        target = os.readlink(os.path.join(bundles_dir, "current"))
    except OSError:
        return None
    name = os.path.basename(target.rstrip("/"))
    return int(name) if name.isdigit() else None


def installed_serial(state_dir: str) -> int | None:
    """Highest serial ever installed in ``state_dir`` (state file or ``current``), or None."""
    candidates = (
        _read_state(state_dir).get("serial"),
        _current_serial(os.path.join(state_dir, "bundles")),
    )
    serials = [s for s in candidates if s is not None]
    return max(serials) if serials else None


def _write_state(state_dir: str, vb: VerifiedBundle) -> None:
    state = {
        "serial": vb.serial,
        "key_id": vb.key_id,
        "publisher": vb.manifest["publisher"],
        "expires": vb.manifest["expires"],
        "installed_at": fmt_time(datetime.now(UTC)),
    }
    text = json.dumps(state, indent=2, sort_keys=True) + "\n"
    # 0644: the serving process may run as another user.
    atomic_write(os.path.join(state_dir, STATE_FILE), text, perms=0o644)


# --- install ------------------------------------------------------------------------------------


def _clean_leftovers(bundles_dir: str) -> None:
    """Remove the temporary folders and links of an interrupted install."""
    for name in os.listdir(bundles_dir):
        if name.startswith((".tmp-", ".current-")):
            path = os.path.join(bundles_dir, name)
            if os.path.islink(path):
                os.unlink(path)
            else:
                shutil.rmtree(path, ignore_errors=True)


def _prune(bundles_dir: str, keep: int) -> None:
    current = _current_serial(bundles_dir)
    serials = sorted((int(n) for n in os.listdir(bundles_dir) if n.isdigit()), reverse=True)
    for s in serials[max(keep, 1) :]:
        if s != current:
            shutil.rmtree(os.path.join(bundles_dir, str(s)), ignore_errors=True)


def _extract(
    bundle_path: str, public_keys: list[str], bundles_dir: str, *, now: datetime | None, min_serial: int | None
) -> tuple[VerifiedBundle, str]:
    """Verify and extract into ``bundles/<serial>`` (not yet current); return the bundle and that folder."""
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=bundles_dir)
    try:
        os.chmod(tmp, 0o755)
        vb = verify_archive(bundle_path, public_keys, now=now, min_serial=min_serial, extract_to=tmp)
        fsync_dir(os.path.join(tmp, "lists"))
        fsync_dir(tmp)
        final = os.path.join(bundles_dir, str(vb.serial))
        if os.path.lexists(final):
            # Left by an install interrupted before its commit point; never current, since
            # its serial is above the installed one.
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return vb, final


def _switch_current(bundles_dir: str, serial: int, final: str) -> None:
    """Repoint ``bundles/current`` at ``serial`` atomically (the commit point); on failure drop ``final``."""
    link_tmp = os.path.join(bundles_dir, f".current-{serial}")
    try:
        os.symlink(str(serial), link_tmp)
        os.replace(link_tmp, os.path.join(bundles_dir, "current"))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(link_tmp)
        shutil.rmtree(final, ignore_errors=True)
        raise
    fsync_dir(bundles_dir)


def install(
    bundle_path: str,
    public_keys: list[str],
    state_dir: str,
    *,
    now: datetime | None = None,
    keep: int = 3,
) -> VerifiedBundle:
    """Verify ``bundle_path`` and make it the current bundle in ``state_dir``.

    The bundle must be newer than anything installed before.  Steps: extract while verifying
    into ``bundles/.tmp-*`` -> rename to ``bundles/<serial>`` -> atomically repoint the
    ``bundles/current`` symlink (the commit point) -> record the serial in ``bundle-state.json``.
    A failure before the commit point removes what it wrote and leaves the previous bundle
    current.  The newest ``keep`` bundle directories are kept for readers still using them.
    """
    os.makedirs(state_dir, exist_ok=True)
    bundles_dir = os.path.join(state_dir, "bundles")
    os.makedirs(bundles_dir, exist_ok=True)
    with _locked(state_dir):
        _clean_leftovers(bundles_dir)
        min_serial = installed_serial(state_dir)
        vb, final = _extract(bundle_path, public_keys, bundles_dir, now=now, min_serial=min_serial)
        _switch_current(bundles_dir, vb.serial, final)
        try:
            _write_state(state_dir, vb)
        except OSError as exc:
            # Installed anyway: installed_serial() also reads the `current` link, so rollback
            # protection holds; the state file catches up on the next install.
            log.warning("bundle %d installed but %s not updated: %s", vb.serial, STATE_FILE, exc)
        _prune(bundles_dir, keep)
        log.info("bundle %d from %s installed (key %s)", vb.serial, vb.manifest["publisher"], vb.key_id)
        return VerifiedBundle(manifest=vb.manifest, key_id=vb.key_id, directory=os.path.realpath(final))


# --- installed ----------------------------------------------------------------------------------


def _file_digest(path: str) -> tuple[int, str]:
    """(size, sha256 hex) of the file at ``path``."""
    digest = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            n += len(chunk)
    return n, digest.hexdigest()


def installed(state_dir: str, public_keys: list[str]) -> VerifiedBundle | None:
    """The current bundle in ``state_dir``, re-verified on disk (signature and file hashes).

    For start-up: the installed copy fills the lists before the first refresh.  Expiry is not
    checked here (an expired bundle stays the last known good); the caller decides what to do
    with ``VerifiedBundle.expires``.  Returns None when nothing is installed.
    """
    current = os.path.join(state_dir, "bundles", "current")
    if not os.path.lexists(current):
        return None
    directory = os.path.realpath(current)
    pinned = load_public_keys(public_keys)
    try:
        with open(os.path.join(directory, SIGNATURE), "rb") as f:
            sig_bytes = f.read(MAX_SIGNATURE_BYTES + 1)
        with open(os.path.join(directory, MANIFEST), "rb") as f:
            manifest_data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise Malformed(f"installed bundle {directory}: {exc}") from None
    kid = check_signature(sig_bytes, manifest_data, pinned)
    manifest = parse_manifest(manifest_data)
    for member, (sha256, size) in manifest_members(manifest).items():
        try:
            found = _file_digest(os.path.join(directory, *member.split("/")))
        except OSError as exc:
            raise Tampered(member, f"unreadable in {directory}: {exc}") from None
        if found != (size, sha256):
            raise Tampered(member, f"changed on disk in {directory}")
    return VerifiedBundle(manifest=manifest, key_id=kid, directory=directory)
