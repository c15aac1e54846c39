"""Test and benchmark helpers: a fake upstream DNS server and a ``filterproxy run`` subprocess.

:class:`FakeUpstream` is an authoritative-style server on loopback (UDP and TCP, blocking threads) built
with dnslib — an implementation independent of :mod:`filterproxy.dns.wire`. It answers from a small
zone, synthesises A/AAAA for any other name, can truncate over UDP, delay, fail or go away, and counts
what it was asked. Replies are built once per question and then served with the ID patched, so it
keeps up with the benchmark. Run it alone with ``python -m filterproxy.dns.testing --port 5399``.

:class:`ServerProcess` starts ``filterproxy run`` as a real subprocess and waits for its
``DNS listening on HOST:PORT`` line.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable

from dnslib import AAAA, CNAME, QTYPE, RCODE, RD, RR, SOA, A, DNSRecord


def _h(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big")


def synth_a(name: str) -> str:
    """The address the fake upstream gives any name it has no records for (stable per name)."""
    h = _h(name)
    return f"198.18.{(h >> 8) & 0xFF}.{h & 0xFF or 1}"


def synth_aaaa(name: str) -> str:
    h = _h(name)
    return f"2001:db8::{(h >> 16) & 0xFFFF:x}:{h & 0xFFFF:x}"


class FakeUpstream:
    """A loopback DNS server with programmable answers (see the module docstring).

    ``zone`` maps a name to records ``(type, value[, ttl])``: type is a dnslib type name
    ("A", "AAAA", "CNAME", "TXT", "MX"...) or "HTTPS"/"SVCB" with raw rdata bytes as value.
    Names in ``nxdomain`` (or under ``nx.test``) get NXDOMAIN + SOA (``negative_ttl``); names in
    ``truncate`` get TC=1 over UDP; ``servfail`` names SERVFAIL; ``ttl`` is the default TTL.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        zone: dict | None = None,
        ttl: int = 300,
        nxdomain: set[str] | None = None,
        truncate: set[str] | None = None,
        servfail: set[str] | None = None,
        negative_ttl: int = 60,
        delay: float = 0.0,
        short_ttl_suffix: str | None = None,
        tcp: bool = True,
    ):
        self.host, self.port = host, port
        self.zone = {k.lower().rstrip("."): v for k, v in (zone or {}).items()}
        self.ttl = ttl
        self.nxdomain = {n.lower() for n in (nxdomain or ())}
        self.truncate = {n.lower() for n in (truncate or ())}
        self.servfail = {n.lower() for n in (servfail or ())}
        self.negative_ttl = negative_ttl
        self.delay = delay
        self.short_ttl_suffix = short_ttl_suffix
        self.with_tcp = tcp
        self.queries: Counter = Counter()  # (name, type name, "udp"/"tcp") → count
        self._built: dict[tuple[bytes, str], bytes] = {}
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._running = False

    # ------------------------------------------------------------------ answers
    def answer(self, request: bytes, proto: str) -> bytes | None:
        if len(request) < 12:
            return None
        end = 12
        try:
            while request[end]:
                end += 1 + request[end]
        except IndexError:
            return None
        key = (request[12 : end + 5].lower(), proto)
        built = self._built.get(key)
        if built is None and self._plain and end + 5 <= len(request) and not self.delay:
            fast = self._synth(request, end, proto)
            if fast is not None:
                return fast
        if built is None:
            try:
                q = DNSRecord.parse(request)
            except Exception:
                return None
            name = str(q.q.qname).rstrip(".").lower()
            self.queries[(name, QTYPE.get(q.q.qtype), proto)] += 1
            built = self._build(q, name, proto)
            if built is None:
                return None
            if not self.delay:
                self._built[key] = built
        else:
            name = _name_from(request[12 : end + 1])
            self.queries[(name, QTYPE.get(struct.unpack_from(">H", request, end + 1)[0]), proto)] += 1
        return request[:2] + built[2:12] + request[12 : end + 5] + built[end + 5 :]

    @property
    def _plain(self) -> bool:
        return not (self.zone or self.nxdomain or self.truncate or self.servfail)

    def _synth(self, request: bytes, end: int, proto: str) -> bytes | None:
        """Hand-built A/AAAA reply for a plain name (benchmarks: no dnslib per query)."""
        qtype, qclass = struct.unpack_from(">HH", request, end + 1)
        if qtype not in (1, 28) or qclass != 1 or request[2] & 0x80:
            return None
        name = _name_from(request[12 : end + 1])
        if name.endswith("nx.test"):
            return None
        ttl = 1 if self.short_ttl_suffix and name.endswith(self.short_ttl_suffix) else self.ttl
        if qtype == 1:
            rdata = socket.inet_aton(synth_a(name))
        else:
            rdata = socket.inet_pton(socket.AF_INET6, synth_aaaa(name))
        has_opt = struct.unpack_from(">H", request, 10)[0] > 0
        flags = 0x8000 | 0x0400 | (request[2] << 8 & 0x0100) | 0x0080
        out = (
            request[:2]
            + struct.pack(">HHHHH", flags, 1, 1, 0, 1 if has_opt else 0)
            + request[12 : end + 5]
            + b"\xc0\x0c"
            + struct.pack(">HHIH", qtype, 1, ttl, len(rdata))
            + rdata
        )
        if has_opt:
            out += b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
        self.queries[(name, "A" if qtype == 1 else "AAAA", proto)] += 1
        return out

    def _build(self, q: DNSRecord, name: str, proto: str) -> bytes | None:
        r = q.reply()
        qt = QTYPE.get(q.q.qtype)
        if name in self.servfail:
            r.header.rcode = RCODE.SERVFAIL
            return r.pack()
        if name in self.truncate and proto == "udp":
            r.header.tc = 1
            return r.pack()
        ttl = self.ttl
        if self.short_ttl_suffix and name.endswith(self.short_ttl_suffix):
            ttl = 1
        if name in self.nxdomain or name.endswith("nx.test"):
            r.header.rcode = RCODE.NXDOMAIN
            r.add_auth(self._soa(name))
            return r.pack()
        self._resolve(r, name, qt, ttl)
        data = r.pack()
        if proto == "udp" and len(data) > 512 and not q.ar:
            r2 = q.reply()
            r2.header.tc = 1
            return r2.pack()
        return data

    def _resolve(self, r: DNSRecord, name: str, qt: str, ttl: int) -> None:
        """Fill ``r`` from the zone, following CNAMEs (8 hops at most); names not in it get synthesised
        A/AAAA records, other types an SOA."""
        cur = name
        for _hop in range(8):
            recs = self.zone.get(cur)
            if recs is None:
                if qt == "A":
                    r.add_answer(RR(cur, QTYPE.A, rdata=A(synth_a(cur)), ttl=ttl))
                elif qt == "AAAA":
                    r.add_answer(RR(cur, QTYPE.AAAA, rdata=AAAA(synth_aaaa(cur)), ttl=ttl))
                elif not r.rr:
                    r.add_auth(self._soa(cur))
                return
            cname = [x for x in recs if x[0] == "CNAME"]
            if cname and qt != "CNAME":
                t = cname[0]
                r.add_answer(RR(cur, QTYPE.CNAME, rdata=CNAME(t[1]), ttl=t[2] if len(t) > 2 else ttl))
                cur = str(t[1]).rstrip(".").lower()
                continue
            if not _add_records(r, cur, recs, qt, ttl) and not r.rr:
                r.add_auth(self._soa(cur))
            return

    def _soa(self, name: str) -> RR:
        zone = name.split(".", 1)[-1] if "." in name else name
        return RR(
            zone,
            QTYPE.SOA,
            ttl=3600,
            rdata=SOA("ns.fake.test", "admin.fake.test", (1, 3600, 600, 86400, self.negative_ttl)),
        )

    # ------------------------------------------------------------------ serving
    def start(self) -> FakeUpstream:
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        want = self.port
        for _attempt in range(50):  # port 0: UDP picks one, TCP must get the same (retry if it is taken)
            u = socket.socket(fam, socket.SOCK_DGRAM)  # no SO_REUSEADDR: a port in use is an error, not shared
            u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            u.bind((self.host, want))
            port = u.getsockname()[1]
            t = None
            if self.with_tcp:
                t = socket.socket(fam, socket.SOCK_STREAM)
                t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    t.bind((self.host, port))
                except OSError:
                    t.close()
                    u.close()
                    if want:
                        raise
                    continue
                t.listen(64)
            self.port, self._udp, self._tcp = port, u, t
            break
        else:
            raise OSError("no free port for the fake upstream")
        self._running = True
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True, name="fake-upstream-udp")]
        if self.with_tcp:
            self._threads.append(threading.Thread(target=self._serve_tcp, daemon=True, name="fake-upstream-tcp"))
        for th in self._threads:
            th.start()
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        self._running = False
        for s in (self._udp, self._tcp):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        for th in self._threads:
            th.join(2)
        self._udp = self._tcp = None

    def _serve_udp(self) -> None:
        s = self._udp
        assert s is not None  # start() bound it before starting this thread
        while self._running:
            try:
                data, addr = s.recvfrom(65535)
            except OSError:
                return
            if not self._running:
                return
            if self.delay:
                time.sleep(self.delay)
            try:
                out = self.answer(data, "udp")
            except Exception:
                out = None
            if out:
                try:
                    s.sendto(out, addr)
                except OSError:
                    pass

    def _serve_tcp(self) -> None:
        s = self._tcp
        assert s is not None  # start() started this thread only with a TCP socket
        while self._running:
            try:
                conn, _ = s.accept()
            except OSError:
                return
            threading.Thread(target=self._tcp_conn, args=(conn,), daemon=True).start()

    def _tcp_conn(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            while self._running:
                hdr = _recv_exact(conn, 2)
                if hdr is None:
                    return
                data = _recv_exact(conn, struct.unpack(">H", hdr)[0])
                if data is None:
                    return
                if self.delay:
                    time.sleep(self.delay)
                out = self.answer(data, "tcp")
                if out:
                    conn.sendall(struct.pack(">H", len(out)) + out)
        except OSError:
            pass
        finally:
            conn.close()

    def count(self, name: str, qtype: str = "A", proto: str | None = None) -> int:
        """How often ``name``/``qtype`` was asked (over ``proto``, or both)."""
        name = name.lower().rstrip(".")
        return sum(n for (nm, t, p), n in self.queries.items() if nm == name and t == qtype and (proto in (None, p)))


def _add_records(r: DNSRecord, name: str, recs: Iterable[tuple], qt: str, ttl: int) -> bool:
    """Add the zone records ``recs`` of ``name`` that have type ``qt`` to the answer; False when none has."""
    found = False
    for rec in recs:
        rt, val = rec[0], rec[1]
        rttl = rec[2] if len(rec) > 2 else ttl
        if rt != qt:
            continue
        found = True
        if rt in ("HTTPS", "SVCB"):
            r.add_answer(RR(name, getattr(QTYPE, rt), rdata=RD(val), ttl=rttl))
        else:
            r.add_answer(*RR.fromZone(f"{name}. {rttl} IN {rt} {val}"))
    return found


def _name_from(wire_name: bytes) -> str:
    labels, i = [], 0
    while i < len(wire_name) and wire_name[i]:
        ln = wire_name[i]
        labels.append(wire_name[i + 1 : i + 1 + ln].decode("ascii", "replace").lower())
        i += 1 + ln
    return ".".join(labels)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


# ---------------------------------------------------------------- filterproxy as a subprocess

_LISTEN_RE = re.compile(r"DNS listening on \[?([0-9a-fA-F:.]+)\]?:(\d+)")
_METRICS_RE = re.compile(r"metrics on (https?://\S+)/metrics")


class ServerProcess:
    """``filterproxy run`` in a subprocess; ``start()`` returns once it logged ``DNS listening on``."""

    def __init__(self, args: list[str], *, log_path: str, env: dict | None = None, python: str | None = None):
        self.args = args
        self.log_path = log_path
        self.env = env
        self.python = python or sys.executable
        self.proc: subprocess.Popen | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.metrics_url: str | None = None

    def start(self, timeout: float = 60.0) -> ServerProcess:
        env = dict(os.environ)
        env.update(self.env or {})
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._log = open(self.log_path, "ab")
        args = list(self.args)
        if not any(a.startswith("--admin-listen") for a in args):
            # the admin API is on by default (127.0.0.1:8088): tests that do not use it leave the port alone
            args += ["--admin-listen", "off"]
        self.proc = subprocess.Popen(
            [self.python, "-m", "filterproxy", "run", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output()
            m = _LISTEN_RE.search(text)
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                mm = _METRICS_RE.search(text)
                self.metrics_url = mm.group(1) if mm else None
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"filterproxy run exited with {self.proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"filterproxy run did not start within {timeout}s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def main(argv: list[str] | None = None) -> int:
    """Run a fake upstream in the foreground (benchmarks)."""
    p = argparse.ArgumentParser(description="fake upstream DNS server for tests and benchmarks")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5399)
    p.add_argument("--ttl", type=int, default=3600)
    p.add_argument("--short-ttl-suffix", default=None, help="names ending with this get TTL 1 (cache misses)")
    a = p.parse_args(argv)
    up = FakeUpstream(a.host, a.port, ttl=a.ttl, short_ttl_suffix=a.short_ttl_suffix).start()
    print(f"fake upstream on {up.address}", flush=True)
    try:
        while True:
            select.select([], [], [], 3600)
    except KeyboardInterrupt:
        pass
    up.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
