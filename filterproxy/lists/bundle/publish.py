"""The publisher side of signed bundles: ``keygen`` -> ``build`` -> ``sign``.

``build`` stages the input lists (gunzipped, UTF-8 checked, rule lines counted) and writes an unsigned,
deterministic bundle; ``sign`` rewrites it with ``signature.json`` in front, re-checking every list against
the manifest on the way so a bundle every gateway would refuse is never signed.  Both replace the output
file atomically.  The format itself is :mod:`.format`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import re
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from filterproxy.fsutil import atomic_writer
from filterproxy.lists.bundle.format import (
    BUNDLE_FORMAT,
    FOLDER_FORMATS,
    ID_RE,
    LIST_FORMATS,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE,
    SLUG_RE,
    BundleReader,
    Malformed,
    Tampered,
    fmt_time,
    manifest_bytes,
    manifest_members,
    parse_manifest,
    signature_bytes,
    tarinfo,
    utc,
)

PRIVATE_KEY_FILE = "bundle-signing.key"
PUBLIC_KEY_FILE = "bundle-signing.pub"
#: What a UT1 folder contributes to a bundle: the name lists (squidGuard semantics: a domain and
#: its subdomains, bare IPv4 mixed in) and the URL prefixes.  Its regex files are left out.
UT1_FILES = ("domains", "urls")
DEFAULT_LIFETIME = timedelta(days=30)

# Comment prefixes per format, for the informational ``entries`` count (rule lines, not names).
_COMMENTS = {
    "hosts": ("#",),
    "domains": ("#",),
    "wildcard": ("#",),
    "adblock": ("!", "["),
    "regex": ("#", "!"),
    "urls": ("#",),
    "urlhash": ("#",),
    "imagehash": ("#",),
}
_UT1_COMMENTS = ("#",)


# --- keys ---------------------------------------------------------------------------------------


def keygen(out_dir: str) -> tuple[str, str]:
    """Create an Ed25519 signing key pair in ``out_dir``; return (private key path, public key path).

    The private key is PEM PKCS#8 (unencrypted, mode 0600: keep it offline); the public key is PEM
    SubjectPublicKeyInfo, the file gateways pin.  Refuses to overwrite either file.
    """
    os.makedirs(out_dir, mode=0o700, exist_ok=True)
    key_path = os.path.join(out_dir, PRIVATE_KEY_FILE)
    pub_path = os.path.join(out_dir, PUBLIC_KEY_FILE)
    for p in (key_path, pub_path):
        if os.path.lexists(p):
            raise FileExistsError(f"{p} already exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    # O_EXCL: never clobber a key created concurrently between the check above and here.
    for path, data, perms in ((key_path, key_pem, 0o600), (pub_path, pub_pem, 0o644)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, perms)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return key_path, pub_path


def load_private_key(key_path: str) -> Ed25519PrivateKey:
    """The unencrypted PEM Ed25519 private key at ``key_path`` (ValueError for anything else)."""
    with open(key_path, "rb") as f:
        data = f.read()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{key_path}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{key_path}: not an Ed25519 private key ({type(key).__name__})")
    return key


# --- writing ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _atomic_bundle_writer(out: str) -> Iterator[tarfile.TarFile]:
    """A deterministic tar.gz stream that replaces ``out`` atomically only if the block succeeds."""
    with (
        atomic_writer(out, "wb", perms=0o644) as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        yield tar


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(tarinfo(name, len(data)), io.BytesIO(data))


# --- build --------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _derive_id(category: str, stem: str) -> str:
    s = _slug(stem)
    if s == category or s.startswith(category + "-"):
        return s
    return f"{category}-{s}" if s else category


def _strip_suffixes(name: str) -> str:
    for suffix in (".gz", ".txt", ".list"):
        name = name.removesuffix(suffix)
    return name


def _expand_input(item: object) -> tuple[str, str, str, str]:
    """One (fmt, category, path[, id]) input -> validated (fmt, category, path, id)."""
    if not isinstance(item, (tuple, list)) or len(item) not in (3, 4):
        raise ValueError(f"list entry must be (format, category, path[, id]), got {item!r}")
    fmt, category, path = item[0], item[1], os.fspath(item[2])
    if fmt not in LIST_FORMATS:
        raise ValueError(f"{path}: unknown list format {fmt!r} (one of {', '.join(sorted(LIST_FORMATS))})")
    if not isinstance(category, str) or not SLUG_RE.match(category):
        raise ValueError(f"{path}: category must match {SLUG_RE.pattern}, got {category!r}")
    if fmt in FOLDER_FORMATS:
        if not os.path.isdir(path):
            raise ValueError(f"{path}: format {fmt} expects a category folder ({', '.join(UT1_FILES)})")
        stem = os.path.basename(os.path.normpath(path))
    elif os.path.isdir(path):
        raise ValueError(f"{path}: is a folder; only format ut1 takes a folder")
    elif not os.path.isfile(path):
        raise ValueError(f"{path}: no such list file")
    else:
        stem = _strip_suffixes(os.path.basename(path))
    list_id = item[3] if len(item) == 4 else _derive_id(category, stem)
    if not isinstance(list_id, str) or not ID_RE.match(list_id + ".txt"):
        raise ValueError(f"{path}: list id {list_id!r} must match {ID_RE.pattern}")
    return fmt, category, path, list_id


def _expand_inputs(lists: Iterable[object]) -> list[tuple[str, str, str, str]]:
    """(fmt, category, path[, id]) items -> validated (fmt, category, path, id), sorted by id."""
    out = [_expand_input(item) for item in lists]
    seen: dict[str, str] = {}
    for _fmt, _category, path, list_id in out:
        if list_id in seen:
            raise ValueError(
                f"list id {list_id!r} derived twice ({seen[list_id]} and {path}); "
                "pass an explicit id as a fourth tuple element"
            )
        seen[list_id] = path
    if not out:
        raise ValueError("a bundle needs at least one list")
    return sorted(out, key=lambda x: x[3])


def _open_list(path: str) -> BinaryIO:
    """Open a list file as bytes, gunzipping transparently when it starts with the gzip magic."""
    f = open(path, "rb")
    try:
        magic = f.read(2)
        f.seek(0)
    except BaseException:
        f.close()
        raise
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]  # closes f with it
    return f


def _stage_file(src: str, comments: tuple[str, ...] | None, dst_dir: str) -> tuple[str, str, int, int]:
    """Copy ``src`` (gunzipped) into ``dst_dir``; return (staged path, sha256, size, rule lines).

    Refuses anything that is not UTF-8 text.  ``comments`` None: rule lines are not counted.
    """
    digest = hashlib.sha256()
    size = entries = 0
    fd, staged = tempfile.mkstemp(dir=dst_dir)
    with _open_list(src) as fin, os.fdopen(fd, "wb") as fout:
        for lineno, line in enumerate(fin, 1):
            try:
                text = line.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise ValueError(f"{src}:{lineno}: not UTF-8 text") from None
            if comments is not None and text and not text.startswith(comments):
                entries += 1
            digest.update(line)
            size += len(line)
            fout.write(line)
    return staged, digest.hexdigest(), size, entries


def _stage_folder(src: str, entry: dict[str, Any], staging: str, members: list[tuple[str, str, int]]) -> None:
    """Stage a UT1 category folder's :data:`UT1_FILES` (plain or .gz) as one list entry."""
    entry["path"] = f"lists/{entry['id']}"
    files: dict[str, dict[str, Any]] = {}
    total = 0
    for name in UT1_FILES:
        for candidate in (os.path.join(src, name), os.path.join(src, name + ".gz")):
            if os.path.isfile(candidate):
                staged, sha, size, n = _stage_file(candidate, _UT1_COMMENTS, staging)
                files[name] = {"sha256": sha, "size": size}
                members.append((f"{entry['path']}/{name}", staged, size))
                total += n
                break
    if not files:
        raise ValueError(f"{src}: UT1 folder has none of {', '.join(UT1_FILES)}")
    entry["files"] = files
    entry["entries"] = total


def _stage_list(
    fmt: str, category: str, src: str, list_id: str, staging: str
) -> tuple[dict[str, Any], list[tuple[str, str, int]]]:
    """Stage one list: its manifest entry and its (member name, staged file, size) members.

    A list that has no rule lines is refused: a list that reads as empty is a mistake upstream
    (a failed download, an error page), never something to ship to every gateway.
    """
    entry: dict[str, Any] = {"id": list_id, "format": fmt, "category": category}
    members: list[tuple[str, str, int]] = []
    if fmt in FOLDER_FORMATS:
        _stage_folder(src, entry, staging, members)
    else:
        comments = _COMMENTS.get(fmt)
        entry["path"] = f"lists/{list_id}.txt"
        staged, sha, size, total = _stage_file(src, comments, staging)
        entry.update(sha256=sha, size=size)
        if comments is not None:
            entry["entries"] = total
        members.append((entry["path"], staged, size))
    if sum(m[2] for m in members) == 0 or entry.get("entries", 1) == 0:
        raise ValueError(f"{src}: list has no entries")
    return entry, members


def _lifetime(created: datetime | None, expires: datetime | None) -> tuple[datetime, datetime]:
    """(created, expires) in whole UTC seconds; defaults now and now + :data:`DEFAULT_LIFETIME`."""
    created_t = utc(created, "created") if created else datetime.now(UTC)
    created_t = created_t.replace(microsecond=0)
    if expires is None:
        expires_t = created_t + DEFAULT_LIFETIME
    else:
        expires_t = utc(expires, "expires").replace(microsecond=0)
    if expires_t <= created_t:
        raise ValueError(f"expires ({fmt_time(expires_t)}) must be after created ({fmt_time(created_t)})")
    return created_t, expires_t


def build(
    out: str,
    serial: int,
    lists: list[tuple[str, str, str]],
    *,
    publisher: str = "filterproxy",
    expires: datetime | None = None,
    created: datetime | None = None,
) -> dict[str, Any]:
    """Write an unsigned bundle to ``out`` (atomically) and return its manifest.

    ``lists`` holds ``(format, category, path)`` tuples, optionally with a fourth element, the list
    id; otherwise the id is derived from category and file name (``social`` +
    ``hagezi/social.txt`` -> ``social``; ``bypass`` + ``doh.txt`` -> ``bypass-doh``; ``violence``
    + UT1 folder ``agressif`` -> ``violence-agressif``).  Format ``ut1`` takes a UT1 category
    folder and ships its ``domains`` and ``urls`` files as one list.  ``.gz`` inputs are stored
    decompressed.  ``created`` defaults to now, ``expires`` to ``created`` + 30 days.  Call
    :func:`sign` before publishing.
    """
    if isinstance(serial, bool) or not isinstance(serial, int) or serial < 1:
        raise ValueError(f"serial must be a positive integer, got {serial!r}")
    if not isinstance(publisher, str) or not publisher.strip():
        raise ValueError("publisher must be a non-empty string")
    created_t, expires_t = _lifetime(created, expires)
    items = _expand_inputs(lists)
    out_dir = os.path.dirname(os.path.abspath(out))
    with tempfile.TemporaryDirectory(prefix=".bundle-build-", dir=out_dir) as staging:
        entries: list[dict[str, Any]] = []
        members: list[tuple[str, str, int]] = []
        for fmt, category, path, list_id in items:
            entry, staged = _stage_list(fmt, category, path, list_id, staging)
            entries.append(entry)
            members.extend(staged)
        manifest = {
            "format": BUNDLE_FORMAT,
            "publisher": publisher,
            "serial": serial,
            "created": fmt_time(created_t),
            "expires": fmt_time(expires_t),
            "lists": entries,
        }
        with _atomic_bundle_writer(out) as tar:
            _add_bytes(tar, MANIFEST, manifest_bytes(manifest))
            for name, staged_path, size in members:
                with open(staged_path, "rb") as f:
                    tar.addfile(tarinfo(name, size), f)
    return manifest


# --- sign ---------------------------------------------------------------------------------------


class _HashingReader:
    """File-like wrapper that hashes what is read through it (for copy-while-verifying)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._h = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._h.update(data)
        return data

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def sign(key_path: str, bundle_path: str) -> None:
    """Sign ``bundle_path`` with the Ed25519 key at ``key_path``, replacing any signature.

    The bundle is rewritten (atomically) with ``signature.json`` first.  Its list files are
    checked against the manifest on the way, so a bundle that every gateway would refuse as
    tampered is never signed.
    """
    key = load_private_key(key_path)
    with BundleReader(bundle_path) as reader, _atomic_bundle_writer(bundle_path) as out:
        member = reader.next()
        if member is not None and member[0].name == SIGNATURE:
            reader.read_small(member[0], member[1], MAX_SIGNATURE_BYTES)  # dropped
            member = reader.next()
        if member is None or member[0].name != MANIFEST:
            raise Malformed(f"{bundle_path}: expected {MANIFEST} at the start of the bundle")
        manifest_data = reader.read_small(member[0], member[1], MAX_MANIFEST_BYTES)
        manifest = parse_manifest(manifest_data)
        _add_bytes(out, SIGNATURE, signature_bytes(key, manifest_data))
        _add_bytes(out, MANIFEST, manifest_data)
        expected = manifest_members(manifest)
        seen: set[str] = set()
        while (member := reader.next()) is not None:
            ti, f = member
            if ti.name not in expected or ti.name in seen:
                raise Tampered(ti.name, "not listed in the manifest, or listed twice")
            seen.add(ti.name)
            hashing = _HashingReader(f)
            out.addfile(tarinfo(ti.name, ti.size), hashing)
            if (hashing.hexdigest(), ti.size) != expected[ti.name]:
                raise Tampered(ti.name, "content differs from the manifest; rebuild the bundle")
        if seen != set(expected):
            raise Tampered(min(set(expected) - seen), "listed in the manifest but missing")
        reader.finish()
