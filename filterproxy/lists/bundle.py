"""Signed list bundles: how a publisher (e.g. a ministry) ships lists to thousands of gateways.

Format (``filterproxy-bundle/1``)
---------------------------------
One ``.tar.gz`` file holding regular files only, in this fixed order::

    signature.json   {"format": "filterproxy-signature/1", "algorithm": "ed25519",
                      "key_id": "<16 hex>", "signature": "<base64, 64 bytes>"}
    manifest.json    {"format", "publisher", "serial", "created", "expires", "lists": [...]}
    lists/<id>.txt   one plain-text (UTF-8) file per list, in manifest order (sorted by id)
    lists/<id>/...   or, for a folder format (UT1: ``domains``, ``urls``), the folder's files

A list entry is ``{id, format, category, path, sha256, size, entries?}``; a folder list has
``files: {name: {sha256, size}}`` instead of ``sha256``/``size`` (the parsers read a UT1
category as a folder, so the bundle keeps it one).  ``entries`` counts rule lines, for display.

* The signature is Ed25519 over ``SIGNING_CONTEXT + <exact bytes of manifest.json>``.  The
  verifier never re-serialises JSON, so what was signed is byte for byte what is checked.  The
  context prefix keeps a bundle signature from ever being valid for anything else the same key
  might sign.  ``key_id`` is the first 16 hex digits of SHA-256 over the raw 32-byte public key;
  it only selects which pinned key to try (it is not trusted: a wrong id just fails).
* The manifest records SHA-256 and size of every list file, so verification is a chain:
  signature -> manifest -> each file.  A changed byte fails with a named reason: in a list ->
  :class:`Tampered` (which file); in the manifest -> :class:`BadSignature`; elsewhere in the
  compressed stream -> :class:`Malformed` (deflate error, gzip CRC, trailing data).  Only bytes
  that carry nothing the gateway uses escape: the gzip header's MTIME/XFL/OS fields (outside the
  CRC by design) and tar header metadata such as mtime or owner, which are never read.
* Why a fixed member order instead of lexicographic: with the signature and manifest first, a
  verifier checks them before it reads a single list byte, then streams each list through
  SHA-256 against an already trusted size and hash.  One pass, nothing unverified is ever
  buffered or written beyond its signed size, which is what lets :func:`install` extract while
  verifying.  Deterministic: mtime 0, uid/gid 0, no owner names, gzip header without name or time.
* :func:`build` writes an unsigned bundle (``manifest.json`` first); :func:`sign` rewrites it with
  ``signature.json`` in front.  Key rotation: gateways pin the old and the new public key during
  the change-over; the publisher then switches its signing key; later the old pin is removed.
* ``serial`` must grow with every publication; gateways refuse a serial <= the installed one
  (rollback / replay).  ``expires`` bounds how long an attacker can keep serving a stale bundle
  (freeze attack); an installed bundle that expires stays current (last known good) until a
  newer one arrives.
* The verifier is strict about structure (unknown manifest keys are rejected: they could change
  the meaning of a list) but accepts any well-formed ``format``/``category`` name in a list entry,
  so a newer publisher can add a list kind without cutting off older gateways, which skip lists
  they cannot parse.  :func:`build` only writes the formats in :data:`LIST_FORMATS`.

Gateway side: :func:`install` verifies against the pinned keys and the last installed serial
(``state_dir/bundle-state.json``), extracts into ``state_dir/bundles/.tmp-*``, renames that to
``state_dir/bundles/<serial>/`` and atomically repoints the ``state_dir/bundles/current`` symlink.
Any failure leaves the previous bundle current.  Member names are checked before anything is read
and files are written by name from the signed manifest only (never ``tarfile.extract``), so
absolute paths, ``..``, links and devices (tar-slip) cannot escape.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import BinaryIO, Iterator

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from filterproxy.lists.parsers import FORMATS

log = logging.getLogger("filterproxy.bundle")

BUNDLE_FORMAT = "filterproxy-bundle/1"
SIGNATURE_FORMAT = "filterproxy-signature/1"
SIGNING_CONTEXT = b"filterproxy-bundle/1 manifest\x00"
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
STATE_FILE = "bundle-state.json"
PRIVATE_KEY_FILE = "bundle-signing.key"
PUBLIC_KEY_FILE = "bundle-signing.pub"

#: List formats a bundle can carry: the parsers' own names.
LIST_FORMATS = frozenset(FORMATS)
#: Formats whose list is a folder of files rather than one file (UT1 category folders).
FOLDER_FORMATS = frozenset({"ut1"})
#: What a UT1 folder contributes to a bundle: the name lists (squidGuard semantics: a domain and
#: its subdomains, bare IPv4 mixed in) and the URL prefixes.  Its regex files are left out.
UT1_FILES = ("domains", "urls")
DEFAULT_LIFETIME = timedelta(days=30)

_MAX_MANIFEST_BYTES = 16 << 20
_MAX_SIGNATURE_BYTES = 64 << 10
_MAX_LISTS = 10_000
_MAX_TRAILER_BYTES = 1 << 20
_CHUNK = 1 << 16
_NAME = r"[a-z0-9][a-z0-9._-]{0,99}"
_ID_RE = re.compile(rf"^{_NAME}$")
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_LIST_MEMBER_RE = re.compile(rf"^lists/{_NAME}(?:/{_NAME})?$")  # a file, or a file in a folder
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")
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
        super().__init__(f"bundle expired at {_fmt_time(expires)} (now {_fmt_time(now)})")
        self.expires = expires


class Rollback(BundleError):
    """The bundle is not newer than the installed one."""

    reason = "rollback"

    def __init__(self, serial: int, installed: int) -> None:
        super().__init__(
            f"bundle serial {serial} is not newer than installed serial {installed} "
            "(rollback or replay refused)"
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

    manifest: dict
    key_id: str
    directory: str | None = None

    @property
    def serial(self) -> int:
        return self.manifest["serial"]

    @property
    def expires(self) -> datetime:
        return _parse_time(self.manifest["expires"], "expires")

    def list_files(self) -> list[tuple[str, str, str, str]]:
        """``(format, category, path, id)`` for every list, in manifest order."""
        out = []
        for entry in self.manifest["lists"]:
            path = entry["path"]
            if self.directory is not None:
                path = os.path.join(self.directory, *path.split("/"))
            out.append((entry["format"], entry["category"], path, entry["id"]))
        return out


# --- keys ---------------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


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
    pub_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # O_EXCL: never clobber a key created concurrently between the check above and here.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    fd = os.open(pub_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(pub_pem)
    return key_path, pub_path


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


def _load_private_key(key_path: str) -> Ed25519PrivateKey:
    with open(key_path, "rb") as f:
        data = f.read()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{key_path}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{key_path}: not an Ed25519 private key ({type(key).__name__})")
    return key


# --- time ---------------------------------------------------------------------------------------


def _fmt_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc(t: datetime, what: str) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got {t!r}")
    return t.astimezone(timezone.utc)


def _parse_time(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise Malformed(f"manifest {what!r} must be an ISO 8601 UTC string, got {value!r}")
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise Malformed(f"manifest {what!r} is not ISO 8601: {value!r}") from None
    if t.tzinfo is None or t.utcoffset() != timedelta(0):
        raise Malformed(f"manifest {what!r} must be in UTC (...Z): {value!r}")
    return t.astimezone(timezone.utc)


# --- writing ------------------------------------------------------------------------------------


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 0
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _atomic_bundle_writer(out: str) -> Iterator[tarfile.TarFile]:
    """A deterministic tar.gz stream that replaces ``out`` atomically only if the block succeeds."""
    out_dir = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(prefix=".bundle-", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
                with tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    yield tar
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
        _fsync_dir(out_dir)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))


def _manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _derive_id(category: str, stem: str) -> str:
    s = _slug(stem)
    if s == category or s.startswith(category + "-"):
        return s
    return f"{category}-{s}" if s else category


def _strip_suffixes(name: str) -> str:
    for suffix in (".gz", ".txt", ".list"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _expand_inputs(lists: list) -> list[tuple[str, str, str, str]]:
    """(fmt, category, path[, id]) items -> validated (fmt, category, path, id), sorted by id."""
    out: list[tuple[str, str, str, str]] = []
    for item in lists:
        if not isinstance(item, (tuple, list)) or len(item) not in (3, 4):
            raise ValueError(f"list entry must be (format, category, path[, id]), got {item!r}")
        fmt, category, path = item[0], item[1], os.fspath(item[2])
        if fmt not in LIST_FORMATS:
            raise ValueError(
                f"{path}: unknown list format {fmt!r} (one of {', '.join(sorted(LIST_FORMATS))})"
            )
        if not isinstance(category, str) or not _SLUG_RE.match(category):
            raise ValueError(f"{path}: category must match {_SLUG_RE.pattern}, got {category!r}")
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
        if not isinstance(list_id, str) or not _ID_RE.match(list_id + ".txt"):
            raise ValueError(f"{path}: list id {list_id!r} must match {_ID_RE.pattern}")
        out.append((fmt, category, path, list_id))
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
        return gzip.GzipFile(fileobj=f, mode="rb")  # closes f with it
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


def _stage_list(
    fmt: str, category: str, src: str, list_id: str, staging: str
) -> tuple[dict, list[tuple[str, str, int]]]:
    """Stage one list: its manifest entry and its (member name, staged file, size) members.

    A list that has no rule lines is refused: a list that reads as empty is a mistake upstream
    (a failed download, an error page), never something to ship to every gateway.
    """
    entry: dict = {"id": list_id, "format": fmt, "category": category}
    members: list[tuple[str, str, int]] = []
    comments = _COMMENTS.get(fmt)
    if fmt in FOLDER_FORMATS:
        entry["path"] = f"lists/{list_id}"
        files: dict[str, dict] = {}
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
    else:
        entry["path"] = f"lists/{list_id}.txt"
        staged, sha, size, total = _stage_file(src, comments, staging)
        entry.update(sha256=sha, size=size)
        if comments is not None:
            entry["entries"] = total
        members.append((entry["path"], staged, size))
    if sum(m[2] for m in members) == 0 or entry.get("entries", 1) == 0:
        raise ValueError(f"{src}: list has no entries")
    return entry, members


def build(
    out: str,
    serial: int,
    lists: list[tuple[str, str, str]],
    *,
    publisher: str = "filterproxy",
    expires: datetime | None = None,
    created: datetime | None = None,
) -> dict:
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
    created_t = _utc(created, "created") if created else datetime.now(timezone.utc)
    created_t = created_t.replace(microsecond=0)
    if expires is None:
        expires_t = created_t + DEFAULT_LIFETIME
    else:
        expires_t = _utc(expires, "expires").replace(microsecond=0)
    if expires_t <= created_t:
        raise ValueError(
            f"expires ({_fmt_time(expires_t)}) must be after created ({_fmt_time(created_t)})"
        )
    items = _expand_inputs(lists)
    out_dir = os.path.dirname(os.path.abspath(out))
    with tempfile.TemporaryDirectory(prefix=".bundle-build-", dir=out_dir) as staging:
        entries: list[dict] = []
        members: list[tuple[str, str, int]] = []
        for fmt, category, path, list_id in items:
            entry, staged = _stage_list(fmt, category, path, list_id, staging)
            entries.append(entry)
            members.extend(staged)
        manifest = {
            "format": BUNDLE_FORMAT,
            "publisher": publisher,
            "serial": serial,
            "created": _fmt_time(created_t),
            "expires": _fmt_time(expires_t),
            "lists": entries,
        }
        with _atomic_bundle_writer(out) as tar:
            _add_bytes(tar, MANIFEST, _manifest_bytes(manifest))
            for name, staged_path, size in members:
                with open(staged_path, "rb") as f:
                    tar.addfile(_tarinfo(name, size), f)
    return manifest


def _members(manifest: dict) -> dict[str, tuple[str, int]]:
    """Every list member the (validated) manifest promises: member name -> (sha256, size)."""
    out: dict[str, tuple[str, int]] = {}
    for e in manifest["lists"]:
        if "files" in e:
            for name, f in e["files"].items():
                out[f"{e['path']}/{name}"] = (f["sha256"], f["size"])
        else:
            out[e["path"]] = (e["sha256"], e["size"])
    return out


# --- reading ------------------------------------------------------------------------------------

_KINDS = {
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.DIRTYPE: "directory",
}


class _Reader:
    """Streams a bundle member by member, refusing anything but safely named regular files."""

    def __init__(self, path: str) -> None:
        self._raw = open(path, "rb")
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="rb")
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def __enter__(self) -> "_Reader":
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
            if self._count > _MAX_LISTS + 2:
                raise Malformed(f"more than {_MAX_LISTS} members")
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
                chunk = f.read(_CHUNK)
            if not chunk:
                return
            yield chunk

    def finish(self) -> None:
        """Read to the end of the gzip stream so its CRC and length are checked too."""
        total = 0
        with self._errors():
            # GzipFile checks the CRC only on the read *after* the last data: loop until b"".
            while chunk := self._gz.read(_CHUNK):
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


def _check_signature(
    sig_bytes: bytes, manifest_bytes: bytes, pinned: dict[str, Ed25519PublicKey]
) -> str:
    """Return the key id that verified ``manifest_bytes``; raise Malformed/UnknownKey/BadSignature."""
    try:
        sig = json.loads(sig_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Malformed(f"{SIGNATURE} is not JSON: {exc}") from None
    expected = {"format", "algorithm", "key_id", "signature"}
    if not isinstance(sig, dict) or set(sig) != expected:
        raise Malformed(f"{SIGNATURE} must have exactly the keys {sorted(expected)}")
    if sig["format"] != SIGNATURE_FORMAT or sig["algorithm"] != "ed25519":
        raise Malformed(
            f"{SIGNATURE}: unsupported format/algorithm {sig['format']!r}/{sig['algorithm']!r}"
        )
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
        raise UnknownKey(
            f"bundle signed by key {kid}, which is not pinned (pinned: {', '.join(sorted(pinned))})"
        )
    try:
        key.verify(raw, SIGNING_CONTEXT + manifest_bytes)
    except InvalidSignature:
        raise BadSignature(
            f"signature by key {kid} does not match {MANIFEST} (manifest altered or signature corrupt)"
        ) from None
    return kid


_MANIFEST_KEYS = {"format", "publisher", "serial", "created", "expires", "lists"}
_LIST_KEYS = {"id", "format", "category", "path"}
_FILE_KEYS = {"sha256", "size"}  # a list that is one file
_FOLDER_KEYS = {"files"}  # a list that is a folder: {"files": {name: {"sha256", "size"}}}
_LIST_OPTIONAL = {"entries"}
_FILE_NAME_RE = re.compile(rf"^{_NAME}$")


def _check_digest(where: str, d: object) -> None:
    if not isinstance(d, dict) or set(d) != _FILE_KEYS:
        raise Malformed(f"{where} must have exactly the keys {sorted(_FILE_KEYS)}")
    if not isinstance(d["sha256"], str) or not _SHA256_RE.match(d["sha256"]):
        raise Malformed(f"{where}: sha256 must be 64 lower-case hex digits")
    _check_count(where, "size", d["size"])


def _check_count(where: str, key: str, v: object) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise Malformed(f"{where}: {key} must be a non-negative integer, got {v!r}")


def _parse_manifest(data: bytes) -> dict:
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
    if _parse_time(m["expires"], "expires") <= _parse_time(m["created"], "created"):
        raise Malformed(f"{MANIFEST}: expires is not after created")
    lists = m["lists"]
    if not isinstance(lists, list) or not lists or len(lists) > _MAX_LISTS:
        raise Malformed(f"{MANIFEST}: lists must be a non-empty array of at most {_MAX_LISTS}")
    ids: set[str] = set()
    paths: set[str] = set()
    for i, e in enumerate(lists):
        where = f"{MANIFEST}: lists[{i}]"
        keys = set(e) - _LIST_OPTIONAL if isinstance(e, dict) else set()
        if keys not in (_LIST_KEYS | _FILE_KEYS, _LIST_KEYS | _FOLDER_KEYS):
            raise Malformed(
                f"{where} must have keys {sorted(_LIST_KEYS)} and either {sorted(_FILE_KEYS)} "
                f"or {sorted(_FOLDER_KEYS)} (+ optional entries)"
            )
        if not isinstance(e["id"], str) or not _ID_RE.match(e["id"]) or e["id"] in ids:
            raise Malformed(f"{where}: bad or duplicate id {e['id']!r}")
        for k in ("format", "category"):
            if not isinstance(e[k], str) or not _SLUG_RE.match(e[k]):
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
                if not _FILE_NAME_RE.match(name):
                    raise Malformed(f"{where}: bad file name {name!r}")
                _check_digest(f"{where}: files[{name!r}]", digest)
        else:
            _check_digest(where, {k: e[k] for k in _FILE_KEYS})
        if "entries" in e:
            _check_count(where, "entries", e["entries"])
        ids.add(e["id"])
        paths.add(path)
    return m


def _check_fresh(manifest: dict, now: datetime | None, min_serial: int | None) -> None:
    now_t = _utc(now, "now") if now else datetime.now(timezone.utc)
    expires = _parse_time(manifest["expires"], "expires")
    if now_t >= expires:
        raise Expired(expires, now_t)
    if min_serial is not None and manifest["serial"] <= min_serial:
        raise Rollback(manifest["serial"], min_serial)


def _write_new(path: str, data: bytes | None = None) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    f = os.fdopen(fd, "wb")
    if data is not None:
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return f


def _check_lists(reader: _Reader, manifest: dict, extract_to: str | None) -> None:
    """Stream every list member through SHA-256 against the (already trusted) manifest."""
    expected = _members(manifest)
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
        if digest.hexdigest() != sha256:
            raise Tampered(name, f"sha256 {digest.hexdigest()} != {sha256} in the signed manifest")
    missing = sorted(set(expected) - seen)
    if missing:
        raise Tampered(missing[0], "listed in the signed manifest but missing from the bundle")


def _verify(
    bundle_path: str,
    public_keys: list[str],
    *,
    now: datetime | None,
    min_serial: int | None,
    extract_to: str | None = None,
) -> VerifiedBundle:
    pinned = load_public_keys(public_keys)
    with _Reader(bundle_path) as reader:
        first = reader.next()
        if first is None:
            raise Malformed("empty archive")
        ti, f = first
        if ti.name == MANIFEST:
            raise BadSignature(
                "bundle is not signed (no signature.json); run `filterproxy bundle sign`"
            )
        if ti.name != SIGNATURE:
            raise Malformed(f"first member must be {SIGNATURE}, found {ti.name!r}")
        sig_bytes = reader.read_small(ti, f, _MAX_SIGNATURE_BYTES)
        second = reader.next()
        if second is None or second[0].name != MANIFEST:
            raise Malformed(f"second member must be {MANIFEST}")
        manifest_bytes = reader.read_small(second[0], second[1], _MAX_MANIFEST_BYTES)
        kid = _check_signature(sig_bytes, manifest_bytes, pinned)
        manifest = _parse_manifest(manifest_bytes)
        _check_fresh(manifest, now, min_serial)
        if extract_to is not None:
            _write_new(os.path.join(extract_to, SIGNATURE), sig_bytes)
            _write_new(os.path.join(extract_to, MANIFEST), manifest_bytes)
        _check_lists(reader, manifest, extract_to)
        reader.finish()
    return VerifiedBundle(manifest=manifest, key_id=kid, directory=extract_to)


def verify(
    bundle_path: str,
    public_keys: list[str],
    *,
    now: datetime | None = None,
    min_serial: int | None = None,
) -> VerifiedBundle:
    """Check signature -> manifest -> every list file, then expiry and serial; extract nothing.

    Accepts the bundle if it is signed by ANY of ``public_keys`` (paths or PEM text).  Raises a
    :class:`BundleError` subclass saying what failed: :class:`Malformed`, :class:`BadSignature`,
    :class:`UnknownKey`, :class:`Tampered`, :class:`Expired`, :class:`Rollback` (serial <=
    ``min_serial``).
    """
    return _verify(bundle_path, public_keys, now=now, min_serial=min_serial)


def sign(key_path: str, bundle_path: str) -> None:
    """Sign ``bundle_path`` with the Ed25519 key at ``key_path``, replacing any signature.

    The bundle is rewritten (atomically) with ``signature.json`` first.  Its list files are
    checked against the manifest on the way, so a bundle that every gateway would refuse as
    tampered is never signed.
    """
    key = _load_private_key(key_path)
    kid = key_id(key.public_key())
    with _Reader(bundle_path) as reader, _atomic_bundle_writer(bundle_path) as out:
        member = reader.next()
        if member is not None and member[0].name == SIGNATURE:
            reader.read_small(member[0], member[1], _MAX_SIGNATURE_BYTES)  # dropped
            member = reader.next()
        if member is None or member[0].name != MANIFEST:
            raise Malformed(f"{bundle_path}: expected {MANIFEST} at the start of the bundle")
        manifest_bytes = reader.read_small(member[0], member[1], _MAX_MANIFEST_BYTES)
        manifest = _parse_manifest(manifest_bytes)
        signature = {
            "format": SIGNATURE_FORMAT,
            "algorithm": "ed25519",
            "key_id": kid,
            "signature": base64.b64encode(key.sign(SIGNING_CONTEXT + manifest_bytes)).decode("ascii"),
        }
        _add_bytes(out, SIGNATURE, (json.dumps(signature, indent=2, sort_keys=True) + "\n").encode())
        _add_bytes(out, MANIFEST, manifest_bytes)
        expected = _members(manifest)
        seen: set[str] = set()
        while (member := reader.next()) is not None:
            ti, f = member
            if ti.name not in expected or ti.name in seen:
                raise Tampered(ti.name, "not listed in the manifest, or listed twice")
            seen.add(ti.name)
            hashing = _HashingReader(f)
            out.addfile(_tarinfo(ti.name, ti.size), hashing)
            if (hashing.hexdigest(), ti.size) != expected[ti.name]:
                raise Tampered(ti.name, "content differs from the manifest; rebuild the bundle")
        if seen != set(expected):
            raise Tampered(sorted(set(expected) - seen)[0], "listed in the manifest but missing")
        reader.finish()


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


# --- gateway: install / installed ---------------------------------------------------------------


@contextlib.contextmanager
def _locked(state_dir: str) -> Iterator[None]:
    """One installer at a time per state_dir (cron refresh vs. an admin running the CLI)."""
    fd = os.open(os.path.join(state_dir, ".bundle.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_state(state_dir: str) -> dict:
    path = os.path.join(state_dir, STATE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        # Fail closed: without the high-water mark we cannot refuse a rollback.
        raise BundleError(
            f"{path}: unreadable ({exc}); fix or remove it to accept bundles again"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("serial"), int):
        raise BundleError(f"{path}: no integer 'serial'; fix or remove it to accept bundles again")
    return state


def _current_serial(bundles_dir: str) -> int | None:
    try:
        target = os.readlink(os.path.join(bundles_dir, "current"))
    except (FileNotFoundError, OSError):
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
        "installed_at": _fmt_time(datetime.now(timezone.utc)),
    }
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=state_dir)
    try:
        os.chmod(tmp, 0o644)  # the serving process may run as another user
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(state_dir, STATE_FILE))
        _fsync_dir(state_dir)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _prune(bundles_dir: str, keep: int) -> None:
    current = _current_serial(bundles_dir)
    serials = sorted((int(n) for n in os.listdir(bundles_dir) if n.isdigit()), reverse=True)
    for s in serials[max(keep, 1) :]:
        if s != current:
            shutil.rmtree(os.path.join(bundles_dir, str(s)), ignore_errors=True)


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
        for name in os.listdir(bundles_dir):
            if name.startswith(".tmp-") or name.startswith(".current-"):  # an interrupted install
                path = os.path.join(bundles_dir, name)
                if os.path.islink(path):
                    os.unlink(path)
                else:
                    shutil.rmtree(path, ignore_errors=True)
        min_serial = installed_serial(state_dir)
        tmp: str | None = tempfile.mkdtemp(prefix=".tmp-", dir=bundles_dir)
        try:
            os.chmod(tmp, 0o755)
            vb = _verify(bundle_path, public_keys, now=now, min_serial=min_serial, extract_to=tmp)
            _fsync_dir(os.path.join(tmp, "lists"))
            _fsync_dir(tmp)
            final = os.path.join(bundles_dir, str(vb.serial))
            if os.path.lexists(final):
                # Left by an install interrupted before its commit point; never current, since
                # its serial is above the installed one.
                shutil.rmtree(final)
            os.rename(tmp, final)
            tmp = None
            link_tmp = os.path.join(bundles_dir, f".current-{vb.serial}")
            try:
                os.symlink(str(vb.serial), link_tmp)
                os.replace(link_tmp, os.path.join(bundles_dir, "current"))  # the commit point
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(link_tmp)
                shutil.rmtree(final, ignore_errors=True)
                raise
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        _fsync_dir(bundles_dir)
        try:
            _write_state(state_dir, vb)
        except OSError as exc:
            # Installed anyway: installed_serial() also reads the `current` link, so rollback
            # protection holds; the state file catches up on the next install.
            log.warning("bundle %d installed but %s not updated: %s", vb.serial, STATE_FILE, exc)
        _prune(bundles_dir, keep)
        log.info(
            "bundle %d from %s installed (key %s)", vb.serial, vb.manifest["publisher"], vb.key_id
        )
        directory = os.path.realpath(final)
        return VerifiedBundle(manifest=vb.manifest, key_id=vb.key_id, directory=directory)


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
            sig_bytes = f.read(_MAX_SIGNATURE_BYTES + 1)
        with open(os.path.join(directory, MANIFEST), "rb") as f:
            manifest_bytes = f.read(_MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise Malformed(f"installed bundle {directory}: {exc}") from None
    kid = _check_signature(sig_bytes, manifest_bytes, pinned)
    manifest = _parse_manifest(manifest_bytes)
    for member, (sha256, size) in _members(manifest).items():
        digest = hashlib.sha256()
        n = 0
        try:
            with open(os.path.join(directory, *member.split("/")), "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    n += len(chunk)
        except OSError as exc:
            raise Tampered(member, f"unreadable in {directory}: {exc}") from None
        if (n, digest.hexdigest()) != (size, sha256):
            raise Tampered(member, f"changed on disk in {directory}")
    return VerifiedBundle(manifest=manifest, key_id=kid, directory=directory)
