"""A prepared statement executed again is checked again, as each execution is on DSQL.

psycopg prepares a query after five runs (and at once with ``prepare=True``); JDBC and asyncpg
prepare too. A later execution is only Bind/Execute, with no Parse. DSQL's transaction rules,
OCC's bookkeeping and OC001 depend on when a statement runs, not on its text, so the emulator
runs the statement hooks again at such an Execute. Before it did, a prepared INSERT after a DDL
in the same transaction committed, and a prepared read never saw OC001.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from dsql_magic.emulator.api import Emulator
from tests.fix_emulator import ConnInfo

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(120)]


@pytest.fixture
def table(emulator_conninfo: ConnInfo) -> Iterator[str]:
    name = f"prep_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**emulator_conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute(f"INSERT INTO {name} VALUES (1, 0)")
    yield name


def test_prepared_dml_after_ddl_in_one_transaction_is_refused(
    emulator_conninfo: ConnInfo, table: str
) -> None:
    insert = f"INSERT INTO {table} VALUES (%s, 0)"
    with psycopg.connect(**emulator_conninfo()) as conn:
        conn.execute(insert, (2,), prepare=True)  # prepared and run once
        conn.commit()
        conn.execute(f"CREATE TABLE {table}_x (id int PRIMARY KEY)")
        with pytest.raises(psycopg.errors.FeatureNotSupported) as info:
            conn.execute(insert, (3,), prepare=True)  # Bind/Execute only
        assert "ddl and dml are not supported in the same transaction" in str(info.value)
        conn.rollback()
        conn.execute(insert, (4,), prepare=True)  # the next transaction is fine
        conn.commit()
        ids = [r[0] for r in conn.execute(f"SELECT id FROM {table} ORDER BY id")]
        assert ids == [1, 2, 4]
        conn.rollback()


def test_prepared_read_sees_oc001_after_another_sessions_ddl(
    emulator_conninfo: ConnInfo, table: str
) -> None:
    read = f"SELECT v FROM {table} WHERE id = %s"
    with (
        psycopg.connect(**emulator_conninfo(), autocommit=True) as reader,
        psycopg.connect(**emulator_conninfo(), autocommit=True) as other,
    ):
        assert reader.execute(read, (1,), prepare=True).fetchone() == (0,)
        other.execute(f"CREATE TABLE {table}_y (id int PRIMARY KEY)")
        with pytest.raises(psycopg.errors.SerializationFailure) as info:
            reader.execute(read, (1,), prepare=True).fetchone()
        assert "(OC001)" in str(info.value)
        # Once per catalog change, as on DSQL: the retry succeeds.
        assert reader.execute(read, (1,), prepare=True).fetchone() == (0,)


def test_prepared_updates_that_conflict_fail_at_commit(
    emulator_conninfo: ConnInfo, table: str
) -> None:
    update = f"UPDATE {table} SET v = v + %s WHERE id = 1"
    with (
        psycopg.connect(**emulator_conninfo()) as a,
        psycopg.connect(**emulator_conninfo()) as b,
    ):
        for conn in (a, b):  # prepared on both, in an earlier transaction
            conn.execute(update, (0,), prepare=True)
            conn.commit()
        a.execute(update, (1,), prepare=True)
        b.execute(update, (10,), prepare=True)
        a.commit()
        with pytest.raises(psycopg.errors.SerializationFailure) as info:
            b.commit()
        assert "(OC000)" in str(info.value)
    with psycopg.connect(**emulator_conninfo(), autocommit=True) as conn:
        assert conn.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone() == (1,)


def test_asyncpg_prepared_statements(emulator: Emulator) -> None:
    """asyncpg prepares (Parse, Sync) and executes later (Bind, Execute, Sync): the Parse's
    check covers the first execution, so a prepared DDL run once in a block counts once."""
    import asyncpg

    info = emulator.info
    table = f"prep_{uuid.uuid4().hex[:8]}"

    async def run() -> list[int]:
        conn = await asyncpg.connect(
            host="localhost",  # asyncpg has no hostaddr; the certificate and token name it
            port=info.port,
            user="admin",
            database="postgres",
            password=emulator.token(hostname="localhost"),
            ssl=ssl.create_default_context(cafile=str(info.ca_cert)),
        )
        try:
            await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
            insert = await conn.prepare(f"INSERT INTO {table} VALUES ($1)")
            await insert.fetch(1)
            ddl = await conn.prepare(f"CREATE TABLE {table}_a (id int PRIMARY KEY)")
            async with conn.transaction():
                await ddl.fetch()  # one DDL: allowed
            with pytest.raises(asyncpg.exceptions.FeatureNotSupportedError, match="ddl and dml"):
                async with conn.transaction():
                    await conn.execute(f"CREATE TABLE {table}_b (id int PRIMARY KEY)")
                    await insert.fetch(2)
            await insert.fetch(3)
            return [r[0] for r in await conn.fetch(f"SELECT id FROM {table} ORDER BY id")]
        finally:
            await conn.close()

    assert asyncio.run(run()) == [1, 3]


def test_a_statement_prepared_and_run_in_a_block_is_checked_once(
    emulator_conninfo: ConnInfo, table: str
) -> None:
    """Parse, Bind and Execute of a new prepared DDL in one block: one DDL, not two."""
    with psycopg.connect(**emulator_conninfo()) as conn:
        conn.execute(f"CREATE TABLE {table}_once (id int PRIMARY KEY)", prepare=True)
        conn.commit()
        cur = conn.execute(f"SELECT count(*) FROM {table}_once")
        assert cur.fetchone() == (0,)
        conn.rollback()
