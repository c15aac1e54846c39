"""Unit layer of the TUF list distribution (no servers): delta segments, the publisher's thresholds,
delegations and rotation, failure reasons, the ``distribution:`` section, and what a gateway serves and
exposes from its installed state. End to end: tests/test_distribution_e2e.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuf.api import exceptions as tx

from filterproxy import metrics
from filterproxy.config import ConfigError, DistributionConfig
from filterproxy.config.loader import Section
from filterproxy.config.sections import parse_distribution
from filterproxy.distribution import delta, gateway, publish
from filterproxy.distribution.keys import PublishError, keygen

# --- delta ------------------------------------------------------------------------------------------

VERSIONS = [
    ["b", "a", "c", "a", "", "  d  "],
    ["a", "c", "d", "e"],  # b removed, e added
    ["a", "b", "e", "f"],  # b back, c and d removed, f added
    ["f"],
    [],
    ["z", "y"],
]


def _canon(tmp: Path, name: str, lines: list[str]) -> Path:
    raw = tmp / f"{name}.raw"
    raw.write_text("".join(f"{x}\n" for x in lines))
    out = tmp / f"{name}.txt"
    delta.canonicalise(str(raw), str(out))
    return out


def test_canonical_form_is_sorted_unique_and_stripped(tmp_path):
    assert _canon(tmp_path, "v0", VERSIONS[0]).read_text() == "a\nb\nc\nd\n"


@pytest.mark.parametrize("start", range(len(VERSIONS) - 1))
def test_segments_applied_from_any_version_rebuild_the_latest(tmp_path, start):
    files = [_canon(tmp_path, f"v{i}", v) for i, v in enumerate(VERSIONS)]
    segments = []
    for i in range(start, len(files) - 1):
        added, removed = delta.diff_sorted(str(files[i]), str(files[i + 1]))
        for kind, lines in (("remove", removed), ("add", added)):
            seg = tmp_path / f"{kind}-{i + 1}.gz"
            delta.write_gzip(str(seg), lines)
            segments.append((kind, str(seg)))
    gz = tmp_path / "base.gz"
    delta.gzip_file(str(files[start]), str(gz))
    adds, removes = delta.fold(segments)
    out = tmp_path / "out.txt"
    digest = delta.apply(str(gz), adds, removes, str(out))
    assert out.read_bytes() == files[-1].read_bytes()
    assert digest == delta.file_sha256(str(files[-1]))


# --- publisher --------------------------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path):
    d = tmp_path / "keys"
    for k in ("r1", "r2", "r3", "r4", "ministry", "online", "hanoi"):
        keygen(str(d / k))
    return d


def _repo(tmp_path: Path, keys: Path) -> publish.Repository:
    publish.init(
        str(tmp_path / "repo"),
        root_keys=[str(keys / f"r{i}.pub") for i in (1, 2, 3)],
        root_threshold=2,
        targets_keys=[str(keys / "ministry.pub")],
        targets_threshold=1,
        online_key=str(keys / "online.pub"),
    )
    return publish.Repository(str(tmp_path / "repo"))


def test_root_needs_its_threshold_before_anything_is_published(tmp_path, keys):
    repo = _repo(tmp_path, keys)
    publish.sign(repo, "root", str(keys / "r1.key"))
    publish.sign(repo, "targets", str(keys / "ministry.key"))
    with pytest.raises(PublishError, match="no signed root yet"):
        publish.commit(repo, str(keys / "online.key"))
    publish.sign(repo, "root", str(keys / "r2.key"))
    c = publish.commit(repo, str(keys / "online.key"))
    assert c.published == ["root", "targets"] and (c.snapshot, c.timestamp) == (1, 1)
    assert (Path(repo.path) / "public/metadata/1.root.json").exists()
    with pytest.raises(PublishError, match="not a key of role targets"):
        publish.sign(repo, "targets", str(keys / "r1.key"))
    with pytest.raises(PublishError, match="not the snapshot key"):
        publish.commit(repo, str(keys / "ministry.key"))


def _published(tmp_path: Path, keys: Path) -> publish.Repository:
    repo = _repo(tmp_path, keys)
    for k in ("r1", "r2"):
        publish.sign(repo, "root", str(keys / f"{k}.key"))
    publish.sign(repo, "targets", str(keys / "ministry.key"))
    publish.commit(repo, str(keys / "online.key"))
    return repo


def test_rotated_root_needs_the_old_and_the_new_threshold(tmp_path, keys):
    repo = _published(tmp_path, keys)
    publish.rotate(repo, "root", [str(keys / "r4.pub")], [str(keys / "r1.pub")], None)
    publish.sign(repo, "root", str(keys / "r4.key"))
    publish.sign(repo, "root", str(keys / "r3.key"))  # new threshold (r3, r4) but only one old key (r3)
    assert publish.commit(repo, str(keys / "online.key")).waiting == ["root"]
    publish.sign(repo, "root", str(keys / "r1.key"))  # old: r1 + r3
    assert publish.commit(repo, str(keys / "online.key")).published == ["root"]
    assert (Path(repo.path) / "public/metadata/2.root.json").exists()


def test_provinces_get_their_paths_and_never_a_reserved_category(tmp_path, keys):
    repo = _published(tmp_path, keys)
    with pytest.raises(PublishError, match="reserved for the ministry"):
        publish.delegate(repo, "ha-noi", [str(keys / "hanoi.pub")], 1, ["social", "illegal"])
    publish.delegate(repo, "ha-noi", [str(keys / "hanoi.pub")], 1, ["social"])
    top = repo.current("targets")
    role = top.signed.delegations.roles["ha-noi"]
    assert role.paths == ["provinces/ha-noi/*/*"] and role.unrecognized_fields[publish.CATEGORIES_FIELD] == ["social"]
    assert role.is_delegated_path("provinces/ha-noi/extra/full.txt")
    assert not role.is_delegated_path("national/national-illegal/full.txt")
    src = tmp_path / "l.txt"
    src.write_text("x.example\n")
    with pytest.raises(PublishError, match="may publish only social"):
        publish.add(repo, "ha-noi", "extra", "domains", "illegal", str(src))
    st = publish.add(repo, "ha-noi", "extra", "domains", "social", str(src))
    assert st is not None and st.kind == "full" and st.version == 1
    assert publish.add(repo, "ha-noi", "extra", "domains", "social", str(src)) is None  # unchanged
    assert list(repo.staged("ha-noi").signed.targets) == ["provinces/ha-noi/extra/full.txt"]


def test_big_lists_become_base_then_segments(tmp_path, keys):
    repo = _published(tmp_path, keys)
    repo.settings["delta_min_bytes"] = 10
    src = tmp_path / "h.txt"
    src.write_text("pdq:" + "a" * 64 + "\npdq:" + "b" * 64 + "\n")
    assert publish.add(repo, "targets", "csam", "imagehash", "illegal", str(src)).kind == "base"
    src.write_text("pdq:" + "b" * 64 + "\npdq:" + "c" * 64 + "\n")
    st = publish.add(repo, "targets", "csam", "imagehash", "illegal", str(src))
    assert (st.kind, st.version, st.added, st.removed) == ("delta", 2, 1, 1)
    kinds = sorted(tf.custom["kind"] for tf in repo.staged("targets").signed.targets.values())
    assert kinds == ["add", "base", "remove"]
    assert publish.compact(repo, "targets", "csam").kind == "base"
    assert [tf.custom["kind"] for tf in repo.staged("targets").signed.targets.values()] == ["base"]


def test_commit_warns_about_offline_roles_about_to_expire(tmp_path, keys):
    repo = _published(tmp_path, keys)
    repo.settings["expiry"]["targets"] = 7 * 86400
    publish.sign(repo, "targets", str(keys / "ministry.key"))  # a re-signed copy, expiring in 7 days
    c = publish.commit(repo, str(keys / "online.key"))
    assert c.published == ["targets"] and len(c.expiring) == 1 and c.expiring[0].startswith("targets v2 expires")


def test_server_timer_asks_at_once_when_nothing_is_installed_then_with_jitter(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from filterproxy.lists import refresh

    dist = DistributionConfig(url="https://l.example", root="r.json", refresh=3600, jitter=900)
    cfg = SimpleNamespace(distribution=dist, server=SimpleNamespace(state_dir=str(tmp_path)), lists=[])

    async def reload() -> bool:
        return True

    r = refresh.ListRefresher(lambda: cfg, reload)  # type: ignore[arg-type, return-value]
    assert r._distribution_due(1000.0) == 1000.0  # never installed: at once
    (tmp_path / "distribution").mkdir()
    (tmp_path / "distribution" / "state.json").write_text(json.dumps({"last_success": 1000.0}))
    monkeypatch.setattr(refresh.random, "uniform", lambda a, b: b)
    r = refresh.ListRefresher(lambda: cfg, reload)  # type: ignore[arg-type, return-value]
    assert r._distribution_due(1000.0) == 1000.0 + 3600 + 900
    cfg.distribution = DistributionConfig()
    assert refresh.ListRefresher(lambda: cfg, reload)._distribution_due(1000.0) is None  # type: ignore[arg-type]


# --- gateway ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (tx.UnsignedMetadataError("root was signed by 1/2 keys"), "signature"),
        (tx.BadVersionNumberError("new timestamp version 1 must be >= 2"), "rollback"),
        (tx.EqualVersionNumberError(), "rollback"),
        (tx.ExpiredMetadataError("timestamp.json is expired"), "expired"),
        (tx.LengthOrHashMismatchError("hash mismatch"), "hash"),
        (tx.DownloadLengthMismatchError("too long"), "hash"),
        (tx.DownloadHTTPError("404", 404), "download"),
        (tx.SlowRetrievalError(), "download"),
        (tx.RepositoryError("snapshot has no targets.json"), "metadata"),
        (gateway.Refused("delegation", "outside"), "delegation"),
        (PermissionError("read-only"), "install"),
    ],
)
def test_failure_reasons_are_bounded_labels(exc, reason):
    assert gateway.reason_of(exc) == reason
    assert reason in gateway.REASONS and reason in metrics.DISTRIBUTION_FAILURE_REASON.known


@pytest.mark.parametrize(
    ("custom", "accepted"),
    [
        ({"list": "extra", "version": 2, "format": "domains", "category": "social"}, True),
        ({"list": "../../etc/cron.d/x", "version": 2, "format": "domains", "category": "social"}, False),
        ({"list": "extra", "version": "2", "format": "domains", "category": "social"}, False),
        ({"list": "extra", "version": 2, "format": "ut1", "category": "social"}, False),
        ({"list": "extra", "version": 2, "format": "domains"}, False),
    ],
)
def test_target_custom_metadata_is_checked_before_it_names_a_file(custom, accepted):
    from tuf.api.metadata import TargetFile

    tf = TargetFile(3, {"sha256": "0" * 64}, "provinces/ha-noi/x/full.txt", {"custom": custom})
    wanted: dict = {}
    res = gateway.Result()
    gateway._group(wanted, {}, "ha-noi", tf.path, tf, res)
    assert (list(wanted) == ["ha-noi-extra"]) if accepted else (not wanted and res.refused[0][1] == "metadata")


def test_unreachable_repository_keeps_lists_counts_and_says_why(tmp_path, keys):
    root = Path(_published(tmp_path, keys).path) / "public" / "metadata" / "1.root.json"
    state_dir = str(tmp_path)
    (tmp_path / "distribution" / "lists").mkdir(parents=True)
    kept = tmp_path / "distribution" / "lists" / "national-illegal.txt"
    kept.write_text("bad.example\n")
    entry = {"version": 3, "format": "domains", "category": "illegal", "file": str(kept), "role": "national"}
    (tmp_path / "distribution" / "state.json").write_text(json.dumps({"lists": {"national-illegal": entry}}))
    before = metrics.DISTRIBUTION_FAILURES.value("download") or 0
    cfg = DistributionConfig(url="http://127.0.0.1:9", root=str(root))  # nothing listens on port 9
    res = gateway.update(cfg, state_dir)
    assert res.error is not None and res.error[0] == "download", res.error
    assert res.error[1].startswith("the repository could not be reached")
    assert metrics.DISTRIBUTION_FAILURES.value("download") == before + 1
    assert kept.read_text() == "bad.example\n"
    [src] = gateway.sources(state_dir)
    assert (src.id, src.version, src.is_legal, src.path) == ("national-illegal", "3", True, str(kept))
    assert gateway.is_distributed(src) and gateway.role_of(src) == "national"
    assert gateway.list_errors(state_dir)["*"].startswith("download: ")


def test_served_distributed_lists_publish_their_version_gauges(tmp_path):
    from types import SimpleNamespace

    f = tmp_path / "distribution" / "lists" / "ha-noi-extra.txt"
    f.parent.mkdir(parents=True)
    f.write_text("x.example\n")
    state = {"lists": {"ha-noi-extra": {"version": 7, "format": "domains", "category": "social", "file": str(f),
             "role": "ha-noi"}}, "root_version": 2, "snapshot_version": 11, "last_success": 1700000000}  # fmt: skip
    (tmp_path / "distribution" / "state.json").write_text(json.dumps(state))
    [src] = gateway.sources(str(tmp_path))
    metrics.configure_labels(lists=["ha-noi-extra"])
    gateway.publish_metrics([SimpleNamespace(id=src.id, version=src.version, source=src)])
    assert metrics.DISTRIBUTION_LIST_VERSION.value("ha-noi-extra", "province") == 7
    assert metrics.DISTRIBUTION_ROOT_VERSION.value() == 2
    assert metrics.DISTRIBUTION_SNAPSHOT_VERSION.value() == 11


# --- config -----------------------------------------------------------------------------------------


def _section(tmp_path: Path, data: dict) -> DistributionConfig:
    return parse_distribution(Section(data, "distribution", f"{tmp_path}/f.yaml:1"), str(tmp_path / "f.yaml"))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"url": "https://lists.example"}, "distribution.root is required"),
        ({"url": "ftp://lists.example", "root": "r.json"}, "expected an http"),
        ({"root": "r.json"}, "needs url"),
        ({"url": "https://l.example", "root": "r.json", "province": "Hà Nội"}, "role name"),
        ({"url": "https://l.example", "root": "r.json", "refresh": 5}, "refresh must be >= 60"),
        ({"url": "https://l.example", "root": "r.json", "keys": []}, "keys"),
    ],
)
def test_distribution_section_errors(tmp_path, data, error):
    with pytest.raises(ConfigError, match=error):
        _section(tmp_path, data)


def test_distribution_section_resolves_the_root_beside_the_config(tmp_path):
    cfg = _section(tmp_path, {"url": "https://l.example", "root": "r.json", "province": "ha-noi", "mirrors": []})
    assert cfg.root == str(tmp_path / "r.json") and (cfg.refresh, cfg.jitter) == (3600, 900)
    assert _section(tmp_path, {}) == DistributionConfig()


def test_admin_api_reports_distributed_lists_as_verified(tmp_path):
    from types import SimpleNamespace

    from filterproxy.admin.api_info import _signature
    from filterproxy.lists.source import ListSource

    dist = ListSource(id="x", category="illegal", format="domains", where="distribution national v3", version="3")
    local = ListSource(id="y", category="adult", format="domains", where="f.yaml:3")
    assert _signature(SimpleNamespace(id="x", version="3", source=dist)) == "verified"
    assert _signature(SimpleNamespace(id="y", version="", source=local)) is None
