"""The bundle CLI contract and a gateway installing ministry bundles through 'lists update'."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import LISTS, REPO, write_config


def fp(*args, check=False):
    r = subprocess.run(
        [sys.executable, "-m", "filterproxy", *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_keygen_build_sign_verify_and_rejections(tmp_path, data_dir):
    fp("bundle", "keygen", "--out", tmp_path / "k1", check=True)
    fp("bundle", "keygen", "--out", tmp_path / "k2", check=True)
    priv, pub = tmp_path / "k1/bundle-signing.key", tmp_path / "k1/bundle-signing.pub"
    national = tmp_path / "national.txt"
    national.write_text("forbidden.example\n")
    b = tmp_path / "b.tar.gz"
    fp(
        "bundle",
        "build",
        "--out",
        b,
        "--serial",
        7,
        "--expires",
        "2099-01-01T00:00:00Z",
        "--list",
        f"domains:illegal:{national}",
        "--list",
        f"ut1:dating:{LISTS / 'ut1/dating'}",
        check=True,
    )
    unsigned = fp("bundle", "verify", "--key", pub, b)
    assert unsigned.returncode != 0
    fp("bundle", "sign", "--key", priv, b, check=True)
    ok = fp("bundle", "verify", "--key", pub, b, check=True)
    assert "serial 7" in ok.stdout
    wrong = fp("bundle", "verify", "--key", tmp_path / "k2/bundle-signing.pub", b)
    assert wrong.returncode != 0 and "key" in wrong.stderr.lower()
    # key rotation: old and new keys pinned together
    assert fp("bundle", "verify", "--key", tmp_path / "k2/bundle-signing.pub", "--key", pub, b).returncode == 0
    # a tampered byte inside the compressed archive
    data = bytearray(b.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(bytes(data))
    r = fp("bundle", "verify", "--key", pub, bad)
    assert r.returncode != 0 and r.stderr.strip()
    # expired
    old = tmp_path / "old.tar.gz"
    import datetime as dt
    import time

    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    fp(
        "bundle",
        "build",
        "--out",
        old,
        "--serial",
        8,
        "--expires",
        soon,
        "--list",
        f"domains:illegal:{national}",
        check=True,
    )
    fp("bundle", "sign", "--key", priv, old, check=True)
    time.sleep(3.1)
    r = fp("bundle", "verify", "--key", pub, old)
    assert r.returncode != 0 and "expired" in r.stderr.lower()


def test_gateway_installs_bundle_and_serves_it(tmp_path, data_dir):
    fp("bundle", "keygen", "--out", tmp_path / "k", check=True)
    priv, pub = tmp_path / "k/bundle-signing.key", tmp_path / "k/bundle-signing.pub"
    national = tmp_path / "national.txt"
    national.write_text("forbidden.example\n")

    def make(serial, name):
        out = tmp_path / f"b{serial}.tar.gz"
        national.write_text(f"{name}\n")
        fp("bundle", "build", "--out", out, "--serial", serial, "--list", f"domains:illegal:{national}", check=True)
        fp("bundle", "sign", "--key", priv, out, check=True)
        return out

    cfg = write_config(
        tmp_path,
        f"""
        server: {{state_dir: {tmp_path / "state"}}}
        bundle: {{keys: [{pub}]}}
        default_group: g
    """,
        {"g": "name: G\nblock_categories: [adult]\nallow: [forbidden.example]\n"},
    )
    assert fp("lists", "update", "--config", cfg, "--bundle", make(5, "forbidden.example")).returncode == 0

    def verdict(name):
        r = fp("explain", "--config", cfg, "--group", "g", "--json", name, check=True)
        return json.loads(r.stdout)

    v = verdict("forbidden.example")  # allowlisted in the policy, but legal beats allowlist
    assert (v["action"], v["reason"], v["legal"]) == ("block", "legal", True)
    assert v["list"].startswith("bundle-")
    # rollback to an older serial is refused; the installed bundle keeps serving
    r = fp("lists", "update", "--config", cfg, "--bundle", make(4, "other.example"))
    assert r.returncode != 0 and "serial" in r.stderr.lower()
    assert verdict("forbidden.example")["action"] == "block"
    assert verdict("other.example")["action"] == "allow"
