"""``%dsql jobs`` and ``%dsql wait JOB_ID``: DSQL's asynchronous jobs from a notebook.

``%dsql jobs`` shows ``sys.jobs`` (newest first) as a DataFrame; ``%dsql wait JOB_ID`` polls
``sys.jobs`` until the job ends, with a tqdm progress line showing its status, and says how it
ended. Polling ``sys.jobs`` (rather than calling ``sys.wait_for_job``) works the same on a real
cluster and on the emulator, holds no transaction open between polls, and can be interrupted
with Ctrl-C without cancelling the job.

This module only builds queries and display values; it opens no connections of its own.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable
from typing import Any, cast

import pandas as pd

JOBS_SQL = (
    "SELECT job_id, status, details, job_type, class_id, object_id, object_name,"
    " start_time, update_time FROM sys.jobs"
)
_JOB_ID = re.compile(r"^[a-z2-7]{26}$")
FINISHED = ("completed", "failed")
POLL_SECONDS = 0.5


def _jobs_parser() -> argparse.ArgumentParser:
    from dsql_magic.magics import make_parser

    parser = make_parser("jobs", "Show sys.jobs (asynchronous index builds, ANALYZE, DROP).")
    parser.add_argument("--conn", help="connection name (default: the current one)")
    parser.add_argument("--type", dest="job_type", help="only this job type, e.g. INDEX_BUILD")
    return parser


def _wait_parser() -> argparse.ArgumentParser:
    from dsql_magic.magics import make_parser

    parser = make_parser("wait", "Wait for an asynchronous job (CREATE INDEX ASYNC...) to end.")
    parser.add_argument(
        "job_id",
        help="the job id (26 lower-case letters and digits), or a variable holding it: a string "
        "or the DataFrame that CREATE INDEX ASYNC returned",
    )
    parser.add_argument("--conn", help="connection name (default: the current one)")
    parser.add_argument(
        "--timeout", type=float, default=None, help="stop waiting after this many seconds"
    )
    return parser


def resolve_job_id(arg: str, user_ns: dict[str, Any]) -> str:
    """The job id an argument names: a literal id, or a variable holding one.

    A notebook keeps the answer of ``%%dsql job`` / ``job = %dsql CREATE INDEX ASYNC …`` — a
    one-row DataFrame with a ``job_id`` column — so ``%dsql wait job`` takes that too.
    """
    text = arg.strip().strip("'\"")
    if _JOB_ID.match(text) or not text.isidentifier() or text not in user_ns:
        return text
    value = user_ns[text]
    if isinstance(value, pd.DataFrame) and "job_id" in value.columns and len(value) == 1:
        value = value["job_id"].iloc[0]
    return value.strip() if isinstance(value, str) else text


def _connection(magic: Any, name: str | None) -> Any:
    from dsql_magic.errors import UsageProblem

    connection = magic.registry.get(name)
    raw = connection.ensure()
    if raw.info.transaction_status != 0:  # not idle: a transaction is open
        raise UsageProblem(
            "a transaction is open on this connection: its snapshot would never see the job end",
            "COMMIT or ROLLBACK first (or use --conn with another connection)",
        )
    return raw


def _query(raw: Any, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[str], list[Any]]:
    import psycopg

    for attempt in range(3):
        try:
            cur = raw.execute(sql, params)
            return [c.name for c in cur.description or []], list(cur.fetchall())
        except psycopg.errors.SerializationFailure:
            # OC001: the catalog changed (an index just became valid): a retry reads it.
            if attempt == 2:
                raise
        finally:
            if not raw.autocommit:
                raw.rollback()  # never keep the snapshot: the next poll must see new states
    raise AssertionError("unreachable")


def jobs_frame(raw: Any, job_type: str | None = None) -> pd.DataFrame:
    """``sys.jobs`` as a DataFrame, newest first."""
    sql, params = JOBS_SQL, cast("tuple[Any, ...]", ())
    if job_type:
        sql, params = sql + " WHERE job_type = %s", (job_type.upper(),)
    columns, rows = _query(raw, sql + " ORDER BY start_time DESC", params)
    return pd.DataFrame.from_records(rows, columns=columns)


def wait_for(
    raw: Any,
    job_id: str,
    *,
    timeout: float | None = None,
    progress: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[str, str | None]:
    """Poll until the job ends; returns (status, details). LookupError if there is no such job.

    ``progress`` is told each status seen; ``TimeoutError`` if ``timeout`` passes first.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        _, rows = _query(raw, "SELECT status, details FROM sys.jobs WHERE job_id = %s", (job_id,))
        if not rows:
            raise LookupError(job_id)
        status, details = rows[0]
        if progress is not None:
            progress(status)
        if status in FINISHED:
            return status, details
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(status)
        sleep(POLL_SECONDS)


def cmd_jobs(magic: Any, args: str, cell: str | None) -> object:
    """``%dsql jobs [--type TYPE] [--conn NAME]``: sys.jobs as a DataFrame."""
    from dsql_magic.magics import parse_args
    from dsql_magic.results import Message

    ns = parse_args(_jobs_parser(), args)
    if isinstance(ns, Message):
        return ns
    frame = jobs_frame(_connection(magic, ns.conn), ns.job_type)
    if frame.empty:
        return Message("no jobs in sys.jobs (finished jobs are kept for 30 minutes)")
    return frame


def cmd_wait(magic: Any, args: str, cell: str | None) -> object:
    """``%dsql wait JOB_ID [--timeout S] [--conn NAME]``: wait with a progress line."""
    from tqdm.auto import tqdm

    from dsql_magic.errors import UsageProblem
    from dsql_magic.magics import parse_args
    from dsql_magic.results import Message

    ns = parse_args(_wait_parser(), args)
    if isinstance(ns, Message):
        return ns
    job_id = resolve_job_id(ns.job_id, magic.shell.user_ns if magic.shell else {})
    if not _JOB_ID.match(job_id):
        raise UsageProblem(
            f"{job_id!r} is not a job id", "copy the job_id that CREATE INDEX ASYNC returned"
        )
    raw = _connection(magic, ns.conn)
    bar = tqdm(total=None, desc=f"job {job_id}", unit=" polls", leave=True)

    def progress(status: str) -> None:
        bar.set_postfix_str(status, refresh=False)
        bar.update(1)

    try:
        status, details = wait_for(raw, job_id, timeout=ns.timeout, progress=progress)
    except LookupError:
        raise UsageProblem(
            f"no job {job_id} in sys.jobs", "finished jobs are removed after 30 minutes"
        ) from None
    except TimeoutError as exc:
        return Message(f"job {job_id} is still {exc}: stopped waiting after {ns.timeout:g}s")
    except KeyboardInterrupt:
        return Message(f"stopped waiting; job {job_id} goes on (see %dsql jobs)")
    finally:
        bar.close()
    if status == "completed":
        return Message(f"job {job_id} completed")
    return Message(f"job {job_id} failed: {details or 'no details'}")
