"""The signed-bundle format (``filterproxy-bundle/1``): manifest schema, canonical encoding, signatures, verification.

A bundle is a deterministic ``.tar.gz``: ``signature.json``, ``manifest.json``, then the list files in
manifest order.  The Ed25519 signature covers ``SIGNING_CONTEXT`` + the exact manifest bytes, and the
manifest pins SHA-256 and size of every list file, so one streaming pass checks signature -> manifest ->
each file and can extract while verifying.  Every refusal is a :class:`BundleError` subclass with a short
``reason``.  Publishing lives in :mod:`.publish`, installing on a gateway in :mod:`.install`; the full
format description is ``docs/bundle-format.md``.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from filterproxy.lists.parsers import FORMATS

BUNDLE_FORMAT = "filterproxy-bundle/1"
SIGNATURE_FORMAT = "filterproxy-signature/1"
SIGNING_CONTEXT = b"filterproxy-bundle/1 manifest\x00"
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"

#: List formats a bundle can carry: the parsers' own names.
LIST_FORMATS = frozenset(FORMATS)
#: Formats whose list is a folder of files rather than one file (UT1 category folders).
FOLDER_FORMATS = frozenset({"ut1"})

MAX_MANIFEST_BYTES = 16 << 20
MAX_SIGNATURE_BYTES = 64 << 10
MAX_LISTS = 10_000
_MAX_TRAILER_BYTES = 1 << 20
CHUNK = 1 << 16
_NAME = r"[a-z0-9][a-z0-9._-]{0,99}"
ID_RE = re.compile(rf"^{_NAME}$")
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_LIST_MEMBER_RE = re.compile(rf"^lists/{_NAME}(?:/{_NAME})?$")  # a file, or a file in a folder
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")


# --- errors -------------------------------------------------------------------------------------


class BundleError(Exception):
    """A bundle was refused.  ``reason`` is a short, bounded id (safe as a metric label)."""

    reason = "error"


class Malformed(BundleError):
    """Not a well-formed bundle: unreadable gzip/tar, unexpected or unsafe member, bad JSON."""

    reason = "malformed"


class BadSignature(BundleError):
    """Missing signature, or the signature does not match manifest.json for the named key."""

    reason = "bad_signature"


class UnknownKey(BundleError):
    """Signed by a key that is not pinned."""

    reason = "unknown_key"


class Tampered(BundleError):
    """A list file differs from what the signed manifest says (hash, size, missing or extra)."""

    reason = "tampered"

    def __init__(self, member: str, detail: str) -> None:
        super().__init__(f"{member}: {detail}")
        self.member = member


class Expired(BundleError):
    """The bundle's ``expires`` time has passed."""

    reason = "expired"

    def __init__(self, expires: datetime, now: datetime) -> None:
        super().__init__(f"bundle expired at {fmt_time(expires)} (now {fmt_time(now)})")
        self.expires = expires


class Rollback(BundleError):
    """The bundle is not newer than the installed one."""

    reason = "rollback"

    def __init__(self, serial: int, installed: int) -> None:
        super().__init__(
            f"bundle serial {serial} is not newer than installed serial {installed} (rollback or replay refused)"
        )
        self.serial = serial
        self.installed = installed


# --- result -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature, manifest and every list file checked out.

    ``directory`` is where it was extracted (:func:`install`, :func:`installed`), or None when it
    was only verified in place; ``list_files`` paths are absolute in the first case and member
    names inside the archive in the second.
    """

    manifest: dict[str, Any]
    key_id: str
    directory: str | None = None

    @property
    def serial(self) -> int:
        serial: int = self.manifest["serial"]  # parse_manifest checked it is a positive int
        return serial

    @property
    def expires(self) -> datetime:
        return parse_time(self.manifest["expires"], "expires")

    def list_files(self) -> list[tuple[str, str, str, str]]:
        """``(format, category, path, id)`` for every list, in manifest order."""
        out = []
        for entry in self.manifest["lists"]:
            path = entry["path"]
            if self.directory is not None:
                path = os.path.join(self.directory, *path.split("/"))
            out.append((entry["format"], entry["category"], path, entry["id"]))
        return out


# --- keys and signatures ------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_keys(public_keys: list[str]) -> dict[str, Ed25519PublicKey]:
    """Pinned keys by key id.  Each item is PEM text or the path of a PEM file.

    Raises ValueError for an empty list or anything that is not an Ed25519 public key.
    """
    if isinstance(public_keys, (str, bytes, os.PathLike)):
        raise ValueError("public_keys must be a list of paths or PEM strings")
    keys: dict[str, Ed25519PublicKey] = {}
    for item in public_keys:
        text = os.fsdecode(item) if isinstance(item, os.PathLike) else item
        if isinstance(text, bytes):
            data, where = text, "<PEM bytes>"
        elif text.lstrip().startswith("-----BEGIN"):
            data, where = text.encode("ascii"), "<PEM text>"
        else:
            with open(text, "rb") as f:
                data, where = f.read(), text
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise ValueError(f"{where}: not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{where}: not an Ed25519 public key ({type(key).__name__})")
        keys[key_id(key)] = key
    if not keys:
        raise ValueError("no public keys pinned: a bundle can only be verified against a pinned key")
    return keys


def signature_bytes(key: Ed25519PrivateKey, manifest_bytes: bytes) -> bytes:
    """The ``signature.json`` member that signs ``manifest_bytes`` with ``key``."""
    signature = {
        "format": SIGNATURE_FORMAT,
        "algorithm": "ed25519",
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(SIGNING_CONTEXT + manifest_bytes)).decode("ascii"),
    }
    return (json.dumps(signature, indent=2, sort_keys=True) + "\n").encode()


def check_signature(sig_bytes: bytes, manifest_bytes: bytes, pinned: dict[str, Ed25519PublicKey]) -> str:
    """Return the key id that verified ``manifest_bytes``; raise Malformed/UnknownKey/BadSignature."""
    try:
        sig = json.loads(sig_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Malformed(f"{SIGNATURE} is not JSON: {exc}") from None
    expected = {"format", "algorithm", "key_id", "signature"}
    if not isinstance(sig, dict) or set(sig) != expected:
        raise Malformed(f"{SIGNATURE} must have exactly the keys {sorted(expected)}")
    if sig["format"] != SIGNATURE_FORMAT or sig["algorithm"] != "ed25519":
        raise Malformed(f"{SIGNATURE}: unsupported format/algorithm {sig['format']!r}/{sig['algorithm']!r}")
    kid = sig["key_id"]
    if not isinstance(kid, str) or not _KEY_ID_RE.match(kid):
        raise Malformed(f"{SIGNATURE}: key_id must be 16 hex digits, got {kid!r}")
    try:
        raw = base64.b64decode(sig["signature"], validate=True)
    except (TypeError, ValueError):
        raise Malformed(f"{SIGNATURE}: signature is not base64") from None
    if len(raw) != 64:
        raise Malformed(f"{SIGNATURE}: an Ed25519 signature is 64 bytes, got {len(raw)}")
    key = pinned.get(kid)
    if key is None:
        raise UnknownKey(f"bundle signed by key {kid}, which is not pinned (pinned: {', '.join(sorted(pinned))})")
    try:
        key.verify(raw, SIGNING_CONTEXT + manifest_bytes)
    except InvalidSignature:
        raise BadSignature(
            f"signature by key {kid} does not match {MANIFEST} (manifest altered or signature corrupt)"
        ) from None
    return kid


# --- time ---------------------------------------------------------------------------------------


def fmt_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc(t: datetime, what: str) -> datetime:
    """``t`` in UTC; ValueError for a naive time (a caller's mistake, not a bad bundle)."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got {t!r}")
    return t.astimezone(UTC)


def parse_time(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise Malformed(f"manifest {what!r} must be an ISO 8601 UTC string, got {value!r}")
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise Malformed(f"manifest {what!r} is not ISO 8601: {value!r}") from None
    if t.tzinfo is None or t.utcoffset() != timedelta(0):
        raise Malformed(f"manifest {what!r} must be in UTC (...Z): {value!r}")
    return t.astimezone(UTC)


# --- canonical encoding -------------------------------------------------------------------------


def tarinfo(name: str, size: int) -> tarfile.TarInfo:
    """A deterministic tar header for a regular file (mtime 0, root-owned, no owner names)."""
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 0
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The canonical ``manifest.json`` encoding (sorted keys, UTF-8); verifiers check these exact bytes."""
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def manifest_members(manifest: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """Every list member the (validated) manifest promises: member name -> (sha256, size)."""
    out: dict[str, tuple[str, int]] = {}
    for e in manifest["lists"]:
        if "files" in e:
            for name, f in e["files"].items():
                out[f"{e['path']}/{name}"] = (f["sha256"], f["size"])
        else:
            out[e["path"]] = (e["sha256"], e["size"])
    return out


# --- manifest schema ----------------------------------------------------------------------------

_MANIFEST_KEYS = {"format", "publisher", "serial", "created", "expires", "lists"}
_LIST_KEYS = {"id", "format", "category", "path"}
_FILE_KEYS = {"sha256", "size"}  # a list that is one file
_FOLDER_KEYS = {"files"}  # a list that is a folder: {"files": {name: {"sha256", "size"}}}
_LIST_OPTIONAL = {"entries"}


def _check_digest(where: str, d: object) -> None:
    if not isinstance(d, dict) or set(d) != _FILE_KEYS:
        raise Malformed(f"{where} must have exactly the keys {sorted(_FILE_KEYS)}")
    if not isinstance(d["sha256"], str) or not _SHA256_RE.match(d["sha256"]):
        raise Malformed(f"{where}: sha256 must be 64 lower-case hex digits")
    _check_count(where, "size", d["size"])


def _check_count(where: str, key: str, v: object) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise Malformed(f"{where}: {key} must be a non-negative integer, got {v!r}")


def _check_list_entry(where: str, e: Any, ids: set[str], paths: set[str]) -> None:
    """One ``lists[i]`` entry: exact keys, safe id and path, well-formed digests; records id and path."""
    keys = set(e) - _LIST_OPTIONAL if isinstance(e, dict) else set()
    if keys not in (_LIST_KEYS | _FILE_KEYS, _LIST_KEYS | _FOLDER_KEYS):
        raise Malformed(
            f"{where} must have keys {sorted(_LIST_KEYS)} and either {sorted(_FILE_KEYS)} "
            f"or {sorted(_FOLDER_KEYS)} (+ optional entries)"
        )
    if not isinstance(e["id"], str) or not ID_RE.match(e["id"]) or e["id"] in ids:
        raise Malformed(f"{where}: bad or duplicate id {e['id']!r}")
    for k in ("format", "category"):
        if not isinstance(e[k], str) or not SLUG_RE.match(e[k]):
            raise Malformed(f"{where}: bad {k} {e[k]!r}")
    path = e["path"]
    if not isinstance(path, str) or not _LIST_MEMBER_RE.match(path) or path.count("/") != 1:
        raise Malformed(f"{where}: path must be lists/<name>, got {path!r}")
    if path in paths:
        raise Malformed(f"{where}: duplicate path {path!r}")
    if "files" in e:
        files = e["files"]
        if not isinstance(files, dict) or not files:
            raise Malformed(f"{where}: files must be a non-empty object")
        for name, digest in files.items():
            if not ID_RE.match(name):
                raise Malformed(f"{where}: bad file name {name!r}")
            _check_digest(f"{where}: files[{name!r}]", digest)
    else:
        _check_digest(where, {k: e[k] for k in _FILE_KEYS})
    if "entries" in e:
        _check_count(where, "entries", e["entries"])
    ids.add(e["id"])
    paths.add(path)


def parse_manifest(data: bytes) -> dict[str, Any]:
    """Decode and validate ``manifest.json`` strictly (unknown keys could change a list's meaning)."""
    try:
        m = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Malformed(f"{MANIFEST} is not JSON: {exc}") from None
    if not isinstance(m, dict):
        raise Malformed(f"{MANIFEST} must be a JSON object")
    if set(m) != _MANIFEST_KEYS:
        missing, extra = _MANIFEST_KEYS - set(m), set(m) - _MANIFEST_KEYS
        raise Malformed(f"{MANIFEST}: missing keys {sorted(missing)}, unknown keys {sorted(extra)}")
    if m["format"] != BUNDLE_FORMAT:
        raise Malformed(f"{MANIFEST}: unsupported format {m['format']!r} (expected {BUNDLE_FORMAT!r})")
    if not isinstance(m["publisher"], str) or not m["publisher"]:
        raise Malformed(f"{MANIFEST}: publisher must be a non-empty string")
    serial = m["serial"]
    if isinstance(serial, bool) or not isinstance(serial, int) or serial < 1:
        raise Malformed(f"{MANIFEST}: serial must be a positive integer, got {serial!r}")
    if parse_time(m["expires"], "expires") <= parse_time(m["created"], "created"):
        raise Malformed(f"{MANIFEST}: expires is not after created")
    lists = m["lists"]
    if not isinstance(lists, list) or not lists or len(lists) > MAX_LISTS:
        raise Malformed(f"{MANIFEST}: lists must be a non-empty array of at most {MAX_LISTS}")
    ids: set[str] = set()
    paths: set[str] = set()
    for i, e in enumerate(lists):
        _check_list_entry(f"{MANIFEST}: lists[{i}]", e, ids, paths)
    return m


def check_fresh(manifest: dict[str, Any], now: datetime | None, min_serial: int | None) -> None:
    """Raise :class:`Expired` past ``expires``, :class:`Rollback` for a serial <= ``min_serial``."""
    now_t = utc(now, "now") if now else datetime.now(UTC)
    expires = parse_time(manifest["expires"], "expires")
    if now_t >= expires:
        raise Expired(expires, now_t)
    if min_serial is not None and manifest["serial"] <= min_serial:
        raise Rollback(manifest["serial"], min_serial)


# --- reading ------------------------------------------------------------------------------------

_KINDS = {
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.DIRTYPE: "directory",
}


class BundleReader:
    """Streams a bundle member by member, refusing anything but safely named regular files."""

    def __init__(self, path: str) -> None:
        self._raw = open(path, "rb")
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="rb")
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def __enter__(self) -> BundleReader:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            if self._tar is not None:
                self._tar.close()
        self._gz.close()
        self._raw.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except BundleError:
            raise
        except (tarfile.TarError, EOFError, zlib.error, OSError, UnicodeError) as exc:
            raise Malformed(f"not a readable .tar.gz bundle: {exc}") from None

    def next(self) -> tuple[tarfile.TarInfo, BinaryIO] | None:
        with self._errors():
            if self._tar is None:
                self._tar = tarfile.open(fileobj=self._gz, mode="r|")
            ti = self._tar.next()
            if ti is None:
                return None
            self._count += 1
            if self._count > MAX_LISTS + 2:
                raise Malformed(f"more than {MAX_LISTS} members")
            _check_member(ti)
            f = self._tar.extractfile(ti)
            assert f is not None  # regular file
            return ti, f  # type: ignore[return-value]

    def read_small(self, ti: tarfile.TarInfo, f: BinaryIO, limit: int) -> bytes:
        if ti.size > limit:
            raise Malformed(f"{ti.name} is {ti.size} bytes (limit {limit})")
        with self._errors():
            data = f.read()
        if len(data) != ti.size:
            raise Malformed(f"{ti.name}: truncated")
        return data

    def chunks(self, f: BinaryIO) -> Iterator[bytes]:
        while True:
            with self._errors():
                chunk = f.read(CHUNK)
            if not chunk:
                return
            yield chunk

    def finish(self) -> None:
        """Read to the end of the gzip stream so its CRC and length are checked too."""
        total = 0
        with self._errors():
            # GzipFile checks the CRC only on the read *after* the last data: loop until b"".
            while chunk := self._gz.read(CHUNK):
                total += len(chunk)
                if total > _MAX_TRAILER_BYTES or chunk.strip(b"\0"):
                    raise Malformed("unexpected data after the end of the archive")


def _check_member(ti: tarfile.TarInfo) -> None:
    name = ti.name
    if not ti.isreg():
        kind = _KINDS.get(ti.type, f"special member (type {ti.type!r})")
        raise Malformed(f"member {name!r} is a {kind}; bundles hold regular files only")
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or ".." in parts or "" in parts or "." in parts:
        raise Malformed(f"member {name!r} has an absolute, empty or parent-relative path component")
    if name not in (MANIFEST, SIGNATURE) and not _LIST_MEMBER_RE.match(name):
        raise Malformed(f"unexpected member {name!r} (allowed: {SIGNATURE}, {MANIFEST}, lists/<name>)")


# --- verification -------------------------------------------------------------------------------


def _write_new(path: str, data: bytes | None = None) -> BinaryIO:
    """Create ``path`` (never an existing file or a symlink); with ``data``, write and fsync it and close."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    f = os.fdopen(fd, "wb")
    if data is not None:
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return f


def _copy_member(reader: BundleReader, f: BinaryIO, name: str, extract_to: str | None) -> str:
    """Stream one member through SHA-256 (and into ``extract_to``, fsynced); return its hex digest."""
    digest = hashlib.sha256()
    out = None
    if extract_to is not None:
        target = os.path.join(extract_to, *name.split("/"))
        # Names come from the signed manifest and match _LIST_MEMBER_RE: at most one folder.
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        out = _write_new(target)
    try:
        for chunk in reader.chunks(f):
            digest.update(chunk)
            if out is not None:
                out.write(chunk)
        if out is not None:
            out.flush()
            os.fsync(out.fileno())
    finally:
        if out is not None:
            out.close()
    return digest.hexdigest()


def _check_lists(reader: BundleReader, manifest: dict[str, Any], extract_to: str | None) -> None:
    """Stream every list member through SHA-256 against the (already trusted) manifest."""
    expected = manifest_members(manifest)
    seen: set[str] = set()
    if extract_to is not None:
        os.mkdir(os.path.join(extract_to, "lists"), 0o755)
    while (member := reader.next()) is not None:
        ti, f = member
        name = ti.name
        if name in (MANIFEST, SIGNATURE) or name in seen:
            raise Malformed(f"duplicate member {name!r}")
        if name not in expected:
            raise Tampered(name, "not listed in the signed manifest")
        seen.add(name)
        sha256, size = expected[name]
        if ti.size != size:
            raise Tampered(name, f"size {ti.size} != {size} in the signed manifest")
        digest = _copy_member(reader, f, name, extract_to)
        if digest != sha256:
            raise Tampered(name, f"sha256 {digest} != {sha256} in the signed manifest")
    missing = sorted(set(expected) - seen)
    if missing:
        raise Tampered(missing[0], "listed in the signed manifest but missing from the bundle")


def verify_archive(
    bundle_path: str,
    public_keys: list[str],
    *,
    now: datetime | None,
    min_serial: int | None,
    extract_to: str | None = None,
) -> VerifiedBundle:
    """:func:`verify`, optionally extracting into the (empty) folder ``extract_to`` on the same pass."""
    pinned = load_public_keys(public_keys)
    with BundleReader(bundle_path) as reader:
        first = reader.next()
        if first is None:
            raise Malformed("empty archive")
        ti, f = first
        if ti.name == MANIFEST:
            raise BadSignature("bundle is not signed (no signature.json); run `filterproxy bundle sign`")
        if ti.name != SIGNATURE:
            raise Malformed(f"first member must be {SIGNATURE}, found {ti.name!r}")
        sig_bytes = reader.read_small(ti, f, MAX_SIGNATURE_BYTES)
        second = reader.next()
        if second is None or second[0].name != MANIFEST:
            raise Malformed(f"second member must be {MANIFEST}")
        manifest_data = reader.read_small(second[0], second[1], MAX_MANIFEST_BYTES)
        kid = check_signature(sig_bytes, manifest_data, pinned)
        manifest = parse_manifest(manifest_data)
        check_fresh(manifest, now, min_serial)
        if extract_to is not None:
            _write_new(os.path.join(extract_to, SIGNATURE), sig_bytes)
            _write_new(os.path.join(extract_to, MANIFEST), manifest_data)
        _check_lists(reader, manifest, extract_to)
        reader.finish()
    return VerifiedBundle(manifest=manifest, key_id=kid, directory=extract_to)


def verify(
    bundle_path: str, public_keys: list[str], *, now: datetime | None = None, min_serial: int | None = None
) -> VerifiedBundle:
    """Check signature -> manifest -> every list file, then expiry and serial; extract nothing.

    Accepts the bundle if it is signed by ANY of ``public_keys`` (paths or PEM text).  Raises a
    :class:`BundleError` subclass saying what failed: :class:`Malformed`, :class:`BadSignature`,
    :class:`UnknownKey`, :class:`Tampered`, :class:`Expired`, :class:`Rollback` (serial <=
    ``min_serial``).
    """
    return verify_archive(bundle_path, public_keys, now=now, min_serial=min_serial)
