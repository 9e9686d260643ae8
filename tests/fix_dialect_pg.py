"""pytest plugin: the emulator's own embedded PostgreSQL 16, for the dialect tests.

The dialect tests prove that every statement the rules accept really runs on PostgreSQL 16 (an
emulator that refuses too much is as wrong as one that refuses too little). They use the
emulator's `Engine` (so the ``admin`` role and ``public`` ownership are DSQL's), one per test
session, under pytest's tmp, stopped at session end. `dialect_conn` gives an ``admin``
connection inside a transaction over the fixture schema, rolled back afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import psycopg
import pytest
from psycopg.types.string import TextLoader

from dsql_magic.emulator.cluster import BackendAddress, Cluster
from dsql_magic.emulator.engine import Engine
from dsql_magic.emulator.errors import DsqlError
from dsql_magic.emulator.hooks import (
    CommandResult,
    Forward,
    QueryResult,
    StatementContext,
    Synthetic,
    bound_methods,
)
from dsql_magic.emulator.statements import split_statements

# The schema the rules' `accepted` examples refer to (see dialect/rules.yaml).
FIXTURE_SCHEMA = (
    "CREATE TABLE t (id int PRIMARY KEY, a text, b int, c numeric(10, 2))",
    "CREATE TABLE u (id int PRIMARY KEY, a text)",
    "ALTER TABLE t ADD CONSTRAINT b_nonneg CHECK (b >= 0) NOT VALID",
    "CREATE SEQUENCE seq CACHE 1",
    "CREATE SCHEMA other",
    "CREATE VIEW v AS SELECT * FROM u",
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


# --------------------------------------------------------------------------- a hook-driving session
#
# Until the end-to-end emulator fixture is used, the hook tests drive the hooks the way
# emulator/session.py does (docs/internals.md, "Transactions, as the hooks see them"): explicit
# BEGIN blocks, autocommit writes wrapped in an internal transaction, before_commit at COMMIT,
# a refusal in a block aborting it (25P02 afterwards, COMMIT answers ROLLBACK). SQL runs on the
# real PostgreSQL 16 of `dialect_engine`.

_TEXT_TYPES = (
    "bool", "int2", "int4", "int8", "oid", "float4", "float8", "numeric", "name", "text",
    "varchar", "bpchar", "timestamptz", "timestamp", "date", "uuid", "json", "jsonb", "regclass",
)  # fmt: skip


class HookSession:
    """One client session on PostgreSQL with DSQL's hooks in front (a test double of session.py)."""

    def __init__(self, conn: Any, hooks: list[object], cluster: Any, user: str) -> None:
        self.conn = conn
        self.hooks = hooks
        self.explicit = False
        self.failed = False
        self.last_rows: list[tuple[str | None, ...]] = []
        self.ctx = StatementContext(
            session_id=1, user=user, cluster=cluster, executor=self._internal
        )

    async def _internal(self, sql: str, params: Sequence[object] = ()) -> list[QueryResult]:
        out: list[QueryResult] = []
        async with psycopg.AsyncRawCursor(self.conn) as cur:
            try:
                await cur.execute(sql.encode() if not params else sql, params or None)
            except psycopg.Error as exc:
                raise DsqlError(
                    exc.sqlstate or "XX000", exc.diag.message_primary or str(exc)
                ) from exc
            while True:
                cols = tuple(d.name for d in cur.description or ())
                rows = (
                    tuple(
                        tuple(None if v is None else str(v) for v in row)
                        for row in await cur.fetchall()
                    )
                    if cur.description
                    else ()
                )
                out.append(QueryResult(cols, rows, cur.statusmessage or ""))
                if not cur.nextset():
                    break
        return out

    async def _call(self, name: str, *args: object) -> Any:
        for method in bound_methods(self.hooks, name):
            reply = await method(*args)
            if name == "before" and reply is not None:
                return reply
        return None

    async def connect(self) -> None:
        await self._call("on_connect", self.ctx)

    async def _end(self, committed: bool) -> None:
        self.explicit = False
        self.failed = False
        self.ctx.in_transaction = False
        await self._call("after_end", self.ctx, committed)
        self.ctx.txn = {}

    async def run(self, sql: str) -> str:
        """Run one statement as a client would; returns the command tag or raises DsqlError."""
        (stmt,) = split_statements(sql)
        tkind = stmt.transaction_kind
        if self.failed:
            if tkind in ("TRANS_STMT_COMMIT", "TRANS_STMT_ROLLBACK"):
                await self._internal("ROLLBACK")
                await self._end(False)
                return "ROLLBACK"
            raise DsqlError(
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block",
            )
        if tkind == "TRANS_STMT_COMMIT" and self.explicit:
            try:
                await self._call("before_commit", self.ctx)
            except DsqlError:
                await self._internal("ROLLBACK")
                await self._end(False)
                raise
        implicit = not self.explicit and stmt.kind.value in ("dml", "ddl", "iam")
        if implicit:
            self.ctx.txn = {}
            await self._internal("BEGIN ISOLATION LEVEL REPEATABLE READ")
        try:
            reply = await self._call("before", stmt, self.ctx)
            if isinstance(reply, Synthetic):
                tag = reply.tag
                self.last_rows = [
                    tuple(None if v is None else str(v) for v in r) for r in reply.rows
                ]
            else:
                text = reply.sql if isinstance(reply, Forward) else stmt.pg_text
                if tkind in ("TRANS_STMT_BEGIN", "TRANS_STMT_START"):
                    text = "BEGIN ISOLATION LEVEL REPEATABLE READ"
                result = (await self._internal(text))[-1]
                tag, self.last_rows = result.tag, list(result.rows)
                await self._call("after", stmt, CommandResult(tag), self.ctx)
        except DsqlError:
            if implicit:
                await self._internal("ROLLBACK")
                await self._end(False)
            elif self.explicit:
                self.failed = True
            raise
        if tkind in ("TRANS_STMT_BEGIN", "TRANS_STMT_START"):
            self.explicit = True
            self.ctx.in_transaction = True
            self.ctx.txn = {}
        elif tkind in ("TRANS_STMT_COMMIT", "TRANS_STMT_ROLLBACK"):
            await self._end(tag == "COMMIT")
        elif implicit:
            try:
                await self._call("before_commit", self.ctx)
            except DsqlError:
                await self._internal("ROLLBACK")
                await self._end(False)
                raise
            await self._internal("COMMIT")
            await self._end(True)
        return tag

    async def rows(self, sql: str) -> list[tuple[str | None, ...]]:
        """Rows of a query run through the hooks' checks (read-only statements)."""
        await self.run(sql)
        return self.last_rows


@contextlib.asynccontextmanager
async def hook_session(
    engine: Engine, hooks: list[object], user: str = "admin", *, identity: object = None
) -> AsyncIterator[HookSession]:
    """A HookSession for ``user`` on ``engine`` (autocommit connection, closed afterwards)."""
    cluster = Cluster(
        backend=BackendAddress(engine.socket_dir, engine.port),
        verifier=_NoVerifier(),
        ssl_context=None,
    )
    conn = await psycopg.AsyncConnection.connect(
        **engine.connect_kwargs(user), autocommit=True, connect_timeout=10
    )
    for name in _TEXT_TYPES:
        conn.adapters.register_loader(name, TextLoader)
    try:
        session = HookSession(conn, hooks, cluster, user)
        if identity is not None:
            session.ctx.session["iam_identity"] = identity
        await session.connect()
        yield session
    finally:
        await conn.close()


class _NoVerifier:
    def verify(self, token: str, user: str, *, server_names: set[str]) -> object:
        raise AssertionError("no token verification in hook tests")
