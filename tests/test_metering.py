"""The DPU model (calibrated on the manual's two examples), the transaction minimums, the meter's
totals and per-minute buckets, and the metering hook on a real PostgreSQL backend."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from dsql_magic.emulator import explain as ex
from dsql_magic.emulator import metering as m
from dsql_magic.emulator.engine import Engine
from dsql_magic.emulator.hooks import CommandResult, Synthetic
from dsql_magic.emulator.statements import split_statements
from tests.fix_emuexplain_pg import open_ctx

# The manual's "Statement DPU Estimate" examples (aurora-dsql-user-guide.txt, "Understanding
# DPUs in EXPLAIN ANALYZE"): figures and the plans' own inputs.
MANUAL_SELECT = m.Dpu(compute=0.01607, read=0.04312, write=0.0)
MANUAL_INSERT = m.Dpu(compute=0.01550, read=0.00307, write=0.01875)


def within(actual: float, expected: float, tolerance: float = 0.25) -> bool:
    return abs(actual - expected) <= tolerance * expected


def assert_close(actual: m.Dpu, expected: m.Dpu) -> None:
    assert within(actual.compute, expected.compute), (actual, expected)
    assert within(actual.read, expected.read), (actual, expected)
    if expected.write:
        assert within(actual.write, expected.write), (actual, expected)
    else:
        assert actual.write == 0.0
    assert within(actual.total, expected.total), (actual, expected)


def test_model_reproduces_the_manual_select_example() -> None:
    # Index Only Scan, 120 rows of width 36 from one B-Tree Scan, Execution Time 4.528 ms.
    work = m.Work(execution_ms=4.528, storage_requests=1, rows_read=120, bytes_read=120 * 36)
    assert_close(m.estimate(work), MANUAL_SELECT)


def test_model_reproduces_the_manual_insert_example() -> None:
    # 3 rows of width 122 into a table whose only index is its primary key; 0.543 ms.
    work = m.Work(execution_ms=0.543, storage_requests=3, rows_written=3, bytes_written=3 * 122)
    assert_close(m.estimate(work), MANUAL_INSERT)


def explain_analyze(conn: psycopg.Connection[Any], sql: str) -> ex.DsqlPlan:
    opts = ex.explain_options(split_statements(sql)[0])
    assert opts is not None
    pg_plan = conn.execute(ex.internal_explain_sql(opts)).fetchone()[0]  # type: ignore[index]
    row = conn.execute(ex.CATALOG_SQL.replace("$1", "%s"), (ex.relations_of(pg_plan),)).fetchone()
    return ex.explain_plan(pg_plan, ex.Catalog.from_json(row[0] if row else None), opts)


def test_recreated_examples_on_postgresql_are_within_25_percent(
    emuexplain_conn: psycopg.Connection[Any],
) -> None:
    select = explain_analyze(emuexplain_conn, "EXPLAIN ANALYZE VERBOSE SELECT * FROM test_table")
    assert select.dpu is not None
    assert_close(select.dpu, MANUAL_SELECT)
    emuexplain_conn.execute("BEGIN")
    try:
        insert = explain_analyze(
            emuexplain_conn,
            "EXPLAIN ANALYZE VERBOSE INSERT INTO test_table VALUES "
            "(9001, 'name1'), (9002, 'name2'), (9003, 'name3')",
        )
    finally:
        emuexplain_conn.execute("ROLLBACK")
    assert insert.dpu is not None
    assert_close(insert.dpu, MANUAL_INSERT)


def test_total_is_the_sum_and_five_decimals() -> None:
    block = m.dpu_block(m.Dpu(0.0155012, 0.0030749, 0.0187549), writes=True)
    assert block == [
        "Statement DPU Estimate:",
        "  Compute: 0.01550 DPU",
        "  Read: 0.00307 DPU (Transaction minimum: 0.00375)",
        "  Write: 0.01875 DPU (Transaction minimum: 0.05000)",
        "  Total: 0.03732 DPU",
    ]  # the manual's example 2, digit for digit
    assert m.dpu_block(m.Dpu(0.01607, 0.04312), writes=False)[-2:] == [
        "  Write: 0.00000 DPU",
        "  Total: 0.05919 DPU",
    ]


def test_transaction_minimums_apply_only_to_what_happened() -> None:
    small = m.Dpu(0.01, 0.001, 0.002)
    assert m.with_transaction_minimums(small, read=True, wrote=True) == m.Dpu(0.01, 0.00375, 0.05)
    assert m.with_transaction_minimums(small, read=False, wrote=False) == small
    big = m.Dpu(0.01, 0.2, 0.3)
    assert m.with_transaction_minimums(big, read=True, wrote=True) == big


def figures(dpu: m.Dpu, *, writes: bool) -> m.StatementFigures:
    return m.StatementFigures("X", dpu, m.Work(storage_requests=1), reads=True, writes=writes)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_meter_totals_are_the_sum_of_transactions() -> None:
    meter = m.Meter(clock=Clock(1_800_000_000.0))
    # session 1: a read, then a two-statement write transaction
    meter.record_statement(1, figures(m.Dpu(0.02, 0.01, 0.0), writes=False))
    t1 = meter.end_transaction(1, committed=True)
    meter.record_statement(1, figures(m.Dpu(0.02, 0.001, 0.02), writes=True))
    meter.record_statement(1, figures(m.Dpu(0.02, 0.001, 0.02), writes=True))
    t2 = meter.end_transaction(1, committed=True, commit_latency_ms=3.0)
    # session 2: a write that rolls back (no Write DPU)
    meter.record_statement(2, figures(m.Dpu(0.02, 0.001, 0.02), writes=True))
    t3 = meter.end_transaction(2, committed=False)
    assert t1 == m.Dpu(0.02, 0.01, 0.0)
    assert t2 == m.Dpu(0.04, 0.00375, 0.05)  # both minimums
    assert t3 == m.Dpu(0.02, 0.00375, 0.0)
    s1 = meter.session_totals(1)
    assert (s1.statements, s1.transactions) == (3, 2)
    assert s1.total == pytest.approx(t1.total + t2.total)
    cluster = meter.cluster_totals()
    assert cluster.total == pytest.approx(t1.total + t2.total + t3.total)
    assert cluster.statements == 4 and cluster.transactions == 3
    last = meter.last_statement(2)
    assert last is not None and last.dpu == m.Dpu(0.02, 0.001, 0.02)


def test_open_transaction_shows_in_session_totals() -> None:
    meter = m.Meter()
    meter.record_statement(7, figures(m.Dpu(0.02, 0.01, 0.0), writes=False))
    assert meter.session_totals(7).total == pytest.approx(0.03)
    meter.close_session(7)
    assert meter.session_totals(7).total == 0.0
    assert meter.cluster_totals().transactions == 1  # closed as rolled back, still counted


def test_minute_buckets() -> None:
    clock = Clock(1_800_000_000.0)  # a multiple of 60
    meter = m.Meter(clock=clock)
    for minute, n in ((0, 2), (1, 1), (3, 4)):
        clock.now = 1_800_000_000.0 + minute * 60 + 5
        for _ in range(n):
            meter.record_statement(1, figures(m.Dpu(0.02, 0.01, 0.03), writes=True))
            meter.end_transaction(1, committed=True, commit_latency_ms=float(n))
    start, end = 1_800_000_000.0, 1_800_000_000.0 + 600
    total = meter.datapoints("TotalDPU", start, end, 60, "Sum")
    assert [ts for ts, _ in total] == [1_800_000_000, 1_800_000_060, 1_800_000_180]
    each = m.Dpu(0.02, 0.01, 0.05).total  # write minimum applies
    assert [v for _, v in total] == pytest.approx([2 * each, each, 4 * each])
    txns = meter.datapoints("TotalTransactions", start, end, 120, "Sum")
    assert txns == [(1_800_000_000, 3.0), (1_800_000_120, 4.0)]
    assert meter.datapoints("CommitLatency", start, end, 60, "p50")[-1] == (1_800_000_180, 4.0)
    assert meter.datapoints("WriteDPU", start, end, 60, "SampleCount")[0][1] == 2.0
    assert meter.datapoints("OccConflicts", start, end, 60, "Sum") == []
    assert meter.datapoints("NoSuchMetric", start, end, 60, "Sum") == []
    assert m.valid_statistic("p99.9") and not m.valid_statistic("Median")


def test_disabled_meter_records_nothing() -> None:
    meter = m.Meter(enabled=False)
    meter.record_statement(1, figures(m.Dpu(1, 1, 1), writes=True))
    assert meter.end_transaction(1, committed=True) is None
    assert meter.cluster_totals().statements == 0


# --- the hook on a real backend ------------------------------------------------------------


def test_sys_functions_are_recognised() -> None:
    def fn(sql: str) -> str | None:
        return m.sys_function(split_statements(sql)[0])

    assert fn("SELECT * FROM sys.session_dpu()") == "session_dpu"
    assert fn("select compute, total from sys.last_statement_dpu()") == "last_statement_dpu"
    assert fn("SELECT * FROM sys.jobs") is None
    assert fn("SELECT * FROM session_dpu()") is None
    assert fn("SELECT * FROM sys.session_dpu() WHERE total > 0") is None


async def run(hook: m.MeteringHook, ctx: Any, sql: str) -> Synthetic | None:
    """What the session does for one autocommit statement: before, PostgreSQL, after, end."""
    stmt = split_statements(sql)[0]
    reply = await hook.before(stmt, ctx)
    if reply is not None:
        return reply
    writes = stmt.kind.value in {"dml", "ddl"}
    results = await ctx.execute(stmt.text)
    await hook.after(stmt, CommandResult(results[-1].tag), ctx)
    if writes and not ctx.in_transaction:
        await hook.before_commit(ctx)
        await hook.after_end(ctx, True)
    return None


def test_hook_meters_statements_and_answers_sys_functions(emuexplain_engine: Engine) -> None:
    async def go() -> tuple[list[Synthetic | None], m.Meter]:
        hook = m.MeteringHook()
        out = []
        async with open_ctx(emuexplain_engine, session_id=42) as ctx:
            await ctx.execute("CREATE TABLE IF NOT EXISTS meter_t (id int PRIMARY KEY, v text)")
            await ctx.execute("CREATE INDEX IF NOT EXISTS meter_t_v ON meter_t (v)")
            await ctx.execute("TRUNCATE meter_t")
            await run(
                hook, ctx, "INSERT INTO meter_t SELECT i, 'v' || i FROM generate_series(1,3) i"
            )
            out.append(await run(hook, ctx, "SELECT * FROM sys.last_statement_dpu()"))
            await run(hook, ctx, "SELECT * FROM meter_t")
            await run(hook, ctx, "SET application_name = 'x'")
            out.append(await run(hook, ctx, "SELECT * FROM sys.session_dpu()"))
            await hook.on_disconnect(ctx)
            return out, m.meter_of(ctx.cluster)

    (last, session), meter = asyncio.run(go())
    assert last is not None and list(last.columns) == list(m.LAST_STATEMENT_COLUMNS)
    command, compute, read, write, total = last.rows[0]
    assert command == "INSERT"
    # 3 rows, each also written to one secondary index; each checked against the primary key.
    expected = m.estimate(m.Work(0.0, 3, 0, 0, 6, 0))
    assert float(write) >= expected.write > 0
    assert float(read) == pytest.approx(3 * m.READ_DPU_PER_REQUEST, abs=1e-5)
    assert float(total) == pytest.approx(float(compute) + float(read) + float(write), abs=2e-5)
    assert session is not None and list(session.columns) == list(m.SESSION_DPU_COLUMNS)
    compute_s, read_s, write_s, total_s, statements, transactions = session.rows[0]
    assert statements == 2  # INSERT and SELECT; SET and the sys calls are not metered
    assert transactions == 2
    assert float(write_s) == pytest.approx(m.TRANSACTION_MIN_WRITE_DPU)  # minimum applied
    assert float(total_s) == pytest.approx(float(compute_s) + float(read_s) + float(write_s))
    assert meter.cluster_totals().statements == 2
    assert meter.session_totals(42).statements == 0  # forgotten after disconnect


def test_a_read_joins_an_open_write_transaction() -> None:
    """``INSERT …; SELECT …`` in one query: the read joins the write's transaction."""
    meter = m.Meter()
    meter.record_statement(3, figures(m.Dpu(0.02, 0.001, 0.01), writes=True))
    meter.record_statement(3, figures(m.Dpu(0.02, 0.002, 0.0), writes=False), ends_transaction=True)
    assert meter.cluster_totals().transactions == 0  # still open
    assert meter.end_transaction(3, committed=True) == m.Dpu(0.04, 0.00375, 0.05)
    assert meter.session_totals(3).transactions == 1


def test_busy_minutes_keep_exact_sums() -> None:
    """Past the per-minute sample cap, transactions are folded: sums and counts stay exact."""
    clock = Clock(1_800_000_000.0)
    meter = m.Meter(clock=clock)
    n = 5_123
    for i in range(n):
        dpu = m.Dpu(0.01, 0.001 * (i % 7), 0.0)
        meter.record_statement(1, figures(dpu, writes=False), ends_transaction=True)
    span = (1_800_000_000.0, 1_800_000_060.0)
    assert meter.datapoints("TotalTransactions", *span, 60, "Sum") == [(1_800_000_000, n)]
    reads = sum(max(0.001 * (i % 7), m.TRANSACTION_MIN_READ_DPU) for i in range(n))
    assert meter.datapoints("ReadDPU", *span, 60, "Sum")[0][1] == pytest.approx(reads)
    assert meter.datapoints("ReadDPU", *span, 60, "Maximum")[0][1] == pytest.approx(0.006)
    assert meter.datapoints("ReadDPU", *span, 60, "SampleCount")[0][1] == n
    assert meter.cluster_totals().read == pytest.approx(reads)
