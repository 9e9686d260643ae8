"""A COMMIT sent in the extended protocol is checked as one sent in a simple Query.

pgjdbc sends COMMIT as Parse/Bind/Execute, and so does psycopg in pipeline mode. The COMMIT-time
checks (the 10 MiB transaction size, optimistic concurrency) must run for it too; they once ran
only for a simple-protocol COMMIT, and such a transaction committed whatever it held.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.fix_emulator import ConnInfo

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(120)]

_VALUE = "x" * 900_000  # twelve of them: 10.8 MB, over DSQL's 10 MiB per transaction


@pytest.fixture
def table(emulator_conninfo: ConnInfo) -> Iterator[str]:
    name = f"extc_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**emulator_conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
        conn.execute(f"INSERT INTO {name} VALUES (0, 'seed')")
    yield name


def _count(conninfo: ConnInfo, table: str) -> int:
    with psycopg.connect(**conninfo(), autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def test_size_limit_at_a_pipelined_commit(emulator_conninfo: ConnInfo, table: str) -> None:
    with psycopg.connect(**emulator_conninfo()) as conn:
        with pytest.raises(psycopg.Error) as info, conn.pipeline():
            for i in range(1, 13):
                conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (i, _VALUE))
            conn.commit()
        assert info.value.sqlstate == "54000"
        assert "transaction size limit 10mb exceeded" in str(info.value)
        # Rolled back, and the connection goes on.
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        conn.execute(f"INSERT INTO {table} VALUES (100, 'after')")
        conn.commit()
    assert _count(emulator_conninfo, table) == 2  # the seed and 'after'


def test_a_pipelined_commit_within_the_limits_commits(
    emulator_conninfo: ConnInfo, table: str
) -> None:
    with psycopg.connect(**emulator_conninfo()) as conn:
        with conn.pipeline():
            for i in range(1, 4):
                conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (i, _VALUE))
            conn.commit()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert _count(emulator_conninfo, table) == 4


def test_occ_conflict_at_a_pipelined_commit(emulator_conninfo: ConnInfo, table: str) -> None:
    a: Any = psycopg.connect(**emulator_conninfo())
    b: Any = psycopg.connect(**emulator_conninfo())
    try:
        for conn in (a, b):
            conn.execute(f"SELECT 1 FROM {table} LIMIT 1")
            conn.rollback()
        a.execute(f"UPDATE {table} SET v = 'a' WHERE id = 0")
        b.execute(f"UPDATE {table} SET v = 'b' WHERE id = 0")
        a.commit()
        with pytest.raises(psycopg.errors.SerializationFailure) as info, b.pipeline():
            b.commit()
        assert "(OC000)" in str(info.value)
        assert b.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        a.close()
        b.close()
    with psycopg.connect(**emulator_conninfo(), autocommit=True) as conn:
        row = conn.execute(f"SELECT v FROM {table} WHERE id = 0").fetchone()
    assert row == ("a",)
