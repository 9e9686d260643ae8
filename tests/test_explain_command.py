"""`explain()` on a real PostgreSQL 16: plans come back parsed, and ANALYZE never changes data
unless the caller asked to keep the effects."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dsql_magic.explain.command import (
    KEPT_NOTE,
    ROLLED_BACK_NOTE,
    ExplainError,
    explain,
    statement_writes,
)
from tests.fix_explain_pg import ExplainPg


@pytest.fixture
def conn(explain_pg: ExplainPg) -> Iterator[psycopg.Connection[Any]]:
    with explain_pg.connect() as c:
        c.execute("DROP TABLE IF EXISTS h4_cmd; CREATE TABLE h4_cmd (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO h4_cmd SELECT g, 'v' || g FROM generate_series(1, 50) g")
        yield c
        c.execute("DROP TABLE IF EXISTS h4_cmd")


def count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM h4_cmd").fetchone()
    assert row is not None
    return int(row[0])


def test_plain_explain_does_not_execute(conn: psycopg.Connection[Any]) -> None:
    result = explain(conn, "DELETE FROM h4_cmd")
    assert result.plan.root.node_type == "Delete" and not result.plan.analyzed
    assert result.writes and not result.rolled_back and result.notes == []
    assert count(conn) == 50


def test_analyze_of_a_write_is_rolled_back(conn: psycopg.Connection[Any]) -> None:
    result = explain(conn, "DELETE FROM h4_cmd WHERE id <= 10", analyze=True, verbose=True)
    assert result.rolled_back and result.notes == [ROLLED_BACK_NOTE]
    assert result.plan.analyzed and result.plan.root.node_type == "Delete"
    assert count(conn) == 50
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert (
        "rolled back" in result.text()
        and "rolled back" in result._repr_mimebundle_()[0]["text/html"]
    )


def test_analyze_of_a_write_in_non_autocommit_connection(explain_pg: ExplainPg) -> None:
    with explain_pg.connect(autocommit=False) as c:
        c.execute("CREATE TABLE h4_cmd2 (id int PRIMARY KEY)")
        c.commit()
        try:
            result = explain(c, "INSERT INTO h4_cmd2 VALUES (1), (2)", analyze=True)
            assert result.rolled_back
            row = c.execute("SELECT count(*) FROM h4_cmd2").fetchone()
            assert row is not None and row[0] == 0
        finally:
            c.rollback()
            c.execute("DROP TABLE h4_cmd2")
            c.commit()


def test_keep_effects_commits_the_write(conn: psycopg.Connection[Any]) -> None:
    result = explain(conn, "DELETE FROM h4_cmd WHERE id <= 10", analyze=True, keep_effects=True)
    assert not result.rolled_back and result.notes == [KEPT_NOTE]
    assert count(conn) == 40


def test_open_transaction_is_refused_not_rolled_back(conn: psycopg.Connection[Any]) -> None:
    conn.execute("BEGIN")
    conn.execute("INSERT INTO h4_cmd VALUES (999, 'mine')")
    with pytest.raises(ExplainError, match="COMMIT or ROLLBACK first"):
        explain(conn, "DELETE FROM h4_cmd", analyze=True)
    conn.execute("COMMIT")
    assert count(conn) == 51


def test_analyze_of_a_read_runs_directly(conn: psycopg.Connection[Any]) -> None:
    result = explain(conn, "SELECT * FROM h4_cmd WHERE id = 3", analyze=True, verbose=True)
    assert not result.writes and not result.rolled_back and result.notes == []
    root = result.plan.root
    assert root.actual_rows == 1 and root.output == ("id", "v")


def test_leading_explain_and_options_are_folded(conn: psycopg.Connection[Any]) -> None:
    result = explain(conn, "EXPLAIN (ANALYZE, VERBOSE) UPDATE h4_cmd SET v = 'x'")
    assert result.analyze and result.verbose and result.rolled_back
    assert count(conn) == 50
    plain = explain(conn, "explain (analyze false, costs off) select 1")
    assert not plain.analyze


def test_parameters_are_bound(conn: psycopg.Connection[Any]) -> None:
    result = explain(conn, "SELECT v FROM h4_cmd WHERE id = :key", analyze=True, params={"key": 7})
    assert result.plan.root.actual_rows == 1


@pytest.mark.parametrize(
    ("sql", "message"),
    [("SELECT 1; SELECT 2", "exactly one statement"), ("", "exactly one"), ("SELECT 'x", "quote")],
)
def test_bad_input(conn: psycopg.Connection[Any], sql: str, message: str) -> None:
    with pytest.raises(ExplainError, match=message):
        explain(conn, sql)


@pytest.mark.parametrize(
    ("first", "text", "writes"),
    [
        ("SELECT", "SELECT 1", False),
        ("VALUES", "VALUES (1)", False),
        ("WITH", "WITH a AS (SELECT 1) SELECT * FROM a", False),
        ("WITH", "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", True),
        ("INSERT", "INSERT INTO t VALUES (1)", True),
        ("MERGE", "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", True),
    ],
)
def test_statement_writes(first: str, text: str, writes: bool) -> None:
    assert statement_writes(first, text) is writes
