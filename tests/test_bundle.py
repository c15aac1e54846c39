"""filterproxy.lists.bundle: build, sign, verify and install signed list bundles."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import LISTS as DATA
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from filterproxy.lists import bundle as B
from filterproxy.lists.bundle import (
    BadSignature,
    BundleError,
    Expired,
    Malformed,
    Rollback,
    Tampered,
    UnknownKey,
)
from filterproxy.lists.parsers import ParseStats, iter_entries

NOW = datetime(2025, 11, 5, 12, 0, tzinfo=UTC)
CREATED = NOW - timedelta(days=1)
EXPIRES = NOW + timedelta(days=30)
LISTS = [
    ("adblock", "social", str(DATA / "hagezi/adblock/social.txt")),
    ("hosts", "violence", str(DATA / "sinfonietta/snuff-hosts.txt")),
    ("ut1", "chat", str(DATA / "ut1/chat")),
    ("domains", "bypass", str(DATA / "dibdot_doh/doh-domains.txt")),
    ("rpz", "bypass", str(DATA / "hagezi/rpz/doh.txt")),
]


def _fixed_key(directory: Path, seed: bytes) -> tuple[str, str]:
    # Fixed keys make every bundle byte-identical from run to run (Ed25519 signing is
    # deterministic), so the byte-flip test below always probes the same bytes.
    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed).digest())
    directory.mkdir()
    k, p = directory / "bundle-signing.key", directory / "bundle-signing.pub"
    k.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    p.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return str(k), str(p)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """Two publisher key pairs: the current one and its successor (rotation)."""
    base = tmp_path_factory.mktemp("keys")
    return {"old": _fixed_key(base / "old", b"old"), "new": _fixed_key(base / "new", b"new")}


def make(
    tmp_path: Path,
    serial: int = 1,
    key: str | None = "old",
    keys=None,
    name: str | None = None,
    lists=LISTS,
    created=CREATED,
    expires=EXPIRES,
) -> str:
    out = str(tmp_path / (name or f"bundle-{serial}.tar.gz"))
    B.build(out, serial, lists, publisher="ministry", created=created, expires=expires)
    if key is not None:
        B.sign(keys[key][0], out)
    return out


def pub(keys, *names: str) -> list[str]:
    return [keys[n][1] for n in names]


def members(path: str) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path, "r:gz") as tar:
        return [(ti, tar.extractfile(ti).read() if ti.isreg() else b"") for ti in tar]


def rewrite(
    src: str,
    dst: str,
    mutate: Callable[[str, bytes], bytes | None] = lambda n, d: d,
    insert: list[tuple[int, tarfile.TarInfo, bytes]] = (),
) -> str:
    """Re-pack a bundle with members changed (mutate -> None drops one) or inserted at an index."""
    items = []
    for ti, data in members(src):
        new = mutate(ti.name, data)
        if new is not None:
            items.append((B.tarinfo(ti.name, len(new)), new))
    for index, ti, data in insert:
        items.insert(index, (ti, data))
    with open(dst, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w|") as tar:
            for ti, data in items:
                tar.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return dst


def flip_first_byte_of(member: str) -> Callable[[str, bytes], bytes]:
    def mutate(name: str, data: bytes) -> bytes:
        if name == member:
            return bytes([data[0] ^ 0x01]) + data[1:]
        return data

    return mutate


# --- keys ---------------------------------------------------------------------------------------


def test_keygen_writes_pem_pair_with_private_mode_and_refuses_overwrite(tmp_path):
    key, public = B.keygen(str(tmp_path / "k"))
    assert key.endswith("bundle-signing.key") and public.endswith("bundle-signing.pub")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert Path(key).read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert Path(public).read_text().startswith("-----BEGIN PUBLIC KEY-----")
    before = Path(key).read_bytes()
    with pytest.raises(FileExistsError):
        B.keygen(str(tmp_path / "k"))
    assert Path(key).read_bytes() == before


def test_public_keys_accept_paths_and_pem_text_and_refuse_junk(keys, tmp_path):
    by_path = B.load_public_keys([keys["old"][1]])
    by_text = B.load_public_keys([Path(keys["old"][1]).read_text()])
    assert by_path.keys() == by_text.keys() and all(len(k) == 16 for k in by_path)
    with pytest.raises(ValueError, match="no public keys"):
        B.load_public_keys([])
    with pytest.raises(ValueError, match="not a PEM public key"):
        B.load_public_keys(["-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"])
    with pytest.raises(ValueError, match="list of paths"):
        B.load_public_keys(keys["old"][1])


# --- build / sign / verify ----------------------------------------------------------------------


def test_round_trip_with_real_lists(keys, tmp_path):
    out = str(tmp_path / "b.tar.gz")
    manifest = B.build(out, 7, LISTS, publisher="ministry", created=CREATED, expires=EXPIRES)
    assert (manifest["format"], manifest["serial"], manifest["publisher"]) == (B.BUNDLE_FORMAT, 7, "ministry")
    assert (manifest["created"], manifest["expires"]) == ("2025-11-04T12:00:00Z", "2025-12-05T12:00:00Z")
    by_id = {e["id"]: e for e in manifest["lists"]}
    assert sorted(by_id) == ["bypass-doh", "bypass-doh-domains", "chat", "social", "violence-snuff-hosts"]
    assert by_id["social"]["entries"] == 882  # the count HaGeZi states in the file header
    chat = by_id["chat"]  # a UT1 folder stays one list, with one digest per file
    assert (chat["format"], chat["path"], sorted(chat["files"])) == ("ut1", "lists/chat", ["domains", "urls"])
    assert chat["files"]["urls"]["sha256"] == hashlib.sha256((DATA / "ut1/chat/urls").read_bytes()).hexdigest()
    assert chat["entries"] == 268 + 17 and "sha256" not in chat
    assert "entries" not in by_id["bypass-doh"]  # rpz: records, not rules; not counted
    social = (DATA / "hagezi/adblock/social.txt").read_bytes()
    assert by_id["social"]["sha256"] == hashlib.sha256(social).hexdigest()
    assert by_id["social"]["size"] == len(social)

    with pytest.raises(BadSignature, match="not signed"):
        B.verify(out, pub(keys, "old"), now=NOW)
    B.sign(keys["old"][0], out)
    vb = B.verify(out, pub(keys, "old"), now=NOW)
    assert vb.manifest == manifest and vb.serial == 7 and vb.directory is None
    assert vb.key_id == next(iter(B.load_public_keys(pub(keys, "old"))))
    assert vb.expires == EXPIRES.replace(microsecond=0)
    assert ("adblock", "social", "lists/social.txt", "social") in vb.list_files()
    names = [ti.name for ti, _ in members(out)]
    assert names[:2] == ["signature.json", "manifest.json"]
    assert names[2:] == [
        "lists/bypass-doh.txt",
        "lists/bypass-doh-domains.txt",
        "lists/chat/domains",
        "lists/chat/urls",
        "lists/social.txt",
        "lists/violence-snuff-hosts.txt",
    ]  # by id
    assert dict((ti.name, d) for ti, d in members(out))["lists/social.txt"] == social


def test_build_and_sign_are_deterministic(keys, tmp_path):
    a = make(tmp_path, keys=keys, name="a.tar.gz")
    b = make(tmp_path, keys=keys, name="b.tar.gz")
    assert Path(a).read_bytes() == Path(b).read_bytes()
    for ti, _ in members(a):
        assert (ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname, ti.mode) == (0, 0, 0, "", "", 0o644)
    B.sign(keys["old"][0], a)  # re-signing replaces the signature: same bytes again
    assert Path(a).read_bytes() == Path(b).read_bytes()


def test_gz_inputs_are_stored_decompressed(keys, tmp_path):
    gz = tmp_path / "extra.txt.gz"
    gz.write_bytes(gzip.compress(b"# extra\nbad.example\n"))
    out = make(tmp_path, keys=keys, lists=[("domains", "games", str(gz))])
    (entry,) = B.verify(out, pub(keys, "old"), now=NOW).manifest["lists"]
    assert (entry["id"], entry["size"], entry["entries"]) == ("games-extra", 20, 1)


def test_explicit_ids_resolve_collisions(tmp_path):
    a = str(DATA / "hagezi/adblock/doh.txt")
    b = str(DATA / "hagezi/domains/doh.txt")
    with pytest.raises(ValueError, match="derived twice"):
        B.build(str(tmp_path / "x.tar.gz"), 1, [("adblock", "bypass", a), ("domains", "bypass", b)])
    m = B.build(str(tmp_path / "x.tar.gz"), 1, [("adblock", "bypass", a), ("domains", "bypass", b, "bypass-doh-plain")])
    assert [e["id"] for e in m["lists"]] == ["bypass-doh", "bypass-doh-plain"]


@pytest.mark.parametrize(
    "lists, kwargs, message",
    [
        ([("csv", "adult", LISTS[0][2])], {}, "unknown list format"),
        ([("adblock", "Adult!", LISTS[0][2])], {}, "category must match"),
        ([("hosts", "adult", str(DATA / "ut1/chat"))], {}, "only format ut1 takes a folder"),
        ([("ut1", "chat", str(DATA / "ut1/chat/domains"))], {}, "expects a category folder"),
        ([("hosts", "adult", "/nonexistent/list.txt")], {}, "no such list file"),
        ([], {}, "at least one list"),
        (LISTS[:1], {"serial": 0}, "positive integer"),
        (LISTS[:1], {"expires": CREATED - timedelta(seconds=1)}, "must be after created"),
        (LISTS[:1], {"created": datetime(2025, 1, 1)}, "timezone-aware"),
    ],
)
def test_build_rejects_bad_input(tmp_path, lists, kwargs, message):
    serial = kwargs.pop("serial", 1)
    kwargs.setdefault("created", CREATED)
    with pytest.raises(ValueError, match=message):
        B.build(str(tmp_path / "x.tar.gz"), serial, lists, **kwargs)
    assert not (tmp_path / "x.tar.gz").exists()
    assert os.listdir(tmp_path) == []  # no staging left behind


@pytest.mark.parametrize(
    "content, message", [(b"# only a header\n\n", "no entries"), (b"caf\xe9.example\n", "not UTF-8")]
)
def test_build_rejects_empty_or_binary_lists(tmp_path, content, message):
    p = tmp_path / "l.txt"
    p.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        B.build(str(tmp_path / "x.tar.gz"), 1, [("domains", "adult", str(p))])


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("member", ["lists/social.txt", "lists/chat/urls", "lists/bypass-doh.txt"])
def test_one_changed_byte_in_a_list_is_tampered(keys, tmp_path, member):
    bad = rewrite(make(tmp_path, keys=keys), str(tmp_path / "bad.tar.gz"), flip_first_byte_of(member))
    with pytest.raises(Tampered, match="sha256") as exc:
        B.verify(bad, pub(keys, "old"), now=NOW)
    assert exc.value.member == member and member in str(exc.value)


def test_one_changed_byte_in_the_manifest_is_a_bad_signature(keys, tmp_path):
    def mutate(name, data):
        return data.replace(b'"serial": 1', b'"serial": 9') if name == "manifest.json" else data

    bad = rewrite(make(tmp_path, keys=keys), str(tmp_path / "bad.tar.gz"), mutate)
    with pytest.raises(BadSignature, match="does not match manifest.json"):
        B.verify(bad, pub(keys, "old"), now=NOW)


def test_list_size_change_and_extra_or_missing_members_are_tampered(keys, tmp_path):
    good = make(tmp_path, keys=keys)
    grown = rewrite(
        good, str(tmp_path / "g.tar.gz"), lambda n, d: d + b"evil.example\n" if n == "lists/social.txt" else d
    )
    with pytest.raises(Tampered, match="size"):
        B.verify(grown, pub(keys, "old"), now=NOW)
    dropped = rewrite(good, str(tmp_path / "d.tar.gz"), lambda n, d: None if n == "lists/social.txt" else d)
    with pytest.raises(Tampered, match="missing from the bundle"):
        B.verify(dropped, pub(keys, "old"), now=NOW)
    extra = rewrite(good, str(tmp_path / "e.tar.gz"), insert=[(3, B.tarinfo("lists/extra.txt", 4), b"x.y\n")])
    with pytest.raises(Tampered, match="not listed in the signed manifest"):
        B.verify(extra, pub(keys, "old"), now=NOW)
    twice = rewrite(good, str(tmp_path / "t.tar.gz"), insert=[(8, B.tarinfo("lists/social.txt", 1), b"x")])
    with pytest.raises(Malformed, match="duplicate member"):
        B.verify(twice, pub(keys, "old"), now=NOW)


def test_any_flipped_byte_of_the_file_is_refused(keys, tmp_path):
    good = Path(make(tmp_path, keys=keys)).read_bytes()
    # Bytes 4-9 of a gzip header (MTIME, XFL, OS) are outside its CRC by design and carry nothing
    # the verifier uses; every other byte is checked by deflate, the CRC, or the signature chain.
    positions = sorted({0, 1, 2, 3, *range(10, len(good), max(1, len(good) // 97)), *range(len(good) - 12, len(good))})
    bad = tmp_path / "flipped.tar.gz"
    for pos in positions:
        data = bytearray(good)
        data[pos] ^= 0xFF
        bad.write_bytes(data)
        with pytest.raises(BundleError):
            B.verify(str(bad), pub(keys, "old"), now=NOW)


def test_wrong_key_is_unknown_and_forged_key_id_is_a_bad_signature(keys, tmp_path):
    out = make(tmp_path, keys=keys)
    with pytest.raises(UnknownKey, match="not pinned"):
        B.verify(out, pub(keys, "new"), now=NOW)
    new_id = next(iter(B.load_public_keys(pub(keys, "new"))))

    def claim_new_key(name, data):
        if name != "signature.json":
            return data
        sig = json.loads(data)
        sig["key_id"] = new_id
        return json.dumps(sig).encode()

    forged = rewrite(out, str(tmp_path / "f.tar.gz"), claim_new_key)
    with pytest.raises(BadSignature):
        B.verify(forged, pub(keys, "new"), now=NOW)


def test_expired(keys, tmp_path):
    out = make(tmp_path, keys=keys)
    with pytest.raises(Expired, match="expired at 2025-12-05T12:00:00Z") as exc:
        B.verify(out, pub(keys, "old"), now=EXPIRES)
    assert exc.value.expires == EXPIRES
    B.verify(out, pub(keys, "old"), now=EXPIRES - timedelta(seconds=1))


@pytest.mark.parametrize("installed, ok", [(None, True), (4, True), (5, False), (6, False)])
def test_rollback(keys, tmp_path, installed, ok):
    out = make(tmp_path, 5, keys=keys)
    if ok:
        assert B.verify(out, pub(keys, "old"), now=NOW, min_serial=installed).serial == 5
    else:
        with pytest.raises(Rollback, match=f"serial 5 is not newer than installed serial {installed}"):
            B.verify(out, pub(keys, "old"), now=NOW, min_serial=installed)


def test_key_rotation(keys, tmp_path):
    out = make(tmp_path, keys=keys, key="old")
    B.sign(keys["new"][0], out)  # the publisher switched keys: the old signature is replaced
    vb = B.verify(out, pub(keys, "old", "new"), now=NOW)  # gateways pin both during change-over
    assert vb.key_id == next(iter(B.load_public_keys(pub(keys, "new"))))
    with pytest.raises(UnknownKey):
        B.verify(out, pub(keys, "old"), now=NOW)  # a gateway that never got the new pin
    assert B.verify(out, pub(keys, "new"), now=NOW).serial == 1  # after the old pin is retired


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    ti = B.tarinfo(name, 0)
    ti.type = kind
    ti.linkname = linkname
    return ti


SLIPS = [
    (B.tarinfo("../evil.txt", 4), "parent-relative"),
    (B.tarinfo("/tmp/filterproxy-evil.txt", 4), "absolute"),
    (B.tarinfo("lists/../../evil.txt", 4), "parent-relative"),
    (B.tarinfo("lists/a/b/evil.txt", 4), "unexpected member"),
    (B.tarinfo("evil.txt", 4), "unexpected member"),
    (_special("lists/link.txt", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
    (_special("lists/hard.txt", tarfile.LNKTYPE, "/etc/passwd"), "hard link"),
    (_special("lists/dev.txt", tarfile.CHRTYPE), "character device"),
    (_special("lists/fifo.txt", tarfile.FIFOTYPE), "FIFO"),
    (_special("lists", tarfile.DIRTYPE), "directory"),
]


@pytest.mark.parametrize("member, message", SLIPS, ids=[m.name + ":" + msg for m, msg in SLIPS])
@pytest.mark.parametrize("where", [0, 2, 5])
def test_tar_slip_members_are_refused(keys, tmp_path, member, message, where):
    evil = rewrite(
        make(tmp_path, keys=keys),
        str(tmp_path / "evil.tar.gz"),
        insert=[(where, member, b"evil" if member.isreg() else b"")],
    )
    with pytest.raises(Malformed, match=message):
        B.verify(evil, pub(keys, "old"), now=NOW)
    state = tmp_path / "state"
    with pytest.raises(Malformed, match=message):
        B.install(evil, pub(keys, "old"), str(state), now=NOW)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/filterproxy-evil.txt").exists()
    assert sorted(os.listdir(state / "bundles")) == []


@pytest.mark.parametrize("content", [b"", b"not a bundle", gzip.compress(b"not a tar" * 100)])
def test_garbage_is_malformed(keys, tmp_path, content):
    p = tmp_path / "junk.tar.gz"
    p.write_bytes(content)
    with pytest.raises(Malformed):
        B.verify(str(p), pub(keys, "old"), now=NOW)


def test_truncated_bundle_is_malformed(keys, tmp_path):
    data = Path(make(tmp_path, keys=keys)).read_bytes()
    p = tmp_path / "cut.tar.gz"
    p.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(Malformed):
        B.verify(str(p), pub(keys, "old"), now=NOW)


def test_sign_refuses_a_bundle_whose_lists_do_not_match(keys, tmp_path):
    bad = rewrite(make(tmp_path, key=None), str(tmp_path / "bad.tar.gz"), flip_first_byte_of("lists/social.txt"))
    before = Path(bad).read_bytes()
    with pytest.raises(Tampered):
        B.sign(keys["old"][0], bad)
    assert Path(bad).read_bytes() == before  # untouched: the rewrite is atomic
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


# --- install ------------------------------------------------------------------------------------


def current(state: Path) -> str:
    return os.readlink(state / "bundles" / "current")


def test_install_switches_current_and_keeps_last_good_after_each_failure(keys, tmp_path):
    state = tmp_path / "state"
    old_pins = pub(keys, "old")
    vb = B.install(make(tmp_path, 1, keys=keys), old_pins, str(state), now=NOW)
    assert vb.directory == str((state / "bundles" / "1").resolve()) and current(state) == "1"
    social = Path(dict((i, p) for _, _, p, i in vb.list_files())["social"])
    assert social.read_bytes() == (DATA / "hagezi/adblock/social.txt").read_bytes()
    assert json.loads((state / "bundle-state.json").read_text())["serial"] == 1

    for fmt, _category, path, list_id in vb.list_files():  # what the gateway's loader will do
        stats: dict = {}
        parsed = list(iter_entries(fmt, path, lambda p, stats=stats: stats.setdefault(p, ParseStats(p))))
        assert parsed, list_id
    assert os.path.isdir(dict((i, p) for _, _, p, i in vb.list_files())["chat"])

    s2 = make(tmp_path, 2, keys=keys)
    failures = {
        "tampered": (rewrite(s2, str(tmp_path / "t.tar.gz"), flip_first_byte_of("lists/social.txt")), Tampered),
        "manifest": (
            rewrite(
                s2,
                str(tmp_path / "m.tar.gz"),
                lambda n, d: d.replace(b"ministry", b"ministrx") if n == "manifest.json" else d,
            ),
            BadSignature,
        ),
        "unknown key": (make(tmp_path, 2, keys=keys, key="new", name="k.tar.gz"), UnknownKey),
        "expired": (
            make(
                tmp_path,
                2,
                keys=keys,
                name="x.tar.gz",
                created=NOW - timedelta(days=9),
                expires=NOW - timedelta(days=1),
            ),
            Expired,
        ),
        "replay": (make(tmp_path, 1, keys=keys, name="r.tar.gz"), Rollback),
        "slip": (rewrite(s2, str(tmp_path / "s.tar.gz"), insert=[(4, B.tarinfo("../evil.txt", 1), b"x")]), Malformed),
        "truncated": (None, Malformed),
    }
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(Path(s2).read_bytes()[:-200])
    failures["truncated"] = (str(cut), Malformed)
    for what, (path, error) in failures.items():
        with pytest.raises(error):
            B.install(path, old_pins, str(state), now=NOW)
        assert current(state) == "1", what
        assert sorted(os.listdir(state / "bundles")) == ["1", "current"], what
        assert social.read_bytes() == (DATA / "hagezi/adblock/social.txt").read_bytes(), what
        assert B.installed(str(state), old_pins).serial == 1, what

    assert B.install(s2, old_pins, str(state), now=NOW).serial == 2 and current(state) == "2"
    for serial in (3, 4, 5):
        B.install(make(tmp_path, serial, keys=keys), old_pins, str(state), now=NOW, keep=2)
    assert sorted(os.listdir(state / "bundles")) == ["4", "5", "current"]
    assert json.loads((state / "bundle-state.json").read_text())["serial"] == 5


def test_failure_at_the_switch_leaves_the_previous_bundle(keys, tmp_path, monkeypatch):
    state = tmp_path / "state"
    pins = pub(keys, "old")
    B.install(make(tmp_path, 1, keys=keys), pins, str(state), now=NOW)
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("current"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    s2 = make(tmp_path, 2, keys=keys)
    with pytest.raises(OSError, match="No space"):
        B.install(s2, pins, str(state), now=NOW)
    assert current(state) == "1" and sorted(os.listdir(state / "bundles")) == ["1", "current"]
    monkeypatch.setattr(os, "replace", real_replace)
    assert B.install(s2, pins, str(state), now=NOW).serial == 2


def test_leftovers_of_an_interrupted_install_are_cleaned(keys, tmp_path):
    state = tmp_path / "state"
    pins = pub(keys, "old")
    B.install(make(tmp_path, 1, keys=keys), pins, str(state), now=NOW)
    (state / "bundles" / ".tmp-crashed").mkdir()
    (state / "bundles" / "2").mkdir()  # renamed but never made current
    (state / "bundles" / "2" / "junk").write_text("x")
    vb = B.install(make(tmp_path, 2, keys=keys), pins, str(state), now=NOW)
    assert sorted(os.listdir(state / "bundles")) == ["1", "2", "current"]
    assert not (Path(vb.directory) / "junk").exists()


def test_rollback_protection_survives_a_lagging_or_broken_state_file(keys, tmp_path):
    state = tmp_path / "state"
    pins = pub(keys, "old")
    B.install(make(tmp_path, 1, keys=keys), pins, str(state), now=NOW)
    B.install(make(tmp_path, 2, keys=keys), pins, str(state), now=NOW)
    # crash between switching `current` and writing the state file: the link still counts
    (state / "bundle-state.json").write_text(json.dumps({"serial": 1}))
    assert B.installed_serial(str(state)) == 2
    with pytest.raises(Rollback):
        B.install(make(tmp_path, 2, keys=keys, name="again.tar.gz"), pins, str(state), now=NOW)
    (state / "bundle-state.json").write_text("{not json")
    with pytest.raises(BundleError, match="unreadable"):
        B.install(make(tmp_path, 3, keys=keys), pins, str(state), now=NOW)
    assert current(state) == "2"


def test_installed_reverifies_what_is_on_disk(keys, tmp_path):
    state = tmp_path / "state"
    pins = pub(keys, "old")
    assert B.installed(str(state), pins) is None
    vb = B.install(make(tmp_path, 1, keys=keys), pins, str(state), now=NOW)
    again = B.installed(str(state), pins)
    assert again.manifest == vb.manifest and again.directory == vb.directory
    with pytest.raises(UnknownKey):
        B.installed(str(state), pub(keys, "new"))
    target = Path(vb.directory) / "lists" / "chat" / "urls"
    target.write_bytes(target.read_bytes() + b"x")
    with pytest.raises(Tampered, match="lists/chat/urls"):
        B.installed(str(state), pins)


def test_written_files_are_readable_by_the_serving_user_and_leave_no_temporaries(keys, tmp_path):
    state = tmp_path / "state"
    out = make(tmp_path, 1, keys=keys)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644
    B.install(out, pub(keys, "old"), str(state), now=NOW)
    assert stat.S_IMODE(os.stat(state / "bundle-state.json").st_mode) == 0o644
    assert sorted(os.listdir(state)) == [".bundle.lock", "bundle-state.json", "bundles"]
    assert sorted(os.listdir(tmp_path)) == ["bundle-1.tar.gz", "state"]


def test_a_failed_state_write_still_installs_and_the_link_keeps_rollback_protection(keys, tmp_path, monkeypatch):
    install_module = importlib.import_module("filterproxy.lists.bundle.install")  # B.install is the function

    def failing_write(path, data, **kw):
        raise OSError(28, "No space left on device")

    state = tmp_path / "state"
    pins = pub(keys, "old")
    B.install(make(tmp_path, 1, keys=keys), pins, str(state), now=NOW)
    monkeypatch.setattr(install_module, "atomic_write", failing_write)
    assert B.install(make(tmp_path, 2, keys=keys), pins, str(state), now=NOW).serial == 2
    assert current(state) == "2" and json.loads((state / "bundle-state.json").read_text())["serial"] == 1
    with pytest.raises(Rollback):
        B.install(make(tmp_path, 2, keys=keys, name="again.tar.gz"), pins, str(state), now=NOW)


def test_the_package_keeps_its_import_paths():
    from filterproxy.lists import bundle_cli

    assert all(hasattr(B, name) for name in B.__all__)
    assert callable(bundle_cli.cli) and callable(bundle_cli.install_bundle) and callable(bundle_cli.bundle_sources)
    assert B.FOLDER_FORMATS <= B.LIST_FORMATS


@pytest.mark.parametrize(
    "error,label", [(B.BadSignature, "signature"), (B.UnknownKey, "signature"), (B.Malformed, "other")]
)
def test_refused_bundle_is_counted_by_reason(monkeypatch, tmp_path, capsys, error, label):
    """A signature failure is counted as such (its reason used to fall into "other")."""
    from types import SimpleNamespace

    from filterproxy import metrics
    from filterproxy.lists import bundle_cli

    def refuse(*_a, **_k):
        raise error("refused for the test")

    monkeypatch.setattr(bundle_cli.bundle, "install", refuse)
    cfg = SimpleNamespace(bundle=SimpleNamespace(keys=["k"]), server=SimpleNamespace(state_dir=str(tmp_path)))
    before = metrics.LISTS_UPDATE_FAILURES.value("bundle", label) or 0
    assert bundle_cli.install_bundle(cfg, str(tmp_path / "b.tar"), []) == 1
    assert metrics.LISTS_UPDATE_FAILURES.value("bundle", label) == before + 1
