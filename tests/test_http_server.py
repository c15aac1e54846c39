"""ProxyWorkers: N mitmproxy processes on one SO_REUSEPORT address; start, reload, restart, stop."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import time

import pytest
import requests
from conftest import write_config

from filterproxy.config import load_config
from filterproxy.http.server import ProxyWorkers, _enable_reuse_port

POLICY = {"kid": "name: Kid\ntone: child\nblock_categories: [adult]\n"}


def listening_sockets(port: int) -> int:
    """LISTEN sockets on ``port`` (each SO_REUSEPORT worker has its own)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] == "0A":
                        n += 1
        except OSError:
            pass
    return n


def blocked(port: int, host: str) -> bool:
    s = requests.Session()
    s.trust_env = False
    r = s.get(f"http://{host}/", proxies={"http": f"http://127.0.0.1:{port}"}, timeout=10)
    return r.status_code == 403 and "X-Filterproxy-Reason" in r.headers


@pytest.fixture
def setup(tmp_path):
    (tmp_path / "adult.txt").write_text("blocked.example\n")
    cfg = write_config(
        tmp_path,
        """
        timezone: Asia/Ho_Chi_Minh
        default_group: kid
        lists:
          - {id: adult, category: adult, format: domains, match: subdomains, path: adult.txt}
    """,
        POLICY,
    )
    args = argparse.Namespace(config=str(cfg), extra_list=[], client_group=[], state_dir=str(tmp_path / "state"))
    return args, load_config(str(cfg)), tmp_path


def test_reuse_port_patch_matches_this_mitmproxy():
    _enable_reuse_port()  # raises if mitmproxy's listen() changed shape
    _enable_reuse_port()  # idempotent


def test_two_workers_share_one_port_reload_restart_stop(setup):
    args, cfg, tmp = setup
    pw = ProxyWorkers(args, cfg, ("127.0.0.1", 0), 2)
    pw.start()
    try:
        port = pw.port
        assert port and len(pw.pids) == 2
        assert listening_sockets(port) == 2
        assert (tmp / "state" / "mitmproxy" / "mitmproxy-ca.pem").exists()  # one CA, made before the workers
        assert all(blocked(port, "blocked.example") for _ in range(8))
        assert not blocked(port, "later.example")

        # reload: SIGHUP to every worker, engine rebuilt in a thread and swapped
        (tmp / "adult.txt").write_text("blocked.example\nlater.example\n")
        pw.reload()
        deadline = time.monotonic() + 20
        while not all(blocked(port, "later.example") for _ in range(8)):
            assert time.monotonic() < deadline, "workers did not reload"
            time.sleep(0.3)

        # a worker that dies is restarted; the other keeps serving meanwhile
        victim = pw.pids[0]
        os.kill(victim, signal.SIGKILL)
        while victim in pw.pids:  # (connections queued on the dying socket itself are reset: SO_REUSEPORT)
            time.sleep(0.05)
        assert all(blocked(port, "blocked.example") for _ in range(4))
        deadline = time.monotonic() + 20
        while len(pw.pids) < 2 or victim in pw.pids or listening_sockets(port) < 2:
            assert time.monotonic() < deadline, "worker not restarted"
            time.sleep(0.2)
    finally:
        pids = pw.pids
        pw.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert listening_sockets(port) == 0


def test_start_fails_cleanly_on_bad_config(setup):
    args, cfg, tmp = setup
    (tmp / "filterproxy.yaml").write_text("lists: [\n")
    pw = ProxyWorkers(args, cfg, ("127.0.0.1", 0), 2, ready_timeout=60)
    t = time.monotonic()
    with pytest.raises(RuntimeError, match="worker .* (failed to start|exited)"):
        pw.start()
    assert time.monotonic() - t < 30
    assert pw.pids == []


def test_start_fails_on_taken_address(setup):
    args, cfg, _ = setup
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(RuntimeError, match="cannot listen"):
            ProxyWorkers(args, cfg, s.getsockname(), 1).start()


def test_wireguard_is_one_worker(setup):
    args, cfg, _ = setup
    with pytest.raises(ValueError, match="one proxy worker"):
        ProxyWorkers(args, cfg, ("127.0.0.1", 0), 2, mode="wireguard")


def udp_sockets(port: int) -> int:
    n = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                next(f)
                n += sum(1 for line in f if int(line.split()[1].rsplit(":", 1)[1], 16) == port)
        except OSError:
            pass
    return n


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_transparent_and_wireguard_listeners(setup):
    """regular on the main address, transparent on its own port in every worker, WireGuard in worker 0 only."""
    args, cfg, tmp = setup
    tport, wport = free_port(), free_port(socket.SOCK_DGRAM)
    pw = ProxyWorkers(
        args,
        cfg,
        ("127.0.0.1", 0),
        2,
        mode=["regular", f"transparent@127.0.0.1:{tport}", f"wireguard@127.0.0.1:{wport}"],
    )
    with pw:
        assert listening_sockets(pw.port) == 2 and listening_sockets(tport) == 2
        assert udp_sockets(wport) == 1
        assert (tmp / "state" / "mitmproxy" / "wireguard.conf").exists()
        assert blocked(pw.port, "blocked.example")


def test_workers_exit_when_parent_is_killed(setup, tmp_path):
    """A SIGKILLed parent (no chance to stop its workers) must not leave proxies behind."""
    import subprocess
    import sys
    import textwrap

    args, cfg, _ = setup
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(f"""
        import argparse, sys, time
        from filterproxy.config import load_config
        from filterproxy.http.server import ProxyWorkers
        a = argparse.Namespace(config={args.config!r}, extra_list=[], client_group=[], state_dir={args.state_dir!r})
        pw = ProxyWorkers(a, load_config(a.config), ("127.0.0.1", 0), 2).start()
        print(" ".join(map(str, pw.pids)), flush=True)
        time.sleep(600)
    """)
    )
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = [int(x) for x in p.stdout.readline().split()]
    assert len(pids) == 2
    p.kill()
    p.wait()
    deadline = time.monotonic() + 15
    for pid in pids:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, f"worker {pid} outlived its parent"
            time.sleep(0.2)
