"""The ``sys`` schema of the emulator, as far as asynchronous jobs need it.

Aurora DSQL has a ``sys.jobs`` view (``job_id, status, details, job_type, class_id, object_id,
object_name, start_time, update_time``) and a ``sys.wait_for_job(job_id)`` procedure. Here the view
reads a real table, ``sys.job_store``, which also keeps what the job runner needs to run (or
re-run, after a restart) each job, so jobs survive an emulator restart with the data directory.

``sys.wait_for_job`` is answered by the jobs hook (it awaits the job in asyncio, so no backend is
held while waiting, and an index build never waits for the waiter's snapshot). The SQL function
installed here is the fallback for when that hook is switched off: it only reports, never waits.

This module holds SQL text and row mapping only: it runs nothing itself and never imports the
session or server side.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# The columns of sys.jobs, in DSQL's order (observed; manual "Asynchronous indexes", L2254).
JOBS_COLUMNS: tuple[str, ...] = (
    "job_id",
    "status",
    "details",
    "job_type",
    "class_id",
    "object_id",
    "object_name",
    "start_time",
    "update_time",
)

# pg_class's and pg_constraint's own oids: DSQL fills class_id with the catalog the object is in.
PG_CLASS_OID = 1259
PG_CONSTRAINT_OID = 2606

INSTALL_SQL = """
CREATE SCHEMA IF NOT EXISTS sys;
GRANT USAGE ON SCHEMA sys TO PUBLIC;
CREATE TABLE IF NOT EXISTS sys.job_store (
    job_id      text PRIMARY KEY,
    status      text NOT NULL,
    details     text,
    job_type    text NOT NULL,
    class_id    oid,
    object_id   oid,
    object_name text,
    start_time  timestamptz NOT NULL,
    update_time timestamptz NOT NULL,
    spec        jsonb NOT NULL DEFAULT '{}'::jsonb,
    seq         bigserial
);
REVOKE ALL ON sys.job_store FROM PUBLIC;
CREATE OR REPLACE VIEW sys.jobs AS
    SELECT job_id, status, details, job_type, class_id, object_id, object_name,
           start_time, update_time
    FROM sys.job_store;
GRANT SELECT ON sys.jobs TO PUBLIC;
CREATE OR REPLACE FUNCTION sys.wait_for_job(job_id text) RETURNS boolean
    LANGUAGE sql STABLE
    AS $$ SELECT CASE status WHEN 'completed' THEN true WHEN 'failed' THEN false END
          FROM sys.job_store WHERE job_store.job_id = wait_for_job.job_id $$;
GRANT EXECUTE ON FUNCTION sys.wait_for_job(text) TO PUBLIC;
"""

_SELECT = (
    "SELECT job_id, status, details, job_type, class_id, object_id, object_name,"
    " start_time, update_time, spec FROM sys.job_store"
)

SELECT_ONE_SQL = _SELECT + " WHERE job_id = %s"
SELECT_UNFINISHED_SQL = _SELECT + " WHERE status IN ('submitted', 'processing') ORDER BY seq"
SELECT_ALL_SQL = _SELECT + " ORDER BY seq"

INSERT_SQL = (
    "INSERT INTO sys.job_store (job_id, status, details, job_type, class_id, object_id,"
    " object_name, start_time, update_time, spec)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)

UPDATE_SQL = (
    "UPDATE sys.job_store SET status = %s, details = %s, object_id = %s, object_name = %s,"
    " update_time = %s WHERE job_id = %s"
)

CLEANUP_SQL = (
    "DELETE FROM sys.job_store WHERE status IN ('completed', 'failed') AND update_time < %s"
)


@dataclass
class JobRow:
    """One row of ``sys.job_store``: a job as stored, with its run spec."""

    job_id: str
    status: str
    details: str | None
    job_type: str
    class_id: int | None
    object_id: int | None
    object_name: str | None
    start_time: datetime
    update_time: datetime
    spec: dict[str, Any] = field(default_factory=dict)

    def insert_params(self) -> tuple[Any, ...]:
        """Parameters for `INSERT_SQL`: the public columns, then the build spec."""
        return (*self.public(), json.dumps(self.spec))

    def update_params(self) -> tuple[Any, ...]:
        """Parameters for `UPDATE_SQL`."""
        return (
            self.status,
            self.details,
            self.object_id,
            self.object_name,
            self.update_time,
            self.job_id,
        )

    def public(self) -> tuple[Any, ...]:
        """The values of the ``sys.jobs`` columns, in order."""
        return (
            self.job_id,
            self.status,
            self.details,
            self.job_type,
            self.class_id,
            self.object_id,
            self.object_name,
            self.start_time,
            self.update_time,
        )


def row_from_db(values: Sequence[Any]) -> JobRow:
    """Build a `JobRow` from a row of one of the ``SELECT_*`` queries (psycopg-typed values)."""
    spec = values[9]
    if isinstance(spec, str):
        spec = json.loads(spec)
    return JobRow(
        job_id=values[0],
        status=values[1],
        details=values[2],
        job_type=values[3],
        class_id=None if values[4] is None else int(values[4]),
        object_id=None if values[5] is None else int(values[5]),
        object_name=values[6],
        start_time=values[7],
        update_time=values[8],
        spec=dict(spec or {}),
    )
