"""Aurora DSQL's asynchronous jobs: index builds, ANALYZE, constraint validation, DROP records.

DSQL answers ``CREATE INDEX ASYNC`` at once with a job id and builds the index in the background;
the job is visible in ``sys.jobs`` and moves ``submitted → processing → completed | failed``.
The `JobRunner` here does the same against the embedded PostgreSQL, on its own superuser
connections (never on a client's backend), so a build never blocks the client that asked for it:

- an index is built with ``CREATE INDEX CONCURRENTLY``: its catalog entry appears at once with
  ``indisvalid = false`` (invisible to the planner), reads and writes go on during the build,
  and PostgreSQL flips it valid at the end — the states DSQL shows in ``pg_index``;
- a unique build that meets duplicates fails with DSQL's detail; the index is then rebuilt as a
  non-unique index and flagged unique but invalid, so that it enforces uniqueness on new writes
  (as DSQL's does) until it is dropped, while the planner still ignores it;
- ``DROP INDEX`` cancels a build in progress (`JobRunner.cancel_for_object`);
- ``ANALYZE`` runs as an ``ANALYZE`` job, and a background loop submits ANALYZE jobs for tables
  with enough changed rows (like DSQL's automatic statistics collection);
- jobs are stored in ``sys.job_store`` (see `sys_catalog`); on start, unfinished ones are run
  again, and one that cannot be re-run is marked failed with the reason. Finished jobs older
  than `JOB_RETENTION_SECONDS` are deleted whenever a new job starts, as DSQL does.

This module must not import the session or server: it talks to PostgreSQL through psycopg only,
and to the rest of the emulator through the ``on_catalog_change`` callback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg import sql as pgsql

from dsql_magic.emulator import sys_catalog
from dsql_magic.emulator.sys_catalog import JobRow
from dsql_magic.limits import JOB_RETENTION_SECONDS

log = logging.getLogger(__name__)

JOB_ID_LENGTH = 26
UCV_FAILURE_DETAIL = "Found duplicate key while validating index for UCVs"
CANCELLED_DETAIL = "index build cancelled: the index was dropped"
RESTART_FAILURE_DETAIL = "job interrupted by an emulator restart and could not be run again: {}"

# Background ANALYZE: like PostgreSQL's autoanalyze (base threshold + fraction of the table).
AUTO_ANALYZE_BASE_ROWS = 50
AUTO_ANALYZE_FRACTION = 0.1
AUTO_ANALYZE_INTERVAL_SECONDS = 2.0
CANCEL_WAIT_SECONDS = 10.0


class JobStatus(str, enum.Enum):
    """The statuses of ``sys.jobs.status``, in DSQL's words."""

    SUBMITTED = "submitted"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED)


class JobType(str, enum.Enum):
    """The values of ``sys.jobs.job_type``. VALIDATE_CONSTRAINT is our name: DSQL's is unknown."""

    INDEX_BUILD = "INDEX_BUILD"
    ANALYZE = "ANALYZE"
    DROP = "DROP"
    VALIDATE_CONSTRAINT = "VALIDATE_CONSTRAINT"


_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.SUBMITTED: frozenset({JobStatus.PROCESSING, JobStatus.FAILED}),
    JobStatus.PROCESSING: frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.SUBMITTED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
}


class JobStateError(RuntimeError):
    """A job was asked to move to a status it cannot reach from where it is."""


class JobNotFound(LookupError):
    """No job with this id exists (or it was cleaned up)."""


def advance(current: JobStatus, new: JobStatus) -> JobStatus:
    """Check one status change. PROCESSING → SUBMITTED only happens on a restart (re-run)."""
    if new not in _TRANSITIONS[current]:
        raise JobStateError(f"a job cannot go from {current.value} to {new.value}")
    return new


def new_job_id() -> str:
    """A job id as DSQL makes them: 26 lower-case base32 characters (128 random bits)."""
    return base64.b32encode(secrets.token_bytes(16)).decode("ascii").rstrip("=").lower()


def is_job_id(text: str) -> bool:
    """True if ``text`` has the shape of a job id."""
    alphabet = set("abcdefghijklmnopqrstuvwxyz234567")
    return len(text) == JOB_ID_LENGTH and set(text) <= alphabet


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class IndexBuild:
    """What an INDEX_BUILD job runs. ``fallback_sql`` is the non-unique form of a unique build."""

    schema: str
    name: str
    create_sql: str
    unique: bool = False
    nulls_not_distinct: bool = False
    fallback_sql: str | None = None

    def to_spec(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "name": self.name,
            "create_sql": self.create_sql,
            "unique": self.unique,
            "nulls_not_distinct": self.nulls_not_distinct,
            "fallback_sql": self.fallback_sql,
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> IndexBuild:
        return cls(
            schema=str(spec["schema"]),
            name=str(spec["name"]),
            create_sql=str(spec["create_sql"]),
            unique=bool(spec.get("unique")),
            nulls_not_distinct=bool(spec.get("nulls_not_distinct")),
            fallback_sql=spec.get("fallback_sql"),
        )

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


Connect = Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]
Clock = Callable[[], datetime]


def connector(conninfo: Mapping[str, Any]) -> Connect:
    """A `Connect` opening autocommit psycopg connections with these keyword arguments."""

    async def connect() -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(**dict(conninfo), autocommit=True)
        await conn.execute("SET application_name = 'dsql-emulator-jobs'")
        return conn

    return connect


class JobRunner:
    """Runs DSQL's asynchronous jobs in the background of the emulator's event loop.

    Two lanes: index builds and constraint validations run one at a time (PostgreSQL's
    concurrent builds wait for each other anyway); ANALYZE jobs run on their own lane so that
    an ``ANALYZE`` is never queued behind a long build.
    """

    def __init__(
        self,
        connect: Connect,
        *,
        clock: Clock = utcnow,
        on_catalog_change: Callable[[], None] | None = None,
        auto_analyze: bool = True,
        auto_analyze_interval: float = AUTO_ANALYZE_INTERVAL_SECONDS,
    ) -> None:
        self._connect = connect
        self._clock = clock
        self._on_catalog_change = on_catalog_change
        self._auto_analyze = auto_analyze
        self._auto_analyze_interval = auto_analyze_interval
        self._store: psycopg.AsyncConnection[Any] | None = None
        self._store_lock = asyncio.Lock()
        self._lanes: dict[str, asyncio.Queue[str]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._done: dict[str, asyncio.Event] = {}
        self._running_pid: dict[str, int] = {}  # job id -> backend pid of its build
        self._running_conn: dict[str, psycopg.AsyncConnection[Any]] = {}
        self._cancelled: set[str] = set()
        self._started = False

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Install the ``sys`` objects, re-queue unfinished jobs, start the workers."""
        if self._started:
            return
        self._started = True
        self._store = await self._connect()
        await self._store.execute(sys_catalog.INSTALL_SQL)
        self._lanes = {"build": asyncio.Queue(), "analyze": asyncio.Queue()}
        for lane in self._lanes:
            self._tasks.append(asyncio.create_task(self._worker(lane), name=f"jobs-{lane}"))
        if self._auto_analyze:
            self._tasks.append(asyncio.create_task(self._auto_analyze_loop(), name="jobs-auto"))
        for row in await self._fetch(sys_catalog.SELECT_UNFINISHED_SQL):
            await self._requeue_after_restart(row)

    async def stop(self) -> None:
        """Stop the workers. A build in progress is left to be re-run at the next start."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for conn in list(self._running_conn.values()):
            with contextlib.suppress(Exception):
                await conn.close()
        if self._store is not None:
            with contextlib.suppress(Exception):
                await self._store.close()
            self._store = None
        self._started = False

    # ---- submitting --------------------------------------------------------------------------

    async def submit_index_build(self, build: IndexBuild, *, table_oid: int | None = None) -> str:
        """Queue an index build; returns its job id at once."""
        del table_oid  # the index's own oid is filled in once its catalog entry exists
        return await self._submit(
            JobType.INDEX_BUILD,
            "build",
            build.to_spec(),
            sys_catalog.PG_CLASS_OID,
            None,
            build.qualified,
        )

    async def submit_analyze(self, table_oid: int, qualified_name: str) -> str:
        """Queue an ANALYZE of one table (by oid, so a rename meanwhile does not matter)."""
        spec = {"table_oid": table_oid}
        return await self._submit(
            JobType.ANALYZE, "analyze", spec, sys_catalog.PG_CLASS_OID, table_oid, qualified_name
        )

    async def submit_validate(self, table_oid: int, constraint: str, qualified_table: str) -> str:
        """Queue ``ALTER TABLE … VALIDATE CONSTRAINT`` as a job."""
        spec = {"table_oid": table_oid, "constraint": constraint}
        return await self._submit(
            JobType.VALIDATE_CONSTRAINT,
            "build",
            spec,
            sys_catalog.PG_CONSTRAINT_OID,
            None,
            f"{qualified_table}.{constraint}",
        )

    async def record_drop(
        self, object_oid: int | None, class_id: int = sys_catalog.PG_CLASS_OID
    ) -> str:
        """Record a finished DROP job, as DSQL lists one after ``DROP TABLE``/``DROP INDEX``."""
        await self._cleanup()
        now = self._clock()
        row = JobRow(
            new_job_id(),
            JobStatus.COMPLETED.value,
            None,
            JobType.DROP.value,
            class_id,
            object_oid,
            "",
            now,
            now,
            {},
        )
        await self._exec(sys_catalog.INSERT_SQL, row.insert_params())
        self._event(row.job_id).set()
        return row.job_id

    async def _submit(
        self,
        job_type: JobType,
        lane: str,
        spec: dict[str, Any],
        class_id: int,
        object_id: int | None,
        object_name: str,
    ) -> str:
        if not self._started:
            raise RuntimeError("the job runner is not started")
        await self._cleanup()
        now = self._clock()
        row = JobRow(
            new_job_id(),
            JobStatus.SUBMITTED.value,
            None,
            job_type.value,
            class_id,
            object_id,
            object_name,
            now,
            now,
            {**spec, "lane": lane},
        )
        await self._exec(sys_catalog.INSERT_SQL, row.insert_params())
        self._event(row.job_id)
        self._lanes[lane].put_nowait(row.job_id)
        return row.job_id

    async def _cleanup(self) -> None:
        cutoff = self._clock() - timedelta(seconds=JOB_RETENTION_SECONDS)
        await self._exec(sys_catalog.CLEANUP_SQL, (cutoff,))

    # ---- asking ------------------------------------------------------------------------------

    async def get(self, job_id: str) -> JobRow:
        """The stored row of one job; `JobNotFound` if there is none."""
        rows = await self._fetch(sys_catalog.SELECT_ONE_SQL, (job_id,))
        if not rows:
            raise JobNotFound(job_id)
        return rows[0]

    async def all_jobs(self) -> list[JobRow]:
        return await self._fetch(sys_catalog.SELECT_ALL_SQL)

    async def wait(self, job_id: str, timeout: float | None = None) -> bool:
        """Wait until the job ends: True if it completed, False if it failed.

        Raises `JobNotFound` for an unknown id and `TimeoutError` if ``timeout`` passes first.
        """
        row = await self.get(job_id)
        if not JobStatus(row.status).finished:
            event = self._event(job_id)
            try:
                await asyncio.wait_for(event.wait(), timeout)
            except asyncio.TimeoutError as exc:
                raise TimeoutError(f"job {job_id} is still {row.status}") from exc
            row = await self.get(job_id)
        return row.status == JobStatus.COMPLETED.value

    async def cancel_for_object(self, object_name: str | None, object_oid: int | None) -> list[str]:
        """Cancel unfinished index builds of this index (DSQL: ``DROP INDEX`` cancels a build).

        Returns the ids of the jobs cancelled; when this returns, their builds have stopped.
        """
        cancelled = []
        for row in await self._fetch(sys_catalog.SELECT_UNFINISHED_SQL):
            if row.job_type != JobType.INDEX_BUILD.value:
                continue
            same = (object_oid is not None and row.object_id == object_oid) or (
                object_name is not None and row.object_name == object_name
            )
            if not same:
                continue
            self._cancelled.add(row.job_id)
            event = self._event(row.job_id)
            if row.job_id not in self._running_conn and row.status == JobStatus.SUBMITTED.value:
                await self._finish(row, JobStatus.FAILED, CANCELLED_DETAIL)
            # A cancel request that reaches the build's backend before its statement starts is
            # ignored by PostgreSQL: keep asking until the build has stopped (bounded).
            loop = asyncio.get_running_loop()
            deadline = loop.time() + CANCEL_WAIT_SECONDS
            while not event.is_set() and loop.time() < deadline:
                conn = self._running_conn.get(row.job_id)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.cancel_safe()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), 0.1)
            cancelled.append(row.job_id)
        return cancelled

    # ---- running -----------------------------------------------------------------------------

    def _event(self, job_id: str) -> asyncio.Event:
        if job_id not in self._done:
            self._done[job_id] = asyncio.Event()
        return self._done[job_id]

    async def _worker(self, lane: str) -> None:
        queue = self._lanes[lane]
        while True:
            job_id = await queue.get()
            try:
                await self._run(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one job kill the lane
                log.exception("job %s crashed", job_id)
                with contextlib.suppress(Exception):
                    row = await self.get(job_id)
                    if not JobStatus(row.status).finished:
                        await self._finish(
                            row, JobStatus.FAILED, "internal error in the job runner"
                        )

    async def _run(self, job_id: str) -> None:
        try:
            row = await self.get(job_id)
        except JobNotFound:
            return
        if JobStatus(row.status).finished:
            self._event(job_id).set()
            return
        if job_id in self._cancelled:
            await self._finish(row, JobStatus.FAILED, CANCELLED_DETAIL)
            return
        row.status = advance(JobStatus(row.status), JobStatus.PROCESSING).value
        row.update_time = self._clock()
        await self._exec(sys_catalog.UPDATE_SQL, row.update_params())
        kind = JobType(row.job_type)
        if kind is JobType.INDEX_BUILD:
            await self._run_index_build(row)
        elif kind is JobType.ANALYZE:
            table = await self._table_sql(int(row.spec["table_oid"]))
            statement = None if table is None else pgsql.SQL("ANALYZE {}").format(table)
            await self._run_simple(row, statement)
        elif kind is JobType.VALIDATE_CONSTRAINT:
            await self._run_validate(row)
        else:
            await self._finish(row, JobStatus.COMPLETED, None)

    async def _finish(self, row: JobRow, status: JobStatus, details: str | None) -> None:
        row.status = advance(JobStatus(row.status), status).value
        row.details = details
        row.update_time = self._clock()
        await self._exec(sys_catalog.UPDATE_SQL, row.update_params())
        self._event(row.job_id).set()

    async def _run_simple(self, row: JobRow, statement: pgsql.Composed | None) -> None:
        if statement is None:
            await self._finish(row, JobStatus.FAILED, "the table no longer exists")
            return
        conn = await self._connect()
        try:
            await conn.execute(statement)
        except psycopg.Error as exc:
            await self._finish(row, JobStatus.FAILED, _pg_message(exc))
            return
        finally:
            await conn.close()
        await self._finish(row, JobStatus.COMPLETED, None)

    async def _table_sql(self, table_oid: int) -> pgsql.Composed | None:
        """``schema.table`` of a table by oid, quoted for SQL; None if it is gone."""
        names = await self._fetch_values(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE c.oid = %s",
            (table_oid,),
        )
        if not names:
            return None
        return pgsql.SQL("{}.{}").format(
            pgsql.Identifier(names[0][0]), pgsql.Identifier(names[0][1])
        )

    async def _run_validate(self, row: JobRow) -> None:
        table = await self._table_sql(int(row.spec["table_oid"]))
        if table is None:
            await self._finish(row, JobStatus.FAILED, "the table no longer exists")
            return
        statement = pgsql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
            table, pgsql.Identifier(row.spec["constraint"])
        )
        oid = await self._fetch_values(
            "SELECT oid FROM pg_constraint WHERE conrelid = %s AND conname = %s",
            (row.spec["table_oid"], row.spec["constraint"]),
        )
        if oid:
            row.object_id = int(oid[0][0])
        await self._run_simple(row, statement)

    async def _run_index_build(self, row: JobRow) -> None:
        build = IndexBuild.from_spec(row.spec)
        # After a restart: the build may have finished while we were away (valid: done), or
        # been interrupted (invalid: dropped here, then built again).
        if await self._drop_if_invalid(build):
            row.object_id = await self._index_oid(build)
            await self._finish(row, JobStatus.COMPLETED, None)
            if self._on_catalog_change is not None:
                self._on_catalog_change()
            return
        conn = await self._connect()
        self._running_conn[row.job_id] = conn
        watcher = asyncio.create_task(self._watch_oid(row, build))
        outcome: tuple[JobStatus, str | None]
        try:
            if row.job_id in self._cancelled:
                raise psycopg.errors.QueryCanceled("cancelled before it started")
            await conn.execute(build.create_sql)
            outcome = (JobStatus.COMPLETED, None)
        except psycopg.errors.QueryCanceled:
            outcome = (JobStatus.FAILED, CANCELLED_DETAIL)
        except psycopg.errors.UniqueViolation:
            outcome = (JobStatus.FAILED, UCV_FAILURE_DETAIL)
        except psycopg.Error as exc:
            outcome = (JobStatus.FAILED, _pg_message(exc))
        finally:
            self._running_conn.pop(row.job_id, None)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        try:
            if row.job_id in self._cancelled:
                outcome = (JobStatus.FAILED, CANCELLED_DETAIL)
            elif outcome[1] == UCV_FAILURE_DETAIL:
                await self._enforce_failed_unique(conn, build)
            oid = await self._index_oid(build)
            if oid is not None:
                row.object_id = oid
        finally:
            await conn.close()
        await self._finish(row, *outcome)
        if outcome[0] is JobStatus.COMPLETED and self._on_catalog_change is not None:
            self._on_catalog_change()

    async def _enforce_failed_unique(
        self, conn: psycopg.AsyncConnection[Any], build: IndexBuild
    ) -> None:
        """Leave a failed unique index INVALID but enforcing uniqueness on new writes (DSQL).

        PostgreSQL leaves a failed concurrent unique build not ready for inserts, so it would
        enforce nothing. Rebuild it without UNIQUE (duplicates and all), then mark it unique and
        invalid: new writes are checked against it, the planner ignores it.
        """
        if build.fallback_sql is None:
            return
        try:
            await conn.execute(
                pgsql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
                    pgsql.Identifier(build.schema), pgsql.Identifier(build.name)
                )
            )
            await conn.execute(build.fallback_sql)
            async with conn.transaction():
                await conn.execute(
                    "UPDATE pg_index SET indisunique = true, indnullsnotdistinct = %s,"
                    " indisvalid = false WHERE indexrelid = %s::regclass",
                    (build.nulls_not_distinct, _quote_qualified(build.schema, build.name)),
                )
        except psycopg.Error as exc:  # the index stays invalid; it just enforces nothing
            log.warning("could not keep failed unique index %s enforcing: %s", build.name, exc)

    async def _drop_if_invalid(self, build: IndexBuild) -> bool:
        """Drop a left-over invalid index of this build; True if a valid one is there."""
        rows = await self._fetch_values(
            "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)",
            (_quote_qualified(build.schema, build.name),),
        )
        if rows and not rows[0][0]:
            conn = await self._connect()
            try:
                await conn.execute(
                    pgsql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
                        pgsql.Identifier(build.schema), pgsql.Identifier(build.name)
                    )
                )
            finally:
                await conn.close()
        return bool(rows and rows[0][0])

    async def _index_oid(self, build: IndexBuild) -> int | None:
        return await self.relation_oid(build.schema, build.name)

    async def relation_oid(self, schema: str, name: str) -> int | None:
        """The relation's oid as committed now, seen from the runner's own connection.

        A client session inside a transaction can hold a stale catalog snapshot (PostgreSQL
        refreshes it when the session takes a lock), so it may not yet see an index a build has
        just committed; this connection runs each query in a transaction of its own.
        """
        rows = await self._fetch_values(
            "SELECT to_regclass(%s)::oid", (_quote_qualified(schema, name),)
        )
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    async def _watch_oid(self, row: JobRow, build: IndexBuild) -> None:
        """Fill ``object_id`` as soon as the build's catalog entry exists."""
        while True:
            oid = await self._index_oid(build)
            if oid is not None:
                row.object_id = oid
                row.update_time = self._clock()
                await self._exec(sys_catalog.UPDATE_SQL, row.update_params())
                return
            await asyncio.sleep(0.02)

    async def _requeue_after_restart(self, row: JobRow) -> None:
        lane = row.spec.get("lane")
        if lane not in self._lanes:
            row.status = JobStatus.FAILED.value
            row.details = RESTART_FAILURE_DETAIL.format("unknown job kind")
            row.update_time = self._clock()
            await self._exec(sys_catalog.UPDATE_SQL, row.update_params())
            return
        if row.status == JobStatus.PROCESSING.value:
            row.status = advance(JobStatus.PROCESSING, JobStatus.SUBMITTED).value
            row.update_time = self._clock()
            await self._exec(sys_catalog.UPDATE_SQL, row.update_params())
        self._event(row.job_id)
        self._lanes[str(lane)].put_nowait(row.job_id)

    # ---- background ANALYZE ------------------------------------------------------------------

    async def auto_analyze_once(self) -> list[str]:
        """Submit ANALYZE jobs for user tables with enough changed rows; returns the job ids."""
        due = await self._fetch_values(
            "SELECT s.relid, s.schemaname || '.' || s.relname"
            " FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid"
            " WHERE s.schemaname NOT IN ('sys', 'pg_catalog', 'information_schema')"
            " AND s.n_mod_since_analyze >= %s + %s * greatest(c.reltuples, 0)",
            (AUTO_ANALYZE_BASE_ROWS, AUTO_ANALYZE_FRACTION),
        )
        if not due:
            return []
        busy = {
            r.object_id
            for r in await self._fetch(sys_catalog.SELECT_UNFINISHED_SQL)
            if r.job_type == JobType.ANALYZE.value
        }
        return [
            await self.submit_analyze(int(oid), str(name))
            for oid, name in due
            if int(oid) not in busy
        ]

    async def _auto_analyze_loop(self) -> None:
        while True:
            await asyncio.sleep(self._auto_analyze_interval)
            try:
                await self.auto_analyze_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dropped table mid-query, a restart: try again later
                log.debug("background ANALYZE check failed: %s", exc)

    # ---- the store connection ----------------------------------------------------------------

    async def _exec(self, query: str, params: tuple[Any, ...] = ()) -> None:
        assert self._store is not None
        async with self._store_lock:
            await self._store.execute(query, params)

    async def _fetch_values(
        self, query: str, params: tuple[Any, ...] = ()
    ) -> list[tuple[Any, ...]]:
        assert self._store is not None
        async with self._store_lock:
            cur = await self._store.execute(query, params)
            return list(await cur.fetchall())

    async def _fetch(self, query: str, params: tuple[Any, ...] = ()) -> list[JobRow]:
        return [sys_catalog.row_from_db(v) for v in await self._fetch_values(query, params)]


def _pg_message(exc: psycopg.Error) -> str:
    diag = exc.diag
    return diag.message_primary or str(exc).splitlines()[0]


def _quote_qualified(schema: str, name: str) -> str:
    def q(part: str) -> str:
        return '"' + part.replace('"', '""') + '"'

    return f"{q(schema)}.{q(name)}"
