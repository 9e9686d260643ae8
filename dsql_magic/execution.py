"""Run a cell's SQL on a connection: bind ``:params``, keep transactions right, retry OCC conflicts.

A cell is split client-side (`dsql_magic.sqlsplit`) and each statement is sent on its own, with
its ``:name`` values as server-side parameters. Statements outside ``BEGIN … COMMIT`` autocommit;
a cell may hold a whole transaction.

OCC retry (DSQL's optimistic concurrency): a statement failing with SQLSTATE 40001 (``OC000`` /
``OC001``) is retried only when re-running the cell from its start cannot repeat committed work —
the cell started outside a transaction and every statement before the failing one ran inside the
transaction the cell opened (that covers a single autocommit statement and a cell that is exactly
one transaction). Otherwise the error says why it was not retried. The decision looks at SQLSTATE
and the OC code, never at other message text.

Ctrl-C: psycopg cancels the running query on the server when interrupted; here an aborted
transaction is rolled back so the connection stays usable. This module never displays anything
and never shows a token (it never sees one).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from dsql_magic.connections import DsqlConnection
from dsql_magic.errors import ConnectionLost, UsageProblem, dsql_code, from_database_error
from dsql_magic.results import Column
from dsql_magic.sqlsplit import SqlScanError, SqlStatement, split_sql

RETRYABLE_SQLSTATES = frozenset({"40001"})
RETRYABLE_CODES = frozenset({"OC000", "OC001", None})
BACKOFF_BASE_SECONDS = 0.02
BACKOFF_CAP_SECONDS = 2.0
_MISSING = object()


@dataclass(frozen=True)
class RetryPolicy:
    """How OCC conflicts are retried; ``enabled=False`` (``--no-retry``) never retries."""

    enabled: bool = True
    max_retries: int = 5
    base: float = BACKOFF_BASE_SECONDS
    cap: float = BACKOFF_CAP_SECONDS

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Exponential backoff with jitter: half fixed, half random, capped."""
        ceiling = min(self.cap, self.base * (2**attempt))
        return ceiling / 2 + rng() * ceiling / 2


@dataclass
class CellOutcome:
    """What a cell produced: its last result set (if any), command tags, and notes."""

    columns: list[Column] | None = None
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    tags_after_result: list[str] = field(default_factory=list)
    retries: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def has_result(self) -> bool:
        return self.columns is not None


def parse_cell(sql: str, *, readonly: bool = False) -> list[SqlStatement]:
    """Split the cell; with ``readonly`` wrap it in ``BEGIN READ ONLY … COMMIT``."""
    try:
        statements = split_sql(sql)
    except SqlScanError as exc:
        raise UsageProblem(str(exc), "close the quote or comment") from None
    if not statements:
        raise UsageProblem("no SQL to run", "write a statement, e.g. SELECT 1")
    if readonly:
        if any(s.is_transaction_control for s in statements):
            raise UsageProblem(
                "--readonly runs the cell in its own transaction",
                "remove BEGIN/COMMIT from the cell, or drop --readonly",
            )
        statements = [
            split_sql("BEGIN READ ONLY")[0],
            *statements,
            split_sql("COMMIT")[0],
        ]
    return statements


def bind_parameters(
    statements: Sequence[SqlStatement], namespace: Mapping[str, Any]
) -> list[dict[str, Any] | None]:
    """The parameter values for each statement, looked up by ``:name`` in ``namespace``."""
    out: list[dict[str, Any] | None] = []
    for st in statements:
        if not st.params:
            out.append(None)
            continue
        values: dict[str, Any] = {}
        for name in st.params:
            value = namespace.get(name, _MISSING)
            if value is _MISSING:
                raise UsageProblem(
                    f":{name} is not a defined Python variable",
                    f"define {name} in a cell first (a cast is written ::{name})",
                )
            values[name] = value
        out.append(values)
    return out


class _Failure(Exception):
    """A statement failed; carries where, and whether re-running the cell would be safe."""

    def __init__(self, error: psycopg.Error, index: int, rerun_safe: bool, why: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.index = index
        self.rerun_safe = rerun_safe
        self.why = why


def _statement_label(index: int, total: int) -> int | None:
    return index if total > 1 else None


def _run_once(
    conn: psycopg.Connection[Any],
    statements: Sequence[SqlStatement],
    params: Sequence[dict[str, Any] | None],
    started_idle: bool,
) -> CellOutcome:
    outcome = CellOutcome()
    committed_before = False  # some earlier statement finished outside a transaction block
    with conn.cursor() as cur:
        for index, (st, values) in enumerate(zip(statements, params, strict=True), start=1):
            try:
                cur.execute(st.query, values)
            except psycopg.Error as exc:
                safe = started_idle and not committed_before
                if not started_idle:
                    why = "the transaction was opened in an earlier cell"
                elif committed_before:
                    why = (
                        f"statement{'s' if index > 2 else ''} before statement {index} already "
                        "committed, so re-running the cell would repeat them"
                    )
                else:
                    why = ""
                raise _Failure(exc, index, safe, why) from exc
            if cur.description is not None:
                outcome.columns = [Column(d.name, d.type_code) for d in cur.description]
                outcome.rows = cur.fetchall()
                outcome.tags_after_result = []
            else:
                tag = cur.statusmessage or st.first_word
                outcome.tags.append(tag)
                outcome.tags_after_result.append(tag)
            if conn.info.transaction_status == TransactionStatus.IDLE:
                committed_before = True
    return outcome


def _rollback_if_aborted(conn: psycopg.Connection[Any]) -> bool:
    """Roll back a failed transaction so the next cell works; True when one was rolled back."""
    if conn.closed or conn.broken:
        return False
    if conn.info.transaction_status in (TransactionStatus.INERROR, TransactionStatus.INTRANS):
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error:
            return False
        return True
    return False


def _is_retryable(exc: psycopg.Error) -> bool:
    sqlstate = exc.sqlstate or exc.diag.sqlstate
    if sqlstate not in RETRYABLE_SQLSTATES:
        return False
    return dsql_code(exc.diag.message_primary or str(exc)) in RETRYABLE_CODES


def run_cell(
    connection: DsqlConnection,
    statements: Sequence[SqlStatement],
    namespace: Mapping[str, Any],
    *,
    retry: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
    rng: Callable[[], float] = random.random,
) -> CellOutcome:
    """Run the statements; retry OCC conflicts when safe; raise our errors otherwise."""
    params = bind_parameters(statements, namespace)
    retries = 0
    codes: list[str] = []
    while True:
        conn = connection.ensure()
        started_idle = conn.info.transaction_status == TransactionStatus.IDLE
        try:
            try:
                outcome = _run_once(conn, statements, params, started_idle)
            finally:
                connection.remember_status()
        except _Failure as failure:
            exc = failure.error
            if conn.broken or conn.closed:
                raise _lost(failure, statements) from None
            rolled_back = _rollback_if_aborted(conn) and started_idle
            if _is_retryable(exc):
                code = dsql_code(exc.diag.message_primary or str(exc)) or "40001"
                if failure.rerun_safe and retry.enabled and retries < retry.max_retries:
                    sleep(retry.delay(retries, rng))
                    retries += 1
                    codes.append(code)
                    continue
                err = from_database_error(
                    exc,
                    statement=_statement_label(failure.index, len(statements)),
                    sql=statements[failure.index - 1].text,
                )
                err.note = _conflict_note(failure, retry, retries)
                raise err from exc
            err = from_database_error(
                exc,
                statement=_statement_label(failure.index, len(statements)),
                sql=statements[failure.index - 1].text,
            )
            notes = []
            if failure.index > 1 and not failure.rerun_safe and started_idle:
                notes.append(f"statements 1-{failure.index - 1} ran and were committed")
            if rolled_back:
                notes.append("the open transaction was rolled back")
            err.note = "; ".join(notes) or None
            raise err from exc
        except KeyboardInterrupt:
            _rollback_if_aborted(conn)
            raise
        if retries:
            kinds = ", ".join(sorted(set(codes)))
            outcome.notes.append(
                f"succeeded after {retries} {'retry' if retries == 1 else 'retries'} "
                f"(OCC conflict {kinds})"
            )
        outcome.retries = retries
        return outcome


def _conflict_note(failure: _Failure, retry: RetryPolicy, retries: int) -> str:
    if not failure.rerun_safe:
        return f"not retried: {failure.why}"
    if not retry.enabled:
        return "not retried: retries are off (--no-retry or DsqlMagic.autoretry = False)"
    return f"gave up after {retries} {'retry' if retries == 1 else 'retries'} (max_retries)"


def _lost(failure: _Failure, statements: Sequence[SqlStatement]) -> ConnectionLost:
    st = statements[failure.index - 1]
    preview = " ".join(st.text.split())
    if len(preview) > 60:
        preview = preview[:57] + "..."
    where = f"statement {failure.index} ({preview})" if len(statements) > 1 else f"({preview})"
    first = str(failure.error).strip().splitlines()
    reason = f": {first[0]}" if first else ""
    return ConnectionLost(
        f"the connection dropped while running {where}{reason}",
        "the next cell reconnects with a fresh token; check whether the statement took effect "
        "before running it again",
    )
