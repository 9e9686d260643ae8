"""DSQL-shaped EXPLAIN: the manual's three scan examples recreated on real PostgreSQL 16 plans,
the condition split rule, the text layout, JSON, and the DPU block of EXPLAIN ANALYZE VERBOSE."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dsql_magic.emulator import explain as ex
from dsql_magic.emulator import metering
from dsql_magic.emulator.engine import Engine
from dsql_magic.emulator.hooks import Synthetic
from dsql_magic.emulator.statements import split_statements
from tests.fix_emuexplain_pg import open_ctx

CUSTOMER = "4b18a761-5870-4d7c-95ce-0a48eca3fceb"
FULL_SCAN_SQL = (
    "EXPLAIN SELECT account_id FROM transaction "
    "WHERE transaction_date > '2025-01-01' AND description LIKE '%external%'"
)
INDEX_ONLY_SQL = (
    f"EXPLAIN SELECT balance FROM account WHERE customer_id = '{CUSTOMER}' "
    "AND balance > 100 AND status = 'pending'"
)
INDEX_SCAN_SQL = (
    f"EXPLAIN SELECT balance FROM account WHERE customer_id = '{CUSTOMER}' "
    "AND balance > 100 AND status = 'pending' AND created_at > '2025-01-01'"
)


def plan_for(conn: psycopg.Connection[Any], sql: str) -> ex.DsqlPlan:
    """Run the hook's pipeline by hand: PostgreSQL JSON plan + catalog → DSQL plan."""
    opts = ex.explain_options(split_statements(sql)[0])
    assert opts is not None
    pg_plan = conn.execute(ex.internal_explain_sql(opts)).fetchone()[0]  # type: ignore[index]
    names = ex.relations_of(pg_plan)
    row = conn.execute(ex.CATALOG_SQL.replace("$1", "%s"), (names,)).fetchone()
    catalog = ex.Catalog.from_json(row[0] if row else None)
    return ex.explain_plan(pg_plan, catalog, opts, query_id=ex.query_identifier(opts.query))


def shape(node: dict[str, Any]) -> tuple[Any, ...]:
    """(node type, children's shapes): the tree without figures."""
    return (node["Node Type"], tuple(shape(c) for c in node.get("Plans", ())))


# --- the manual's three scan examples -------------------------------------------------------


def test_full_scan_example(emuexplain_conn: psycopg.Connection[Any]) -> None:
    plan = plan_for(emuexplain_conn, FULL_SCAN_SQL)
    assert shape(plan.root) == (
        "Full Scan (btree-table)",
        (("Storage Scan", (("B-Tree Scan", ()),)),),
    )
    top = plan.root
    storage = top["Plans"][0]
    assert top["Filter"] == "(transaction.description ~~ '%external%'::text)"
    assert storage["Projections"] == ["account_id", "description"]
    assert storage["Filters"].startswith("(transaction.transaction_date > '2025-01-01 00:00:00'")
    # Rows shrink level by level: B-Tree Scan reads the whole table.
    btree = storage["Plans"][0]
    assert btree["Plan Rows"] == 2000
    assert btree["Plan Rows"] >= storage["Plan Rows"] >= top["Plan Rows"]
    text = ex.render_text(plan)
    assert text[0].startswith("Full Scan (btree-table) on transaction (cost=")
    assert text[1] == "  Filter: (description ~~ '%external%'::text)"
    assert text[2].startswith("    -> Storage Scan on transaction (cost=")
    assert text[3] == "      Projections: account_id, description"
    assert text[4] == (
        "      Filters: (transaction_date > '2025-01-01 00:00:00'::timestamp without time zone)"
    )
    assert text[5].startswith("        -> B-Tree Scan on transaction (cost=")
    assert len(text) == 6  # no Query Identifier without VERBOSE


def test_index_only_scan_example(emuexplain_conn: psycopg.Connection[Any]) -> None:
    emuexplain_conn.execute("SET enable_seqscan = off")
    emuexplain_conn.execute("SET enable_bitmapscan = off")
    try:
        plan = plan_for(emuexplain_conn, INDEX_ONLY_SQL)
    finally:
        emuexplain_conn.execute("RESET ALL")
    assert shape(plan.root) == ("Index Only Scan", (("Storage Scan", (("B-Tree Scan", ()),)),))
    text = ex.render_text(plan)
    cond = f"(customer_id = '{CUSTOMER}'::uuid)"
    assert text[0].startswith("Index Only Scan using idx1 on account (cost=")
    assert text[1:3] == [f"  Index Cond: {cond}", "  Filter: (balance > '100'::numeric)"]
    assert text[3].startswith("    -> Storage Scan on idx1 (cost=")
    assert text[4:6] == [
        "      Projections: balance",
        "      Filters: ((status)::text = 'pending'::text)",
    ]
    assert text[6].startswith("        -> B-Tree Scan on idx1 (cost=")
    assert text[7] == f"          Index Cond: {cond}"


def test_index_scan_example_has_a_lookup(emuexplain_conn: psycopg.Connection[Any]) -> None:
    emuexplain_conn.execute("SET enable_seqscan = off")
    emuexplain_conn.execute("SET enable_bitmapscan = off")
    try:
        plan = plan_for(emuexplain_conn, INDEX_SCAN_SQL)
    finally:
        emuexplain_conn.execute("RESET ALL")
    assert shape(plan.root) == (
        "Index Scan",
        (
            ("Storage Scan", (("B-Tree Scan", ()),)),
            ("Storage Lookup", (("B-Tree Lookup", ()),)),
        ),
    )
    scan, lookup = plan.root["Plans"]
    assert plan.root["Filter"] == "(account.balance > '100'::numeric)"
    assert scan["Index Name"] == "idx1" and scan["Projections"] == ["balance"]
    assert scan["Filters"] == "((account.status)::text = 'pending'::text)"
    assert scan["Plans"][0]["Index Cond"] == f"(account.customer_id = '{CUSTOMER}'::uuid)"
    assert lookup["Relation Name"] == "account"
    assert lookup["Filters"].startswith("(account.created_at > '2025-01-01 00:00:00'")
    text = ex.render_text(plan)
    assert "    -> Storage Lookup on account (cost=" in "\n".join(text)
    assert any(line.startswith("        -> B-Tree Lookup on account (cost=") for line in text)


def test_primary_key_full_read_is_index_only_scan(emuexplain_conn: psycopg.Connection[Any]) -> None:
    """The manual's DPU example 1: SELECT * on a table with a key reads the key, not a heap."""
    plan = plan_for(emuexplain_conn, "EXPLAIN ANALYZE VERBOSE SELECT * FROM test_table")
    assert shape(plan.root) == ("Index Only Scan", (("Storage Scan", (("B-Tree Scan", ()),)),))
    text = ex.render_text(plan)
    assert re.match(
        r"Index Only Scan using test_table_pkey on public\.test_table \(cost=[\d.]+\.\.[\d.]+ "
        r"rows=\d+ width=\d+\) \(actual time=[\d.]+\.\.[\d.]+ rows=120 loops=1\)$",
        text[0],
    )
    assert text[1] == "  Output: id, context"
    assert re.match(
        r"    -> Storage Scan on test_table_pkey .*\(actual rows=120 loops=1\)$", text[2]
    )
    assert text[3] == "      Projections: id, context"
    assert re.match(
        r"        -> B-Tree Scan on test_table_pkey .*\(actual rows=120 loops=1\)$", text[4]
    )
    assert re.match(r"Query Identifier: [0-9a-z]{13}$", text[5])
    assert re.match(r"Planning Time: [\d.]+ ms$", text[6])
    assert re.match(r"Execution Time: [\d.]+ ms$", text[7])
    assert text[8] == "Statement DPU Estimate:"
    assert re.match(r"  Compute: \d\.\d{5} DPU$", text[9])
    assert re.match(r"  Read: \d\.\d{5} DPU$", text[10])  # no minimum on a read
    assert text[11] == "  Write: 0.00000 DPU"
    assert re.match(r"  Total: \d\.\d{5} DPU$", text[12])
    assert len(text) == 13


def block_figures(lines: list[str]) -> dict[str, float]:
    start = lines.index("Statement DPU Estimate:")
    out = {}
    for line in lines[start + 1 :]:
        m = re.match(r"  (\w+): (\d+\.\d{5}) DPU", line)
        assert m, line
        out[m.group(1).lower()] = float(m.group(2))
    return out


def test_dpu_block_total_is_the_sum(emuexplain_conn: psycopg.Connection[Any]) -> None:
    plan = plan_for(
        emuexplain_conn,
        "EXPLAIN ANALYZE VERBOSE SELECT * FROM account WHERE status = 'pending'",
    )
    f = block_figures(ex.render_text(plan))
    assert f["total"] == pytest.approx(f["compute"] + f["read"] + f["write"], abs=1e-9)
    assert f["read"] > 0 and f["write"] == 0.0


def test_insert_shows_transaction_minimums(emuexplain_conn: psycopg.Connection[Any]) -> None:
    emuexplain_conn.execute("BEGIN")
    try:
        plan = plan_for(
            emuexplain_conn,
            "EXPLAIN ANALYZE VERBOSE INSERT INTO test_table VALUES "
            "(1001, 'name1'), (1002, 'name2'), (1003, 'name3')",
        )
    finally:
        emuexplain_conn.execute("ROLLBACK")
    text = ex.render_text(plan)
    assert text[0].startswith("Insert on public.test_table (cost=")
    read = next(line for line in text if line.startswith("  Read:"))
    write = next(line for line in text if line.startswith("  Write:"))
    assert read.endswith("DPU (Transaction minimum: 0.00375)")
    assert write.endswith("DPU (Transaction minimum: 0.05000)")
    f = block_figures([line.split(" (")[0] for line in text])
    assert f["write"] > 0 and f["read"] > 0
    assert f["total"] == pytest.approx(f["compute"] + f["read"] + f["write"], abs=1e-9)


def test_json_carries_the_same_structure(emuexplain_conn: psycopg.Connection[Any]) -> None:
    text_plan = plan_for(emuexplain_conn, FULL_SCAN_SQL)
    plan = plan_for(emuexplain_conn, "EXPLAIN (FORMAT JSON) " + FULL_SCAN_SQL[len("EXPLAIN ") :])
    doc = json.loads(ex.render_json(plan))
    assert shape(doc[0]["Plan"]) == shape(text_plan.root)
    storage = doc[0]["Plan"]["Plans"][0]
    assert storage["Projections"] == ["account_id", "description"]
    assert storage["Filters"].startswith("(transaction_date > ")  # unqualified without VERBOSE
    analysed = plan_for(
        emuexplain_conn, "EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) SELECT * FROM test_table"
    )
    top = json.loads(ex.render_json(analysed))[0]
    block = top["Statement DPU Estimate"]
    assert set(block) == {"Compute", "Read", "Write", "Total"}
    assert block["Total"] == pytest.approx(block["Compute"] + block["Read"] + block["Write"])
    assert re.fullmatch(r"[0-9a-z]{13}", top["Query Identifier"])


def test_joins_keep_postgresql_nodes_and_convert_their_scans(
    emuexplain_conn: psycopg.Connection[Any],
) -> None:
    plan = plan_for(
        emuexplain_conn,
        "EXPLAIN SELECT t.id, a.status FROM test_table t JOIN account a "
        "ON a.balance = t.id WHERE t.id < 50",
    )
    kinds = set()

    def walk(node: dict[str, Any]) -> None:
        kinds.add(node["Node Type"])
        for c in node.get("Plans", ()):
            walk(c)

    walk(plan.root)
    assert "Seq Scan" not in kinds and "B-Tree Scan" in kinds
    assert any("Join" in k or k == "Nested Loop" for k in kinds)
    text = ex.render_text(plan)
    assert not any("Output:" in line for line in text)


# --- the hook, on a real backend ----------------------------------------------------------


def test_hook_answers_explain_and_meters_it(emuexplain_engine: Engine) -> None:
    async def go() -> tuple[Synthetic | None, Synthetic | None, metering.Meter]:
        hook = ex.ExplainHook()
        async with open_ctx(emuexplain_engine) as ctx:
            stmt = split_statements("EXPLAIN ANALYZE VERBOSE SELECT * FROM test_table")[0]
            reply = await hook.before(stmt, ctx)
            stmt2 = split_statements("EXPLAIN (FORMAT JSON) SELECT * FROM test_table")[0]
            reply2 = await hook.before(stmt2, ctx)
            return reply, reply2, metering.meter_of(ctx.cluster)

    reply, reply2, meter = asyncio.run(go())
    assert isinstance(reply, Synthetic) and reply.tag == "EXPLAIN"
    lines = [str(r[0]) for r in reply.rows]
    assert lines[0].startswith("Index Only Scan using test_table_pkey on public.test_table")
    f = block_figures(lines)
    last = meter.last_statement(1)
    assert last is not None  # the EXPLAIN it metered last is the JSON one (no ANALYZE)
    totals = meter.session_totals(1)
    assert totals.statements == 2
    assert totals.read >= f["read"]  # the analysed statement's reads were metered
    assert isinstance(reply2, Synthetic) and reply2.column_types() == (ex.JSON_OID,)
    assert json.loads(str(reply2.rows[0][0]))[0]["Plan"]["Node Type"] == "Index Only Scan"


def test_hook_leaves_other_statements_and_formats_alone(emuexplain_engine: Engine) -> None:
    async def go() -> list[object]:
        hook = ex.ExplainHook()
        out: list[object] = []
        async with open_ctx(emuexplain_engine) as ctx:
            for sql in ("SELECT 1", "EXPLAIN (FORMAT YAML) SELECT 1"):
                out.append(await hook.before(split_statements(sql)[0], ctx))
        return out

    assert asyncio.run(go()) == [None, None]


# --- pure pieces ------------------------------------------------------------------------------


def test_split_conjuncts() -> None:
    assert ex.split_conjuncts("((a > 1) AND (b ~~ 'x AND y'::text))") == [
        "(a > 1)",
        "(b ~~ 'x AND y'::text)",
    ]
    assert ex.split_conjuncts("((a > 1) OR (b < 2))") == ["((a > 1) OR (b < 2))"]
    assert ex.split_conjuncts("(((a > 1) OR (b < 2)) AND (c = 3))") == [
        "((a > 1) OR (b < 2))",
        "(c = 3)",
    ]
    assert ex.split_conjuncts(None) == []


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("(t.a = 1)", True),
        ("((t.status)::text = 'pending'::text)", True),
        ("(t.d > '2025-01-01 00:00:00'::timestamp without time zone)", True),
        ("(t.a IS NULL)", True),
        ("(t.a = ANY ('{1,2}'::integer[]))", True),
        ("(t.a = $1)", True),
        ("t.flag", True),
        ("(t.balance > '100'::numeric)", False),
        ("(t.description ~~ '%x%'::text)", False),
        ("(lower(t.name) = 'x'::text)", False),
        ("((t.a = 1) OR (t.b = 2))", False),
        ("(t.a = t.b)", False),
    ],
)
def test_pushable_rule(expr: str, expected: bool) -> None:
    assert ex.pushable(expr) is expected


def test_unqualify_only_touches_the_aliases() -> None:
    assert ex.unqualify("(t.a = 'a.b'::text)", {"t"}) == "(a = 'a.b'::text)"
    assert ex.unqualify("(x.a = t.b)", {"t"}) == "(x.a = b)"
    assert ex.unqualify('("T".a = 1)', {"T"}) == "(a = 1)"


def test_explain_options() -> None:
    def opts(sql: str) -> ex.ExplainOptions | None:
        return ex.explain_options(split_statements(sql)[0])

    o = opts("EXPLAIN ANALYZE VERBOSE SELECT 1")
    assert o == ex.ExplainOptions("SELECT 1", analyze=True, verbose=True)
    o = opts("explain (analyze false, format json, costs off) select 1")
    assert o == ex.ExplainOptions("select 1", analyze=False, format="json", costs=False)
    assert opts("EXPLAIN (FORMAT XML) SELECT 1") is None
    assert opts("SELECT 1") is None


@given(
    st.lists(st.sampled_from(["(a = 1)", "(b ~~ 'q AND r'::text)", "((c > 2) OR d)"]), min_size=1)
)
def test_split_inverts_join(parts: list[str]) -> None:
    assert ex.split_conjuncts(ex.join_conjuncts(parts)) == parts


@given(st.text(max_size=60))
def test_expression_helpers_never_raise(text: str) -> None:
    ex.split_conjuncts(text)
    ex.pushable(text)
    ex.unqualify(text, {"t"})


def test_the_magics_parser_reads_our_text_and_json(
    emuexplain_conn: psycopg.Connection[Any],
) -> None:
    """The contract with `dsql_magic.explain.parse_plan`: same tree and condition levels from
    the emulator's text and JSON, and the DPU block."""
    from dsql_magic.explain.parse import parse_plan

    emuexplain_conn.execute("SET enable_seqscan = off")
    emuexplain_conn.execute("SET enable_bitmapscan = off")
    try:
        plan = plan_for(emuexplain_conn, "EXPLAIN ANALYZE VERBOSE " + INDEX_SCAN_SQL[8:])
    finally:
        emuexplain_conn.execute("RESET ALL")

    def summary(node: Any) -> tuple[Any, ...]:
        kinds = tuple(sorted(c.kind for c in node.conditions))
        return (node.node_type, kinds, tuple(summary(c) for c in node.children))

    from_text = parse_plan("\n".join(ex.render_text(plan)))
    from_json = parse_plan(ex.render_json(plan))
    assert summary(from_text.root) == summary(from_json.root)
    assert summary(from_text.root) == (
        "Index Scan",
        ("index", "processor"),
        (
            ("Storage Scan", ("storage",), (("B-Tree Scan", ("index",), ()),)),
            ("Storage Lookup", ("storage",), (("B-Tree Lookup", (), ()),)),
        ),
    )
    assert plan.dpu is not None
    assert from_text.dpu == from_json.dpu
    assert from_text.dpu is not None
    assert from_text.dpu["total"] == pytest.approx(plan.dpu.rounded().total, abs=1e-5)


def test_inner_scans_keep_their_loops_and_reads_count_them(
    emuexplain_conn: psycopg.Connection[Any],
) -> None:
    """A nested loop's inner key lookups: storage nodes repeat the loops, and every loop is a
    storage request in the DPU model."""
    for setting in ("enable_hashjoin", "enable_mergejoin", "enable_material", "enable_seqscan"):
        emuexplain_conn.execute(f"SET {setting} = off")
    try:
        plan = plan_for(
            emuexplain_conn,
            "EXPLAIN ANALYZE VERBOSE SELECT t.id, u.context FROM test_table t "
            "JOIN test_table u ON u.id = t.id + 1 WHERE t.id <= 10",
        )
    finally:
        emuexplain_conn.execute("RESET ALL")
    assert plan.root["Node Type"] == "Nested Loop"
    inner = plan.root["Plans"][1]
    assert inner["Node Type"] == "Index Only Scan"
    btree = inner["Plans"][0]["Plans"][0]
    assert btree["Node Type"] == "B-Tree Scan" and btree["Actual Loops"] == 10
    work = ex.dpu_work(plan, ex.Catalog())
    assert work.storage_requests >= 11  # the outer scan once, the inner once per outer row
    text = ex.render_text(plan)
    assert any("-> B-Tree Scan on test_table_pkey" in ln and "loops=10)" in ln for ln in text)


def test_key_ranges_become_index_conditions(emuexplain_conn: psycopg.Connection[Any]) -> None:
    """PostgreSQL filters a small keyed table sequentially; DSQL navigates its key."""
    plan = plan_for(
        emuexplain_conn,
        "EXPLAIN ANALYZE SELECT * FROM test_table WHERE id <= 30 AND context <> 'x' "
        "AND context LIKE '%a%'",
    )
    text = ex.render_text(plan)
    assert text[0].startswith("Index Only Scan using test_table_pkey on test_table")
    assert "  Index Cond: (id <= 30)" in text
    assert "  Filter: (context ~~ '%a%'::text)" in text
    assert "      Filters: (context <> 'x'::text)" in text
    btree = plan.root["Plans"][0]["Plans"][0]
    assert btree["Index Cond"] == "(test_table.id <= 30)"
    # rows between levels are interpolated (docs/dpu-model.md): only their order is known
    assert 120 >= btree["Actual Rows"] >= plan.root["Actual Rows"]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [("(t.id <= 30)", True), ("(t.id = ANY ('{1,2}'::integer[]))", True), ("(t.id <> 3)", False),
     ("(t.id IS NULL)", False), ("(t.d ~~ 'x'::text)", False)],
)  # fmt: skip
def test_key_condition(expr: str, expected: bool) -> None:
    assert ex.key_condition(expr) is expected
