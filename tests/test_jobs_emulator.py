"""Asynchronous DDL through the emulator: CREATE INDEX ASYNC, sys.jobs, wait_for_job, ANALYZE."""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(180)]

ConnInfo = Callable[..., dict[str, Any]]


def _auto(conninfo: ConnInfo) -> psycopg.Connection[Any]:
    conn = psycopg.connect(**conninfo(), autocommit=True)
    return conn


def _retrying(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> Any:
    """Run once more after OC001 (a catalog change elsewhere), as DSQL clients must."""
    for _ in range(5):
        try:
            return conn.execute(sql, params)
        except psycopg.errors.SerializationFailure:
            if not conn.autocommit:
                conn.rollback()
    raise AssertionError(f"kept failing: {sql}")


def _until(check: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


@pytest.fixture
def table(emulator_conninfo: ConnInfo) -> Iterator[str]:
    name = f"users_{uuid.uuid4().hex[:8]}"
    with _auto(emulator_conninfo) as conn:
        _retrying(conn, f"CREATE TABLE {name} (id int PRIMARY KEY, email text, n int)")
        _retrying(
            conn,
            f"INSERT INTO {name} SELECT g, 'u' || g || '@x', g % 10 FROM generate_series(1, 500) g",
        )
    yield name


def _job(conn: psycopg.Connection[Any], job_id: str) -> tuple[Any, ...]:
    row = _retrying(
        conn,
        "SELECT job_id, status, details, job_type, class_id, object_id, object_name,"
        " start_time, update_time FROM sys.jobs WHERE job_id = %s",
        (job_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def _valid(conn: psycopg.Connection[Any], index: str) -> bool | None:
    row = _retrying(
        conn,
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE c.relname = %s",
        (index,),
    ).fetchone()
    return None if row is None else bool(row[0])


def test_create_index_async_answers_a_job_and_builds_in_the_background(
    emulator_conninfo: ConnInfo, table: str
) -> None:
    with _auto(emulator_conninfo) as conn, psycopg.connect(**emulator_conninfo()) as other:
        # An open transaction elsewhere holds a snapshot: the build has to wait for it, which
        # lets the test see the index invalid while the job is processing.
        _retrying(other, "SELECT 1 FROM pg_class LIMIT 1")
        cur = _retrying(conn, f"CREATE INDEX ASYNC {table}_n ON {table} (n)")
        assert cur.statusmessage == "CREATE INDEX"
        assert [c.name for c in cur.description or []] == ["job_id"]
        rows = cur.fetchall()
        assert len(rows) == 1
        job_id = rows[0][0]
        assert re.fullmatch(r"[a-z2-7]{26}", job_id)
        _until(lambda: _valid(conn, f"{table}_n") is not None, "the catalog entry")
        assert _valid(conn, f"{table}_n") is False
        assert _job(conn, job_id)[1] in {"submitted", "processing"}
        # Reads and writes go on meanwhile.
        _retrying(conn, f"INSERT INTO {table} VALUES (1000, 'new@x', 3)")
        assert _retrying(conn, f"SELECT count(*) FROM {table}").fetchone() == (501,)
        other.rollback()
        # As drivers send it: a bound parameter, answered at Execute (prepared or not).
        for prepare in (False, True):
            for _ in range(3):  # a catalog change elsewhere may cost one OC001
                try:
                    sql = "SELECT sys.wait_for_job(%s)"
                    ok = conn.execute(sql, (job_id,), prepare=prepare).fetchone()
                    break
                except psycopg.errors.SerializationFailure:
                    continue
            assert ok == (True,)
        ok = _retrying(conn, f"SELECT sys.wait_for_job('{job_id}')").fetchone()
        assert ok == (True,)
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="not NULL"):
            conn.execute("SELECT sys.wait_for_job(%s::text)", (None,))
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="invalid job id"):
            conn.execute("SELECT sys.wait_for_job(%s)", ("nope",))
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on
        assert _valid(conn, f"{table}_n") is True
        job = _job(conn, job_id)
        assert job[1:4] == ("completed", None, "INDEX_BUILD")
        assert job[4] == 1259
        assert job[6] == f"public.{table}_n"
        oid = _retrying(conn, "SELECT %s::regclass::oid", (f"{table}_n",)).fetchone()
        assert oid is not None and job[5] == oid[0]


def test_unnamed_index_gets_dsqls_default_name(emulator_conninfo: ConnInfo, table: str) -> None:
    with _auto(emulator_conninfo) as conn:
        job_id = _retrying(conn, f"CREATE INDEX ASYNC ON {table} (email, n)").fetchone()[0]
        assert _retrying(conn, f"SELECT sys.wait_for_job('{job_id}')").fetchone() == (True,)
        assert _valid(conn, f"{table}_email_n_idx") is True
        job_id = _retrying(conn, f"CREATE INDEX ASYNC ON {table} (email, n)").fetchone()[0]
        assert _retrying(conn, f"SELECT sys.wait_for_job('{job_id}')").fetchone() == (True,)
        assert _valid(conn, f"{table}_email_n_idx1") is True


def test_unique_build_failure_is_reported_and_still_enforced(
    emulator_conninfo: ConnInfo, table: str
) -> None:
    with _auto(emulator_conninfo) as conn:
        _retrying(conn, f"INSERT INTO {table} VALUES (2000, 'u1@x', 0)")  # a duplicate email
        job_id = _retrying(
            conn, f"CREATE UNIQUE INDEX ASYNC {table}_email ON {table} (email)"
        ).fetchone()[0]
        assert _retrying(conn, f"SELECT sys.wait_for_job('{job_id}')").fetchone() == (False,)
        job = _job(conn, job_id)
        assert job[1:4] == (
            "failed",
            "Found duplicate key while validating index for UCVs",
            "INDEX_BUILD",
        )
        assert _valid(conn, f"{table}_email") is False
        with pytest.raises(psycopg.errors.UniqueViolation):
            _retrying(conn, f"INSERT INTO {table} VALUES (2001, 'u2@x', 0)")
        _retrying(conn, f"DROP INDEX {table}_email")
        _retrying(conn, f"INSERT INTO {table} VALUES (2001, 'u2@x', 0)")


def test_drop_index_cancels_a_build_in_progress(emulator_conninfo: ConnInfo, table: str) -> None:
    with _auto(emulator_conninfo) as conn, psycopg.connect(**emulator_conninfo()) as other:
        _retrying(other, "SELECT 1 FROM pg_class LIMIT 1")  # holds a snapshot: the build waits
        job_id = _retrying(conn, f"CREATE INDEX ASYNC {table}_e ON {table} (email)").fetchone()[0]
        _until(lambda: _job(conn, job_id)[5] is not None, "the build's catalog entry")
        assert _job(conn, job_id)[1] == "processing"
        _retrying(conn, f"DROP INDEX {table}_e")
        job = _job(conn, job_id)
        assert job[1] == "failed" and "cancelled" in job[2]
        assert _retrying(conn, f"SELECT sys.wait_for_job('{job_id}')").fetchone() == (False,)
        assert _valid(conn, f"{table}_e") is None
        drops = _retrying(
            conn,
            "SELECT status FROM sys.jobs WHERE job_type = 'DROP' AND object_id = %s",
            (job[5],),
        ).fetchall()
        assert drops == [("completed",)]
        # Dropped right away, before its build could even create the catalog entry.
        job_id = _retrying(conn, f"CREATE INDEX ASYNC {table}_f ON {table} (n)").fetchone()[0]
        assert _retrying(conn, f"DROP INDEX {table}_f").statusmessage == "DROP INDEX"
        job = _job(conn, job_id)
        assert job[1] == "failed" and "cancelled" in job[2]
        assert _valid(conn, f"{table}_f") is None
        other.rollback()


def test_analyze_runs_as_a_job(emulator_conninfo: ConnInfo, table: str) -> None:
    with _auto(emulator_conninfo) as conn:
        cur = _retrying(conn, f"ANALYZE {table}")
        assert cur.statusmessage == "ANALYZE"
        rows = _retrying(
            conn,
            "SELECT status FROM sys.jobs WHERE job_type = 'ANALYZE' AND object_name = %s",
            (f"public.{table}",),
        ).fetchall()
        assert ("completed",) in rows
        stats = _retrying(
            conn, "SELECT n_distinct FROM pg_stats WHERE tablename = %s AND attname = 'n'", (table,)
        ).fetchone()
        assert stats == (10.0,)


def test_background_analyze_after_many_changed_rows(
    emulator_conninfo: ConnInfo, table: str
) -> None:
    with _auto(emulator_conninfo) as conn:
        for start in range(10_000, 13_000, 1_000):
            _retrying(
                conn,
                f"INSERT INTO {table} SELECT g, 'b' || g, 1"
                f" FROM generate_series({start}, {start + 999}) g",
            )

        def analysed() -> bool:
            rows = _retrying(
                conn,
                "SELECT 1 FROM sys.jobs WHERE job_type = 'ANALYZE' AND object_name = %s",
                (f"public.{table}",),
            ).fetchall()
            return bool(rows)

        _until(analysed, "a background ANALYZE job for the table", limit=90)


def test_alter_table_async_validate_constraint(emulator_conninfo: ConnInfo, table: str) -> None:
    with _auto(emulator_conninfo) as conn:
        _retrying(conn, f"ALTER TABLE {table} ADD CONSTRAINT n_ok CHECK (n >= 0) NOT VALID")
        cur = _retrying(conn, f"ALTER TABLE ASYNC {table} VALIDATE CONSTRAINT n_ok")
        assert cur.statusmessage == "ALTER TABLE"
        job_id = cur.fetchone()[0]
        assert _retrying(conn, f"SELECT sys.wait_for_job('{job_id}')").fetchone() == (True,)
        done = _retrying(
            conn, "SELECT convalidated FROM pg_constraint WHERE conname = 'n_ok'"
        ).fetchall()
        assert (True,) in done


def test_wait_for_unknown_job_is_an_error(emulator_conninfo: ConnInfo) -> None:
    with _auto(emulator_conninfo) as conn:
        with pytest.raises(psycopg.errors.UndefinedObject):
            conn.execute("SELECT sys.wait_for_job('aaaaaaaaaaaaaaaaaaaaaaaaaa')")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("SELECT sys.wait_for_job('not-a-job')")


@pytest.mark.timeout(300)
def test_a_build_interrupted_by_a_restart_runs_again(tmp_path: Any) -> None:
    from dsql_magic.emulator.api import Emulator

    emu = Emulator(data_dir=tmp_path / "data", log_path=tmp_path / "emulator.log")
    emu.start()
    conn = psycopg.connect(**emu.connect_kwargs("admin"), autocommit=True)
    other = psycopg.connect(**emu.connect_kwargs("admin"))
    try:
        _retrying(conn, "CREATE TABLE big (id int PRIMARY KEY, v text)")
        _retrying(conn, "INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, 2000) g")
        _retrying(other, "SELECT 1 FROM pg_class LIMIT 1")  # holds a snapshot: the build waits
        job_id = _retrying(conn, "CREATE INDEX ASYNC big_v ON big (v)").fetchone()[0]
        _until(lambda: _job(conn, job_id)[1] == "processing", "the build to start")
    finally:
        emu.stop()  # the emulator goes away mid-build
        for c in (conn, other):
            with contextlib.suppress(psycopg.Error):
                c.close()
    emu.start()
    try:
        with psycopg.connect(**emu.connect_kwargs("admin"), autocommit=True) as conn:
            assert _retrying(conn, f"SELECT sys.wait_for_job('{job_id}')").fetchone() == (True,)
            assert _job(conn, job_id)[1] == "completed"
            assert _valid(conn, "big_v") is True
    finally:
        emu.stop()
