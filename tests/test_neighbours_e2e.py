"""MAC client rules for IPv4 and IPv6 neighbours, in two network namespaces made for the test.

A veth pair joins a gateway namespace (10.99.0.1, fd00:99::1) and a client namespace (10.99.0.2,
fd00:99::2, a fixed MAC). The client talks to the gateway once, so the gateway's kernel learns it by ARP
and by neighbour discovery; then the reader, and ``filterproxy run`` answering ``dig`` over both
families, run inside the gateway namespace. No address exists outside these namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid

import pytest
from conftest import REPO, start_logged, write_config

MAC = "02:00:00:99:00:02"
CLIENT_V4, CLIENT_V6 = "10.99.0.2", "fd00:99::2"
GW_V4, GW_V6 = "10.99.0.1", "fd00:99::1"

POLICIES = {
    "kid": "name: Kid\ntone: child\nblock: [blocked.test]\nblock_mode: nxdomain\n",
    "other": "name: Other\ntone: teen\nblock: [blocked.test]\nblock_mode: blockpage\n",
}


def need(tool: str) -> str:
    path = shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if not path:
        pytest.fail(f"{tool} not installed (test.sh installs the Debian package)")
    return path


def sh(*cmd: str) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}"
    return r


def _gateway_neighbours(ip: str, ns: str) -> dict[str, str]:
    out = sh(ip, "-n", ns, "-j", "neigh", "show").stdout
    return {e["dst"]: e.get("lladdr", "") for e in json.loads(out or "[]")}


@pytest.fixture
def lan():
    ip = need("ip")
    tag = uuid.uuid4().hex[:6]
    gw, cl = f"fpngw{tag}", f"fpncl{tag}"
    r = subprocess.run([ip, "netns", "add", gw], capture_output=True, text=True)
    assert r.returncode == 0, f"cannot create network namespaces (test.sh runs the tests as root): {r.stderr.strip()}"
    try:
        sh(ip, "netns", "add", cl)
        for cmd in (
            f"link add vg{tag} netns {gw} type veth peer name vc{tag} netns {cl}",
            f"-n {cl} link set vc{tag} address {MAC}",
            f"-n {gw} addr add {GW_V4}/24 dev vg{tag}",
            f"-n {gw} addr add {GW_V6}/64 dev vg{tag} nodad",
            f"-n {cl} addr add {CLIENT_V4}/24 dev vc{tag}",
            f"-n {cl} addr add {CLIENT_V6}/64 dev vc{tag} nodad",
            f"-n {gw} link set lo up",
            f"-n {cl} link set lo up",
            f"-n {gw} link set vg{tag} up",
            f"-n {cl} link set vc{tag} up",
        ):
            sh(ip, *cmd.split())
        # the client sends one datagram to each gateway address: ARP and neighbour discovery run, and the
        # gateway's kernel records the client (the Neighbor Solicitation / ARP request carries its MAC)
        poke = (
            "import socket\n"
            f"for fam, addr in ((socket.AF_INET, '{GW_V4}'), (socket.AF_INET6, '{GW_V6}')):\n"
            "    socket.socket(fam, socket.SOCK_DGRAM).sendto(b'x', (addr, 9))\n"
        )
        deadline = time.monotonic() + 30
        while True:
            sh(ip, "netns", "exec", cl, sys.executable, "-c", poke)
            seen = _gateway_neighbours(ip, gw)
            if seen.get(CLIENT_V4) == MAC and seen.get(CLIENT_V6) == MAC:
                break
            assert time.monotonic() < deadline, f"the gateway never learnt the client: {seen}"
            time.sleep(0.2)
        yield ip, gw, cl
    finally:
        for ns in (gw, cl):
            subprocess.run([ip, "netns", "del", ns], capture_output=True)


def test_reader_maps_ipv4_and_ipv6_neighbours_to_their_mac(lan):
    ip, gw, _cl = lan
    code = "import json; from filterproxy.neighbours import read_neighbours; print(json.dumps(read_neighbours()))"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run(
        [ip, "netns", "exec", gw, sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 0, r.stderr
    table = json.loads(r.stdout)
    assert table[CLIENT_V4] == MAC and table[CLIENT_V6] == MAC, table


def dig(ip: str, ns: str, server: str, port: int, name: str, qtype: str) -> str:
    r = subprocess.run(
        [ip, "netns", "exec", ns, need("dig"), f"@{server}", "-p", str(port), name, qtype, "+tries=1", "+time=10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def run_in(
    ip: str, ns: str, cfg, cwd, extra: list[str], ready_on: tuple[str, ...]
) -> tuple[subprocess.Popen, list[str], threading.Event]:
    """``filterproxy run`` inside namespace ``ns`` (DNS on port 5353 of every address, no proxy, no metrics):
    the process, its output lines so far, and an event set once every line of ``ready_on`` was logged."""
    cmd = [ip, "netns", "exec", ns, sys.executable, "-m", "filterproxy", "run", "--config", str(cfg)]
    cmd += ["--dns-listen", "[::]:5353", "--proxy-listen", "off", "--metrics-listen", "off", *extra]
    return start_logged(cmd, ready_on, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=cwd)


def test_mac_rule_gives_the_group_to_ipv6_and_ipv4_clients(lan, tmp_path):
    """The client's MAC maps it to 'kid' (NXDOMAIN) over IPv6 and IPv4; the gateway itself, with no MAC
    rule, gets the default group 'other' (a block page address), so the answers tell the groups apart."""
    ip, gw, cl = lan
    cfg = write_config(
        tmp_path,
        f"""
        timezone: Asia/Ho_Chi_Minh
        upstreams: {{servers: ["127.0.0.1:9"]}}
        default_group: other
        clients:
          - {{mac: "{MAC}", group: kid}}
        lists: []
        """,
        POLICIES,
    )
    port = 5353
    p, out, ready = run_in(ip, gw, cfg, tmp_path, ["--state-dir", str(tmp_path / "state")], ("DNS listening on",))
    try:
        assert ready.wait(90), "".join(out)
        v6 = dig(ip, cl, GW_V6, port, "blocked.test", "AAAA")
        assert "status: NXDOMAIN" in v6, v6  # IPv6 client → its MAC → kid
        v4 = dig(ip, cl, GW_V4, port, "blocked.test", "A")
        assert "status: NXDOMAIN" in v4, v4  # IPv4 client → its MAC → kid
        own = dig(ip, gw, "::1", port, "blocked.test", "AAAA")
        assert "status: NOERROR" in own and "::1" in own.split("ANSWER SECTION:")[1], own  # no MAC: other
    finally:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def _api(ip: str, ns: str, method: str, url: str, token: str, body: dict | None = None) -> object:
    """One admin API call from inside the gateway namespace (the only place its address exists)."""
    code = (
        "import json, sys, urllib.request\n"
        "method, url, token, body = sys.argv[1:5]\n"
        "req = urllib.request.Request(url, method=method, data=body.encode() or None,\n"
        "    headers={'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json'})\n"
        "print(urllib.request.urlopen(req, timeout=30).read().decode())\n"
    )
    payload = json.dumps(body) if body is not None else ""
    r = subprocess.run(
        [ip, "netns", "exec", ns, sys.executable, "-c", code, method, url, token, payload],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_new_device_on_the_lan_is_listed_for_naming_then_named_by_its_mac(lan, tmp_path):
    """``GET /devices/unnamed`` on a real ``filterproxy run`` in the gateway namespace lists the client (its MAC,
    both addresses) from the kernel's neighbour table; once named by that MAC (``POST /devices``, what the
    console's form sends) it leaves the list, and its queries get the group it was put in."""
    from filterproxy.config import load_config
    from filterproxy.passwords import hash_password
    from filterproxy.state.model import Actor
    from filterproxy.state.store import Store

    ip, gw, cl = lan
    cfg = write_config(
        tmp_path,
        f"""
        timezone: Asia/Ho_Chi_Minh
        server: {{state_dir: "{tmp_path / "state"}"}}
        upstreams: {{servers: ["127.0.0.1:9"]}}
        default_group: other
        lists: []
        """,
        POLICIES,
    )
    store = Store.for_config(load_config(str(cfg)))
    try:
        store.add_user(Actor("system", "system"), "boss", "admin", hash_password("not-used-here"))
        token = store.create_token(Actor("system", "system"), "test", "boss")[1]
    finally:
        store.close()
    port, admin = 5353, 8099
    p, out, ready = run_in(
        ip, gw, cfg, tmp_path, ["--admin-listen", f"127.0.0.1:{admin}"], ("DNS listening on", "admin API on")
    )
    base = f"http://127.0.0.1:{admin}/api/v1"
    try:
        assert ready.wait(90), "".join(out)
        unnamed = _api(ip, gw, "GET", f"{base}/devices/unnamed", token)
        assert isinstance(unnamed, list)
        row = next((u for u in unnamed if u["mac"] == MAC), None)
        assert row is not None, unnamed
        assert row["addresses"] == [CLIENT_V4, CLIENT_V6], row
        assert "status: NOERROR" in dig(ip, cl, GW_V4, port, "blocked.test", "A")  # unnamed: the default group
        named = _api(ip, gw, "POST", f"{base}/devices", token, {"name": "new-tablet", "group": "kid", "mac": MAC})
        assert isinstance(named, dict) and named["mac"] == MAC, named
        assert all(u["mac"] != MAC for u in _api(ip, gw, "GET", f"{base}/devices/unnamed", token))  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while "status: NXDOMAIN" not in (answer := dig(ip, cl, GW_V4, port, "blocked.test", "A")):
            assert time.monotonic() < deadline, answer  # the live state and the neighbour table: seconds
            time.sleep(0.3)
    finally:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
