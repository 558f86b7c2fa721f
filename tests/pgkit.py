"""A throwaway PostgreSQL cluster for the tests: Debian's server binaries, a temp dir, a free port.

`initdb` refuses to run as root, so the cluster belongs to the package's `postgres` user (run via
`runuser`); it listens on 127.0.0.1 only and is stopped and deleted at the session's end. Without
the server binaries the tests skip, or fail under WARMFRONT_REQUIRE_PG=1 (as CI runs them).
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pools.ports import free_port


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    datadir: str

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        """A fresh database (one per test keeps tests apart); returns its URL."""
        import psycopg
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _unavailable(reason: str) -> None:
    if os.environ.get("WARMFRONT_REQUIRE_PG") == "1":
        pytest.fail(f"{reason} (WARMFRONT_REQUIRE_PG=1)")
    pytest.skip(reason)


def _as_postgres(argv: list[str]) -> list[str]:
    return argv if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *argv]


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        _unavailable("no PostgreSQL server binaries (apt-get install postgresql)")
    root = tempfile.mkdtemp(prefix="warmfront-pg-")
    os.chmod(root, 0o755)
    datadir = os.path.join(root, "data")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    run = subprocess.run(_as_postgres([initdb, "-D", datadir, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                                       "--no-sync"]), capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        _unavailable(f"initdb failed: {(run.stderr or run.stdout).strip()[-400:]}")
    port = free_port("127.0.0.1")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    start = subprocess.run(_as_postgres([pg_ctl, "-D", datadir, "-o", opts, "-l", os.path.join(root, "log"),
                                         "-w", "-t", "60", "start"]), capture_output=True, text=True, timeout=90)
    if start.returncode != 0:
        log = open(os.path.join(root, "log")).read()[-400:] if os.path.exists(os.path.join(root, "log")) else ""
        shutil.rmtree(root, ignore_errors=True)
        _unavailable(f"pg_ctl start failed: {(start.stderr or start.stdout).strip()[-300:]} {log}")
    pg = Postgres("127.0.0.1", port, datadir)
    try:
        _wait_ready(pg)
        yield pg
    finally:
        subprocess.run(_as_postgres([pg_ctl, "-D", datadir, "-m", "immediate", "-w", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(pg: Postgres, seconds: float = 30.0) -> None:
    import psycopg
    end = time.monotonic() + seconds
    while True:
        try:
            with psycopg.connect(pg.url(), connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)
