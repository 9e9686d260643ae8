"""OCC retry on injected SQLSTATE 40001, through a real shell on PostgreSQL 16.

Until the emulator's conflict injection is used here, conflicts are injected by PL/pgSQL raising
``SQLSTATE '40001'`` with DSQL's message. A sequence counts attempts (sequences are not rolled
back), so "fail the first N times" is deterministic. A deferred constraint trigger makes the
failure happen at COMMIT, where DSQL reports write conflicts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dsql_magic.errors import ConflictError
from dsql_magic.execution import RetryPolicy
from tests.fix_pg import PgServer

SETUP = """
CREATE OR REPLACE FUNCTION occ_fail(seq regclass, times int, code text DEFAULT 'OC000')
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE n bigint := nextval(seq);
BEGIN
  IF n <= times THEN
    IF code = 'OC001' THEN
      RAISE EXCEPTION 'schema has been updated by another transaction, please retry: (OC001)'
        USING ERRCODE = '40001';
    END IF;
    RAISE EXCEPTION 'change conflicts with another transaction (OC000)' USING ERRCODE = '40001';
  END IF;
  RETURN n;
END $$;
CREATE OR REPLACE FUNCTION occ_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM occ_fail(NEW.seq::regclass, NEW.times);
  RETURN NULL;
END $$;
"""


@pytest.fixture
def occ(connected: PgServer, magic: Any, dsql: Any, table: str) -> Iterator[str]:
    """Conflict helpers installed; fast backoff; a fresh attempt counter named like the table."""
    dsql.backoff_base = 0.001
    magic(SETUP)
    seq = f"{table}_seq"
    magic(
        f"""
        CREATE SEQUENCE {seq};
        CREATE TABLE {table} (id int, seq text, times int);
        CREATE CONSTRAINT TRIGGER occ AFTER INSERT ON {table} DEFERRABLE INITIALLY DEFERRED
          FOR EACH ROW EXECUTE FUNCTION occ_at_commit();
        """
    )
    yield seq
    magic(f"DROP TABLE {table}; DROP SEQUENCE {seq}")


def test_single_statement_retried(occ: str, magic: Any) -> None:
    df = magic(f"SELECT occ_fail('{occ}', 2) AS attempt")
    assert df["attempt"][0] == 3
    assert "succeeded after 2 retries (OCC conflict OC000)" in repr(df)


def test_oc001_retried_too(occ: str, magic: Any) -> None:
    df = magic(f"SELECT occ_fail('{occ}', 1, 'OC001') AS attempt")
    assert df["attempt"][0] == 2 and "OC001" in repr(df)


def test_whole_transaction_rerun_from_begin(occ: str, magic: Any, table: str) -> None:
    out = magic(
        f"""
        BEGIN;
        INSERT INTO {table} VALUES (1, '{occ}', 2);
        INSERT INTO {table} VALUES (2, '{occ}', 0);
        COMMIT;
        """
    )
    assert "succeeded after 2 retries" in repr(out)
    ids = magic(f"SELECT id FROM {table} ORDER BY id")["id"].tolist()
    assert ids == [1, 2]  # each row exactly once: failed attempts left nothing behind


def test_not_retried_when_earlier_statements_committed(occ: str, magic: Any, table: str) -> None:
    with pytest.raises(ConflictError) as info:
        magic(f"INSERT INTO {table} VALUES (1, '{occ}', 0); SELECT occ_fail('{occ}', 5)")
    err = info.value
    assert err.sqlstate == "40001" and err.code == "OC000" and err.statement == 2
    assert "not retried" in (err.note or "") and "already committed" in (err.note or "")
    assert magic(f"SELECT count(*) AS n FROM {table}")["n"][0] == 1  # not repeated


def test_not_retried_inside_transaction_from_earlier_cell(occ: str, magic: Any) -> None:
    magic("BEGIN")
    with pytest.raises(ConflictError) as info:
        magic(f"SELECT occ_fail('{occ}', 1)")
    assert "earlier cell" in (info.value.note or "")
    magic("ROLLBACK")


def test_no_retry_flag_and_autoretry_off(occ: str, magic: Any, dsql: Any) -> None:
    with pytest.raises(ConflictError) as info:
        magic(f"SELECT occ_fail('{occ}', 1)", line="--no-retry")
    assert "retries are off" in (info.value.note or "")
    dsql.autoretry = False
    with pytest.raises(ConflictError):
        magic(f"SELECT occ_fail('{occ}', 2)")


def test_gives_up_after_max_retries(occ: str, magic: Any, dsql: Any) -> None:
    dsql.max_retries = 2
    with pytest.raises(ConflictError) as info:
        magic(f"SELECT occ_fail('{occ}', 10)")
    assert "gave up after 2 retries" in (info.value.note or "")
    assert magic(f"SELECT nextval('{occ}') AS n")["n"][0] == 4  # 1 try + 2 retries, then this


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(base=0.01, cap=0.05)
    lows = [policy.delay(n, rng=lambda: 0.0) for n in range(5)]
    highs = [policy.delay(n, rng=lambda: 1.0) for n in range(5)]
    assert lows == [0.005, 0.01, 0.02, 0.025, 0.025]
    assert highs == [0.01, 0.02, 0.04, 0.05, 0.05]
