"""`filterproxy admin user …` and `filterproxy admin token …` as a user runs them, on the store the config names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from test_dns_server import write_setup  # noqa: E402

from filterproxy.passwords import verify_password  # noqa: E402
from filterproxy.state.store import Store  # noqa: E402


def _admin(cfg: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "filterproxy", "admin", *args, "--config", str(cfg)]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)


def test_admin_user_and_token_commands(tmp_path):
    cfg = write_setup(tmp_path, upstreams=["127.0.0.1:1"])
    r = _admin(cfg, "token", "create", "backup")
    assert r.returncode == 2 and "--user: required (0 admin users" in r.stderr, r.stderr
    assert _admin(cfg, "user", "add", "root", "--role", "admin", stdin="s3cret pass\n").returncode == 0
    r = _admin(cfg, "user", "add", "lan", "--role", "teacher", "--groups", "kids,nope", stdin="x\n")
    assert r.returncode == 2 and "unknown group(s) nope" in r.stderr, r.stderr
    r = _admin(cfg, "user", "add", "lan", "--role", "teacher", "--groups", "kids,teens", stdin="pw two\n")
    assert r.returncode == 0, r.stderr
    r = _admin(cfg, "user", "add", "root", "--role", "admin", stdin="again\n")
    assert r.returncode == 2 and "user root exists" in r.stderr
    r = _admin(cfg, "user", "add", "eve", "--role", "admin", stdin="\n")
    assert r.returncode == 2 and "empty password" in r.stderr
    lines = _admin(cfg, "user", "list").stdout.splitlines()
    assert [ln.split("\t")[:3] for ln in lines] == [["lan", "teacher", "kids,teens"], ["root", "admin", "-"]]

    r = _admin(cfg, "token", "create", "backup")  # the only admin
    assert r.returncode == 0 and "acts as root" in r.stderr, r.stderr
    secret = r.stdout.strip()
    store = Store.open(f"sqlite:///{tmp_path}/state/state.db")
    try:
        assert store.token_user(secret).name == "root"  # type: ignore[union-attr]
        assert _admin(cfg, "user", "passwd", "lan", stdin="new pw\n").returncode == 0
        assert verify_password(store.user("lan").password_hash, "new pw")  # type: ignore[union-attr]
        assert "backup\troot" in _admin(cfg, "token", "list").stdout
        assert _admin(cfg, "token", "revoke", "backup").returncode == 0
        assert store.token_user(secret) is None
        assert _admin(cfg, "user", "remove", "lan").returncode == 0
        assert store.user("lan") is None
        r = _admin(cfg, "user", "remove", "lan")
        assert r.returncode == 2 and "user lan: not found" in r.stderr
        assert {e.actor for e in store.audit()} == {"cli"}
    finally:
        store.close()


def test_explain_names_a_live_override(tmp_path):
    from filterproxy.state.model import Actor

    cfg = write_setup(tmp_path, upstreams=["127.0.0.1:1"])
    explain = [sys.executable, "-m", "filterproxy", "explain", "--config", str(cfg), "--group", "home", "www.live.test"]
    before = subprocess.run(explain, capture_output=True, text=True, timeout=60)
    assert "reason: default" in before.stdout, before.stdout + before.stderr
    assert not (tmp_path / "state" / "state.db").exists()  # explain creates no state
    store = Store.open(f"sqlite:///{tmp_path}/state/state.db")
    store.add_override(Actor("lan", "teacher", frozenset({"home"})), "home", "live.test", "block", minutes=30)
    store.close()
    out = subprocess.run(explain, capture_output=True, text=True, timeout=60).stdout
    assert "BLOCK for group home (--group) — reason: override" in out, out
    assert re.search(r"source +override 1 by teacher lan, until \d\d:\d\d\n", out), out
