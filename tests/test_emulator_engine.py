"""The embedded PostgreSQL 16: environment like DSQL's, persistence, crash recovery, locking."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dsql_magic.emulator.engine import Engine, EngineError

pytestmark = pytest.mark.emulator

REPO = Path(__file__).resolve().parent.parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    # A zombie is dead for our purposes (its parent, not us, must reap it).
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def _wait_dead(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    eng = Engine(tmp_path_factory.mktemp("engine") / "data")
    eng.start()
    yield eng
    eng.stop()


def test_environment_is_like_dsql(engine: Engine) -> None:
    with psycopg.connect(**engine.connect_kwargs("admin")) as conn:
        row = conn.execute(
            "SELECT version(), current_setting('server_version'), current_setting('TimeZone'),"
            " current_setting('server_encoding'), current_setting('default_transaction_isolation'),"
            " datcollate, current_user"
            " FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        assert row is not None
        version, server_version, tz, encoding, isolation, collate, user = row
        assert version.startswith("PostgreSQL 16")
        assert server_version.startswith("16.")
        assert (tz, encoding, isolation, collate, user) == (
            "UTC",
            "UTF8",
            "repeatable read",
            "C",
            "admin",
        )
        assert conn.execute("SHOW fsync").fetchone() == ("on",)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("",)


def test_admin_role_is_not_superuser_and_owns_public(engine: Engine) -> None:
    with psycopg.connect(**engine.connect_kwargs()) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcanlogin, rolcreaterole FROM pg_roles WHERE rolname = 'admin'"
        ).fetchone()
        assert row == (False, True, True)
        owner = conn.execute(
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public'"
        ).fetchone()
        assert owner == ("admin",)


def test_postgres_runs_unprivileged_on_a_unix_socket_only(engine: Engine) -> None:
    assert engine.pid is not None
    status = Path(f"/proc/{engine.pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert uid != 0
    assert (engine.socket_dir / f".s.PGSQL.{engine.port}").exists()
    assert len(str(engine.socket_dir / f".s.PGSQL.{engine.port}")) < 104


def test_second_engine_on_same_data_dir_is_refused(engine: Engine) -> None:
    with pytest.raises(EngineError, match="in use by another emulator"):
        Engine(engine.data_dir).start()
    # The running one is unaffected.
    with psycopg.connect(**engine.connect_kwargs("admin")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_unusable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(EngineError, match="is not usable"):
        Engine(blocker / "data").start()


def test_clean_restart_keeps_data_and_leaves_no_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Engine(data) as eng:
        assert eng.created
        first_pid = eng.pid
        with psycopg.connect(**eng.connect_kwargs("admin")) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
            conn.execute("INSERT INTO t VALUES (1)")
    assert first_pid is not None and _wait_dead(first_pid)
    with Engine(data) as eng:
        assert not eng.created
        with psycopg.connect(**eng.connect_kwargs("admin")) as conn:
            assert conn.execute("SELECT id FROM t").fetchall() == [(1,)]


def test_remove_on_stop_deletes_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "ephemeral"
    with Engine(data, remove_on_stop=True):
        assert (data / "pgdata").exists()
    assert not data.exists()


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from dsql_magic.emulator import engine as engine_module
    if sys.argv[2] == "orphan":
        engine_module._die_with_parent = lambda: None  # simulate an OS without pdeathsig
    eng = engine_module.Engine(Path(sys.argv[1]))
    eng.start()
    import psycopg
    with psycopg.connect(**eng.connect_kwargs("admin"), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS k (id int PRIMARY KEY)")
        conn.execute("INSERT INTO k VALUES (%s)", (int(sys.argv[3]),))
    print(eng.pid, flush=True)
    time.sleep(600)
    """
)


def _run_and_kill(data: Path, mode: str, value: int) -> int:
    """Start an engine in a child, commit ``value``, kill -9 the child; returns the postmaster."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(data), mode, str(value)],
        stdout=subprocess.PIPE,
        cwd=REPO,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip().isdigit(), "child engine did not start"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return int(line)


@pytest.mark.parametrize("mode", ["pdeathsig", "orphan"])
def test_kill_9_loses_no_committed_transaction(tmp_path: Path, mode: str) -> None:
    data = tmp_path / "data"
    postmaster = _run_and_kill(data, mode, 1)
    if mode == "pdeathsig":
        assert _wait_dead(postmaster), "postmaster outlived the killed emulator"
    else:
        assert _alive(postmaster), "the simulated orphan should still run"
    postmaster2 = _run_and_kill(data, mode, 2)  # copes with the leftover
    assert not _alive(postmaster) or _wait_dead(postmaster)
    with Engine(data) as eng, psycopg.connect(**eng.connect_kwargs("admin")) as conn:
        assert conn.execute("SELECT id FROM k ORDER BY id").fetchall() == [(1,), (2,)]
    assert _wait_dead(postmaster2)


def test_stale_pid_file_naming_another_process_is_ignored(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Engine(data):
        pass
    # A crash left postmaster.pid behind, and its pid now belongs to someone else (us).
    (data / "pgdata" / "postmaster.pid").write_text(f"{os.getpid()}\n{data / 'pgdata'}\n")
    with Engine(data) as eng, psycopg.connect(**eng.connect_kwargs("admin")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
