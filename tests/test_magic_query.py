"""``%%dsql`` / ``%dsql`` through a real shell on PostgreSQL 16: results, VAR, params, errors."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell

from dsql_magic.errors import NotConnected, QueryError, SyntaxProblem, UsageProblem
from dsql_magic.results import CommandResult, Message
from tests.fix_pg import PgServer


def test_not_connected_says_what_to_do(magic: Any) -> None:
    with pytest.raises(NotConnected) as info:
        magic("SELECT 1")
    assert "%dsql connect" in (info.value.hint or "")


def test_cell_returns_last_result_set(connected: PgServer, magic: Any, table: str) -> None:
    df = magic(
        f"""
        CREATE TABLE {table} (id int PRIMARY KEY, name text);
        INSERT INTO {table} VALUES (1, 'a'), (2, 'b'), (3, 'c');
        SELECT * FROM {table} ORDER BY id;
        UPDATE {table} SET name = 'z' WHERE id = 3;
        """
    )
    assert list(df["name"]) == ["a", "b", "c"]  # the last result set, before the UPDATE
    assert "UPDATE 1" in repr(df)  # later statements' tags are shown as notes


def test_command_tags_without_results(connected: PgServer, magic: Any, table: str) -> None:
    out = magic(f"CREATE TABLE {table} (id int); INSERT INTO {table} VALUES (1), (2), (3)")
    assert isinstance(out, CommandResult)
    assert out.tags == ["CREATE TABLE", "INSERT 0 3"]


def test_var_stores_full_frame(connected: PgServer, magic: Any, ip: InteractiveShell) -> None:
    out = magic("SELECT generate_series(1, 50) AS n", line="result --limit 5")
    assert out is None
    df = ip.user_ns["result"]
    assert isinstance(df, pd.DataFrame) and len(df) == 50
    assert "showing 5 of 50 rows" in repr(df)


def test_line_form_assignment(connected: PgServer, ip: InteractiveShell) -> None:
    res = ip.run_cell("df = %dsql SELECT 41 + 1 AS answer\nanswer = int(df['answer'][0])")
    res.raise_error()
    assert ip.user_ns["answer"] == 42


def test_line_form_options(connected: PgServer, magic: Any) -> None:
    df = magic(line="--conn main --limit 2 SELECT generate_series(1, 3) AS n")
    assert len(df) == 3 and "showing 2 of 3 rows" in repr(df)


def test_bad_var_name(connected: PgServer, magic: Any) -> None:
    with pytest.raises(UsageProblem, match="not a valid variable name"):
        magic("SELECT 1", line="1abc")


HOSTILE = [
    "'; DROP TABLE victims; --",
    "Robert'); DROP TABLE students;--",
    "$$; SELECT 1; $$",
    ":other",
    "%(x)s %s {0} $1",
    "back\\slash E'\\''",
    "unicode ☃ \u0000-free",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_params_are_values(
    connected: PgServer, magic: Any, ip: InteractiveShell, table: str, value: str
) -> None:
    value = value.replace("\u0000", "")
    magic(f"CREATE TABLE {table} (v text); CREATE TABLE victims (x int)")
    try:
        ip.user_ns["v"] = value
        magic(f"INSERT INTO {table} VALUES (:v)")
        df = magic(f"SELECT v, v = :v AS same, length(:v) AS n FROM {table}")
        assert df["v"][0] == value and bool(df["same"][0]) and df["n"][0] == len(value)
        assert len(magic("SELECT * FROM victims")) == 0  # still there
    finally:
        magic("DROP TABLE victims")


def test_params_of_many_types(connected: PgServer, magic: Any, ip: InteractiveShell) -> None:
    import datetime as dt
    import decimal
    import uuid

    ip.user_ns.update(
        i=7, f=1.5, d=decimal.Decimal("2.50"), u=uuid.UUID(int=1), when=dt.date(2026, 1, 1), n=None
    )
    df = magic(
        "SELECT :i + 1 AS i, :f * 2 AS f, :d::numeric AS d, :u AS u, :when AS w,"
        " :n::int IS NULL AS z"
    )
    row = df.iloc[0]
    assert (row["i"], row["f"], row["d"], row["u"], row["w"], bool(row["z"])) == (
        8,
        3.0,
        decimal.Decimal("2.50"),
        uuid.UUID(int=1),
        dt.date(2026, 1, 1),
        True,
    )


def test_cast_is_not_a_param_and_missing_param_is_clear(connected: PgServer, magic: Any) -> None:
    assert magic("SELECT '5'::int AS x")["x"][0] == 5
    with pytest.raises(UsageProblem, match=":nope is not a defined Python variable"):
        magic("SELECT 1; SELECT :nope")


def test_no_var_expand(connected: PgServer, magic: Any, ip: InteractiveShell) -> None:
    ip.user_ns["x"] = "INJECTED"
    df = magic(line="SELECT '{x}' AS a, '$x' AS b")
    assert (df["a"][0], df["b"][0]) == ("{x}", "$x")


def test_readonly(connected: PgServer, magic: Any, table: str) -> None:
    magic(f"CREATE TABLE {table} (id int)")
    assert (
        magic("SHOW transaction_read_only", line="--readonly")["transaction_read_only"][0] == "on"
    )
    with pytest.raises(QueryError) as info:
        magic(f"INSERT INTO {table} VALUES (1)", line="--readonly")
    assert info.value.sqlstate == "25006"
    with pytest.raises(UsageProblem, match="readonly"):
        magic("BEGIN; SELECT 1; COMMIT", line="--readonly")
    assert magic("SELECT 1 AS one")["one"][0] == 1  # connection usable afterwards


def test_transaction_in_a_cell_and_across_cells(
    connected: PgServer, magic: Any, table: str
) -> None:
    magic(f"CREATE TABLE {table} (id int)")
    magic(f"BEGIN; INSERT INTO {table} VALUES (1); COMMIT")
    magic("BEGIN")
    magic(f"INSERT INTO {table} VALUES (2)")
    magic("ROLLBACK")
    assert list(magic(f"SELECT id FROM {table}")["id"]) == [1]


def test_error_fails_cell_short_without_traceback(
    connected: PgServer, ip: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    res = ip.run_cell("%%dsql\nSELECT 1;\nSELECT * FROM no_such_table")
    assert not res.success and isinstance(res.error_in_exec, SyntaxProblem)
    out = capsys.readouterr().out
    assert "[42P01] (statement 2)" in out and 'relation "no_such_table" does not exist' in out
    assert "Traceback" not in out and "File " not in out


def test_long_errors_on_request(
    connected: PgServer, ip: InteractiveShell, dsql: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.run_line_magic("config", "DsqlMagic.short_errors = False")
    res = ip.run_cell("%dsql SELECT * FROM no_such_table")
    assert not res.success
    assert "Traceback" in capsys.readouterr().out
    ip.run_line_magic("config", "DsqlMagic.short_errors = True")


def test_failed_transaction_rolled_back(connected: PgServer, magic: Any, table: str) -> None:
    magic(f"CREATE TABLE {table} (id int)")
    with pytest.raises(QueryError) as info:
        magic(f"BEGIN; INSERT INTO {table} VALUES (1); SELECT 1/0; COMMIT")
    assert info.value.sqlstate == "22012"
    assert "rolled back" in (info.value.note or "")
    assert len(magic(f"SELECT * FROM {table}")) == 0
    assert magic("SELECT 2 AS x")["x"][0] == 2


def test_partial_commit_is_reported(connected: PgServer, magic: Any, table: str) -> None:
    magic(f"CREATE TABLE {table} (id int)")
    with pytest.raises(QueryError) as info:
        magic(f"INSERT INTO {table} VALUES (1); INSERT INTO {table} VALUES (1/0)")
    assert "statements 1-1 ran and were committed" in (info.value.note or "")


def test_config_validation(ip: InteractiveShell, dsql: Any) -> None:
    ip.run_line_magic("config", "DsqlMagic.displaylimit = 20")
    assert dsql.displaylimit == 20
    with pytest.raises(Exception, match="0 or more"):
        dsql.displaylimit = -1
    with pytest.raises(Exception, match="TTL"):
        dsql.token_ttl = 10**7


def test_help_and_usage(ip: InteractiveShell, magic: Any) -> None:
    doc = ip.find_line_magic("dsql").__doc__ or ""
    for word in ("connect", "connections", "use", "close", "clusters", "--readonly", "--no-retry"):
        assert word in doc
    assert isinstance(magic(line=""), Message)
    full = magic(line="--help")
    assert isinstance(full, Message) and "%dsql connect" in full.text and "--readonly" in full.text
    help_msg = magic(line="connect --help")
    assert isinstance(help_msg, Message) and "--sslrootcert" in help_msg.text
    with pytest.raises(UsageProblem):
        magic(line="connect --bogus")


def test_unterminated_sql_is_a_usage_error(connected: PgServer, magic: Any) -> None:
    with pytest.raises(UsageProblem, match="unterminated"):
        magic("SELECT 'oops")


def test_same_text_after_ddl_still_works(connected: PgServer, magic: Any, table: str) -> None:
    magic(f"CREATE TABLE {table} (id int)")
    for _ in range(8):  # more than psycopg's automatic-prepare threshold
        magic(f"SELECT * FROM {table}")
    magic(f"ALTER TABLE {table} ADD COLUMN extra text")
    assert list(magic(f"SELECT * FROM {table}").columns) == ["id", "extra"]


def test_polars_results(connected: PgServer, magic: Any, ip: InteractiveShell) -> None:
    import polars as pl

    ip.run_line_magic("config", 'DsqlMagic.dataframe = "polars"')
    df = magic("SELECT 1::int8 AS a, NULL::int8 AS b, 'x'::text AS c")
    assert isinstance(df, pl.DataFrame)
    assert df.schema["a"] == pl.Int64 and df["b"][0] is None and df["c"][0] == "x"


def test_line_options_edge_cases(connected: PgServer, magic: Any) -> None:
    from dsql_magic.magics import split_line_options

    assert split_line_options("-- note\nSELECT 1") == ({}, "-- note\nSELECT 1")
    assert split_line_options("--readonly --limit 3 SELECT 1") == (
        {"readonly": True, "limit": 3},
        "SELECT 1",
    )
    with pytest.raises(UsageProblem, match="needs a value"):
        split_line_options("--conn")
    with pytest.raises(UsageProblem, match="not a number"):
        split_line_options("--limit many SELECT 1")
    with pytest.raises(NotConnected, match="known connections: main"):
        magic(line="--conn nope SELECT 1")
