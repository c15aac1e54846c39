"""The publisher's TUF repository of lists: stage changes, collect signatures, commit static files.

Layout of a repository folder ``REPO``: ``public/`` is what nginx serves (``metadata/N.root.json``,
``N.targets.json``, ``N.<province>.json``, ``N.snapshot.json``, ``timestamp.json``; ``targets/`` with
hash-prefixed file names: consistent snapshots, so mirrors and CDNs never mix two publications).
``staged/`` holds role metadata with pending changes until enough keys signed it; ``published/`` the
latest of each role; ``lists/`` the current full copy of each delta list (the base of the next diff);
``repository.json`` the settings (expiry periods, delta thresholds).

Roles: ``root`` (threshold of offline keys), ``targets`` (the ministry: ``national/<list>/...``), one
delegated role per province (``provinces/<name>/<list>/...``, with the categories it may publish), and
``snapshot`` + ``timestamp`` signed by the online key at ``commit``. The gateway side is
:mod:`filterproxy.distribution.gateway`; docs/distribution.md describes both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from filterproxy.distribution import delta
from filterproxy.distribution.keys import PublishError, load_public, load_signer
from filterproxy.fsutil import atomic_write
from filterproxy.lists.parsers import FORMATS
from filterproxy.vocabulary import SOURCE_ID_RE

TOP_ROLES = ("root", "targets", "snapshot", "timestamp")
#: Categories only the ministry publishes (a province's target in one is refused by gateways too).
RESERVED_CATEGORIES = frozenset({"illegal"})
CATEGORIES_FIELD = "x-filterproxy-categories"
DEFAULT_EXPIRY = {"root": 365 * 86400, "targets": 90 * 86400, "snapshot": 7 * 86400, "timestamp": 86400}
DEFAULT_DELTA_MIN_BYTES = 1 << 20
EXPIRY_WARNING = timedelta(days=14)  # commit names offline-signed roles expiring sooner: re-sign them
DEFAULT_COMPACT_AFTER = 30
_PROVINCE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_DURATION_RE = re.compile(r"^(\d+)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text: str) -> int:
    """``90s``, ``30m``, ``12h``, ``1d``, ``2w`` (or plain seconds) → seconds."""
    m = _DURATION_RE.match(text.strip())
    if not m or int(m.group(1)) <= 0:
        raise PublishError(f"{text!r}: expected a duration like 1d, 12h, 30m or 90s")
    return int(m.group(1)) * _UNITS[m.group(2)]


def target_prefix(role: str) -> str:
    """Where a role's lists live: ``national/`` for the ministry, ``provinces/<name>/`` for a province."""
    return "national/" if role == "targets" else f"provinces/{role}/"


def province_paths(name: str) -> list[str]:
    """The delegated path pattern of a province (one ``*`` per path segment: ``<list>/<file>``)."""
    return [f"provinces/{name}/*/*"]


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass
class Staged:
    """What ``add`` / ``remove`` changed, for the command's output."""

    role: str
    list_id: str
    version: int
    kind: str
    bytes: int = 0
    added: int = 0
    removed: int = 0
    notes: list[str] = field(default_factory=list)


class Repository:
    """One repository folder on the publisher's machine (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        settings = os.path.join(self.path, "repository.json")
        try:
            with open(settings, encoding="utf-8") as f:
                self.settings: dict[str, Any] = json.load(f)
        except FileNotFoundError:
            raise PublishError(f"{self.path}: not a repository (run 'filterproxy publish init' first)") from None

    # --- files -----------------------------------------------------------------------------------

    def _role_file(self, where: str, role: str) -> str:
        return os.path.join(self.path, where, f"{role}.json")

    def _read(self, where: str, role: str) -> Metadata | None:
        path = self._role_file(where, role)
        return Metadata.from_file(path) if os.path.exists(path) else None

    def published(self, role: str) -> Metadata | None:
        return self._read("published", role)

    def staged(self, role: str) -> Metadata | None:
        return self._read("staged", role)

    def current(self, role: str) -> Metadata | None:
        return self.staged(role) or self.published(role)

    def save_staged(self, role: str, md: Metadata) -> None:
        _write_md(self._role_file("staged", role), md)

    def expiry(self, role: str) -> timedelta:
        key = role if role in TOP_ROLES else "targets"
        return timedelta(seconds=int(self.settings["expiry"][key]))

    def stage(self, role: str) -> Metadata:
        """The role's staged metadata, opened for a change: a copy of the published one with the next
        version when nothing is staged yet; signatures dropped (the content changes) and expiry renewed."""
        md = self.staged(role)
        if md is None:
            md = self.published(role)
            if md is None:
                raise PublishError(f"role {role!r} does not exist in {self.path}")
            md.signed.version += 1
        md.signatures.clear()
        md.signed.expires = _now() + self.expiry(role)
        return md

    def targets_role(self, role: str) -> Metadata:
        """Staged-for-change targets metadata of ``role`` (``targets`` or a delegated province)."""
        if role != "targets":
            top = self.current("targets")
            dele = top.signed.delegations if top else None
            if dele is None or dele.roles is None or role not in dele.roles:
                raise PublishError(f"no delegated role {role!r} (run 'filterproxy publish delegate' first)")
        return self.stage(role)

    def allowed_categories(self, role: str) -> frozenset[str] | None:
        """The categories a province may publish (None: the ministry, anything)."""
        if role == "targets":
            return None
        top = self.current("targets")
        assert top is not None and top.signed.delegations and top.signed.delegations.roles
        cats = top.signed.delegations.roles[role].unrecognized_fields.get(CATEGORIES_FIELD, [])
        return frozenset(cats) - RESERVED_CATEGORIES

    def add_target_file(self, local: str, target_path: str, custom: dict[str, Any]) -> TargetFile:
        """Copy ``local`` into ``public/targets`` under its hash-prefixed name; its TargetFile."""
        tf = TargetFile.from_file(target_path, local, ["sha256"])
        tf.unrecognized_fields["custom"] = custom
        folder, name = os.path.split(target_path)
        dest_dir = os.path.join(self.path, "public", "targets", folder)
        os.makedirs(dest_dir, exist_ok=True)
        dest = os.path.join(dest_dir, f"{tf.hashes['sha256']}.{name}")
        if not os.path.exists(dest):
            shutil.copyfile(local, dest + ".tmp")
            os.chmod(dest + ".tmp", 0o644)
            os.replace(dest + ".tmp", dest)
        return tf

    def list_copy(self, role: str, list_id: str) -> str:
        return os.path.join(self.path, "lists", role, f"{list_id}.txt")


def _write_md(path: str, md: Metadata) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, md.to_bytes(JSONSerializer(compact=False)), perms=0o644)


# --- init / delegate / rotate --------------------------------------------------------------------


def init(
    path: str,
    *,
    root_keys: list[str],
    root_threshold: int,
    targets_keys: list[str],
    targets_threshold: int,
    online_key: str,
    expiry: dict[str, int] | None = None,
    delta_min_bytes: int = DEFAULT_DELTA_MIN_BYTES,
    compact_after: int = DEFAULT_COMPACT_AFTER,
) -> None:
    """Create the repository folder with root v1 and an empty targets v1, staged (unsigned)."""
    if os.path.exists(os.path.join(path, "repository.json")):
        raise PublishError(f"{path}: already a repository")
    for role, keys, threshold in (("root", root_keys, root_threshold), ("targets", targets_keys, targets_threshold)):
        if not 1 <= threshold <= len(keys):
            raise PublishError(f"--{role}-threshold {threshold}: needs 1..{len(keys)} (the number of --{role}-key)")
    settings = {
        "expiry": {**DEFAULT_EXPIRY, **(expiry or {})},
        "delta_min_bytes": delta_min_bytes,
        "compact_after": compact_after,
    }
    os.makedirs(os.path.join(path, "public", "metadata"), exist_ok=True)
    os.makedirs(os.path.join(path, "public", "targets"), exist_ok=True)
    atomic_write(os.path.join(path, "repository.json"), json.dumps(settings, indent=2) + "\n")
    repo = Repository(path)
    now = _now()
    root = Root(expires=now + repo.expiry("root"), consistent_snapshot=True)
    for role, keys, threshold in (("root", root_keys, root_threshold), ("targets", targets_keys, targets_threshold)):
        for k in keys:
            root.add_key(load_public(k), role)
        root.roles[role].threshold = threshold
    online = load_public(online_key)
    root.add_key(online, "snapshot")
    root.add_key(online, "timestamp")
    repo.save_staged("root", Metadata(root))
    repo.save_staged("targets", Metadata(Targets(expires=now + repo.expiry("targets"))))


def delegate(repo: Repository, province: str, keys: list[str], threshold: int, categories: list[str]) -> None:
    """Stage a delegation (new or changed) from the ministry's targets to ``province``."""
    if not _PROVINCE_RE.match(province) or province in TOP_ROLES:
        raise PublishError(f"--province {province!r}: lower-case letters, digits and '-', not a top-level role")
    if not 1 <= threshold <= len(keys):
        raise PublishError(f"--threshold {threshold}: needs 1..{len(keys)} (the number of --key)")
    reserved = sorted(set(categories) & RESERVED_CATEGORIES)
    if reserved:
        raise PublishError(f"--category {', '.join(reserved)}: reserved for the ministry, never delegated")
    top = repo.stage("targets")
    if top.signed.delegations is None:
        top.signed.delegations = Delegations(keys={}, roles={})
    dele = top.signed.delegations
    assert dele.roles is not None
    old = dele.roles.get(province)
    pubs = [load_public(k) for k in keys]
    role = DelegatedRole(
        name=province,
        keyids=[k.keyid for k in pubs],
        threshold=threshold,
        terminating=True,
        paths=province_paths(province),
        unrecognized_fields={CATEGORIES_FIELD: sorted(set(categories))},
    )
    dele.roles[province] = role
    for k in pubs:
        dele.keys[k.keyid] = k
    used = {kid for r in dele.roles.values() for kid in r.keyids}
    for kid in list(dele.keys):
        if kid not in used:
            del dele.keys[kid]
    repo.save_staged("targets", top)
    if old is None and repo.published(province) is None and repo.staged(province) is None:
        repo.save_staged(province, Metadata(Targets(expires=_now() + repo.expiry(province))))
    elif old is not None and (set(old.keyids) != set(role.keyids) or old.threshold != threshold):
        repo.save_staged(province, repo.stage(province))  # the province signs again with its new key(s)


def rotate(repo: Repository, role: str, add: list[str], revoke: list[str], threshold: int | None) -> Metadata:
    """Stage the next root version with keys added to / revoked from a top-level ``role``."""
    if role not in TOP_ROLES:
        raise PublishError(f"--role {role!r}: one of {', '.join(TOP_ROLES)} (province keys: publish delegate)")
    root = repo.stage("root")
    for k in add:
        root.signed.add_key(load_public(k), role)
    for k in revoke:
        kid = load_public(k).keyid if os.path.exists(k) else k
        if kid not in root.signed.roles[role].keyids:
            raise PublishError(f"--revoke-key {k}: not a key of role {role}")
        root.signed.revoke_key(kid, role)
    if threshold is not None:
        root.signed.roles[role].threshold = threshold
    r = root.signed.roles[role]
    if not 1 <= r.threshold <= len(r.keyids):
        raise PublishError(f"role {role}: threshold {r.threshold} with {len(r.keyids)} keys")
    repo.save_staged("root", root)
    return root


# --- lists ---------------------------------------------------------------------------------------


def _list_targets(md: Metadata, list_id: str) -> dict[str, TargetFile]:
    return {p: tf for p, tf in md.signed.targets.items() if tf.custom.get("list") == list_id}


def add(
    repo: Repository,
    role: str,
    list_id: str,
    fmt: str,
    category: str,
    file: str,
    *,
    use_delta: bool | None = None,
) -> Staged | None:
    """Stage a new version of a list (None: the content did not change)."""
    if not SOURCE_ID_RE.match(list_id):
        raise PublishError(f"--id {list_id!r}: lower-case letters, digits, '-' and '_' (at most 63)")
    if fmt not in FORMATS or fmt == "ut1":
        raise PublishError(f"--format {fmt!r}: one of {', '.join(f for f in FORMATS if f != 'ut1')}")
    allowed = repo.allowed_categories(role)
    if allowed is not None and category not in allowed:
        raise PublishError(
            f"--category {category!r}: province {role} may publish only {', '.join(sorted(allowed)) or 'nothing'}"
        )
    md = repo.targets_role(role)
    old = _list_targets(md, list_id)
    prev = max((int(tf.custom["version"]) for tf in old.values()), default=0)
    was_delta = any(tf.custom.get("kind") == "base" for tf in old.values())
    if use_delta is None:
        use_delta = was_delta or (
            fmt in delta.DELTA_FORMATS and os.path.getsize(file) >= repo.settings["delta_min_bytes"]
        )
    if use_delta and fmt not in delta.DELTA_FORMATS:
        raise PublishError(f"--delta: format {fmt} has ordered rules; deltas are for {', '.join(delta.DELTA_FORMATS)}")
    base = {"list": list_id, "format": fmt, "category": category, "version": prev + 1}
    if not use_delta:
        sha = delta.file_sha256(file)
        if any(tf.custom.get("kind") == "full" and tf.hashes.get("sha256") == sha for tf in old.values()):
            return None
        path = f"{target_prefix(role)}{list_id}/full.txt"
        tf = repo.add_target_file(file, path, {**base, "kind": "full"})
        for p in old:
            del md.signed.targets[p]
        md.signed.targets[path] = tf
        repo.save_staged(role, md)
        return Staged(role, list_id, prev + 1, "full", tf.length)
    return _add_delta(repo, md, role, list_id, file, base, old, was_delta)


def _add_delta(
    repo: Repository,
    md: Metadata,
    role: str,
    list_id: str,
    file: str,
    base: dict[str, Any],
    old: dict[str, TargetFile],
    was_delta: bool,
) -> Staged | None:
    copy = repo.list_copy(role, list_id)
    os.makedirs(os.path.dirname(copy), exist_ok=True)
    version = int(base["version"])
    with tempfile.TemporaryDirectory(prefix=".add-", dir=os.path.dirname(copy)) as tmp:
        new = os.path.join(tmp, "new.txt")
        delta.canonicalise(file, new)
        full_sha = delta.file_sha256(new)
        segments = sum(1 for tf in old.values() if tf.custom.get("kind") == "add")
        base_version = max(
            (int(tf.custom["version"]) for tf in old.values() if tf.custom.get("kind") == "base"), default=0
        )
        prefix = f"{target_prefix(role)}{list_id}/"
        custom = {**base, "sha256_full": full_sha}
        if was_delta and os.path.exists(copy) and version - 1 - base_version < repo.settings["compact_after"]:
            added, removed = delta.diff_sorted(copy, new)
            if not added and not removed:
                return None
            staged = Staged(role, list_id, version, "delta", added=len(added), removed=len(removed))
            for kind, lines in (("add", added), ("remove", removed)):
                if lines:
                    seg = os.path.join(tmp, f"{kind}.gz")
                    delta.write_gzip(seg, lines)
                    path = f"{prefix}{kind}-{version}.txt.gz"
                    tf = repo.add_target_file(seg, path, {**custom, "kind": kind, "base": base_version})
                    md.signed.targets[path] = tf
                    staged.bytes += tf.length
        else:
            if was_delta and os.path.exists(copy) and delta.file_sha256(copy) == full_sha:
                return None
            staged = _rebase(repo, md, tmp, new, prefix, custom, old)
            if segments:
                staged.notes.append(f"compacted {segments} segment(s)")
        os.replace(new, copy)
    repo.save_staged(role, md)
    return staged


def _rebase(
    repo: Repository, md: Metadata, tmp: str, full: str, prefix: str, custom: dict[str, Any], old: dict[str, TargetFile]
) -> Staged:
    """Replace a delta list's targets by one base at ``custom['version']``."""
    gz = os.path.join(tmp, "base.gz")
    delta.gzip_file(full, gz)
    for p in old:
        del md.signed.targets[p]
    path = f"{prefix}base.txt.gz"
    version = int(custom["version"])
    tf = repo.add_target_file(gz, path, {**custom, "kind": "base", "base": version})
    md.signed.targets[path] = tf
    return Staged(_role_of(prefix), str(custom["list"]), version, "base", tf.length)


def _role_of(prefix: str) -> str:
    return "targets" if prefix.startswith("national/") else prefix.split("/")[1]


def compact(repo: Repository, role: str, list_id: str) -> Staged:
    """Stage a new base of a delta list at its current version (its segments are dropped)."""
    md = repo.targets_role(role)
    old = _list_targets(md, list_id)
    copy = repo.list_copy(role, list_id)
    if not any(tf.custom.get("kind") == "base" for tf in old.values()) or not os.path.exists(copy):
        raise PublishError(f"{list_id}: not a delta list of role {role}")
    top = max(old.values(), key=lambda tf: int(tf.custom["version"]))
    custom = {k: top.custom[k] for k in ("list", "format", "category", "version", "sha256_full")}
    with tempfile.TemporaryDirectory(prefix=".compact-", dir=os.path.dirname(copy)) as tmp:
        staged = _rebase(repo, md, tmp, copy, f"{target_prefix(role)}{list_id}/", custom, old)
    repo.save_staged(role, md)
    return staged


def remove(repo: Repository, role: str, list_id: str) -> int:
    """Stage the removal of a list; the number of targets dropped."""
    md = repo.targets_role(role)
    old = _list_targets(md, list_id)
    if not old:
        raise PublishError(f"{list_id}: no such list in role {role}")
    for p in old:
        del md.signed.targets[p]
    repo.save_staged(role, md)
    copy = repo.list_copy(role, list_id)
    if os.path.exists(copy):
        os.unlink(copy)
    return len(old)


# --- sign / commit -------------------------------------------------------------------------------


def sign(repo: Repository, role: str, key_file: str) -> Metadata:
    """Add one signature to the staged ``role`` (staging a re-signed copy when nothing is staged)."""
    md = repo.staged(role)
    if md is None:
        md = repo.stage(role)
    signer = load_signer(key_file)
    kid = signer.public_key.keyid
    if kid not in _authorised_keys(repo, role, md):
        raise PublishError(f"{key_file}: key {kid[:16]} is not a key of role {role}")
    md.sign(signer, append=True)
    repo.save_staged(role, md)
    return md


def _authorised_keys(repo: Repository, role: str, md: Metadata) -> set[str]:
    if role == "root":
        prev = repo.published("root")
        ids = set(md.signed.roles["root"].keyids)
        return ids | (set(prev.signed.roles["root"].keyids) if prev else set())
    if role in TOP_ROLES:
        root = repo.current("root")
        assert root is not None
        return set(root.signed.roles[role].keyids)
    top = repo.current("targets")
    assert top is not None and top.signed.delegations and top.signed.delegations.roles
    return set(top.signed.delegations.roles[role].keyids)


def _verified(delegator: Metadata | None, role: str, md: Metadata) -> bool:
    if delegator is None:
        return False
    try:
        delegator.verify_delegate(role, md)
    except (UnsignedMetadataError, ValueError):
        return False
    return True


@dataclass
class Commit:
    """What ``commit`` published and what still waits for signatures."""

    published: list[str]
    waiting: list[str]
    snapshot: int
    timestamp: int
    expiring: list[str] = field(default_factory=list)  # signed offline, expiring within EXPIRY_WARNING


def commit(repo: Repository, online_key: str, *, timestamp_expiry: int | None = None) -> Commit:
    """Publish every staged role that carries its threshold of signatures, then a new snapshot (when a
    targets role changed or the old one nears expiry) and a new timestamp, signed with the online key."""
    signer = load_signer(online_key)
    waiting: list[str] = []
    ready: dict[str, Metadata] = {}
    root = repo.published("root")
    new_root = repo.staged("root")
    if new_root is not None:
        if _verified(root or new_root, "root", new_root) and _verified(new_root, "root", new_root):
            ready["root"] = new_root
            root = new_root
        else:
            waiting.append("root")
    if root is None:
        raise PublishError("no signed root yet: 'publish sign --role root --key K' with the threshold of root keys")
    for role in ("snapshot", "timestamp"):
        if signer.public_key.keyid not in root.signed.roles[role].keyids:
            raise PublishError(f"{online_key}: not the {role} key of root v{root.signed.version}")
    top = repo.published("targets")
    new_top = repo.staged("targets")
    if new_top is not None:
        if _verified(root, "targets", new_top):
            ready["targets"], top = new_top, new_top
        else:
            waiting.append("targets")
    if top is None:
        raise PublishError("no signed targets yet: 'publish sign --role targets --key K'")
    delegated = list((top.signed.delegations.roles or {}) if top.signed.delegations else {})
    effective: dict[str, int] = {}
    for name in delegated:
        md = repo.staged(name)
        if md is not None and _verified(top, name, md):
            ready[name] = md
            effective[name] = md.signed.version
            continue
        if md is not None:
            waiting.append(name)
        pub = repo.published(name)
        if pub is not None:
            effective[name] = pub.signed.version
    for name, md in ready.items():
        meta = os.path.join(repo.path, "public", "metadata")
        _write_md(os.path.join(meta, f"{md.signed.version}.{name}.json"), md)
        _write_md(repo._role_file("published", name), md)
        os.unlink(repo._role_file("staged", name))
    snap = _snapshot(repo, top, effective, signer, force=bool(set(ready) - {"root"}))
    ts = _timestamp(repo, snap, signer, timestamp_expiry)
    soon = _now() + EXPIRY_WARNING
    expiring = [
        f"{name} v{md.signed.version} expires {md.signed.expires:%Y-%m-%d}"
        for name in ("root", "targets", *delegated)
        if (md := repo.published(name)) is not None and md.signed.expires < soon
    ]
    return Commit(sorted(ready), sorted(waiting), snap.signed.version, ts.signed.version, expiring)


def _snapshot(repo: Repository, top: Metadata, roles: dict[str, int], signer: Any, *, force: bool) -> Metadata:
    old = repo.published("snapshot")
    half = repo.expiry("snapshot") / 2
    if old is not None and not force and old.signed.expires - _now() > half:
        return old
    meta = {"targets.json": MetaFile(top.signed.version)} | {f"{n}.json": MetaFile(v) for n, v in roles.items()}
    version = old.signed.version + 1 if old else 1
    md = Metadata(Snapshot(version=version, expires=_now() + repo.expiry("snapshot"), meta=meta))
    md.sign(signer)
    _write_md(os.path.join(repo.path, "public", "metadata", f"{version}.snapshot.json"), md)
    _write_md(repo._role_file("published", "snapshot"), md)
    return md


def _timestamp(repo: Repository, snap: Metadata, signer: Any, expiry: int | None) -> Metadata:
    old = repo.published("timestamp")
    version = old.signed.version + 1 if old else 1
    period = timedelta(seconds=expiry) if expiry else repo.expiry("timestamp")
    ts = Timestamp(version=version, expires=_now() + period, snapshot_meta=MetaFile(snap.signed.version))
    md = Metadata(ts)
    md.sign(signer)
    _write_md(repo._role_file("published", "timestamp"), md)
    # last: the one unversioned file, the commit point for gateways and mirrors
    _write_md(os.path.join(repo.path, "public", "metadata", "timestamp.json"), md)
    return md
