"""`filterproxy run --dns-workers 2`: two processes on one address (SO_REUSEPORT), one set of metrics,
reloads reach both, and a worker does not outlive the main process."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import urllib.request
from pathlib import Path

import dns.exception
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_dns_server import LISTS, addrs, ask, ede, start, write_setup  # noqa: E402

from filterproxy.dns.testing import FakeUpstream, synth_a  # noqa: E402


@pytest.fixture()
def two(tmp_path):
    up = FakeUpstream().start()
    cfg = write_setup(tmp_path, upstreams=[up.address])
    srv = start(tmp_path, cfg, "--dns-workers", "2")
    m = re.search(r"2 processes \(pids (\d+) (\d+)\)", srv.output())
    assert m, srv.output()[-3000:]
    yield srv, int(m.group(1)), int(m.group(2)), tmp_path
    srv.stop()
    up.stop()
    assert "Traceback" not in srv.output(), srv.output()[-4000:]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_both_processes_answer_and_count(two):
    srv, main, worker, _tmp = two
    assert main == srv.proc.pid and _alive(worker)
    for i in range(200):  # a fresh source port each: the kernel spreads them over both sockets
        m = ask(srv.port, "www.adult.test" if i % 2 else f"ok{i}.example")
        if i % 2:
            assert addrs(m) == ["127.0.0.1"] and ede(m) == (17, "category/adult/test-adult")
        else:
            assert addrs(m) == [synth_a(f"ok{i}.example")]
    assert addrs(ask(srv.port, "www.adult.test", tcp=True)) == ["127.0.0.1"]

    # with the main process stopped, the worker still answers its share of new source ports
    os.kill(main, signal.SIGSTOP)
    try:
        answered = 0
        for _ in range(30):
            try:
                ask(srv.port, "www.adult.test", timeout=0.3)
                answered += 1
            except dns.exception.Timeout:
                pass
    finally:
        os.kill(main, signal.SIGCONT)
    assert 0 < answered < 30, answered

    # one /metrics for both: the worker's counts arrive through the shared folder (every 5 s)
    deadline = time.monotonic() + 20
    total = 0.0
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(srv.metrics_url + "/metrics", timeout=5).read().decode()
        total = sum(
            float(v)
            for v in re.findall(r'^filterproxy_dns_queries_total\{[^}]*protocol="udp"[^}]*\} (\S+)', text, re.M)
        )
        if total >= 200 + answered:
            break
        time.sleep(1)
    assert total >= 200 + answered, total


def test_reload_reaches_the_worker_and_worker_leaves_with_main(two):
    srv, main, worker, tmp = two
    assert addrs(ask(srv.port, "later.test")) == [synth_a("later.test")]
    (tmp / "adult.txt").write_text(LISTS["adult.txt"] + "later.test\n")
    srv.signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # both processes must have swapped: ask from many source ports
        if all(addrs(ask(srv.port, "later.test")) == ["127.0.0.1"] for _ in range(20)):
            break
        time.sleep(0.5)
    results = [addrs(ask(srv.port, "later.test")) for _ in range(60)]
    assert all(r == ["127.0.0.1"] for r in results), results

    os.kill(main, signal.SIGKILL)  # no clean shutdown: the worker notices its parent is gone
    srv.proc.wait(5)
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(worker)
