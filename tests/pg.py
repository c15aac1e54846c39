"""A real PostgreSQL for the tests: Debian's server binaries, a throw-away cluster on 127.0.0.1.

``postgres_server`` (session) runs ``initdb`` (trust authentication, 127.0.0.1 only) in a temporary folder
and starts the server on a free high port with its socket in that folder; ``postgres_url`` (per test)
creates a fresh database and yields ``postgresql://postgres@127.0.0.1:PORT/DB``. Import both fixtures
into a test module (``from pg import postgres_server, postgres_url  # noqa: F401``).

PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres`` system user (the
Debian package creates it) and the commands run through ``runuser``. Missing binaries fail the test,
naming the package: tests have no skip markers (CONTRIBUTING.md).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "postgresql"  # Debian: the server binaries in /usr/lib/postgresql/NN/bin


@dataclass
class PgServer:
    """A running cluster: its port, data folder and the admin URL of its ``postgres`` database."""

    bindir: Path
    root: Path
    port: int
    user_prefix: tuple[str, ...]
    _names: itertools.count

    def url(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def execute(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE) in the ``postgres`` database."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]  (test-owned identifiers only)

    def create_database(self) -> str:
        name = f"t{os.getpid()}_{next(self._names)}"
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path and Path(on_path).with_name("pg_ctl").exists():
        return Path(on_path).parent
    pytest.fail(
        f"PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin: "
        f"install the Debian package {PACKAGE} (./test.sh installs it)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(prefix: tuple[str, ...], *cmd: str | Path) -> None:
    proc = subprocess.run([*prefix, *map(str, cmd)], capture_output=True, text=True, timeout=120)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {proc.returncode}: {proc.stderr or proc.stdout}")


def _start(bindir: Path, prefix: tuple[str, ...], root: Path) -> int:
    """Start the cluster on a free port; a port taken between the probe and the bind is retried."""
    last = ""
    for _ in range(5):
        port = _free_port()
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        try:
            _run(prefix, bindir / "pg_ctl", "-D", root / "data", "-l", root / "server.log", "-w", "-t", "60",
                 "-o", opts, "start")  # fmt: skip
            return port
        except RuntimeError as exc:
            log = root / "server.log"
            last = f"{exc}\n{log.read_text(errors='replace')[-2000:] if log.exists() else ''}"
    raise RuntimeError(f"PostgreSQL did not start: {last}")


@contextlib.contextmanager
def running_cluster() -> Iterator[PgServer]:
    """A throw-away cluster, stopped and removed on exit (the fixture below; bench/bench_stats.py too)."""
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="filterproxy-pg-"))
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # the server refuses root: hand the folder to the postgres system user
        if shutil.which("runuser") is None:
            pytest.fail("runuser not found: install the Debian package util-linux")
        shutil.chown(root, "postgres", "postgres")
        prefix = ("runuser", "-u", "postgres", "--")
    try:
        _run(prefix, bindir / "initdb", "-D", root / "data", "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--locale=C", "--no-sync")  # fmt: skip
        port = _start(bindir, prefix, root)
    except Exception:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield PgServer(bindir, root, port, prefix, itertools.count(1))
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    """A PostgreSQL cluster for the whole session."""
    with running_cluster() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PgServer) -> Iterator[str]:
    """A fresh, empty database on the session's cluster, dropped after the test."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)
