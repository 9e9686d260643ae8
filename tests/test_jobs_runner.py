"""The job runner against a real PostgreSQL 16: index builds, ANALYZE, cancel, cleanup, restart."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from dsql_magic.emulator import jobs
from dsql_magic.emulator.jobs import IndexBuild, JobRunner, JobStatus, connector
from dsql_magic.limits import JOB_RETENTION_SECONDS

pytestmark = pytest.mark.timeout(120)


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _connect(conninfo: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(**conninfo, autocommit=True)


async def _until(check: Callable[[], Awaitable[bool]], what: str, limit: float = 20.0) -> None:
    """Poll until ``check`` holds (bounded so that a broken runner fails instead of hanging)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)


def _build(table: str, index: str, cols: str, *, unique: bool = False) -> IndexBuild:
    kw = "UNIQUE " if unique else ""
    return IndexBuild(
        schema="public",
        name=index,
        create_sql=f"CREATE {kw}INDEX CONCURRENTLY {index} ON public.{table} ({cols})",
        unique=unique,
        fallback_sql=(
            f"CREATE INDEX CONCURRENTLY {index} ON public.{table} ({cols})" if unique else None
        ),
    )


def _index_state(conn: psycopg.Connection[Any], index: str) -> tuple[bool, bool, bool] | None:
    row = conn.execute(
        "SELECT indisvalid, indisready, indisunique FROM pg_index"
        " WHERE indexrelid = to_regclass(%s)",
        (index,),
    ).fetchone()
    return None if row is None else (bool(row[0]), bool(row[1]), bool(row[2]))


def test_job_ids_are_26_lower_case_base32() -> None:
    ids = {jobs.new_job_id() for _ in range(500)}
    assert len(ids) == 500
    for job_id in ids:
        assert re.fullmatch(r"[a-z2-7]{26}", job_id)
        assert jobs.is_job_id(job_id)
    assert not jobs.is_job_id("JH2GBTX4MZHGFKBIMTGWN5J45Y")
    assert jobs.is_job_id("jh2gbtx4mzhgfkbimtgwn5j45y")  # the manual's example


def test_status_transitions_follow_dsql() -> None:
    s = JobStatus
    assert jobs.advance(s.SUBMITTED, s.PROCESSING) is s.PROCESSING
    assert jobs.advance(s.PROCESSING, s.COMPLETED) is s.COMPLETED
    assert jobs.advance(s.PROCESSING, s.FAILED) is s.FAILED
    for done in (s.COMPLETED, s.FAILED):
        for target in s:
            with pytest.raises(jobs.JobStateError):
                jobs.advance(done, target)
    with pytest.raises(jobs.JobStateError):
        jobs.advance(s.SUBMITTED, s.COMPLETED)


def test_index_build_is_invalid_while_processing_then_valid(jobs_conninfo: dict[str, Any]) -> None:
    table, index = _name("t"), _name("t_idx")
    admin = _connect(jobs_conninfo)
    admin.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    admin.execute(f"INSERT INTO {table} SELECT g, 'v' || g FROM generate_series(1, 2000) g")
    # An open writing transaction: PostgreSQL's concurrent build waits for it after creating
    # the (invalid) catalog entry, which lets the test see the "processing" state for sure.
    blocker = psycopg.connect(**jobs_conninfo)
    blocker.execute(f"INSERT INTO {table} VALUES (100000, 'x')")

    async def scenario() -> None:
        runner = JobRunner(connector(jobs_conninfo), auto_analyze=False)
        await runner.start()
        try:
            job_id = await runner.submit_index_build(_build(table, index, "v"))
            assert jobs.is_job_id(job_id)

            async def processing_and_invalid() -> bool:
                row = await runner.get(job_id)
                return row.status == "processing" and _index_state(admin, index) is not None

            await _until(processing_and_invalid, "build processing with its catalog entry")
            assert _index_state(admin, index) == (False, False, False)
            # Reads and writes go on during the build.
            admin.execute(f"INSERT INTO {table} VALUES (100001, 'during')")
            assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (2001,)
            plan = admin.execute(f"EXPLAIN SELECT * FROM {table} WHERE v = 'v7'").fetchall()
            assert index not in str(plan)
            blocker.commit()
            assert await runner.wait(job_id, timeout=60) is True
            row = await runner.get(job_id)
            assert (row.status, row.job_type, row.details) == ("completed", "INDEX_BUILD", None)
            assert row.object_name == f"public.{index}"
            assert row.class_id == 1259
            oid = admin.execute("SELECT %s::regclass::oid", (index,)).fetchone()
            assert oid is not None and row.object_id == oid[0]
            assert row.update_time >= row.start_time
            assert _index_state(admin, index) == (True, True, False)
            view = admin.execute(
                "SELECT job_id, status, job_type FROM sys.jobs WHERE job_id = %s", (job_id,)
            ).fetchall()
            assert view == [(job_id, "completed", "INDEX_BUILD")]
        finally:
            await runner.stop()

    try:
        asyncio.run(scenario())
    finally:
        blocker.close()
        admin.close()


def test_unique_build_failure_leaves_invalid_index_enforcing(jobs_conninfo: dict[str, Any]) -> None:
    table, index = _name("users"), _name("users_email_idx")
    admin = _connect(jobs_conninfo)
    admin.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, email text)")
    admin.execute(f"INSERT INTO {table} VALUES (1, 'a@x'), (2, 'b@x'), (3, 'a@x')")
    changes: list[int] = []

    async def scenario() -> None:
        runner = JobRunner(
            connector(jobs_conninfo),
            auto_analyze=False,
            on_catalog_change=lambda: changes.append(1),
        )
        await runner.start()
        try:
            job_id = await runner.submit_index_build(_build(table, index, "email", unique=True))
            assert await runner.wait(job_id, timeout=60) is False
            row = await runner.get(job_id)
            assert row.status == "failed"
            assert row.details == "Found duplicate key while validating index for UCVs"
        finally:
            await runner.stop()

    try:
        asyncio.run(scenario())
        assert changes == []  # a failed build makes no index valid: no catalog version bump
        assert _index_state(admin, index) == (False, True, True)
        with pytest.raises(psycopg.errors.UniqueViolation):
            admin.execute(f"INSERT INTO {table} VALUES (4, 'b@x')")
        admin.execute(f"INSERT INTO {table} VALUES (5, 'c@x')")
        with pytest.raises(psycopg.errors.UniqueViolation):
            admin.execute(f"INSERT INTO {table} VALUES (6, 'c@x')")
        admin.execute("SET enable_seqscan = off")
        plan = admin.execute(f"EXPLAIN SELECT * FROM {table} WHERE email = 'c@x'").fetchall()
        assert index not in str(plan)
        admin.execute(f"DROP INDEX {index}")
        admin.execute(f"INSERT INTO {table} VALUES (7, 'c@x')")  # no longer enforced
    finally:
        admin.close()


def test_successful_build_bumps_the_catalog_version(jobs_conninfo: dict[str, Any]) -> None:
    table, index = _name("t"), _name("t_idx")
    admin = _connect(jobs_conninfo)
    admin.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    changes: list[int] = []

    async def scenario() -> None:
        runner = JobRunner(
            connector(jobs_conninfo),
            auto_analyze=False,
            on_catalog_change=lambda: changes.append(1),
        )
        await runner.start()
        try:
            assert await runner.wait(await runner.submit_index_build(_build(table, index, "v")))
        finally:
            await runner.stop()

    asyncio.run(scenario())
    admin.close()
    assert changes == [1]


def test_drop_index_cancels_a_build_in_progress(jobs_conninfo: dict[str, Any]) -> None:
    table, index = _name("t"), _name("t_idx")
    admin = _connect(jobs_conninfo)
    admin.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    blocker = psycopg.connect(**jobs_conninfo)
    blocker.execute(f"INSERT INTO {table} VALUES (1, 'x')")

    async def scenario() -> None:
        runner = JobRunner(connector(jobs_conninfo), auto_analyze=False)
        await runner.start()
        try:
            job_id = await runner.submit_index_build(_build(table, index, "v"))

            async def has_entry() -> bool:
                return (await runner.get(job_id)).object_id is not None

            await _until(has_entry, "the build's catalog entry")
            row = await runner.get(job_id)
            cancelled = await runner.cancel_for_object(f"public.{index}", row.object_id)
            assert cancelled == [job_id]
            row = await runner.get(job_id)
            assert (row.status, row.details) == ("failed", jobs.CANCELLED_DETAIL)
            assert await runner.wait(job_id) is False
        finally:
            await runner.stop()

    try:
        asyncio.run(scenario())
        blocker.close()  # DROP INDEX itself needs the table to itself (not the build's doing)
        admin.execute("SET lock_timeout = '10s'")
        admin.execute(f"DROP INDEX {index}")
        assert _index_state(admin, index) is None
    finally:
        blocker.close()
        admin.close()


def test_finished_jobs_are_cleaned_up_when_a_new_job_starts(jobs_conninfo: dict[str, Any]) -> None:
    now = [datetime(2026, 1, 1, tzinfo=timezone.utc)]
    table = _name("t")
    admin = _connect(jobs_conninfo)
    admin.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    oid = admin.execute("SELECT %s::regclass::oid", (table,)).fetchone()
    assert oid is not None

    async def scenario() -> None:
        runner = JobRunner(connector(jobs_conninfo), clock=lambda: now[0], auto_analyze=False)
        await runner.start()
        try:
            old = await runner.record_drop(12345)
            now[0] += timedelta(seconds=JOB_RETENTION_SECONDS - 1)
            young = await runner.submit_analyze(oid[0], f"public.{table}")
            assert await runner.wait(young)
            assert (await runner.get(old)).status == "completed"  # not yet 30 minutes old
            now[0] += timedelta(seconds=2)
            await runner.record_drop(12347)
            with pytest.raises(jobs.JobNotFound):
                await runner.get(old)
            with pytest.raises(jobs.JobNotFound):
                await runner.wait(old)
            assert (await runner.get(young)).status == "completed"  # finished later
        finally:
            await runner.stop()

    asyncio.run(scenario())
    admin.close()


def test_analyze_job_collects_statistics(jobs_conninfo: dict[str, Any]) -> None:
    table = _name("t")
    admin = _connect(jobs_conninfo)
    admin.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)")
    admin.execute(f"INSERT INTO {table} SELECT g, g % 7 FROM generate_series(1, 500) g")
    oid = admin.execute("SELECT %s::regclass::oid", (table,)).fetchone()
    assert oid is not None

    async def scenario() -> None:
        runner = JobRunner(connector(jobs_conninfo), auto_analyze=False)
        await runner.start()
        try:
            job_id = await runner.submit_analyze(oid[0], f"public.{table}")
            assert await runner.wait(job_id, timeout=60)
            row = await runner.get(job_id)
            assert (row.job_type, row.object_id) == ("ANALYZE", oid[0])
        finally:
            await runner.stop()

    asyncio.run(scenario())
    stats = admin.execute(
        "SELECT n_distinct FROM pg_stats WHERE tablename = %s AND attname = 'v'", (table,)
    ).fetchone()
    admin.close()
    assert stats == (7.0,)


def test_background_analyze_after_enough_changed_rows(jobs_conninfo: dict[str, Any]) -> None:
    table, quiet = _name("busy"), _name("quiet")
    admin = _connect(jobs_conninfo)
    admin.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    admin.execute(f"CREATE TABLE {quiet} (id int PRIMARY KEY)")
    admin.execute(f"INSERT INTO {quiet} VALUES (1)")
    with admin.transaction():
        admin.execute(f"INSERT INTO {table} SELECT generate_series(1, 1000)")
        admin.execute("SELECT pg_stat_force_next_flush()")
    oid = admin.execute("SELECT %s::regclass::oid", (table,)).fetchone()
    quiet_oid = admin.execute("SELECT %s::regclass::oid", (quiet,)).fetchone()
    assert oid is not None and quiet_oid is not None

    async def scenario() -> None:
        runner = JobRunner(connector(jobs_conninfo), auto_analyze=False)
        await runner.start()
        try:
            found: list[str] = []

            async def submitted() -> bool:
                for job_id in await runner.auto_analyze_once():
                    found.append(job_id)
                rows = [await runner.get(j) for j in found]
                return any(r.object_id == oid[0] for r in rows)

            await _until(submitted, "a background ANALYZE of the busy table")
            rows = [await runner.get(j) for j in found]
            assert all(r.job_type == "ANALYZE" for r in rows)
            assert quiet_oid[0] not in {r.object_id for r in rows}
            for job_id in found:
                assert await runner.wait(job_id, timeout=60)
            # Analysed: nothing is due for that table any more.
            again = [await runner.get(j) for j in await runner.auto_analyze_once()]
            assert oid[0] not in {r.object_id for r in again}
        finally:
            await runner.stop()

    asyncio.run(scenario())
    admin.close()


def test_validate_constraint_job(jobs_conninfo: dict[str, Any]) -> None:
    table = _name("t")
    admin = _connect(jobs_conninfo)
    admin.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, n int)")
    admin.execute(f"INSERT INTO {table} VALUES (1, 5), (2, -1)")
    admin.execute(f"ALTER TABLE {table} ADD CONSTRAINT pos CHECK (n > 0) NOT VALID")
    oid = admin.execute("SELECT %s::regclass::oid", (table,)).fetchone()
    assert oid is not None

    async def scenario() -> tuple[bool, bool, str | None]:
        runner = JobRunner(connector(jobs_conninfo), auto_analyze=False)
        await runner.start()
        try:
            bad = await runner.submit_validate(oid[0], "pos", f"public.{table}")
            first = await runner.wait(bad, timeout=60)
            details = (await runner.get(bad)).details
            admin.execute(f"DELETE FROM {table} WHERE n <= 0")
            good = await runner.submit_validate(oid[0], "pos", f"public.{table}")
            return first, await runner.wait(good, timeout=60), details
        finally:
            await runner.stop()

    first, second, details = asyncio.run(scenario())
    valid = admin.execute(
        "SELECT convalidated FROM pg_constraint WHERE conname = 'pos' AND conrelid = %s",
        (oid[0],),
    ).fetchone()
    admin.close()
    assert first is False and details is not None and "violated" in details
    assert second is True and valid == (True,)


def test_unfinished_jobs_run_again_after_a_restart(jobs_conninfo: dict[str, Any]) -> None:
    table, index = _name("t"), _name("t_idx")
    admin = _connect(jobs_conninfo)
    admin.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    admin.execute(f"INSERT INTO {table} SELECT g, 'v' || g FROM generate_series(1, 100) g")
    blocker = psycopg.connect(**jobs_conninfo)
    blocker.execute(f"INSERT INTO {table} VALUES (100000, 'x')")

    async def first_life() -> str:
        runner = JobRunner(connector(jobs_conninfo), auto_analyze=False)
        await runner.start()
        job_id = await runner.submit_index_build(_build(table, index, "v"))

        async def processing() -> bool:
            return (await runner.get(job_id)).object_id is not None

        await _until(processing, "the build to start")
        await runner.stop()  # the emulator goes away mid-build
        return job_id

    async def second_life(job_id: str) -> tuple[str, bool]:
        runner = JobRunner(connector(jobs_conninfo), auto_analyze=False)
        await runner.start()
        try:
            status = (await runner.get(job_id)).status
            blocker.commit()
            return status, await runner.wait(job_id, timeout=60)
        finally:
            await runner.stop()

    try:
        job_id = asyncio.run(first_life())
        status, ok = asyncio.run(second_life(job_id))
        assert status in {"submitted", "processing"}
        assert ok is True
        assert _index_state(admin, index) == (True, True, False)
    finally:
        blocker.close()
        admin.close()
