"""DSQL's dialect, transaction rules and roles end to end: psycopg → the running emulator.

These go through the real wire front (TLS, IAM token, session, hooks) to the embedded PostgreSQL,
so they check what a client sees: SQLSTATE, message, the 25P02 that follows a refusal inside a
block, COMMIT answering ROLLBACK, limits at their boundary.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from dsql_magic import limits
from dsql_magic.emulator.api import Emulator
from dsql_magic.emulator.dialect import load_rules
from tests.fix_emulator import ConnInfo


def _connect(conninfo: ConnInfo, user: str = "admin") -> psycopg.Connection[Any]:
    return psycopg.connect(**conninfo(user), autocommit=True, connect_timeout=10)


def test_refusals_outside_and_inside_a_block(emulator_conninfo: ConnInfo) -> None:
    with _connect(emulator_conninfo) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute("CREATE TABLE e2e_arr (id int PRIMARY KEY, tags text[])")
        assert info.value.sqlstate == "0A000"
        assert info.value.diag.message_primary == "datatype text[] not supported"
        assert conn.execute("SELECT 1").fetchone() == (1,)  # session unaffected
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SAVEPOINT sp")
        assert info.value.diag.message_primary == "unsupported transaction statement: SAVEPOINT"
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT 2")
        assert info.value.sqlstate == "25P02"
        cur = conn.execute("COMMIT")
        assert cur.statusmessage == "ROLLBACK"
        assert conn.execute("SELECT 3").fetchone() == (3,)


def test_every_refused_rule_example_over_the_wire(emulator_conninfo: ConnInfo) -> None:
    rules = load_rules()
    with _connect(emulator_conninfo) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, a text, b int)")
        conn.execute("CREATE TABLE IF NOT EXISTS u (id int PRIMARY KEY, a text)")
        for rule in rules.rules:
            for sql in rule.refused:
                with pytest.raises(psycopg.Error) as info:
                    conn.execute(sql)
                assert info.value.sqlstate == rule.sqlstate, (rule.id, sql)
                if "{" not in rule.message:
                    assert info.value.diag.message_primary == rule.message, (rule.id, sql)


def test_transaction_rules_and_row_limit(emulator_conninfo: ConnInfo) -> None:
    n = limits.MAX_ROWS_PER_TRANSACTION
    with _connect(emulator_conninfo) as conn:
        conn.execute("CREATE TABLE e2e_rows (id int PRIMARY KEY, v numeric)")
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE e2e_foo (id_col integer)")
        with pytest.raises(psycopg.Error) as info:
            conn.execute("INSERT INTO e2e_rows VALUES (1, 1)")
        assert info.value.diag.message_primary == (
            "ddl and dml are not supported in the same transaction"
        )
        assert conn.execute("COMMIT").statusmessage == "ROLLBACK"
        cur = conn.execute(f"INSERT INTO e2e_rows SELECT g, g / 7.0 FROM generate_series(1, {n}) g")
        assert cur.rowcount == n
        with pytest.raises(psycopg.Error) as info:
            conn.execute(
                f"INSERT INTO e2e_rows SELECT g, 0 FROM generate_series({n + 1}, {2 * n + 1}) g"
            )
        assert (info.value.sqlstate, info.value.diag.message_primary) == (
            "54000",
            "transaction row limit exceeded",
        )
        assert conn.execute("SELECT count(*) FROM e2e_rows").fetchone() == (n,)
        # numeric without precision is numeric(18,6)
        assert conn.execute("SELECT v::text FROM e2e_rows WHERE id = 1").fetchone() == ("0.142857",)


def test_show_environment(emulator_conninfo: ConnInfo) -> None:
    with _connect(emulator_conninfo) as conn:
        assert conn.execute("SHOW server_version").fetchone() == ("16.15",)
        assert conn.execute("SHOW server_version_num").fetchone() == ("160015",)
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SHOW lc_collate")
        assert info.value.sqlstate == "42704"
        conn.execute("SET application_name = 'nb'")
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SET work_mem = '64MB'")
        assert info.value.diag.message_primary == (
            'setting configuration parameter "work_mem" not supported'
        )


def test_custom_role_needs_iam_mapping(emulator: Emulator, emulator_conninfo: ConnInfo) -> None:
    arn = emulator.info.admin_arn
    with _connect(emulator_conninfo) as admin:
        admin.execute("CREATE ROLE e2e_reader WITH LOGIN")
        with (
            pytest.raises(psycopg.OperationalError, match="access denied"),
            _connect(emulator_conninfo, "e2e_reader") as conn,
        ):
            conn.execute("SELECT 1")
        admin.execute(f"AWS IAM GRANT e2e_reader TO '{arn}'")
        rows = admin.execute(
            "SELECT arn, pg_role_name, grantor_pg_role_name FROM sys.iam_pg_role_mappings "
            "WHERE pg_role_name = 'e2e_reader'"
        ).fetchall()
        assert rows == [(arn, "e2e_reader", "admin")]
    with _connect(emulator_conninfo, "e2e_reader") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("e2e_reader",)
        with pytest.raises(psycopg.Error) as info:
            conn.execute("CREATE SCHEMA e2e_mine")
        assert info.value.diag.message_primary == "permission denied for database postgres"
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"AWS IAM GRANT e2e_reader TO '{arn}'")
        assert info.value.diag.message_primary == (
            "permission denied to grant IAM trust with role e2e_reader"
        )


def test_async_index_counts_as_the_transactions_ddl(emulator_conninfo: ConnInfo) -> None:
    with _connect(emulator_conninfo) as conn:
        conn.execute("CREATE TABLE e2e_idx (id int PRIMARY KEY, a text, d bytea)")
        conn.execute("BEGIN")
        conn.execute("CREATE INDEX ASYNC ON e2e_idx (a)")
        with pytest.raises(psycopg.Error) as info:
            conn.execute("CREATE TABLE e2e_idx2 (id int PRIMARY KEY)")
        assert info.value.diag.message_primary == (
            "multiple ddl statements not supported in a transaction"
        )
        assert conn.execute("COMMIT").statusmessage == "ROLLBACK"
        with pytest.raises(psycopg.Error) as info:
            conn.execute("CREATE INDEX ASYNC ON e2e_idx (d)")
        assert info.value.diag.message_primary == "datatype bytea is not supported in a key"
        with pytest.raises(psycopg.Error) as info:
            conn.execute("CREATE INDEX ASYNC ON e2e_idx (a DESC)")
        assert info.value.diag.message_primary == (
            "specifying sort order not supported for index keys"
        )


def test_startup_reports_dsql_server_version(emulator_conninfo: ConnInfo) -> None:
    with _connect(emulator_conninfo) as conn:
        assert conn.info.parameter_status("server_version") == "16.15"
        assert conn.info.server_version == 160015


def test_copy_from_stdin_obeys_the_row_limit(emulator_conninfo: ConnInfo) -> None:
    n = limits.MAX_ROWS_PER_TRANSACTION
    with _connect(emulator_conninfo) as conn:
        conn.execute("CREATE TABLE e2e_copy (id int PRIMARY KEY)")
        with conn.cursor().copy("COPY e2e_copy (id) FROM STDIN") as copy:
            for i in range(n):
                copy.write_row((i,))
        with pytest.raises(psycopg.Error) as info:  # noqa: SIM117
            with conn.cursor().copy("COPY e2e_copy (id) FROM STDIN") as copy:
                for i in range(n + 1):
                    copy.write_row((n + i,))
        assert info.value.diag.message_primary == "transaction row limit exceeded"
        assert conn.execute("SELECT count(*) FROM e2e_copy").fetchone() == (n,)
