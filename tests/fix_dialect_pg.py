"""pytest plugin: the emulator's own embedded PostgreSQL 16, for the dialect tests.

The dialect tests prove that every statement the rules accept really runs on PostgreSQL 16 (an
emulator that refuses too much is as wrong as one that refuses too little). They use the
emulator's `Engine` (so the ``admin`` role and ``public`` ownership are DSQL's), one per test
session, under pytest's tmp, stopped at session end. `dialect_conn` gives an ``admin``
connection inside a transaction over the fixture schema, rolled back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from dsql_magic.emulator.engine import Engine

# The schema the rules' `accepted` examples refer to (see dialect/rules.yaml).
FIXTURE_SCHEMA = (
    "CREATE TABLE t (id int PRIMARY KEY, a text, b int, c numeric(10, 2))",
    "CREATE TABLE u (id int PRIMARY KEY, a text)",
    "ALTER TABLE t ADD CONSTRAINT b_nonneg CHECK (b >= 0) NOT VALID",
    "CREATE SEQUENCE seq CACHE 1",
    "CREATE SCHEMA other",
)


@pytest.fixture(scope="session")
def dialect_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A started embedded PostgreSQL 16 with the fixture schema, owned by ``admin``."""
    engine = Engine(tmp_path_factory.mktemp("dialect_pg"), remove_on_stop=True)
    engine.start()
    try:
        with psycopg.connect(**engine.connect_kwargs("admin"), autocommit=True) as conn:
            for sql in FIXTURE_SCHEMA:
                conn.execute(sql)
        yield engine
    finally:
        engine.stop()


@pytest.fixture
def dialect_conn(dialect_engine: Engine) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An ``admin`` connection in an open transaction that is rolled back after the test."""
    conn = psycopg.connect(**dialect_engine.connect_kwargs("admin"), connect_timeout=10)
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()
