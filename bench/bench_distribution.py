#!/usr/bin/env python3
"""List distribution: what a fleet of gateways costs the ministry's web server, full downloads against deltas.

One run (~3 minutes on a 2-core machine with the defaults)::

    ./bench.sh distribution
    .venv/bin/python bench/bench_distribution.py --hashes 1000000 --added 10000 --gateways 2000

A TUF repository (``filterproxy.distribution.publish``, the code behind ``filterproxy publish``) holds one
big image-hash list of ``--hashes`` PDQ lines, published as a base; version 2 adds ``--added`` hashes and
removes ``--removed``, published as delta segments. nginx (Debian's, started on 127.0.0.1 on a free
port with a config in /tmp) serves the repository's static files. Gateways are simulated with the real
client, ``tuf.ngclient.Updater`` (the same calls as ``filterproxy.distribution.gateway``: refresh the
metadata, then download and verify each target the gateway needs):

* **delta**: ``--gateways`` gateways that trust version 1 update to version 2: metadata + segments;
* **full**: ``--full-gateways`` new gateways download the base and the segments (what every gateway
  downloads without deltas); bytes and CPU are extrapolated to ``--gateways`` and labelled so.

It prints the bytes nginx sent (its access log) and nginx's CPU time (utime + stime of its processes
from /proc) per case, and their ratio; then one gateway's rebuild of the full list from the segments
(time, and that it equals the publisher's file). Compare ratios: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from filterproxy.distribution import delta, publish  # noqa: E402
from filterproxy.distribution.keys import keygen  # noqa: E402

LIST = "csam"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_repo(work: Path, hashes: int, added: int, removed: int) -> tuple[publish.Repository, Path, Path]:
    """Keys, a repository with version 1 published; returns (repo, the version-2 source file, keys dir)."""
    keys = work / "keys"
    for k in ("root", "targets", "online"):
        keygen(str(keys / k))
    publish.init(
        str(work / "repo"),
        root_keys=[str(keys / "root.pub")],
        root_threshold=1,
        targets_keys=[str(keys / "targets.pub")],
        targets_threshold=1,
        online_key=str(keys / "online.pub"),
        delta_min_bytes=1,
    )
    repo = publish.Repository(str(work / "repo"))
    rng = random.Random(1)
    v1 = [f"pdq:{rng.getrandbits(256):064x}" for _ in range(hashes)]
    src = work / "v1.txt"
    src.write_text("\n".join(v1) + "\n")
    t = time.perf_counter()
    publish.add(repo, "targets", LIST, "imagehash", "illegal", str(src))
    log(f"version 1: {hashes:,} hashes staged as a base in {time.perf_counter() - t:.1f}s")
    for role, key in (("root", "root"), ("targets", "targets")):
        publish.sign(repo, role, str(keys / f"{key}.key"))
    publish.commit(repo, str(keys / "online.key"))
    v2 = v1[removed:] + [f"pdq:{rng.getrandbits(256):064x}" for _ in range(added)]
    src2 = work / "v2.txt"
    src2.write_text("\n".join(v2) + "\n")
    return repo, src2, keys


def publish_v2(repo: publish.Repository, src: Path, keys: Path) -> int:
    t = time.perf_counter()
    st = publish.add(repo, "targets", LIST, "imagehash", "illegal", str(src))
    assert st is not None and st.kind == "delta", st
    publish.sign(repo, "targets", str(keys / "targets.key"))
    publish.commit(repo, str(keys / "online.key"))
    log(f"version 2: +{st.added:,} −{st.removed:,} as {st.bytes:,} bytes of segments in {time.perf_counter() - t:.1f}s")
    return st.bytes


# --- nginx --------------------------------------------------------------------------------------------


class Nginx:
    """Debian's nginx on 127.0.0.1:<free port>, serving ``root``; bytes from its access log."""

    def __init__(self, work: Path, root: Path) -> None:
        self.work = work
        self.port = free_port()
        self.access = work / "access.log"
        conf = work / "nginx.conf"
        conf.write_text(
            f"""
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 1024; }}
http {{
    log_format bytes '$bytes_sent';
    access_log {self.access} bytes;
    sendfile on;
    client_body_temp_path {work}/tmp-body;
    proxy_temp_path {work}/tmp-proxy;
    fastcgi_temp_path {work}/tmp-fastcgi;
    uwsgi_temp_path {work}/tmp-uwsgi;
    scgi_temp_path {work}/tmp-scgi;
    types {{ application/json json; application/gzip gz; text/plain txt; }}
    server {{
        listen 127.0.0.1:{self.port};
        root {root};
        location /metadata/timestamp.json {{ expires 1m; }}
    }}
}}
"""
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(work)], start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not start: {(work / 'error.log').read_text()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [self.proc.pid, *map(int, kids)]

    def cpu(self) -> float:
        """utime + stime of nginx's processes, seconds."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / tick

    def bytes_sent(self) -> int:
        return sum(int(x) for x in self.access.read_text().split())

    def reset_log(self) -> None:
        self.access.write_text("")  # nginx appends with O_APPEND: truncating is safe

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --- gateways -----------------------------------------------------------------------------------------


def gateway_update(url: str, meta: str, have: int) -> int:
    """One gateway's update with tuf.ngclient: the targets after version ``have``; bytes of targets."""
    from tuf.api.metadata import Metadata
    from tuf.ngclient import Updater

    dl = os.path.join(meta, "dl")
    os.makedirs(dl, exist_ok=True)
    up = Updater(meta, f"{url}/metadata/", dl, f"{url}/targets/", bootstrap=None)
    up.refresh()
    top = Metadata.from_file(os.path.join(meta, "targets.json"))
    got = 0
    for path in top.signed.targets:
        info = up.get_targetinfo(path)
        assert info is not None
        if int(info.custom["version"]) > have or (have == 0 and info.custom["kind"] == "base"):
            up.download_target(info, os.path.join(dl, os.path.basename(path)))
            got += info.length
    shutil.rmtree(dl)
    return got


def _run_chunk(url: str, metas: list[str], have: int) -> int:
    with cf.ThreadPoolExecutor(4) as pool:
        return sum(pool.map(lambda m: gateway_update(url, m, have), metas))


def run_fleet(url: str, metas: list[str], have: int, procs: int) -> tuple[int, float]:
    """Update every gateway (``procs`` processes × 4 threads); (target bytes, seconds)."""
    chunks = [metas[i::procs] for i in range(procs)]
    t = time.perf_counter()
    with cf.ProcessPoolExecutor(procs) as pool:
        total = sum(pool.map(_run_chunk, [url] * procs, chunks, [have] * procs))
    return total, time.perf_counter() - t


def fleet_dirs(work: Path, name: str, template: Path, n: int) -> list[str]:
    out = []
    for i in range(n):
        d = work / name / str(i)
        shutil.copytree(template, d)
        out.append(str(d))
    return out


def measure(ngx: Nginx, label: str, metas: list[str], have: int, procs: int) -> tuple[int, float, float]:
    ngx.reset_log()
    cpu0 = ngx.cpu()
    target_bytes, secs = run_fleet(ngx.url, metas, have, procs)
    time.sleep(0.3)
    sent, cpu = ngx.bytes_sent(), ngx.cpu() - cpu0
    log(f"{label}: {len(metas):,} gateways in {secs:.1f}s, nginx sent {sent:,} bytes, nginx CPU {cpu:.2f}s")
    return sent, cpu, target_bytes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hashes", type=int, default=1_000_000, help="PDQ hashes in version 1")
    ap.add_argument("--added", type=int, default=10_000)
    ap.add_argument("--removed", type=int, default=1_000)
    ap.add_argument("--gateways", type=int, default=2000, help="gateways updating by delta")
    ap.add_argument("--full-gateways", type=int, default=10, help="gateways downloading in full (extrapolated)")
    ap.add_argument("--procs", type=int, default=2, help="client processes (4 threads each)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tufdist-bench-"))
    work.chmod(0o755)  # nginx workers run as an unprivileged user
    ngx = None
    try:
        repo, src2, keys = build_repo(work, args.hashes, args.added, args.removed)
        public = Path(repo.path) / "public"
        template = work / "template"
        template.mkdir()
        shutil.copy(public / "metadata" / "1.root.json", template / "root.json")
        ngx = Nginx(work, public)
        # one gateway at version 1 gives the trusted metadata every delta gateway starts from
        at_v1 = work / "at-v1"
        shutil.copytree(template, at_v1)
        gateway_update(ngx.url, str(at_v1), 0)
        seg_bytes = publish_v2(repo, src2, keys)
        delta_metas = fleet_dirs(work, "delta", at_v1, args.gateways)
        full_metas = fleet_dirs(work, "full", template, args.full_gateways)
        d_sent, d_cpu, d_targets = measure(ngx, "delta", delta_metas, 1, args.procs)
        f_sent, f_cpu, f_targets = measure(ngx, "full ", full_metas, 0, args.procs)
        scale = args.gateways / args.full_gateways
        f_sent_x, f_cpu_x = f_sent * scale, f_cpu * scale
        per_gw = d_sent / args.gateways
        print(f"list: {args.hashes:,} PDQ hashes; version 2 = +{args.added:,} −{args.removed:,}")
        print(f"segments of version 2: {seg_bytes:,} bytes; per delta gateway: {per_gw:,.0f} bytes served")
        print(f"{'case':<44} {'bytes served':>16} {'nginx CPU s':>12}")
        print(f"{f'delta, {args.gateways:,} gateways (measured)':<44} {d_sent:>16,} {d_cpu:>12.2f}")
        print(
            f"{f'full, {args.full_gateways} gateways (measured)':<44} {f_sent:>16,} {f_cpu:>12.2f}\n"
            f"{f'full, {args.gateways:,} gateways (extrapolated x{scale:g})':<44} {f_sent_x:>16,.0f} {f_cpu_x:>12.2f}"
        )
        print(f"ratio full/delta: bytes {f_sent_x / d_sent:.0f}x, nginx CPU {f_cpu_x / max(d_cpu, 1e-3):.1f}x")
        # one gateway's rebuild: installed version 1 + segments = the publisher's version 2
        v1 = work / "v1-canonical.txt"
        delta.canonicalise(str(work / "v1.txt"), str(v1))
        segs = sorted((public / "targets" / "national" / LIST).glob("*-2.txt.gz"))
        t = time.perf_counter()
        adds, removes = delta.fold([("remove" if "remove" in p.name else "add", str(p)) for p in segs])
        out = work / "rebuilt.txt"
        delta.apply(str(v1), adds, removes, str(out))
        same = delta.file_sha256(str(out)) == delta.file_sha256(repo.list_copy("targets", LIST))
        print(f"gateway rebuild of version 2 from version 1 + segments: {time.perf_counter() - t:.1f}s, equal: {same}")
        return 0 if same else 1
    finally:
        if ngx is not None:
            ngx.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")


if __name__ == "__main__":
    sys.exit(main())
