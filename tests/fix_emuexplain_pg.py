"""pytest plugin: a plain PostgreSQL 16 (the emulator's own engine) for the EXPLAIN and DPU tests.

It holds the manual's example tables (``transaction`` without a primary key; ``account`` with
``idx1`` on ``customer_id`` INCLUDE ``balance, status``; ``test_table (id, context)`` with 120
rows of 36-byte width, as in the manual's DPU example), and gives hooks a real
`StatementContext` whose ``execute`` runs on a real backend through psycopg (raw ``$n``
parameters, results turned to text as the session's backend returns them).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import psycopg
import pytest

from dsql_magic.emulator.cluster import BackendAddress, Cluster
from dsql_magic.emulator.engine import Engine
from dsql_magic.emulator.hooks import QueryResult, StatementContext

MANUAL_SCHEMA = """
CREATE TABLE transaction (account_id uuid, transaction_date timestamp, description text,
                          amount numeric);
CREATE TABLE account (id uuid PRIMARY KEY, customer_id uuid, balance numeric,
                      status varchar(20), created_at timestamp);
CREATE INDEX idx1 ON account (customer_id) INCLUDE (balance, status);
CREATE TABLE test_table (id int PRIMARY KEY, context text);
INSERT INTO transaction
  SELECT gen_random_uuid(), timestamp '2024-06-01' + i * interval '1 hour', 'payment ' || i, i
    FROM generate_series(1, 2000) i;
INSERT INTO account
  SELECT gen_random_uuid(),
         CASE WHEN i % 50 = 0 THEN '4b18a761-5870-4d7c-95ce-0a48eca3fceb'::uuid
              ELSE gen_random_uuid() END,
         i, CASE WHEN i % 2 = 0 THEN 'pending' ELSE 'done' END,
         timestamp '2024-12-01' + i * interval '1 hour'
    FROM generate_series(1, 2000) i;
INSERT INTO test_table SELECT i, md5(i::text) FROM generate_series(1, 120) i;
ANALYZE;
"""


@pytest.fixture(scope="session")
def emuexplain_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = Engine(
        tmp_path_factory.mktemp("emuexplain-pg"),
        settings={"autovacuum": "off"},
        remove_on_stop=True,
    )
    engine.start()
    try:
        with psycopg.connect(**engine.connect_kwargs(), autocommit=True) as conn:
            conn.execute(MANUAL_SCHEMA)
        yield engine
    finally:
        engine.stop()


@pytest.fixture
def emuexplain_conn(emuexplain_engine: Engine) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit superuser connection to the example database."""
    with psycopg.connect(**emuexplain_engine.connect_kwargs(), autocommit=True) as conn:
        yield conn


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


@contextlib.asynccontextmanager
async def open_ctx(engine: Engine, session_id: int = 1) -> AsyncIterator[StatementContext]:
    """A StatementContext over a real backend connection (autocommit, like a fresh session),
    belonging to a real `Cluster` (no wire front: hooks only read its meter and catalog version).
    """
    conn = await psycopg.AsyncConnection.connect(**engine.connect_kwargs(), autocommit=True)

    async def execute(sql: str, params: Sequence[object] = ()) -> list[QueryResult]:
        async with psycopg.AsyncRawCursor(conn) as cur:
            await cur.execute(sql, list(params) or None)
            columns = tuple(d.name for d in cur.description or ())
            rows = await cur.fetchall() if cur.description else []
            text_rows = tuple(tuple(_text(v) for v in row) for row in rows)
            return [QueryResult(columns, text_rows, cur.statusmessage or "")]

    cluster = Cluster(
        backend=BackendAddress(engine.socket_dir, engine.port),
        verifier=_NoVerifier(),
        ssl_context=None,
    )
    ctx = StatementContext(session_id=session_id, user="admin", cluster=cluster, executor=execute)
    try:
        yield ctx
    finally:
        await conn.close()


class _NoVerifier:
    def verify(self, token: str, user: str, *, server_names: set[str]) -> object:
        raise AssertionError("these tests open no client connections")
