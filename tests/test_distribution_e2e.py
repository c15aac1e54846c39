"""TUF list distribution end to end: a repository built with ``filterproxy publish`` (subprocesses), served
by a local HTTP server, and gateways updating with ``filterproxy lists update`` / ``filterproxy run``.

* a good update installs the national and the province list, and a real ``filterproxy run`` blocks a name
  from each over DNS; a refused update (tampered target) keeps the last good list blocking;
* the running server's own timer installs the lists with no command (no second setting to serve them);
  a mirror serves when the repository is down;
* refused, each with its reason, the last good lists kept: a tampered target, a rolled-back timestamp,
  expired timestamp metadata, a province role signing a national-list target or a reserved category, a
  root rotated without the threshold, targets metadata changed without a signature;
* key rotation: a root signed by the old and new thresholds is followed, and the old key stops counting;
* delta: version N → N+1 of a big hash list downloads only the segments (bytes counted at the server),
  and the rebuilt list equals the publisher's full one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest
import yaml
from conftest import REPO

from filterproxy.dns.testing import FakeUpstream, ServerProcess

NATIONAL = "forbidden-national.example"
PROVINCE = "province-only.example"


def fp(*args: object, check: bool = False) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-m", "filterproxy", *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=180
    )
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
        srv: RepoServer = self.server  # type: ignore[assignment]
        data = source.read()
        with srv.lock:
            srv.served.append((self.path, len(data)))
        outputfile.write(data)


class RepoServer(ThreadingHTTPServer):
    """Serves ``root`` as static files and records (path, bytes) of every body sent."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.served: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), lambda *a: _Handler(*a, directory=str(root)))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def target_bytes(self) -> int:
        with self.lock:
            return sum(n for p, n in self.served if p.startswith("/targets/"))

    def reset(self) -> None:
        with self.lock:
            self.served.clear()


class Publisher:
    """A repository and its keys in ``tmp``: root 2-of-3, the ministry's targets key, an online key, ha-noi."""

    def __init__(self, tmp: Path, keys: Path, *, delta_min_bytes: int = 1 << 20) -> None:
        self.tmp = tmp
        self.keys = tmp / "keys"
        self.repo = tmp / "repo"
        shutil.copytree(keys, self.keys)  # made once per module with 'publish keygen' (KEY_NAMES)
        k = self.keys
        fp(
            "publish", "init", self.repo,
            "--root-key", k / "r1.pub", "--root-key", k / "r2.pub", "--root-key", k / "r3.pub",
            "--root-threshold", 2, "--targets-key", k / "ministry.pub", "--online-key", k / "online.pub",
            "--delta-min-bytes", delta_min_bytes,
            check=True,
        )  # fmt: skip
        fp("publish", "delegate", self.repo, "--province", "ha-noi", "--key", k / "hanoi.pub", "--category", "social",
           check=True)  # fmt: skip
        self.sign("root", "r1", "r2")

    def sign(self, role: str, *keys: str) -> None:
        for key in keys:
            fp("publish", "sign", self.repo, "--role", role, "--key", self.keys / f"{key}.key", check=True)

    def add(self, name: str, lines: list[str], *, role: str = "targets", category: str = "illegal",
            fmt: str = "domains") -> str:  # fmt: skip
        src = self.tmp / f"{role}-{name}.txt"
        src.write_text("".join(f"{x}\n" for x in lines))
        r = fp("publish", "add", self.repo, "--id", name, "--format", fmt, "--category", category, "--role", role, src,
               check=True)  # fmt: skip
        return r.stdout

    def commit(self, *extra: object) -> str:
        return fp("publish", "commit", self.repo, "--key", self.keys / "online.key", *extra, check=True).stdout

    def release(self, role: str = "targets", key: str = "ministry") -> None:
        self.sign(role, key)
        self.commit()

    @property
    def public(self) -> Path:
        return self.repo / "public"


KEY_NAMES = ("r1", "r2", "r3", "ministry", "online", "hanoi")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The six key pairs every repository of this module uses, made with the documented command."""
    d = tmp_path_factory.mktemp("keys")
    for k in KEY_NAMES:
        fp("publish", "keygen", "--out", d / k, check=True)
    return d


@pytest.fixture
def publisher(tmp_path: Path, keys: Path) -> Publisher:
    pub = Publisher(tmp_path, keys)
    pub.add("national-illegal", [NATIONAL, "second-national.example"])
    pub.sign("targets", "ministry")
    pub.add("extra", [PROVINCE], role="ha-noi", category="social")
    pub.sign("ha-noi", "hanoi")
    out = pub.commit()
    assert "published: ha-noi, root, targets" in out, out
    return pub


@pytest.fixture
def server(publisher: Publisher):
    srv = RepoServer(publisher.public)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def gateway(tmp: Path, url: str, root: Path, *, upstream: str = "127.0.0.1:9", name: str = "gw") -> Path:
    """A gateway config following the national lists and ha-noi; its trusted root copied beside it."""
    d = tmp / name
    (d / "policies").mkdir(parents=True, exist_ok=True)
    (d / "policies" / "kids.yaml").write_text("name: Kids\nblock_categories: [adult, social]\nblock_mode: nxdomain\n")
    shutil.copy(root, d / "root.json")
    cfg = d / "filterproxy.yaml"
    body = {
        "server": {"state_dir": str(d / "state")},
        "upstreams": {"servers": [upstream], "timeout": 1.0},
        "dns": {"allowed_networks": ["127.0.0.0/8"], "rate_limit": 0},
        "policies_dir": "policies",
        "groups": ["kids"],
        "default_group": "kids",
        "distribution": {"url": url, "root": "root.json", "province": "ha-noi", "refresh": 3600, "jitter": 0},
    }
    cfg.write_text(yaml.safe_dump(body, sort_keys=False))
    return cfg


def state(cfg: Path) -> dict:
    return json.loads((cfg.parent / "state" / "distribution" / "state.json").read_text())


def installed(cfg: Path) -> dict[str, int]:
    return {k: v["version"] for k, v in state(cfg).get("lists", {}).items()}


def list_text(cfg: Path, list_id: str) -> str:
    return (cfg.parent / "state" / "distribution" / "lists" / f"{list_id}.txt").read_text()


def target_file(pub: Publisher, list_id: str, role_dir: str = "national") -> Path:
    files = sorted((pub.public / "targets" / role_dir / list_id).iterdir(), key=os.path.getmtime)
    return files[-1]


def ask(port: int, name: str) -> int:
    q = dns.message.make_query(name, "A")
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=3).rcode()


def until(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for: {what}")


def run_server(cfg: Path, upstream: FakeUpstream) -> ServerProcess:
    args = ["--config", str(cfg), "--dns-listen", "127.0.0.1:0", "--proxy-listen", "off"]
    return ServerProcess([*args, "--metrics-listen", "127.0.0.1:0"], log_path=str(cfg.parent / "run.log")).start()


def metric(url: str, line_start: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- served over DNS --------------------------------------------------------------------------------


def test_lists_update_installs_national_and_province_lists_served_over_dns(tmp_path, publisher, server):
    up = FakeUpstream().start()
    cfg = gateway(tmp_path, server.url, publisher.public / "metadata" / "1.root.json", upstream=up.address)
    r = fp("lists", "update", "--config", cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "national-illegal: version 1 installed" in r.stdout and "ha-noi-extra: version 1 installed" in r.stdout
    proc = run_server(cfg, up)
    try:
        assert ask(proc.port, NATIONAL) == dns.rcode.NXDOMAIN
        assert ask(proc.port, PROVINCE) == dns.rcode.NXDOMAIN
        assert ask(proc.port, "allowed.example") == dns.rcode.NOERROR
        # version 2 drops NATIONAL and adds another name, but its file is tampered on the server
        publisher.add("national-illegal", ["new-national.example"])
        publisher.release()
        tampered = target_file(publisher, "national-illegal")
        good = tampered.read_bytes()
        tampered.write_bytes(good.replace(b"new", b"NEW"))  # same length, other hash
        r = fp("lists", "update", "--config", cfg)
        assert r.returncode == 1 and "list national-illegal: refused (hash)" in r.stderr, r.stdout + r.stderr
        fp("lists", "reload", "--config", cfg, check=True)
        until(lambda: "config generation 2" in proc.output(), "the reload after the refused update")
        assert ask(proc.port, NATIONAL) == dns.rcode.NXDOMAIN  # the last good list still blocks
        assert ask(proc.port, "new-national.example") == dns.rcode.NOERROR
        assert proc.metrics_url
        version = 'filterproxy_distribution_list_version{list="national-illegal",role="national"}'
        assert metric(proc.metrics_url, version) == 1
        # the repaired file installs and is served after the reload (so the check above was not vacuous)
        tampered.write_bytes(good)
        fp("lists", "update", "--config", cfg, check=True)
        fp("lists", "reload", "--config", cfg, check=True)
        until(lambda: ask(proc.port, "new-national.example") == dns.rcode.NXDOMAIN, "version 2 served")
        assert ask(proc.port, NATIONAL) == dns.rcode.NOERROR
        until(lambda: metric(proc.metrics_url, version) == 2, "version gauge 2")
    finally:
        proc.stop()
        up.stop()


def test_an_unchanged_repository_confirms_the_installed_lists_current(tmp_path, publisher, server):
    """A quiet ministry is not a stale gateway: an update that finds nothing new (fresh timestamp, same
    versions) makes every installed list current again (its age, the console's freshness, the fleet alert)."""
    from filterproxy.config import load_config
    from filterproxy.distribution import gateway as gw
    from filterproxy.lists.snapshot_cache import list_version

    cfg = gateway(tmp_path, server.url, publisher.public / "metadata" / "1.root.json")
    assert fp("lists", "update", "--config", cfg).returncode == 0
    files = [cfg.parent / "state" / "distribution" / "lists" / f"{i}.txt" for i in ("national-illegal", "ha-noi-extra")]
    day_ago = time.time() - 86_400
    for f in files:
        os.utime(f, (day_ago, day_ago))
    before = metrics_mod().DISTRIBUTION_LAST_SUCCESS.value() or 0
    c = load_config(str(cfg))
    res = gw.update(c.distribution, c.server.state_dir)  # in process, as the server's timer does
    assert res.error is None and res.installed == {} and not res.refused, res
    assert all(time.time() - f.stat().st_mtime < 60 for f in files)
    for src in gw.sources(c.server.state_dir):
        info = type("Info", (), {"files": [src.path], "version": src.version})()
        assert time.time() - list_version(info)[1] < 60  # type: ignore[arg-type]
    assert metrics_mod().DISTRIBUTION_LAST_SUCCESS.value() > max(before, day_ago)


def metrics_mod():  # type: ignore[no-untyped-def]
    from filterproxy import metrics

    return metrics


def test_running_server_installs_lists_by_itself(tmp_path, publisher, server):
    up = FakeUpstream().start()
    cfg = gateway(tmp_path, server.url, publisher.public / "metadata" / "1.root.json", upstream=up.address)
    proc = run_server(cfg, up)
    try:
        until(lambda: ask(proc.port, NATIONAL) == dns.rcode.NXDOMAIN, "the national list served")
        assert ask(proc.port, PROVINCE) == dns.rcode.NXDOMAIN
        assert "distribution: 2 list(s) installed" in proc.output()
    finally:
        proc.stop()
        up.stop()


def test_a_mirror_serves_when_the_repository_is_down(tmp_path, publisher, server):
    cfg = gateway(tmp_path, "http://127.0.0.1:9", publisher.public / "metadata" / "1.root.json")
    body = yaml.safe_load(cfg.read_text())
    body["distribution"]["mirrors"] = [server.url]
    cfg.write_text(yaml.safe_dump(body))
    r = fp("lists", "update", "--config", cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    assert installed(cfg) == {"national-illegal": 1, "ha-noi-extra": 1} and state(cfg)["url"] == server.url


# --- refusals ---------------------------------------------------------------------------------------


def _updated(tmp_path: Path, publisher: Publisher, server: RepoServer) -> Path:
    cfg = gateway(tmp_path, server.url, publisher.public / "metadata" / "1.root.json")
    fp("lists", "update", "--config", cfg, check=True)
    assert installed(cfg) == {"national-illegal": 1, "ha-noi-extra": 1}
    return cfg


def _refused(cfg: Path, reason: str) -> str:
    r = fp("lists", "update", "--config", cfg)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"({reason})" in r.stderr, r.stderr
    assert NATIONAL in list_text(cfg, "national-illegal")  # the last good copy stays
    shown = fp("lists", "show", "--config", cfg, check=True).stdout
    assert f"({reason})" in shown, shown
    return r.stderr


def test_rolled_back_timestamp_is_refused(tmp_path, publisher, server):
    old = (publisher.public / "metadata" / "timestamp.json").read_bytes()
    publisher.add("national-illegal", ["new-national.example"])
    publisher.release()
    cfg = _updated_to(tmp_path, publisher, server, 2)
    (publisher.public / "metadata" / "timestamp.json").write_bytes(old)
    err = _refused_v2(cfg, "rollback")
    assert "rollback refused" in err


def _updated_to(tmp_path: Path, publisher: Publisher, server: RepoServer, version: int) -> Path:
    cfg = gateway(tmp_path, server.url, publisher.public / "metadata" / "1.root.json")
    fp("lists", "update", "--config", cfg, check=True)
    assert installed(cfg)["national-illegal"] == version
    return cfg


def _refused_v2(cfg: Path, reason: str) -> str:
    r = fp("lists", "update", "--config", cfg)
    assert r.returncode == 1 and f"({reason})" in r.stderr, r.stdout + r.stderr
    assert installed(cfg)["national-illegal"] == 2
    return r.stderr


def test_expired_timestamp_is_refused(tmp_path, publisher, server):
    cfg = _updated(tmp_path, publisher, server)
    publisher.commit("--timestamp-expiry", "1s")
    time.sleep(2.1)
    err = _refused(cfg, "expired")
    assert "expired metadata" in err


def test_tampered_target_is_refused(tmp_path, publisher, server):
    cfg = gateway(tmp_path, server.url, publisher.public / "metadata" / "1.root.json")
    f = target_file(publisher, "extra", "provinces/ha-noi")
    f.write_bytes(f.read_bytes().replace(b"province", b"PROVINCE"))
    r = fp("lists", "update", "--config", cfg)
    assert r.returncode == 1 and "list ha-noi-extra: refused (hash)" in r.stderr, r.stderr
    assert installed(cfg) == {"national-illegal": 1}  # the untouched list still installs


def test_unsigned_change_to_targets_metadata_is_refused(tmp_path, publisher, server):
    cfg = _updated(tmp_path, publisher, server)
    publisher.add("national-illegal", ["new-national.example"])
    publisher.release()
    path = publisher.public / "metadata" / "2.targets.json"
    md = json.loads(path.read_text())
    md["signed"]["expires"] = "2099-01-01T00:00:00Z"
    path.write_text(json.dumps(md))
    err = _refused(cfg, "signature")
    assert "bad or missing signatures" in err


def _province_signs(publisher: Publisher, path: str, category: str, content: bytes) -> None:
    """A province role that signs a target it should not (built with python-tuf, as an attacker with the
    province key would), then committed with the documented command."""
    from tuf.api.metadata import Metadata, TargetFile

    from filterproxy.distribution.keys import load_signer

    local = publisher.tmp / "evil.txt"
    local.write_bytes(content)
    md = Metadata.from_file(str(publisher.repo / "published" / "ha-noi.json"))
    tf = TargetFile.from_file(path, str(local), ["sha256"])
    tf.unrecognized_fields["custom"] = {"list": "evil", "format": "domains", "category": category, "version": 9,
                                        "kind": "full"}  # fmt: skip
    md.signed.targets[path] = tf
    md.signed.version += 1
    md.signatures.clear()
    md.sign(load_signer(str(publisher.keys / "hanoi.key")))
    dest = publisher.public / "targets" / os.path.dirname(path)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(local, dest / f"{tf.hashes['sha256']}.{os.path.basename(path)}")
    (publisher.repo / "staged" / "ha-noi.json").write_bytes(md.to_bytes())
    publisher.commit()


def test_province_signing_a_national_target_is_refused(tmp_path, publisher, server):
    cfg = _updated(tmp_path, publisher, server)
    _province_signs(publisher, "national/national-illegal/full.txt", "illegal", b"harmless.example\n")
    err = _refused(cfg, "delegation")
    assert "province ha-noi target national/national-illegal/full.txt refused (delegation)" in err
    assert list_text(cfg, "national-illegal") == f"{NATIONAL}\nsecond-national.example\n"
    assert "ha-noi-evil" not in installed(cfg)


def test_province_target_in_a_reserved_category_is_refused(tmp_path, publisher, server):
    cfg = _updated(tmp_path, publisher, server)
    _province_signs(publisher, "provinces/ha-noi/evil/full.txt", "illegal", b"competitor.example\n")
    err = _refused(cfg, "category")
    assert "category 'illegal' not granted to ha-noi" in err
    assert "ha-noi-evil" not in installed(cfg) and installed(cfg)["ha-noi-extra"] == 1


def _forged_root(publisher: Publisher, version: int, signers: list[str]) -> None:
    from tuf.api.metadata import Metadata

    from filterproxy.distribution.keys import load_public, load_signer

    md = Metadata.from_file(str(publisher.repo / "published" / "root.json"))
    md.signed.version = version
    md.signed.add_key(load_public(str(publisher.keys / "hanoi.pub")), "targets")  # e.g. to take over targets
    md.signatures.clear()
    for k in signers:
        md.sign(load_signer(str(publisher.keys / f"{k}.key")), append=True)
    (publisher.public / "metadata" / f"{version}.root.json").write_bytes(md.to_bytes())


def test_root_rotated_without_the_threshold_is_refused(tmp_path, publisher, server):
    cfg = _updated(tmp_path, publisher, server)
    _forged_root(publisher, 2, ["r1"])  # 1 of the 2 root signatures needed
    err = _refused(cfg, "signature")
    assert "root" in err.lower()
    assert state(cfg)["root_version"] == 1


def test_root_key_rotation_is_followed_and_the_old_key_stops_counting(tmp_path, publisher, server):
    cfg = _updated(tmp_path, publisher, server)
    fp("publish", "keygen", "--out", publisher.keys / "r4", check=True)
    k = publisher.keys
    fp("publish", "rotate", publisher.repo, "--role", "root", "--add-key", k / "r4.pub", "--revoke-key", k / "r1.pub",
       check=True)  # fmt: skip
    publisher.sign("root", "r1")  # old threshold: r1 + r2; new threshold: r2 + r4
    out = publisher.commit()
    assert "waiting for signatures (still staged): root" in out  # 1 signature: nothing published yet
    publisher.sign("root", "r2", "r4")
    assert "published: root" in publisher.commit()
    fp("lists", "update", "--config", cfg, check=True)
    assert state(cfg)["root_version"] == 2
    # r1 is revoked: a root v3 signed by r1 + r2 has only one valid signature under v2 (needs 2)
    _forged_root(publisher, 3, ["r1", "r2"])
    _refused(cfg, "signature")
    assert state(cfg)["root_version"] == 2
    # ...whereas the current keys r2 + r4 are enough
    _forged_root(publisher, 3, ["r2", "r4"])
    fp("lists", "update", "--config", cfg, check=True)
    assert state(cfg)["root_version"] == 3


# --- delta ------------------------------------------------------------------------------------------


def _hashes(rng: random.Random, n: int) -> list[str]:
    return [f"pdq:{rng.getrandbits(256):064x}" for _ in range(n)]


def test_delta_update_downloads_only_the_segment_and_rebuilds_the_full_list(tmp_path, keys):
    pub = Publisher(tmp_path, keys, delta_min_bytes=100_000)
    rng = random.Random(7)
    v1 = _hashes(rng, 30_000)
    assert "staged as base" in pub.add("csam", v1, category="illegal", fmt="imagehash")
    pub.sign("targets", "ministry")
    pub.sign("ha-noi", "hanoi")
    pub.commit()
    srv = RepoServer(pub.public)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        cfg = gateway(tmp_path, srv.url, pub.public / "metadata" / "1.root.json")
        fp("lists", "update", "--config", cfg, check=True)
        base_bytes = srv.target_bytes()
        assert base_bytes > 500_000
        v2 = v1[500:] + _hashes(rng, 1_000)  # 500 removed, 1,000 added
        out = pub.add("csam", v2, category="illegal", fmt="imagehash")
        assert "version 2 staged as delta" in out and "(+1,000 −500 lines)" in out, out
        pub.release()
        srv.reset()
        r = fp("lists", "update", "--config", cfg, check=True)
        segments = sorted(p for p, _ in srv.served if p.startswith("/targets/"))
        assert len(segments) == 2 and all("-2.txt.gz" in p for p in segments), segments
        assert srv.target_bytes() < base_bytes / 10, (srv.target_bytes(), base_bytes)
        full = (pub.repo / "lists" / "targets" / "csam.txt").read_text()
        assert full == "".join(f"{h}\n" for h in sorted(set(v2)))
        assert list_text(cfg, "csam") == full
        assert installed(cfg)["csam"] == 2, r.stdout
        # a new gateway gets base + segments and the same list; after compaction an up-to-date one downloads nothing
        fresh = gateway(tmp_path, srv.url, pub.public / "metadata" / "1.root.json", name="gw2")
        fp("lists", "update", "--config", fresh, check=True)
        assert list_text(fresh, "csam") == full
        assert "new base at version 2" in fp("publish", "compact", pub.repo, "--id", "csam", check=True).stdout
        pub.release()
        srv.reset()
        fp("lists", "update", "--config", cfg, check=True)
        assert srv.target_bytes() == 0
        assert list_text(cfg, "csam") == full
    finally:
        srv.shutdown()
        srv.server_close()


def test_console_lists_page_shows_the_distribution_state_and_a_refusal(tmp_path, publisher, server):
    """The web console's Lists page (and ``GET /api/v1/status``) of a running gateway: the repository, the
    trusted root and snapshot versions, the last success; after a tampered target the refusal and its reason,
    while the last good list keeps serving."""
    import re

    import requests

    from filterproxy.config import load_config
    from filterproxy.passwords import hash_password
    from filterproxy.state.model import Actor
    from filterproxy.state.store import Store

    up = FakeUpstream().start()
    cfg = gateway(tmp_path, server.url, publisher.public / "metadata" / "1.root.json", upstream=up.address)
    fp("lists", "update", "--config", cfg, check=True)
    store = Store.for_config(load_config(str(cfg)))
    try:
        store.add_user(Actor("system", "system"), "boss", "admin", hash_password("a long enough password"))
    finally:
        store.close()
    args = ["--config", str(cfg), "--dns-listen", "127.0.0.1:0", "--proxy-listen", "off", "--metrics-listen", "off"]
    proc = ServerProcess([*args, "--admin-listen", "127.0.0.1:0"], log_path=str(cfg.parent / "run.log")).start()
    try:
        until(lambda: "admin API on" in proc.output(), "the admin API")
        m = re.search(r"admin API on (http://127\.0\.0\.1:\d+)/api/v1", proc.output())
        assert m, proc.output()
        s = requests.Session()
        s.trust_env = False
        r = s.post(m.group(1) + "/api/v1/login", json={"user": "boss", "password": "a long enough password"})
        assert r.status_code == 200, r.text
        dist = s.get(m.group(1) + "/api/v1/status", timeout=10).json()["distribution"]
        assert dist["url"] == server.url and dist["province"] == "ha-noi" and dist["error"] is None
        assert dist["root_version"] == 1 and dist["snapshot_version"] >= 1 and dist["last_success"]
        assert dist["lists"] == {"national-illegal": 1, "ha-noi-extra": 1}
        html = s.get(m.group(1) + "/lists?lang=en", timeout=10).text
        section = html[html.index('id="distribution"') : html.index('<table id="lists"')]
        assert server.url in section and "root v1, snapshot v" in section and 'id="dist-ok"' in section
        # a tampered new version: refused with its reason on the page, the last good list serves on
        publisher.add("national-illegal", ["new-national.example"])
        publisher.release()
        target_file(publisher, "national-illegal").write_bytes(b"evil.example\n")
        assert fp("lists", "update", "--config", cfg).returncode == 1
        html = s.get(m.group(1) + "/lists?lang=en", timeout=10).text
        section = html[html.index('id="distribution"') : html.index('<table id="lists"')]
        assert 'id="dist-refused"' in section and "list national-illegal" in section and "(hash)" in section
        assert ask(proc.port, NATIONAL) == dns.rcode.NXDOMAIN  # version 1 still blocks
    finally:
        proc.stop()
        up.stop()


def test_publish_status_shows_versions_lists_signatures_and_warns_before_expiry(publisher):
    """'publish status' is what the ministry's monitoring runs: exit 1 names what expires (offline roles
    within 14 days, the timestamp within 6 hours) or waits for signatures, before gateways refuse updates."""
    repo = publisher.repo
    r = fp("publish", "status", repo, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    st = json.loads(r.stdout)
    assert {x["role"]: x["version"] for x in st["roles"]} == {
        "root": 1, "targets": 1, "snapshot": 1, "timestamp": 1, "ha-noi": 1
    }  # fmt: skip
    lists = {(x["role"], x["list"]): (x["version"], x["kind"], x["category"]) for x in st["lists"]}
    assert lists == {
        ("targets", "national-illegal"): (1, "full", "illegal"),
        ("ha-noi", "extra"): (1, "full", "social"),
    }
    assert st["warnings"] == []
    assert "ok: every role published" in fp("publish", "status", repo, check=True).stdout

    r = fp("publish", "status", repo, "--warn", "400d")  # root lives 365 days
    assert r.returncode == 1 and "warning: root v1: expires" in r.stdout and "publish sign --role root" in r.stdout
    assert "targets v1" in r.stdout  # 90 days, also within 400
    r = fp("publish", "status", repo, "--warn-online", "2d")  # the timestamp lives 1 day
    assert r.returncode == 1 and "warning: timestamp v1: expires" in r.stdout and "run 'publish commit'" in r.stdout

    publisher.add("national-illegal", ["changed.example"])
    r = fp("publish", "status", repo)
    assert r.returncode == 1 and "warning: targets v2: staged, 0 of 1 signature(s)" in r.stdout, r.stdout
    publisher.sign("targets", "ministry")
    assert "targets v2: staged, 1 of 1 signature(s): run 'publish commit'" in fp("publish", "status", repo).stdout
    publisher.commit("--timestamp-expiry", "1s")
    time.sleep(1.5)
    r = fp("publish", "status", repo, "--json")
    st = json.loads(r.stdout)
    assert (
        r.returncode == 1
        and [w for w in st["warnings"] if "EXPIRED" in w]
        == [w for w in st["warnings"] if w.startswith("timestamp v2: EXPIRED")]
        != []
    )
    assert {(x["list"], x["version"]) for x in st["lists"]} == {("national-illegal", 2), ("extra", 1)}
    publisher.commit()
    assert fp("publish", "status", repo).returncode == 0
