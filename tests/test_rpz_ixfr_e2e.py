"""The national RPZ by zone transfer, end to end: `filterproxy export rpz --out` writes the zone, a real Knot
runs the shipped deploy/knot/knot.conf (ports and paths changed) and serves it, a real Unbound takes it
with `rpz: primary:`. When the list changes, the export raises the serial, `knotc zone-reload` makes
Knot send NOTIFY, and Unbound fetches only the difference (IXFR): checked in Unbound's answers, in
Knot's log and in an IXFR asked of Knot directly.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.xfr
import pytest
from conftest import write_config
from dnslib import QTYPE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from filterproxy.lists.rpz import serial_gt

REPO = Path(__file__).resolve().parents[1]
KNOT = REPO / "deploy" / "knot"
GUIDE = REPO / "deploy/isp-rpz.md"
ZONE = "national.rpz."
POLL = 20.0  # seconds Unbound gets to pick up a change after the reload


def need(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")  # knotd, knotc: not on a user's PATH
    if not path:
        pytest.fail(f"{tool} not installed (test.sh installs the Debian package)")
    return path


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (DNS servers listen on both)."""
    while True:
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port


class AnswerEverything(BaseResolver):
    """The Internet for Unbound: every name exists at 192.0.2.1, so only the RPZ makes NXDOMAIN."""

    def resolve(self, request, handler):
        reply = request.reply()
        if request.q.qtype == QTYPE.A:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
        return reply


def guide_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", GUIDE.read_text(), re.S)


def guide_policy() -> str:
    """The group policy deploy/isp-rpz.md tells the ministry to write (the test exports with it)."""
    (block,) = [b for b in guide_blocks("yaml") if b.startswith("# policies/isp.yaml")]
    return block


def knot_conf(tmp: Path, zonefile: Path, port: int, unbound_port: int, other_port: int) -> str:
    """The shipped knot.conf with local ports and paths: every replaced line must still be in the file."""
    text = (KNOT / "knot.conf").read_text()
    subs = {
        "    user: knot:knot\n": "",
        'rundir: "/run/knot"': f'rundir: "{tmp}"',
        "listen: [ 0.0.0.0@53, ::@53 ]": f"listen: 127.0.0.1@{port}",
        "target: syslog": f'target: "{tmp}/knot.log"',
        'storage: "/var/lib/knot"': f'storage: "{tmp}/storage"',
        "address: 192.0.2.53@53": f"address: 127.0.0.1@{unbound_port}",
        "address: 198.51.100.53@53": f"address: 127.0.0.1@{other_port}",  # a second ISP, not listening
        "address: [ 192.0.2.0/24, 198.51.100.0/24 ]": "address: [ 127.0.0.1/32 ]",
        'file: "/var/lib/filterproxy-rpz/national.rpz"': f'file: "{zonefile}"',
    }
    for old, new in subs.items():
        assert text.count(old) == 1, f"deploy/knot/knot.conf no longer has {old!r}"
        text = text.replace(old, new)
    return text


def unbound_conf(tmp: Path, port: int, knot_port: int, upstream_port: int) -> str:
    return f"""
server:
    interface: 127.0.0.1@{port}
    port: {port}
    do-ip6: no
    do-not-query-localhost: no
    username: ""
    chroot: ""
    directory: "{tmp}"
    pidfile: "{tmp}/unbound.pid"
    use-syslog: no
    logfile: "{tmp}/unbound.log"
    verbosity: 1
    module-config: "respip iterator"
    num-threads: 1
    cache-max-ttl: 0
    access-control: 127.0.0.0/8 allow
rpz:
    name: "{ZONE}"
    primary: 127.0.0.1@{knot_port}
    allow-notify: 127.0.0.1
    zonefile: "{tmp}/unbound-national.rpz"
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@{upstream_port}
"""


@contextlib.contextmanager
def running(cmd: list[str], log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_for(what: str, cond: Callable[[], bool], timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{tails}")
        time.sleep(0.2)


def rcode(name: str, port: int) -> int:
    try:
        r = dns.query.udp(dns.message.make_query(name + ".", "A"), "127.0.0.1", port=port, timeout=1)
    except (dns.exception.Timeout, OSError):
        return -1
    return r.rcode()


def soa_serial(port: int) -> int:
    r = dns.query.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=port, timeout=2)
    return r.answer[0][0].serial


def export(cfg: Path, out: Path) -> str:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "filterproxy",
            "export",
            "rpz",
            "--config",
            str(cfg),
            "--group",
            "isp",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return r.stderr


def zone_serial(path: Path) -> int:
    m = re.search(r"^@ SOA \S+ \S+ (\d+) ", path.read_text(), re.M)
    assert m, path.read_text()[:300]
    return int(m.group(1))


def ixfr_changes(port: int, serial: int) -> tuple[int, int, set[str], set[str]]:
    """Ask Knot for IXFR from ``serial``: (first SOA serial, second SOA serial, deleted owners, added owners).
    An incremental answer is SOA(new) SOA(old) deletions SOA(new) additions SOA(new); a full zone (AXFR
    style) has no second SOA and fails the checks of the caller."""
    rrs: list[tuple[str, int, object]] = []
    origin = dns.name.from_text(ZONE)
    for msg in dns.query.xfr(
        "127.0.0.1", ZONE, rdtype=dns.rdatatype.IXFR, serial=serial, port=port, lifetime=10, relativize=False
    ):
        for rrset in msg.answer:
            for rd in rrset:
                rrs.append((rrset.name.relativize(origin).to_text(), rrset.rdtype, rd))
    assert rrs and rrs[0][1] == dns.rdatatype.SOA, rrs[:3]
    first = rrs[0][2].serial  # type: ignore[attr-defined]
    assert rrs[1][1] == dns.rdatatype.SOA, f"not an incremental transfer: {[(n, t) for n, t, _ in rrs[:4]]}"
    second = rrs[1][2].serial  # type: ignore[attr-defined]
    soas = [i for i, (_n, t, _r) in enumerate(rrs) if t == dns.rdatatype.SOA]
    assert len(soas) == 4 and soas[-1] == len(rrs) - 1, f"expected one changeset, SOA at {soas} of {len(rrs)}"
    deleted = {n for n, _t, _r in rrs[soas[1] + 1 : soas[2]]}
    added = {n for n, _t, _r in rrs[soas[2] + 1 : soas[3]]}
    return first, second, deleted, added


@pytest.fixture
def tmp() -> Iterator[Path]:
    # a short path of our own: Knot's control socket lives in rundir and a UNIX socket path is at most 107 bytes
    d = Path(tempfile.mkdtemp(prefix="rpzixfr-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@dataclass
class Rig:
    """The list, the zone file, Knot's and Unbound's configs and ports (Unbound forwards to a fake Internet)."""

    tmp: Path
    cfg: Path
    national: Path
    zonefile: Path
    kconf: Path
    uconf: Path
    kport: int
    ubport: int

    @property
    def logs(self) -> list[Path]:
        return [self.tmp / n for n in ("knot.log", "unbound.log", "knotd.out", "unbound.out")]

    def knot(self) -> contextlib.AbstractContextManager[subprocess.Popen]:
        return running([need("knotd"), "-c", str(self.kconf)], self.tmp / "knotd.out")

    def unbound(self) -> contextlib.AbstractContextManager[subprocess.Popen]:
        return running([need("unbound"), "-d", "-c", str(self.uconf)], self.tmp / "unbound.out")

    def export(self, names: list[str]) -> tuple[int, str]:
        """Write the list, export it; returns the zone's serial and what the command said."""
        self.national.write_text("".join(n + "\n" for n in names))
        said = export(self.cfg, self.zonefile)
        return zone_serial(self.zonefile), said

    def knot_log(self) -> str:
        return (self.tmp / "knot.log").read_text()

    def wait_knot_serial(self, serial: int) -> None:
        wait_for(f"Knot serves serial {serial}", lambda: _serial_or_none(self.kport) == serial, 20, self.logs)

    def wait_unbound(self, blocked: list[str], open_: list[str]) -> None:
        def ok() -> bool:
            return all(rcode(n, self.ubport) == dns.rcode.NXDOMAIN for n in blocked) and all(
                rcode(n, self.ubport) == dns.rcode.NOERROR for n in open_
            )

        wait_for(f"Unbound blocks {blocked}, not {open_}", ok, POLL, self.logs)

    def assert_ixfr_logged(self, old: int, new: int) -> None:
        """Knot's log: NOTIFY to Unbound with the new serial, then Unbound's IXFR from old to new (no AXFR).
        Called before the test asks Knot for an IXFR itself, so the transfer in the log is Unbound's."""
        log = self.knot_log()
        assert re.search(rf"notify, outgoing, remote 127\.0\.0\.1@{self.ubport}, serial {new}\n", log), log[-3000:]
        ixfr = re.search(rf"IXFR, outgoing, remote (127\.0\.0\.1@\d+), started, serial {old} -> {new}\n", log)
        assert ixfr, log[-3000:]
        assert f"IXFR, outgoing, remote {ixfr.group(1)}, finished" in log, log[-3000:]
        assert not re.search(rf"AXFR, outgoing.*serial {new}\b", log), log[-3000:]


@pytest.fixture
def rig(tmp) -> Iterator[Rig]:
    knotc = need("knotc")
    cfg = write_config(
        tmp,
        """
        default_group: isp
        lists:
          - {id: national, category: illegal, format: domains, match: subdomains, path: national.txt}
        """,
        {"isp": guide_policy()},
    )
    kport, ubport, upport, other = free_port(), free_port(), free_port(), free_port()
    r = Rig(
        tmp, cfg, tmp / "national.txt", tmp / "national.rpz", tmp / "knot.conf", tmp / "unbound.conf", kport, ubport
    )
    (tmp / "storage").mkdir()  # /var/lib/knot, which the knot package creates
    r.kconf.write_text(knot_conf(tmp, r.zonefile, kport, ubport, other))
    check = subprocess.run([knotc, "-c", str(r.kconf), "conf-check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    r.uconf.write_text(unbound_conf(tmp, ubport, kport, upport))
    check = subprocess.run(["unbound-checkconf", str(r.uconf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    upstream = DNSServer(
        AnswerEverything(), port=upport, address="127.0.0.1", logger=DNSLogger("-request,-reply,-truncated")
    )
    upstream.start_thread()
    try:
        yield r
    finally:
        upstream.stop()


def test_list_change_reaches_unbound_by_notify_and_ixfr(rig):
    s1, said = rig.export(["forbidden.example", "removed.example", "stays.example"])
    assert "written" in said
    with rig.unbound():
        with rig.knot():
            rig.wait_knot_serial(s1)
            # Unbound's first copy (a full transfer), then the list as Unbound answers it
            rig.wait_unbound(["forbidden.example", "x.forbidden.example", "removed.example", "stays.example"], [])
            rig.wait_unbound([], ["added.example", "control.example"])

            # the same list again: same serial, file not rewritten, nothing for secondaries to fetch
            before = rig.zonefile.stat().st_mtime_ns
            same, said = rig.export(["forbidden.example", "removed.example", "stays.example"])
            assert "unchanged" in said and same == s1 and rig.zonefile.stat().st_mtime_ns == before

            # the list changes: one name added, one removed; the serial increases; Knot reloads
            s2, _ = rig.export(["forbidden.example", "stays.example", "added.example"])
            assert serial_gt(s2, s1), (s1, s2)
            r = subprocess.run(
                [need("knotc"), "-c", str(rig.kconf), "zone-reload", ZONE], capture_output=True, text=True
            )
            assert r.returncode == 0, r.stdout + r.stderr
            rig.wait_knot_serial(s2)
            rig.wait_unbound(["added.example", "sub.added.example", "forbidden.example"], ["removed.example"])
            assert rcode("control.example", rig.ubport) == dns.rcode.NOERROR
            rig.assert_ixfr_logged(s1, s2)

            # the IXFR itself holds exactly the change of the list
            first, second, deleted, added = ixfr_changes(rig.kport, s1)
            assert (first, second) == (s2, s1)
            assert deleted == {"removed.example", "*.removed.example"}
            assert added == {"added.example", "*.added.example"}
            # the guide's kdig command shows the same change
            kdig = subprocess.run(
                [need("kdig"), "@127.0.0.1", "-p", str(rig.kport), "-t", f"IXFR={s1}", ZONE],
                capture_output=True,
                text=True,
                timeout=30,
            )
            owners = {line.split()[0] for line in kdig.stdout.splitlines() if line and not line.startswith(";")}
            assert owners == {
                ZONE,
                f"removed.example.{ZONE}",
                f"*.removed.example.{ZONE}",
                f"added.example.{ZONE}",
                f"*.added.example.{ZONE}",
            }, kdig.stdout

            # transfers only to the addresses in the acl (127.0.0.1 here): another address is refused
            with pytest.raises(dns.xfr.TransferError):
                list(dns.query.xfr("127.0.0.1", ZONE, port=rig.kport, lifetime=10, source="127.0.0.2"))

        # the list changes while Knot is down: the journal holds the zone it served, so after the restart
        # Knot still loads the difference and Unbound gets it by IXFR
        s3, _ = rig.export(["forbidden.example", "added.example"])
        assert serial_gt(s3, s2)
        with rig.knot():
            rig.wait_knot_serial(s3)
            rig.wait_unbound(["added.example", "forbidden.example"], ["stays.example", "removed.example"])
            rig.assert_ixfr_logged(s2, s3)


def _serial_or_none(port: int) -> int | None:
    try:
        return soa_serial(port)
    except Exception:  # not listening yet, or the zone not loaded yet
        return None


def _unit_directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_rpz_units_verify_and_match_the_knot_config(tmp):
    """The timer and service that export and reload: systemd-analyze verify finds nothing, the export
    command parses with the real CLI, writes the file Knot loads, and knotc reloads the zone Knot serves."""
    from filterproxy.cli import build_parser

    tool = need("systemd-analyze")
    units = ["filterproxy-rpz.service", "filterproxy-rpz.timer"]
    for u in units:
        text = (KNOT / u).read_text().replace("/opt/filterproxy/.venv/bin/filterproxy", "/bin/true")
        (tmp / u).write_text(text)
    r = subprocess.run(
        [tool, "verify", "--man=no", *[f"./{u}" for u in units]], cwd=tmp, capture_output=True, text=True
    )
    noise = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert r.returncode == 0 and noise == [], noise

    svc = _unit_directives(KNOT / "filterproxy-rpz.service")
    (export_cmd,) = svc["ExecStart"]
    argv = shlex.split(export_cmd)
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.export_command) == ("export", "rpz")
    conf = (KNOT / "knot.conf").read_text()
    assert f'file: "{args.out}"' in conf
    assert os.path.dirname(args.out) == "/var/lib/" + svc["StateDirectory"][0]
    (reload_cmd,) = svc["ExecStartPost"]
    assert shlex.split(reload_cmd.lstrip("+"))[1:] == ["zone-reload", ZONE]
    assert f"domain: {ZONE}" in conf
    timer = _unit_directives(KNOT / "filterproxy-rpz.timer")
    assert timer["Unit"] == ["filterproxy-rpz.service"]


def test_isp_guide_commands_and_paths_match_the_shipped_files():
    """deploy/isp-rpz.md: its filterproxy commands parse with the real CLI, export to the file Knot loads,
    and name the files that exist."""
    from filterproxy.cli import build_parser

    parser = build_parser()
    outs = []
    for block in guide_blocks("sh"):
        for line in block.splitlines():
            m = re.search(r"(?:^|\s)filterproxy\s+(export .*)$", line.split(" #", 1)[0])
            if m:
                args = parser.parse_args(shlex.split(m.group(1)))
                outs.append(args.out)
    conf = (KNOT / "knot.conf").read_text()
    assert outs and all(f'file: "{o}"' in conf for o in outs), outs
    text = GUIDE.read_text()
    for path in re.findall(r"deploy/knot/[\w.-]+", text):
        assert (REPO / path).is_file(), path
    assert f"]({GUIDE.name})" in (REPO / "deploy/ministry.md").read_text()  # linked from the ministry's guide
