"""DSQL's optimistic concurrency through the emulator, with real psycopg connections.

Two connections used from one thread (the notebook case) must never hang; the loser fails at
its COMMIT with 40001 and ``(OC000)``; the first committer wins.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(120)]

ConnInfo = Callable[..., dict[str, Any]]


def _connect(conninfo: ConnInfo, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(**conninfo(), **kw)


@pytest.fixture
def table(emulator_conninfo: ConnInfo) -> Iterator[str]:
    name = f"acct_{uuid.uuid4().hex[:8]}"
    with _connect(emulator_conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, balance int NOT NULL)")
        conn.execute(f"INSERT INTO {name} VALUES (1, 100), (2, 100), (3, 100)")
    yield name


@pytest.fixture
def pair(emulator_conninfo: ConnInfo, table: str) -> Iterator[tuple[Any, Any]]:
    a = _connect(emulator_conninfo)
    b = _connect(emulator_conninfo)
    # A first statement on each, so a catalog change before the test is seen (OC001) here.
    for conn in (a, b):
        try:
            conn.execute(f"SELECT 1 FROM {table} LIMIT 1")
        except psycopg.errors.SerializationFailure:
            conn.rollback()
        conn.rollback()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _oc000(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.Error) and exc.sqlstate == "40001" and "(OC000)" in str(exc)


def _balance(conninfo: ConnInfo, table: str, key: int) -> int:
    with _connect(conninfo, autocommit=True) as conn:
        row = conn.execute(f"SELECT balance FROM {table} WHERE id = %s", (key,)).fetchone()
    assert row is not None
    return int(row[0])


def test_first_committer_wins_when_it_wrote_first(
    pair: tuple[Any, Any], table: str, emulator_conninfo: ConnInfo
) -> None:
    a, b = pair
    a.execute(f"UPDATE {table} SET balance = balance + 1 WHERE id = 1")
    cur = b.execute(f"UPDATE {table} SET balance = balance + 10 WHERE id = 1")  # no hang
    assert cur.rowcount == 1
    a.commit()
    with pytest.raises(psycopg.errors.SerializationFailure) as info:
        b.commit()
    assert _oc000(info.value)
    assert _balance(emulator_conninfo, table, 1) == 101


def test_first_committer_wins_when_it_wrote_second(
    pair: tuple[Any, Any], table: str, emulator_conninfo: ConnInfo
) -> None:
    a, b = pair
    a.execute(f"UPDATE {table} SET balance = balance + 1 WHERE id = 1")
    b.execute(f"UPDATE {table} SET balance = balance + 10 WHERE id = 1")
    b.commit()  # B commits first: B wins, even though A wrote the row first
    with pytest.raises(psycopg.errors.SerializationFailure) as info:
        a.commit()
    assert _oc000(info.value)
    assert _balance(emulator_conninfo, table, 1) == 110
    # Both sessions stay usable.
    a.execute(f"SELECT count(*) FROM {table}")
    a.rollback()
    b.execute(f"SELECT count(*) FROM {table}")
    b.rollback()


def test_writes_to_different_rows_never_conflict(
    pair: tuple[Any, Any], table: str, emulator_conninfo: ConnInfo
) -> None:
    a, b = pair
    a.execute(f"UPDATE {table} SET balance = balance + 1 WHERE id = 1")
    b.execute(f"UPDATE {table} SET balance = balance + 1 WHERE id = 2")
    b.commit()
    a.commit()
    assert _balance(emulator_conninfo, table, 1) == 101
    assert _balance(emulator_conninfo, table, 2) == 101


def test_plain_reads_never_conflict(pair: tuple[Any, Any], table: str) -> None:
    a, b = pair
    assert a.execute(f"SELECT balance FROM {table} WHERE id = 1").fetchone() == (100,)
    b.execute(f"UPDATE {table} SET balance = 0 WHERE id = 1")
    b.commit()
    assert a.execute(f"SELECT balance FROM {table} WHERE id = 1").fetchone() == (100,)  # snapshot
    a.commit()


def test_write_after_a_concurrent_commit_fails_at_commit_not_at_the_statement(
    pair: tuple[Any, Any], table: str, emulator_conninfo: ConnInfo
) -> None:
    a, b = pair
    a.execute(f"SELECT 1 FROM {table}")  # A's snapshot is taken (at BEGIN, as DSQL)
    b.execute(f"UPDATE {table} SET balance = 7 WHERE id = 3")
    b.commit()
    cur = a.execute(f"UPDATE {table} SET balance = 8 WHERE id = 3")
    assert cur.rowcount == 1
    a.execute(f"UPDATE {table} SET balance = 9 WHERE id = 2")  # the transaction goes on
    with pytest.raises(psycopg.errors.SerializationFailure) as info:
        a.commit()
    assert _oc000(info.value)
    assert _balance(emulator_conninfo, table, 3) == 7
    assert _balance(emulator_conninfo, table, 2) == 100


def test_for_update_conflicts_with_a_write(
    pair: tuple[Any, Any], table: str, emulator_conninfo: ConnInfo
) -> None:
    a, b = pair
    row = a.execute(f"SELECT balance FROM {table} WHERE id = 1 FOR UPDATE").fetchone()
    assert row == (100,)
    b.execute(f"UPDATE {table} SET balance = 5 WHERE id = 1")
    a.execute(f"UPDATE {table} SET balance = 6 WHERE id = 2")
    a.commit()
    with pytest.raises(psycopg.errors.SerializationFailure) as info:
        b.commit()
    assert _oc000(info.value)
    assert _balance(emulator_conninfo, table, 1) == 100


def test_write_then_for_update_returns_typed_snapshot_rows(
    pair: tuple[Any, Any], table: str
) -> None:
    a, b = pair
    a.execute(f"UPDATE {table} SET balance = 1 WHERE id = 1")
    row = b.execute(f"SELECT id, balance FROM {table} WHERE id = %s FOR UPDATE", (1,)).fetchone()
    assert row == (1, 100)  # from B's snapshot, ints as ints, without waiting
    row = b.execute(f"SELECT id, balance FROM {table} WHERE id = 1 FOR UPDATE").fetchone()
    assert row == (1, 100)
    a.commit()
    with pytest.raises(psycopg.errors.SerializationFailure):
        b.commit()


def test_for_key_share_conflicts_with_delete(
    pair: tuple[Any, Any], table: str, emulator_conninfo: ConnInfo
) -> None:
    a, b = pair
    assert a.execute(f"SELECT id FROM {table} WHERE id = 2 FOR KEY SHARE").fetchall() == [(2,)]
    cur = b.execute(f"DELETE FROM {table} WHERE id = 2")  # no hang
    assert cur.rowcount == 1
    a.commit()  # A's footprint commits first: B's delete of that row loses
    with pytest.raises(psycopg.errors.SerializationFailure) as info:
        b.commit()
    assert _oc000(info.value)
    assert _count(emulator_conninfo, table) == 3


def test_for_key_share_then_delete_first_commit_wins(
    pair: tuple[Any, Any], table: str, emulator_conninfo: ConnInfo
) -> None:
    a, b = pair
    a.execute(f"SELECT id FROM {table} WHERE id = 2 FOR KEY SHARE")
    b.execute(f"DELETE FROM {table} WHERE id = 2")
    a.execute(f"UPDATE {table} SET balance = 1 WHERE id = 3")
    b.commit()  # B commits first and wins; A's footprint on row 2 loses
    with pytest.raises(psycopg.errors.SerializationFailure) as info:
        a.commit()
    assert _oc000(info.value)
    assert _count(emulator_conninfo, table) == 2
    assert _balance(emulator_conninfo, table, 3) == 100


def _count(conninfo: ConnInfo, table: str) -> int:
    with _connect(conninfo, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def test_autocommit_writes_go_through_the_same_rules(
    pair: tuple[Any, Any], table: str, emulator_conninfo: ConnInfo
) -> None:
    a, _ = pair
    with _connect(emulator_conninfo, autocommit=True) as auto:
        a.execute(f"UPDATE {table} SET balance = 1 WHERE id = 1")
        auto.execute(f"UPDATE {table} SET balance = 2 WHERE id = 1")  # commits first: wins
        with pytest.raises(psycopg.errors.SerializationFailure):
            a.commit()
        assert _balance(emulator_conninfo, table, 1) == 2
        a.execute(f"UPDATE {table} SET balance = 3 WHERE id = 1")  # the retry
        a.commit()
    assert _balance(emulator_conninfo, table, 1) == 3


def test_schema_change_fails_other_sessions_once_with_oc001(
    pair: tuple[Any, Any], table: str, emulator_conninfo: ConnInfo
) -> None:
    a, b = pair
    with _connect(emulator_conninfo, autocommit=True) as ddl:
        ddl.execute(f"SELECT 1 FROM {table}")
        ddl.execute(f"ALTER TABLE {table} ADD COLUMN note text")
        ddl.execute(f"SELECT note FROM {table}")  # its own change: no conflict for itself
    assert b.execute("SELECT 1").fetchone() == (1,)  # reads no relation: not affected
    with pytest.raises(psycopg.errors.SerializationFailure) as info:
        b.execute(f"INSERT INTO {table} VALUES (9, 9)")
    assert info.value.sqlstate == "40001" and "(OC001)" in str(info.value)
    b.rollback()
    b.execute(f"INSERT INTO {table} VALUES (9, 9)")  # the retry succeeds
    b.commit()
    with pytest.raises(psycopg.errors.SerializationFailure):
        a.execute(f"SELECT note FROM {table}")
    a.rollback()
    assert a.execute(f"SELECT note FROM {table} WHERE id = 9").fetchone() == (None,)
    a.rollback()


def test_fk_insert_conflicts_with_delete_of_the_referenced_row(
    emulator_conninfo: ConnInfo,
) -> None:
    parent, child = f"p_{uuid.uuid4().hex[:8]}", f"c_{uuid.uuid4().hex[:8]}"
    with _connect(emulator_conninfo, autocommit=True) as conn:
        for sql in (
            f"CREATE TABLE {parent} (id int PRIMARY KEY, name text)",
            f"CREATE TABLE {child} (id int PRIMARY KEY, parent_id int REFERENCES {parent} (id))",
            f"INSERT INTO {parent} VALUES (1, 'a'), (2, 'b')",
        ):
            for _ in range(5):
                try:
                    conn.execute(sql)
                    break
                except psycopg.errors.SerializationFailure:
                    continue
    a, b = _connect(emulator_conninfo), _connect(emulator_conninfo)
    try:
        for conn in (a, b):
            with contextlib.suppress(psycopg.errors.SerializationFailure):
                conn.execute(f"SELECT 1 FROM {parent}, {child} LIMIT 1")
            conn.rollback()
        # FK insert vs delete of the referenced row: conflict, first committer wins.
        a.execute(f"INSERT INTO {child} VALUES (1, 1)")
        assert b.execute(f"DELETE FROM {parent} WHERE id = 1").rowcount == 1  # no hang
        a.commit()
        with pytest.raises(psycopg.errors.SerializationFailure) as info:
            b.commit()
        assert _oc000(info.value)
        # FK insert vs a non-key update of the referenced row: no conflict.
        a.execute(f"INSERT INTO {child} VALUES (2, 2)")
        b.execute(f"UPDATE {parent} SET name = 'renamed' WHERE id = 2")
        b.commit()
        a.commit()
        with _connect(emulator_conninfo, autocommit=True) as check:
            rows = check.execute(f"SELECT id, name FROM {parent} ORDER BY id").fetchall()
            assert rows == [(1, "a"), (2, "renamed")]
            assert check.execute(f"SELECT count(*) FROM {child}").fetchone() == (2,)
    finally:
        a.close()
        b.close()


def test_deferred_returning_answers_from_the_snapshot(pair: tuple[Any, Any], table: str) -> None:
    a, b = pair
    a.execute(f"UPDATE {table} SET balance = 0 WHERE id = 1")
    rows = b.execute(
        f"UPDATE {table} SET balance = 5 WHERE id = 1 RETURNING id, balance"
    ).fetchall()
    assert rows == [(1, 100)]  # no wait; the snapshot's row, typed
    rows = b.execute(f"DELETE FROM {table} WHERE id = %s RETURNING id", (1,)).fetchall()
    assert rows in ([(1,)], [])  # extended protocol: the row, or none if it cannot be rewritten
    a.commit()
    with pytest.raises(psycopg.errors.SerializationFailure):
        b.commit()
