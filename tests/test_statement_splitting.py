"""The emulator's statement splitter: boundaries, DSQL-only syntax, classification."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsql_magic.emulator.statements import StatementKind, split_statements

# Pieces of SQL whose semicolons are not statement boundaries.
_LITERALS = st.sampled_from(
    [
        "'a;b'",
        "'it''s; fine'",
        "E'esc\\';aped'",
        "$$dollar; quoted$$",
        "$tag$ a;b $$ still; inside $tag$",
        '"quoted;ident"',
        "'é;ü'",
        "1::text",
        "'x'::varchar(10)",
    ]
)
_COMMENTS = st.sampled_from(["", " -- trailing; comment\n", " /* block; comment */ "])


@st.composite
def _select(draw: st.DrawFn) -> str:
    items = draw(st.lists(_LITERALS, min_size=1, max_size=3))
    return "SELECT " + ", ".join(items) + draw(_COMMENTS)


@settings(max_examples=200, deadline=None)
@given(st.lists(_select(), min_size=1, max_size=5))
def test_split_respects_quotes_comments_and_casts(statements: list[str]) -> None:
    sql = ";\n".join(statements) + ";"
    parts = split_statements(sql)
    assert len(parts) == len(statements)
    for part, original in zip(parts, statements, strict=True):
        assert part.kind is StatementKind.QUERY
        # The statement text is the original minus outer whitespace and a trailing line comment.
        assert original.startswith(part.text)


@pytest.mark.parametrize(
    ("sql", "command", "pg_text"),
    [
        ("CREATE INDEX ASYNC i ON t (a)", "CREATE INDEX ASYNC", "CREATE INDEX  i ON t (a)"),
        ("create unique index async on t(a)", "CREATE INDEX ASYNC", "create unique index  on t(a)"),
        (
            "CREATE INDEX ASYNC IF NOT EXISTS i ON t (a) INCLUDE (b)",
            "CREATE INDEX ASYNC",
            "CREATE INDEX  IF NOT EXISTS i ON t (a) INCLUDE (b)",
        ),
        (
            "ALTER TABLE ASYNC t VALIDATE CONSTRAINT c",
            "ALTER TABLE ASYNC",
            "ALTER TABLE  t VALIDATE CONSTRAINT c",
        ),
    ],
)
def test_async_ddl_is_recognised_on_tokens(sql: str, command: str, pg_text: str) -> None:
    (stmt,) = split_statements(sql)
    assert stmt.is_async
    assert stmt.kind is StatementKind.DDL
    assert stmt.command == command
    assert stmt.pg_text == pg_text
    assert stmt.text == sql


def test_unnamed_async_index() -> None:
    # In DSQL's grammar the name is optional after ASYNC, so this is an unnamed async index.
    (stmt,) = split_statements("CREATE INDEX async ON t (a)")
    assert (stmt.kind, stmt.command, stmt.pg_text) == (
        StatementKind.DDL,
        "CREATE INDEX ASYNC",
        "CREATE INDEX  ON t (a)",
    )


def test_aws_iam_commands_are_kept_as_iam() -> None:
    (grant, revoke) = split_statements(
        "AWS IAM GRANT app TO 'arn:aws:iam::123456789012:role/app'; "
        "aws iam revoke app from 'arn:aws:iam::123456789012:role/app'"
    )
    assert (grant.kind, grant.command) == (StatementKind.IAM, "AWS IAM GRANT")
    assert (revoke.kind, revoke.command) == (StatementKind.IAM, "AWS IAM REVOKE")


@pytest.mark.parametrize(
    ("sql", "kind", "command", "read_only"),
    [
        ("SELECT 1", StatementKind.QUERY, "SELECT", True),
        ("SELECT * FROM t FOR UPDATE", StatementKind.QUERY, "SELECT", False),
        ("WITH d AS (DELETE FROM t RETURNING 1) SELECT 1", StatementKind.QUERY, "SELECT", False),
        ("SELECT * INTO u FROM t", StatementKind.DML, "SELECT", False),
        ("INSERT INTO t VALUES (1)", StatementKind.DML, "INSERT", False),
        ("UPDATE t SET a = 1", StatementKind.DML, "UPDATE", False),
        ("DELETE FROM t", StatementKind.DML, "DELETE", False),
        ("COPY t FROM STDIN", StatementKind.DML, "COPY", False),
        ("COPY t TO STDOUT", StatementKind.UTILITY, "COPY", False),
        ("CREATE TABLE t (a int PRIMARY KEY)", StatementKind.DDL, "CREATE TABLE", False),
        ("GRANT SELECT ON t TO r", StatementKind.DDL, "GRANT", False),
        ("TRUNCATE t", StatementKind.DDL, "TRUNCATE", False),
        ("BEGIN", StatementKind.TRANSACTION, "BEGIN", False),
        ("START TRANSACTION READ ONLY", StatementKind.TRANSACTION, "BEGIN", False),
        ("COMMIT", StatementKind.TRANSACTION, "COMMIT", False),
        ("ROLLBACK TO SAVEPOINT s", StatementKind.TRANSACTION, "ROLLBACK TO", False),
        ("SHOW server_version", StatementKind.UTILITY, "SHOW", True),
        ("EXPLAIN SELECT 1", StatementKind.UTILITY, "EXPLAIN", True),
        ("EXPLAIN ANALYZE DELETE FROM t", StatementKind.UTILITY, "EXPLAIN", False),
        ("ANALYZE t", StatementKind.UTILITY, "ANALYZE", False),
        ("VACUUM t", StatementKind.UTILITY, "VACUUM", False),
        ("SET search_path = public", StatementKind.UTILITY, "SET", False),
    ],
)
def test_classification(sql: str, kind: StatementKind, command: str, read_only: bool) -> None:
    (stmt,) = split_statements(sql)
    assert (stmt.kind, stmt.command, stmt.read_only) == (kind, command, read_only)


def test_transaction_kind() -> None:
    begin, commit = split_statements("BEGIN; COMMIT")
    assert begin.transaction_kind == "TRANS_STMT_BEGIN"
    assert commit.transaction_kind == "TRANS_STMT_COMMIT"


def test_locking_clause_detected_in_subquery() -> None:
    (stmt,) = split_statements("SELECT * FROM (SELECT * FROM t FOR KEY SHARE) s")
    assert stmt.locks_rows


def test_sql_standard_function_body_is_one_statement() -> None:
    parts = split_statements(
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql "
        "BEGIN ATOMIC SELECT 1; SELECT 2; END; SELECT 3"
    )
    assert [p.command for p in parts] == ["CREATE FUNCTION", "SELECT"]


def test_invalid_sql_is_kept_for_postgresql_to_report() -> None:
    (stmt,) = split_statements("SELEC 1")
    assert stmt.kind is StatementKind.INVALID
    assert stmt.parse_error


def test_unterminated_quote_is_invalid_not_an_exception() -> None:
    (stmt,) = split_statements("SELECT 'oops")
    assert stmt.kind is StatementKind.INVALID


def test_empty_input_and_bare_semicolons() -> None:
    assert split_statements("") == ()
    assert split_statements(" ; ;; -- nothing\n") == ()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_never_raises_on_arbitrary_text(sql: str) -> None:
    for stmt in split_statements(sql):
        assert isinstance(stmt.kind, StatementKind)
