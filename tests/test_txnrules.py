"""DSQL's transaction rules and limits, through the hooks, on a real PostgreSQL 16.

Limits are tested at their boundary (3,000 rows pass, 3,001 fail; and so on), with DSQL's own
numbers unless a test says why it lowers one (object counts, to keep the run short).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from dsql_magic import limits
from dsql_magic.emulator import rowsizes
from dsql_magic.emulator.engine import Engine
from dsql_magic.emulator.errors import DsqlError
from dsql_magic.emulator.hooks import QueryResult
from dsql_magic.emulator.policy import make_hook
from dsql_magic.emulator.statements import split_statements
from dsql_magic.emulator.txnrules import TransactionRules, TxnLimits
from tests.fix_dialect_pg import HookSession, hook_session


def _run(engine: Engine, scenario: Callable[[HookSession], Awaitable[None]], **kw: Any) -> None:
    hooks = kw.pop("hooks", None) or [make_hook()]

    async def main() -> None:
        async with hook_session(engine, hooks, **kw) as s:
            await scenario(s)

    asyncio.run(main())


async def _fails(s: HookSession, sql: str) -> DsqlError:
    with pytest.raises(DsqlError) as info:
        await s.run(sql)
    return info.value


def test_one_ddl_per_transaction(dialect_engine: Engine) -> None:
    async def scenario(s: HookSession) -> None:
        await s.run("BEGIN")
        await s.run("CREATE TABLE one_ddl_a (id int PRIMARY KEY)")
        err = await _fails(s, "CREATE TABLE one_ddl_b (id int PRIMARY KEY)")
        assert (err.sqlstate, err.message) == (
            "0A000",
            "multiple ddl statements not supported in a transaction",
        )
        later = await _fails(s, "SELECT 1")
        assert later.sqlstate == "25P02"
        assert await s.run("COMMIT") == "ROLLBACK"
        assert await s.rows("SELECT to_regclass('one_ddl_a') IS NULL") == [("t",)]

    _run(dialect_engine, scenario)


def test_ddl_and_dml_do_not_mix(dialect_engine: Engine) -> None:
    async def scenario(s: HookSession) -> None:
        await s.run("CREATE TABLE mix_t (id int PRIMARY KEY)")  # autocommit: fine
        await s.run("BEGIN")
        await s.run("CREATE TABLE mix_foo (id_col integer)")
        err = await _fails(s, "INSERT INTO mix_t VALUES (1)")
        assert (err.sqlstate, err.message) == (
            "0A000",
            "ddl and dml are not supported in the same transaction",
        )
        assert await s.run("COMMIT") == "ROLLBACK"
        await s.run("BEGIN")
        await s.run("INSERT INTO mix_t VALUES (1)")
        err = await _fails(s, "CREATE INDEX ASYNC ON mix_t (id)")
        assert err.message == "ddl and dml are not supported in the same transaction"
        await s.run("ROLLBACK")
        # The manual's accepted sequence: one transaction each.
        await s.run("BEGIN")
        await s.run("CREATE TABLE mytable (ID_col integer)")
        await s.run("COMMIT")
        await s.run("BEGIN")
        await s.run("INSERT INTO mytable VALUES (1)")
        assert await s.run("COMMIT") == "COMMIT"
        # Reads mix with DDL.
        await s.run("BEGIN")
        await s.run("SELECT count(*) FROM mytable")
        await s.run("CREATE VIEW mix_v AS SELECT * FROM mytable")
        assert await s.run("COMMIT") == "COMMIT"

    _run(dialect_engine, scenario)


def test_refusal_outside_block_leaves_session_usable(dialect_engine: Engine) -> None:
    async def scenario(s: HookSession) -> None:
        err = await _fails(s, "TRUNCATE t")
        assert err.message == "unsupported statement: Truncate"
        assert await s.rows("SELECT 41 + 1") == [("42",)]

    _run(dialect_engine, scenario)


def test_analyze_refused_inside_a_block_only(dialect_engine: Engine) -> None:
    async def scenario(s: HookSession) -> None:
        await s.run("ANALYZE t")
        await s.run("BEGIN")
        err = await _fails(s, "ANALYZE t")
        assert err.sqlstate == "25001"
        await s.run("ROLLBACK")

    _run(dialect_engine, scenario)


def test_row_limit_boundary(dialect_engine: Engine) -> None:
    n = limits.MAX_ROWS_PER_TRANSACTION

    async def scenario(s: HookSession) -> None:
        await s.run("CREATE TABLE rows_t (id int PRIMARY KEY, v text)")
        tag = await s.run(f"INSERT INTO rows_t SELECT g, 'x' FROM generate_series(1, {n}) g")
        assert tag == f"INSERT 0 {n}"
        err = await _fails(
            s, f"INSERT INTO rows_t SELECT g, 'x' FROM generate_series({n + 1}, {2 * n + 1}) g"
        )
        assert (err.sqlstate, err.message) == ("54000", "transaction row limit exceeded")
        assert await s.rows("SELECT count(*) FROM rows_t") == [(str(n),)]
        # Within a block the rows add up; the statement that crosses the limit fails.
        await s.run("BEGIN")
        await s.run("UPDATE rows_t SET v = 'y' WHERE id <= 2000")
        await s.run("DELETE FROM rows_t WHERE id > 2000 AND id <= 3000")
        err = await _fails(s, "UPDATE rows_t SET v = 'z' WHERE id = 1")
        assert err.message == "transaction row limit exceeded"
        assert (await _fails(s, "SELECT 1")).sqlstate == "25P02"
        assert await s.run("COMMIT") == "ROLLBACK"
        assert await s.rows("SELECT count(*) FROM rows_t WHERE v = 'x'") == [(str(n),)]

    _run(dialect_engine, scenario)


def test_transaction_size_limit_at_commit(dialect_engine: Engine) -> None:
    async def scenario(s: HookSession) -> None:
        await s.run("CREATE TABLE size_t (id int PRIMARY KEY, v text)")
        chunk = 900 * 1024  # under the 1 MiB column limit; 12 rows ≈ 10.5 MiB
        await s.run("BEGIN")
        for i in range(11):
            await s.run(f"INSERT INTO size_t VALUES ({i}, repeat('x', {chunk}))")
        assert await s.run("COMMIT") == "COMMIT"  # ≈ 9.7 MiB
        await s.run("BEGIN")
        for i in range(11, 23):
            await s.run(f"INSERT INTO size_t VALUES ({i}, repeat('x', {chunk}))")
        err = await _fails(s, "COMMIT")
        assert (err.sqlstate, err.message) == ("54000", "transaction size limit 10mb exceeded")
        assert err.detail == "Current transaction size 11mb > 10mb"
        assert await s.rows("SELECT count(*) FROM size_t") == [("11",)]

    _run(dialect_engine, scenario)


def test_column_row_and_key_sizes(dialect_engine: Engine) -> None:
    col = limits.MAX_COLUMN_BYTES
    key = limits.MAX_KEY_BYTES

    async def scenario(s: HookSession) -> None:
        await s.run("CREATE TABLE sz_t (k text PRIMARY KEY, a text, b text, c text)")
        await s.run(f"INSERT INTO sz_t VALUES ('ok', repeat('a', {col}))")
        err = await _fails(s, f"INSERT INTO sz_t VALUES ('big', repeat('a', {col + 1}))")
        assert (err.sqlstate, err.message) == ("54000", "maximum column size exceeds limit")
        await s.run(f"INSERT INTO sz_t VALUES (repeat('k', {key}), 'x')")
        err = await _fails(s, f"INSERT INTO sz_t VALUES (repeat('k', {key + 1}), 'x')")
        assert err.message == "key size too large"
        three = f"repeat('a', {col}), repeat('b', {col}), repeat('c', {col})"
        err = await _fails(s, f"INSERT INTO sz_t VALUES ('row', {three})")
        assert err.message == "maximum row size exceeds limit"
        assert await s.rows("SELECT count(*) FROM sz_t") == [("2",)]

    _run(dialect_engine, scenario)


def test_transaction_age_limit_with_injected_clock(dialect_engine: Engine) -> None:
    now = [1000.0]
    hooks: list[object] = [TransactionRules(clock=lambda: now[0])]

    async def scenario(s: HookSession) -> None:
        await s.run("BEGIN")
        now[0] += 100
        await s.run("SELECT 1")
        now[0] += limits.MAX_TRANSACTION_AGE_SECONDS - 100
        await s.run("SELECT 2")  # exactly 300 s after BEGIN: still fine
        now[0] += 1
        err = await _fails(s, "SELECT 3")
        assert (err.sqlstate, err.message) == ("54000", "transaction age limit of 300s exceeded")
        assert await s.run("COMMIT") == "ROLLBACK"
        await s.run("SELECT 4")  # a new transaction starts fresh

    _run(dialect_engine, scenario, hooks=hooks)


def test_object_count_limits(dialect_engine: Engine) -> None:
    # DSQL's counts (10 schemas, 1,000 tables, 5,000 views, 24 indexes) are lowered relative
    # to what exists, so each limit is hit in a few statements; the messages are DSQL's.
    async def counts(s: HookSession) -> dict[str, int]:
        rows = await s.rows(
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
            "AND nspname NOT IN ('information_schema', 'sys')), "
            "(SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE relkind IN ('r','p') AND nspname NOT LIKE 'pg\\_%' "
            "AND nspname NOT IN ('information_schema', 'sys')), "
            "(SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE relkind = 'v' AND nspname NOT LIKE 'pg\\_%' "
            "AND nspname NOT IN ('information_schema', 'sys'))"
        )
        schemas, tables, views = (int(v or 0) for v in rows[0])
        return {"schemas": schemas, "tables": tables, "views": views}

    async def scenario(s: HookSession) -> None:
        base = await counts(s)
        lim = TxnLimits(
            max_schemas=base["schemas"] + 1,
            max_tables=base["tables"] + 1,
            max_views=base["views"] + 1,
            max_indexes=3,
        )
        rules = TransactionRules(limits_=lim)
        s.hooks = [rules]
        await s.run("CREATE SCHEMA cnt_s1")
        err = await _fails(s, "CREATE SCHEMA cnt_s2")
        assert (err.sqlstate, err.message) == ("54000", "more than 10 schemas not allowed")
        await s.run("CREATE TABLE cnt_t1 (id int PRIMARY KEY, a int, b int, c int)")
        err = await _fails(s, "CREATE TABLE cnt_t2 (id int PRIMARY KEY)")
        assert err.message == "creating more than 1000 tables not allowed"
        await s.run("CREATE VIEW cnt_v1 AS SELECT 1 AS one")
        err = await _fails(s, "CREATE VIEW cnt_v2 AS SELECT 2 AS two")
        assert err.message == "creating more than 500 allowed"
        await s.run("CREATE INDEX ASYNC ON cnt_t1 (a)")  # pkey + 1
        await s.run("CREATE INDEX ASYNC ON cnt_t1 (b)")  # 3 indexes
        err = await _fails(s, "CREATE INDEX ASYNC ON cnt_t1 (c)")
        assert err.message == "more than 24 indexes per table are not allowed"

    _run(dialect_engine, scenario)


def test_alter_table_column_limits_and_primary_key(dialect_engine: Engine) -> None:
    async def scenario(s: HookSession) -> None:
        cols = ", ".join(f"c{i} int" for i in range(limits.MAX_TABLE_COLUMNS - 1))
        await s.run(f"CREATE TABLE wide_t (id int PRIMARY KEY, {cols})")
        err = await _fails(s, "ALTER TABLE wide_t ADD COLUMN extra int")
        assert (err.sqlstate, err.message) == ("54011", "tables can have at most 255 columns")
        err = await _fails(s, "ALTER TABLE wide_t DROP COLUMN id")
        assert err.message == "cannot drop primary key column id"
        await s.run("ALTER TABLE wide_t DROP COLUMN c0")
        await s.run("ALTER TABLE wide_t ADD COLUMN extra int")

    _run(dialect_engine, scenario)


def test_index_key_datatype(dialect_engine: Engine) -> None:
    async def scenario(s: HookSession) -> None:
        await s.run("CREATE TABLE keyt (id int PRIMARY KEY, b bytea, i interval, j jsonb, t text)")
        for col, typ in (("b", "bytea"), ("i", "interval"), ("j", "jsonb")):
            err = await _fails(s, f"CREATE INDEX ASYNC ON keyt ({col})")
            assert (err.sqlstate, err.message) == (
                "0A000",
                f"datatype {typ} is not supported in a key",
            )
        await s.run("CREATE INDEX ASYNC ON keyt (t)")

    _run(dialect_engine, scenario)


def test_numeric_rewrite_and_rules_through_the_combined_hook(dialect_engine: Engine) -> None:
    async def scenario(s: HookSession) -> None:
        await s.run("BEGIN")
        await s.run("CREATE TABLE num_t (id int PRIMARY KEY, amount numeric)")
        err = await _fails(s, "CREATE TABLE num_u (id int PRIMARY KEY)")
        assert err.message == "multiple ddl statements not supported in a transaction"
        await s.run("ROLLBACK")
        await s.run("CREATE TABLE num_t (id int PRIMARY KEY, amount numeric)")
        await s.run("INSERT INTO num_t VALUES (1, 3.14159265)")
        assert await s.rows("SELECT amount::text FROM num_t") == [("3.141593",)]
        assert await s.rows("SHOW server_version") == [("16.15",)]

    _run(dialect_engine, scenario)


def test_default_hooks_register_the_rules_once() -> None:
    from types import SimpleNamespace

    from dsql_magic.emulator.cluster import default_hooks
    from dsql_magic.emulator.policy import DsqlHooks

    def rule_hooks(disabled: set[str]) -> list[object]:
        hooks = default_hooks(SimpleNamespace(disabled_hooks=frozenset(disabled)))
        found: list[object] = []
        for hook in hooks:
            found.extend(hook.parts if isinstance(hook, DsqlHooks) else [hook])
        return [h for h in found if isinstance(h, TransactionRules)]

    assert len(rule_hooks(set())) == 1
    assert len(rule_hooks({"policy"})) == 1
    assert rule_hooks({"txnrules"}) == []
    assert rule_hooks({"policy", "txnrules"}) == []


def test_data_modifying_with_counts_as_dml(dialect_engine: Engine) -> None:
    async def scenario(s: HookSession) -> None:
        await s.run("CREATE TABLE cte_t (id int PRIMARY KEY)")
        await s.run("BEGIN")
        await s.run("WITH ins AS (INSERT INTO cte_t VALUES (1) RETURNING id) SELECT * FROM ins")
        err = await _fails(s, "CREATE TABLE cte_u (id int PRIMARY KEY)")
        assert err.message == "ddl and dml are not supported in the same transaction"
        await s.run("ROLLBACK")

    _run(dialect_engine, scenario)


def test_sizes_found_when_rows_reuse_free_space_early_in_the_heap(dialect_engine: Engine) -> None:
    col = limits.MAX_COLUMN_BYTES

    async def scenario(s: HookSession) -> None:
        await s.run("CREATE TABLE reuse_t (id int PRIMARY KEY, v text)")
        await s._internal(
            "INSERT INTO reuse_t SELECT g, md5(g::text) FROM generate_series(1, 20000) g"
        )
        await s._internal("DELETE FROM reuse_t WHERE id <= 500")
        await s._internal("VACUUM reuse_t")  # free space at the start of the heap, in the FSM
        err = await _fails(s, f"INSERT INTO reuse_t VALUES (1, repeat('a', {col + 1}))")
        assert err.message == "maximum column size exceeds limit"
        await s.run(f"INSERT INTO reuse_t VALUES (1, repeat('a', {col}))")
        rows = await s.rows("SELECT (ctid::text::point)[0] < 100 FROM reuse_t WHERE id = 1")
        assert rows == [("t",)]  # the row did land early in the heap, not in the scanned tail

    _run(dialect_engine, scenario)


def test_object_counts_at_dsql_numbers(tmp_path_factory: pytest.TempPathFactory) -> None:
    """10 schemas, 1,000 tables, 24 indexes per table: the last allowed passes, the next fails."""
    engine = Engine(tmp_path_factory.mktemp("counts_pg"), remove_on_stop=True)
    engine.start()

    async def scenario(s: HookSession) -> None:
        # A fresh database has one user schema (public) and no tables.
        for i in range(limits.MAX_SCHEMAS - 1):
            await s.run(f"CREATE SCHEMA s{i}")
        err = await _fails(s, "CREATE SCHEMA one_too_many")
        assert (err.sqlstate, err.message) == ("54000", "more than 10 schemas not allowed")
        batch = "; ".join(f"CREATE TABLE t{i} (id int PRIMARY KEY)" for i in range(998))
        await s._internal(batch)
        await s.run(
            "CREATE TABLE t998 (id int PRIMARY KEY, "
            + ", ".join(f"c{i} int" for i in range(30))
            + ")"
        )
        await s.run("CREATE TABLE s0.t999 (id int PRIMARY KEY)")  # the 1,000th
        err = await _fails(s, "CREATE TABLE t1000 (id int PRIMARY KEY)")
        assert err.message == "creating more than 1000 tables not allowed"
        for i in range(limits.MAX_INDEXES_PER_TABLE - 1):  # plus the primary key: 24
            await s.run(f"CREATE INDEX ASYNC ON t998 (c{i})")
        err = await _fails(s, "CREATE INDEX ASYNC ON t998 (c29)")
        assert err.message == "more than 24 indexes per table are not allowed"

    try:
        _run(engine, scenario)
    finally:
        engine.stop()


def test_create_table_with_too_many_unique_constraints(dialect_engine: Engine) -> None:
    n = limits.MAX_INDEXES_PER_TABLE

    async def scenario(s: HookSession) -> None:
        cols = ", ".join(f"c{i} int UNIQUE" for i in range(n - 1))
        await s.run(f"CREATE TABLE uniq_ok (id int PRIMARY KEY, {cols})")  # 24 indexes
        err = await _fails(s, f"CREATE TABLE uniq_bad (id int PRIMARY KEY, {cols}, z int UNIQUE)")
        assert (err.sqlstate, err.message) == (
            "54000",
            "more than 24 indexes per table are not allowed",
        )

    _run(dialect_engine, scenario)


def test_oversize_column_fails_at_the_statement_key_by_commit(dialect_engine: Engine) -> None:
    col = limits.MAX_COLUMN_BYTES
    key = limits.MAX_KEY_BYTES

    async def scenario(s: HookSession) -> None:
        await s.run("CREATE TABLE when_t (k text PRIMARY KEY, v text)")
        await s.run("BEGIN")
        await s.run(f"INSERT INTO when_t VALUES ('a', repeat('v', {col}))")  # at the limit
        err = await _fails(s, f"INSERT INTO when_t VALUES ('b', repeat('v', {col + 1}))")
        assert err.message == "maximum column size exceeds limit"
        assert (await _fails(s, "SELECT 1")).sqlstate == "25P02"
        assert await s.run("COMMIT") == "ROLLBACK"
        # A small row is measured at the statement only if something else prompted it (a
        # large value earlier); DSQL refuses at the statement, the emulator by COMMIT at the latest.
        await s.run("BEGIN")
        try:
            await s.run(f"INSERT INTO when_t VALUES (repeat('k', {key + 1}), 'x')")
            err = await _fails(s, "COMMIT")
        except DsqlError as at_statement:
            err = at_statement
            assert await s.run("COMMIT") == "ROLLBACK"
        assert err.message == "key size too large"
        assert await s.rows("SELECT count(*) FROM when_t") == [("0",)]

    _run(dialect_engine, scenario)


# --- the cheap paths of the size checks (rowsizes.py): behaviour and internal queries -----------


def _record_internal_sql(s: HookSession) -> list[tuple[str, tuple[object, ...]]]:
    """Record the SQL the hooks run on the session's backend (the client's own is not in it)."""
    log: list[tuple[str, tuple[object, ...]]] = []
    inner = s.ctx.executor

    async def recording(sql: str, params: Sequence[object] = ()) -> list[QueryResult]:
        log.append((sql, tuple(params)))
        return await inner(sql, params)

    s.ctx.executor = recording
    return log


def _scans(log: list[tuple[str, tuple[object, ...]]]) -> list[tuple[str, str]]:
    """(table, "tail" or "whole") of every measuring scan in the recorded queries."""
    found = []
    for sql, params in log:
        for part in sql.split(" UNION ALL "):
            m = re.search(r"FROM ONLY (\S+) x WHERE .* - \$(\d+)::bigint", part)
            if m:
                back = int(str(params[int(m.group(2)) - 1]))
                found.append((m.group(1), "whole" if back >= rowsizes.WHOLE_TABLE else "tail"))
    return found


async def _big_table(s: HookSession, name: str, columns: str, rows: int, fillfactor: int) -> int:
    """A table of ``rows`` rows with room for updates in place; returns its size in blocks."""
    await s.run(f"CREATE TABLE {name} ({columns}) WITH (fillfactor = {fillfactor})")
    await s._internal(
        f"INSERT INTO {name} SELECT g::text, md5(g::text), g FROM generate_series(1, {rows}) g"
    )
    await s._internal(f"VACUUM ANALYZE {name}")
    blocks = await s._internal(f"SELECT pg_relation_size('{name}') / 8192")
    return int(blocks[-1].rows[0][0] or 0)


async def _block_of(s: HookSession, table: str, where: str) -> int:
    rows = await s.rows(f"SELECT (ctid::text::point)[0]::int FROM {table} WHERE {where}")
    return int(rows[0][0] or 0)


def test_pgbench_n_shape_scans_no_whole_table_and_runs_one_internal_query(
    dialect_engine: Engine,
) -> None:
    """BEGIN; UPDATE (in place); SELECT; INSERT; END: one COMMIT query, once tables are known."""

    async def scenario(s: HookSession) -> None:
        await s.run(
            "CREATE TABLE nacc (aid int PRIMARY KEY, bid int, abalance int, filler char(84)) "
            "WITH (fillfactor = 90)"
        )
        await s.run("CREATE TABLE nhist (tid int, bid int, aid int, delta int, mtime timestamp)")
        await s._internal("INSERT INTO nacc SELECT g, 1, 0, '' FROM generate_series(1, 30000) g")
        await s._internal("VACUUM ANALYZE nacc")
        log = _record_internal_sql(s)
        for i, (aid, delta) in enumerate(((17, 5), (23, -3), (17, 4))):
            log.clear()
            await s.run("BEGIN")
            await s.run(f"UPDATE nacc SET abalance = abalance + {delta} WHERE aid = {aid}")
            assert await s.rows(f"SELECT abalance FROM nacc WHERE aid = {aid}")
            await s.run(f"INSERT INTO nhist VALUES (1, 1, {aid}, {delta}, now())")
            assert await s.run("END") == "COMMIT"
            scans = _scans(log)
            assert ("public.nacc", "whole") not in scans  # never the whole table
            assert ("public.nhist", "tail") in scans
            if i == 0:  # the first time, both tables are looked up, and the UPDATE's measured
                assert any(table == "public.nacc" for table, _ in scans)
            else:  # then known: an UPDATE of a fixed-width non-key column needs no lookup,
                # nor an INSERT of short literals (its rows are measured at COMMIT)
                assert not any(table == "public.nacc" for table, _ in scans)
                assert len(log) == 1, log
        # The updated row versions stayed in place, far from the heap's tail.
        assert await _block_of(s, "nacc", "aid = 17") < 10
        assert await s.rows("SELECT abalance FROM nacc WHERE aid = 17") == [("9",)]
        # After SET (search_path may have changed) the table is looked up again.
        await s.run("SET search_path = public")
        log.clear()
        await s.run("UPDATE nacc SET abalance = abalance + 1 WHERE aid = 17")
        assert any(sql == rowsizes.PROBE_SQL for sql, _ in log)


def test_estimated_updates_over_the_size_limit_are_measured_exactly(
    dialect_engine: Engine,
) -> None:
    hooks: list[object] = [TransactionRules(limits_=TxnLimits(max_bytes=20_000))]

    async def scenario(s: HookSession) -> None:
        await _big_table(s, "est_t", "k text PRIMARY KEY, v text, n int", 20000, 90)
        await s.run("INSERT INTO est_t VALUES ('new', 'x', 0)")  # the table is known now
        log = _record_internal_sql(s)
        await s.run("BEGIN")
        await s.run("UPDATE est_t SET n = n + 1 WHERE n <= 100")  # ~50 bytes a row: ~5 kB
        assert await s.run("COMMIT") == "COMMIT"
        assert log == []  # estimated well under the limit: nothing looked up or measured
        await s.run("BEGIN")
        await s.run("UPDATE est_t SET n = n + 1 WHERE n <= 1000")  # ~50 kB
        err = await _fails(s, "COMMIT")
        assert (err.sqlstate, err.message) == ("54000", "transaction size limit 10mb exceeded")
        assert ("public.est_t", "whole") in _scans(log)  # measured, not refused on a guess

    _run(dialect_engine, scenario, hooks=hooks)


def test_update_in_place_of_a_big_table_refuses_oversize_column_and_row(
    dialect_engine: Engine,
) -> None:
    col = limits.MAX_COLUMN_BYTES

    async def scenario(s: HookSession) -> None:
        await _big_table(
            s, "inplace_t", "k text PRIMARY KEY, v text, n int, a text, b text", 20000, 50
        )
        await s.run("BEGIN")
        err = await _fails(s, f"UPDATE inplace_t SET v = repeat('a', {col + 1}) WHERE k = '5'")
        assert (err.sqlstate, err.message) == ("54000", "maximum column size exceeds limit")
        await s.run("ROLLBACK")
        three = f"v = repeat('a', {col}), a = repeat('b', {col}), b = repeat('c', {col})"
        err = await _fails(s, f"UPDATE inplace_t SET {three} WHERE k = '6'")
        assert err.message == "maximum row size exceeds limit"
        # At the limit it passes, and the new version is in place (not in the heap's tail).
        await s.run(f"UPDATE inplace_t SET v = repeat('a', {col}) WHERE k = '7'")
        assert await _block_of(s, "inplace_t", "k = '7'") < 10

    _run(dialect_engine, scenario)


def test_key_size_broken_by_an_update_of_a_key_column_in_place(dialect_engine: Engine) -> None:
    key = limits.MAX_KEY_BYTES

    async def scenario(s: HookSession) -> None:
        await _big_table(s, "keyup_t", "k text PRIMARY KEY, v text, n int", 20000, 50)
        log = _record_internal_sql(s)
        await s.run("BEGIN")
        await s.run(f"UPDATE keyup_t SET k = repeat('k', {key + 1}) WHERE k = '5'")
        assert await _block_of(s, "keyup_t", "n = 5") < 10  # in place: not in the tail
        err = await _fails(s, "COMMIT")
        assert (err.sqlstate, err.message) == ("54000", "key size too large")
        assert ("public.keyup_t", "whole") in _scans(log)  # the exact scan that found it
        # The same UPDATE of a non-key column is estimated, not scanned.
        log.clear()
        await s.run("BEGIN")
        await s.run("UPDATE keyup_t SET n = n + 1 WHERE k = '5'")
        assert await s.run("COMMIT") == "COMMIT"
        assert ("public.keyup_t", "whole") not in _scans(log)
        await s.run(f"UPDATE keyup_t SET k = repeat('k', {key}) WHERE k = '6'")  # at the limit

    _run(dialect_engine, scenario)


def test_size_limit_reached_by_inserts_into_reused_free_space(dialect_engine: Engine) -> None:
    """110 rows of 100 kB: stored compressed inline (no TOAST), early in the heap, 11 MB raw."""

    async def scenario(s: HookSession) -> None:
        blocks = await _big_table(s, "reuse_sz", "k text PRIMARY KEY, v text, n int", 40000, 100)
        await s._internal("DELETE FROM reuse_sz WHERE n <= 15000")
        await s._internal("VACUUM reuse_sz")  # free space at the start of the heap, in the FSM
        toast = "SELECT pg_stat_get_xact_tuples_inserted(reltoastrelid) FROM pg_class "
        toast += "WHERE oid = 'reuse_sz'::regclass"
        await s.run("BEGIN")
        before = await s.rows(toast)
        await s.run(
            "INSERT INTO reuse_sz SELECT 'r' || g, repeat('x', 100000), -g "
            "FROM generate_series(1, 110) g"
        )
        assert await s.rows(toast) == before  # nothing went to TOAST
        assert await _block_of(s, "reuse_sz", "n = -110") < blocks - 200  # far from the tail
        err = await _fails(s, "COMMIT")
        assert (err.sqlstate, err.message) == ("54000", "transaction size limit 10mb exceeded")
        assert err.detail == "Current transaction size 11mb > 10mb"
        # Half of it passes.
        await s.run("BEGIN")
        await s.run(
            "INSERT INTO reuse_sz SELECT 'r' || g, repeat('x', 100000), -g "
            "FROM generate_series(1, 55) g"
        )
        assert await s.run("COMMIT") == "COMMIT"

    _run(dialect_engine, scenario)


def test_table_metadata_is_looked_up_once_per_catalog_change(dialect_engine: Engine) -> None:
    rules = TransactionRules()
    hooks: list[object] = [rules]

    async def scenario(s: HookSession) -> None:
        await s.run("CREATE TABLE meta_t (id int PRIMARY KEY, v text)")
        log = _record_internal_sql(s)
        for i in range(3):
            await s.run(f"INSERT INTO meta_t VALUES ({i}, 'x')")
        assert [sql for sql, _ in log].count(rowsizes.META_SQL) == 1
        await s.run("ALTER TABLE meta_t ADD COLUMN w text")
        await s.run("INSERT INTO meta_t VALUES (10, 'x', repeat('w', 2000))")
        assert [sql for sql, _ in log].count(rowsizes.META_SQL) == 2
        await s.run("ALTER TABLE meta_t DROP COLUMN v")  # a stale query would name v
        await s.run(f"INSERT INTO meta_t VALUES (11, repeat('w', {limits.MAX_KEY_BYTES + 1}))")
        await s.run(f"INSERT INTO meta_t VALUES (12, repeat('w', {limits.MAX_COLUMN_BYTES}))")
        err = await _fails(
            s, f"INSERT INTO meta_t VALUES (13, repeat('w', {limits.MAX_COLUMN_BYTES + 1}))"
        )
        assert err.message == "maximum column size exceeds limit"

    _run(dialect_engine, scenario, hooks=hooks)


def test_writes_through_a_view_or_a_with_clause_are_measured_at_commit(
    dialect_engine: Engine,
) -> None:
    col = limits.MAX_COLUMN_BYTES
    key = limits.MAX_KEY_BYTES

    async def scenario(s: HookSession) -> None:
        await s.run("CREATE TABLE ind_t (k text PRIMARY KEY, v text)")
        await s.run("CREATE VIEW ind_v AS SELECT k, v FROM ind_t")
        await s.run("BEGIN")
        await s.run(f"INSERT INTO ind_v VALUES ('a', repeat('v', {col + 1}))")
        err = await _fails(s, "COMMIT")
        assert err.message == "maximum column size exceeds limit"
        await s.run("BEGIN")
        await s.run(
            f"WITH w AS (INSERT INTO ind_t VALUES (repeat('k', {key + 1}), 'x') RETURNING k) "
            "SELECT count(*) FROM w"
        )
        err = await _fails(s, "COMMIT")
        assert err.message == "key size too large"
        await s.run(f"INSERT INTO ind_v VALUES (repeat('k', {key}), repeat('v', {col}))")
        assert await s.rows("SELECT count(*) FROM ind_t") == [("1",)]

    _run(dialect_engine, scenario)


@pytest.mark.parametrize(
    ("sql", "small"),
    [
        ("INSERT INTO h (a, b, c) VALUES (1, -2, CURRENT_TIMESTAMP)", True),
        ("INSERT INTO h VALUES ('x', NULL, DEFAULT, 1.5, true, '2024-01-01'::date)", True),
        ("INSERT INTO h VALUES (1), (2), (3)", True),
        (f"INSERT INTO h VALUES ('{'x' * 1024}')", True),
        (f"INSERT INTO h VALUES ('{'x' * 1025}')", False),
        ("INSERT INTO h VALUES ($1)", False),  # a bound value of any size
        ("INSERT INTO h VALUES (repeat('x', 2000000))", False),
        ("INSERT INTO h SELECT 1", False),
        ("INSERT INTO h DEFAULT VALUES", False),
        ("INSERT INTO h VALUES (1) ON CONFLICT (a) DO UPDATE SET b = 2", False),
        ("WITH w AS (SELECT 1) INSERT INTO h VALUES (1)", False),
        ("UPDATE h SET a = 1", False),
    ],
)
def test_small_literal_insert(sql: str, small: bool) -> None:
    (stmt,) = split_statements(sql)
    assert rowsizes.small_literal_insert(stmt.inner, stmt.node_name) is small


def test_assigned_columns_and_benign_updates() -> None:
    row = ("10", "1000", "8192", "false", "public.t", None, None)
    columns = '[["id", "integer", 1, 4], ["n", "integer", 2, 4], ["v", "text", 3, -1]]'
    meta = rowsizes.parse_meta("16400", (*row[:5], columns, '["1"]'))
    assert meta is not None
    assert (meta.indexed, meta.fixed, meta.row_width) == ({"id"}, {"id", "n"}, 81.92)
    for sql, assigned, benign in (
        ("UPDATE t SET n = n + 1 WHERE id = 3", ["n"], True),
        ("UPDATE t SET (n, v) = (1, 'x')", ["n", "v"], False),  # a variable-width column
        ("UPDATE t SET id = 4 WHERE id = 3", ["id"], False),  # a key column
        ("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET n = 2", ["n"], True),
    ):
        (stmt,) = split_statements(sql)
        assert rowsizes.assigned_columns(stmt.inner, stmt.node_name) == assigned
        assert meta.benign_update(assigned) is benign
    with_toast = rowsizes.parse_meta("16400", (*row[:3], "true", "public.t", columns, "[]"))
    assert with_toast is not None and not with_toast.benign_update(["n"])
    table = rowsizes.TableWrites(meta, selectable=True, versions=3, inserted=0)
    assert not table.needs_exact(1)  # updates in place of non-key columns: estimated
    table.inserted = 1
    assert table.needs_exact(2) and not table.needs_exact(3)
