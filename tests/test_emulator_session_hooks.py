"""Statement hooks through the real wire front: refuse, forward, synthesize, after, before_commit.

The hooks here are small test hooks (the real DSQL rules are other modules' hooks); what is under
test is how the session applies them with real psycopg in the simple and extended protocols,
inside and outside transaction blocks, and in pipeline mode, against a real PostgreSQL 16.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors as pge

from dsql_magic.emulator.errors import DsqlError
from dsql_magic.emulator.hooks import CommandResult, Forward, StatementContext, Synthetic
from dsql_magic.emulator.statements import Statement
from tests.fix_wire import WireServer

Start = Callable[..., WireServer]


class Refuse:
    """Refuses TRUNCATE the way DSQL does."""

    async def before(self, stmt: Statement, ctx: StatementContext) -> None:
        if stmt.command == "TRUNCATE":
            raise DsqlError("0A000", "unsupported statement: Truncate")


class Rewrite:
    """Forward and Synthetic replies, one of them built from internal SQL."""

    async def before(self, stmt: Statement, ctx: StatementContext) -> Any:
        if "'forward-me'" in stmt.text:
            return Forward("SELECT 'forwarded'")
        if stmt.text == "SHOW dsql_test_answer":
            return Synthetic(["answer"], [["42"]], "SHOW")
        if stmt.text.startswith("SELECT hook_count"):
            res = await ctx.execute("SELECT count(*) FROM hook_rows WHERE id >= $1", [0])
            return Synthetic(["n", "user"], [[res[0].rows[0][0], ctx.user]], "SELECT 1")
        return None


class Limits:
    """`after`: at most 2 rows per INSERT into hook_limited; `before_commit`: nothing into
    hook_nocommit may commit."""

    async def after(self, stmt: Statement, result: CommandResult, ctx: StatementContext) -> None:
        if "hook_limited" in stmt.text and (result.rows_affected or 0) > 2:
            raise DsqlError("54000", "transaction row limit exceeded")
        if "hook_nocommit" in stmt.text and result.command == "INSERT":
            ctx.txn["nocommit"] = True

    async def before_commit(self, ctx: StatementContext) -> None:
        if ctx.txn.get("nocommit"):
            raise DsqlError("40001", "change conflicts with another transaction (OC000)")


class Events:
    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []

    async def on_connect(self, ctx: StatementContext) -> None:
        self.log.append(("connect", ctx.user))

    async def after_end(self, ctx: StatementContext, committed: bool) -> None:
        self.log.append(("end", committed))

    async def on_disconnect(self, ctx: StatementContext) -> None:
        self.log.append(("disconnect", ctx.session_id))


@pytest.fixture
def hooked(wire_server: Start) -> tuple[WireServer, Events]:
    events = Events()
    server = wire_server(hooks=[Refuse(), Rewrite(), Limits(), events])
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        for table in ("hook_rows", "hook_limited", "hook_nocommit"):
            conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (id int PRIMARY KEY)")
            conn.execute(f"DELETE FROM {table}")
    return server, events


def _simple(conn: psycopg.Connection[Any], sql: str) -> psycopg.pq.abc.PGresult:
    """Run ``sql`` with the simple query protocol, whatever psycopg would choose."""
    return conn.pgconn.exec_(sql.encode())


def test_refusal_outside_a_block_leaves_the_session_usable(hooked: Any) -> None:
    server, _ = hooked
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        for params in (None, [1]):  # simple, then extended protocol
            sql = "TRUNCATE hook_rows" if params is None else "TRUNCATE hook_rows -- %s"
            with pytest.raises(pge.FeatureNotSupported) as info:
                conn.execute(sql.replace("%s", "x") if params is None else sql, params)
            assert info.value.diag.message_primary == "unsupported statement: Truncate"
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_refusal_in_a_block_aborts_it_and_commit_answers_rollback(hooked: Any) -> None:
    server, events = hooked
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO hook_rows VALUES (%s)", [1])
        with pytest.raises(pge.FeatureNotSupported):
            conn.execute("TRUNCATE hook_rows")
        with pytest.raises(pge.InFailedSqlTransaction):
            conn.execute("SELECT %s::int", [1])
        with pytest.raises(pge.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        cur = conn.execute("COMMIT")
        assert cur.statusmessage == "ROLLBACK"
        assert conn.execute("SELECT count(*) FROM hook_rows").fetchone() == (0,)
        # the simple protocol the same way
        _simple(conn, "BEGIN")
        _simple(conn, "INSERT INTO hook_rows VALUES (2)")
        res = _simple(conn, "TRUNCATE hook_rows")
        assert res.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"0A000"
        res = _simple(conn, "SELECT 1")
        assert res.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"25P02"
        assert _simple(conn, "COMMIT").command_status == b"ROLLBACK"
        assert conn.execute("SELECT count(*) FROM hook_rows").fetchone() == (0,)
    assert ("end", False) in events.log


def test_forward_and_synthetic_in_both_protocols(hooked: Any) -> None:
    server, _ = hooked
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        assert conn.execute("SELECT 'forward-me'").fetchone() == ("forwarded",)
        assert conn.execute("SELECT 'forward-me', %s", [1]).fetchone() == ("forwarded",)
        cur = conn.execute("SHOW dsql_test_answer")
        assert cur.fetchall() == [("42",)]
        assert cur.description is not None and cur.description[0].name == "answer"
        for prepare in (False, True, True):
            cur = conn.execute("SHOW dsql_test_answer", prepare=prepare)
            assert cur.fetchall() == [("42",)]
            assert cur.statusmessage == "SHOW"
        conn.execute("INSERT INTO hook_rows VALUES (1), (2), (3)")
        assert conn.execute("SELECT hook_count").fetchone() == ("3", "admin")
        assert conn.execute("SELECT hook_count, %s", [1]).fetchone() == ("3", "admin")


def test_after_hook_failure_undoes_an_autocommit_statement(hooked: Any) -> None:
    server, _ = hooked
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        with pytest.raises(pge.ProgramLimitExceeded):
            conn.execute("INSERT INTO hook_limited VALUES (1), (2), (3)")
        with pytest.raises(pge.ProgramLimitExceeded):
            conn.execute("INSERT INTO hook_limited VALUES (%s), (%s), (%s)", [1, 2, 3])
        assert conn.execute("SELECT count(*) FROM hook_limited").fetchone() == (0,)
        conn.execute("INSERT INTO hook_limited VALUES (%s), (%s)", [1, 2])
        assert conn.execute("SELECT count(*) FROM hook_limited").fetchone() == (2,)


def test_after_hook_failure_in_a_block_aborts_it(hooked: Any) -> None:
    server, _ = hooked
    with psycopg.connect(**server.conninfo()) as conn:
        conn.execute("INSERT INTO hook_rows VALUES (10)")
        with pytest.raises(pge.ProgramLimitExceeded):
            conn.execute("INSERT INTO hook_limited VALUES (%s), (%s), (%s)", [4, 5, 6])
        with pytest.raises(pge.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM hook_rows WHERE id = 10").fetchone() == (0,)


def test_before_commit_refusal_rolls_back(hooked: Any) -> None:
    server, events = hooked
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        with pytest.raises(pge.SerializationFailure) as info:
            conn.execute("INSERT INTO hook_nocommit VALUES (%s)", [1])
        assert "(OC000)" in str(info.value)
        with pytest.raises(pge.SerializationFailure):
            _raise(_simple(conn, "INSERT INTO hook_nocommit VALUES (2)"))
        assert conn.execute("SELECT count(*) FROM hook_nocommit").fetchone() == (0,)
    with psycopg.connect(**server.conninfo()) as conn:
        conn.execute("INSERT INTO hook_rows VALUES (20)")
        conn.execute("INSERT INTO hook_nocommit VALUES (%s)", [3])
        with pytest.raises(pge.SerializationFailure):
            conn.commit()
        assert conn.execute("SELECT count(*) FROM hook_rows WHERE id = 20").fetchone() == (0,)
        conn.rollback()
        conn.execute("INSERT INTO hook_rows VALUES (21)")
        conn.commit()
        assert conn.execute("SELECT count(*) FROM hook_rows WHERE id = 21").fetchone() == (1,)
    assert events.log[0] == ("connect", "admin")
    assert ("end", True) in events.log and ("end", False) in events.log


def _raise(res: psycopg.pq.abc.PGresult) -> None:
    if res.status == psycopg.pq.ExecStatus.FATAL_ERROR:
        raise pge.lookup(res.error_field(psycopg.pq.DiagnosticField.SQLSTATE).decode())(
            res.error_message.decode()
        )


def test_pipeline_with_hooks(hooked: Any) -> None:
    server, _ = hooked
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        with conn.pipeline():
            a = conn.execute("INSERT INTO hook_rows VALUES (%s)", [30])
            b = conn.execute("SHOW dsql_test_answer")
            c = conn.execute("SELECT 'forward-me', %s", [1])
            d = conn.execute("SELECT count(*) FROM hook_rows WHERE id = %s", [30])
        assert a.statusmessage == "INSERT 0 1"
        assert b.fetchall() == [("42",)]
        assert c.fetchone() == ("forwarded",)
        assert d.fetchone() == (1,)
        with pytest.raises(pge.FeatureNotSupported), conn.pipeline():
            conn.execute("SELECT %s::int", [1])
            conn.execute("TRUNCATE hook_rows")
            conn.execute("SELECT 2")
        assert conn.execute("SELECT count(*) FROM hook_rows WHERE id = 30").fetchone() == (1,)


def test_snapshot_is_taken_at_begin(hooked: Any) -> None:
    server, _ = hooked
    with (
        psycopg.connect(**server.conninfo(), autocommit=True) as a,
        psycopg.connect(**server.conninfo(), autocommit=True) as b,
    ):
        a.execute("BEGIN")
        b.execute("INSERT INTO hook_rows VALUES (40)")
        assert a.execute("SELECT count(*) FROM hook_rows WHERE id = 40").fetchone() == (0,)
        a.execute("COMMIT")
        assert a.execute("SELECT count(*) FROM hook_rows WHERE id = 40").fetchone() == (1,)


def test_copy_through_hooks(hooked: Any) -> None:
    server, _ = hooked
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn, conn.cursor() as cur:
        with cur.copy("COPY hook_rows (id) FROM STDIN") as copy:
            for i in range(100, 150):
                copy.write_row((i,))
        assert cur.statusmessage == "COPY 50"
        assert conn.execute("SELECT count(*) FROM hook_rows").fetchone() == (50,)
        # `after` sees COPY's row count and refuses it: nothing stays
        with pytest.raises(pge.ProgramLimitExceeded):  # noqa: SIM117
            with cur.copy("COPY hook_limited (id) FROM STDIN") as copy:
                for i in range(3):
                    copy.write_row((i,))
        assert conn.execute("SELECT count(*) FROM hook_limited").fetchone() == (0,)
        with cur.copy("COPY (SELECT 1) TO STDOUT") as copy:
            out = b"".join(bytes(chunk) for chunk in copy)
        assert out == b"1\n"


class Seen:
    """Records what `before` is told about the transaction."""

    def __init__(self) -> None:
        self.log: list[tuple[str, bool]] = []

    async def before(self, stmt: Statement, ctx: StatementContext) -> None:
        self.log.append((stmt.text, ctx.in_transaction))


def test_hooks_see_the_block_end_after_a_failed_transaction(wire_server: Start) -> None:
    seen = Seen()
    server = wire_server(hooks=[seen, Refuse(), Events()])
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        for extended in (False, True):
            _simple(conn, "BEGIN") if not extended else conn.execute("BEGIN", prepare=True)
            with pytest.raises(pge.FeatureNotSupported):
                conn.execute(
                    "TRUNCATE t" if not extended else "TRUNCATE t -- %s", [1] if extended else None
                )
            if extended:
                assert conn.execute("COMMIT", prepare=True).statusmessage == "ROLLBACK"
                conn.execute("SELECT %s::text", ["after-ext"])
            else:
                assert _simple(conn, "COMMIT").command_status == b"ROLLBACK"
                _simple(conn, "SELECT 'after-simple'")
    flags = dict(seen.log)
    assert flags["SELECT 'after-simple'"] is False
    assert flags["SELECT $1::text"] is False
    assert any(text.startswith("TRUNCATE") and inside for text, inside in seen.log)


def test_many_concurrent_clients(hooked: Any) -> None:
    server, _ = hooked
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
                for i in range(20):
                    assert conn.execute("SELECT %s::int * 2", [i]).fetchone() == (i * 2,)
                    assert conn.execute("SHOW dsql_test_answer").fetchone() == ("42",)
                conn.execute("INSERT INTO hook_rows VALUES (%s)", [1000 + n])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM hook_rows WHERE id >= 1000").fetchone() == (32,)


def test_portal_suspended_with_row_limits(hooked: Any) -> None:
    """asyncpg cursors fetch with Execute row limits (PortalSuspended) through `after` hooks."""
    server, _ = hooked

    async def run() -> list[int]:
        ctx = ssl.create_default_context(cafile=str(server.env.ca_cert))
        conn = await asyncpg.connect(
            host="localhost",
            port=server.port,
            user="admin",
            database="postgres",
            password=server.token(),
            ssl=ctx,
        )
        try:
            got: list[int] = []
            async with conn.transaction():
                cur = await conn.cursor("SELECT g FROM generate_series(1, 10) g")
                got += [r[0] for r in await cur.fetch(4)]
                got += [r[0] for r in await cur.fetch(4)]
                got += [r[0] for r in await cur.fetch(4)]
            return got
        finally:
            await conn.close()

    assert asyncio.run(run()) == list(range(1, 11))


def test_after_refusal_of_an_autocommit_read(wire_server: Start) -> None:
    class RefuseAfter:
        async def after(self, stmt: Statement, result: CommandResult, ctx: Any) -> None:
            if "'refuse-after'" in stmt.text:
                raise DsqlError("53200", "query requires too much memory.")

    server = wire_server(hooks=[RefuseAfter()])
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        for params in ([1], None):  # extended (Execute+Sync in one go), then simple
            sql = "SELECT 'refuse-after', %s" if params else "SELECT 'refuse-after'"
            with pytest.raises(pge.OutOfMemory):
                conn.execute(sql, params)
            assert conn.execute("SELECT %s::int", [5]).fetchone() == (5,)
        with conn.pipeline():
            ok = conn.execute("SELECT %s::int", [6])
        assert ok.fetchone() == (6,)


def test_after_refusal_of_a_read_in_a_block_fails_the_block(wire_server: Start) -> None:
    """A read in BEGIN … goes out with its Sync in one round trip; refused afterwards, the
    block is still failed: later statements get 25P02 and COMMIT answers ROLLBACK."""

    class RefuseAfter:
        async def after(self, stmt: Statement, result: CommandResult, ctx: Any) -> None:
            if "'refuse-after'" in stmt.text:
                raise DsqlError("53200", "query requires too much memory.")

    server = wire_server(hooks=[RefuseAfter()])
    with psycopg.connect(**server.conninfo()) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS after_block (id int PRIMARY KEY)")
        conn.commit()
        conn.execute("INSERT INTO after_block VALUES (%s)", [1])
        assert conn.execute("SELECT 'fine', %s::int", [2]).fetchone() == ("fine", 2)
        with pytest.raises(pge.OutOfMemory):
            conn.execute("SELECT 'refuse-after', %s", [1])
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(pge.InFailedSqlTransaction):
            conn.execute("SELECT %s::int", [3])
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM after_block").fetchone() == (0,)
        conn.execute("DROP TABLE after_block")
        conn.commit()


class Observer:
    """Observes reads (`observe_read`); writes still come to `after`."""

    def __init__(self) -> None:
        self.reads: list[tuple[str, str, float | None]] = []
        self.afters: list[str] = []

    def observe_read(self, stmt: Statement, result: CommandResult, ctx: Any) -> None:
        self.reads.append((stmt.text, result.tag, result.elapsed_ms))

    async def after(self, stmt: Statement, result: CommandResult, ctx: Any) -> None:
        self.afters.append(result.tag)


def test_observed_reads_are_relayed_and_observed_in_every_protocol(wire_server: Start) -> None:
    """With only observers, reads skip `after`: simple Query, a first (Parse) execution, a
    prepared Bind/Describe/Execute/Sync group, a pipeline of groups and a block all answer
    rightly, and each read is observed once with its tag and time; writes reach `after`."""
    observer = Observer()
    server = wire_server(hooks=[observer])
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS observed (id int PRIMARY KEY, v text)")
        conn.execute("DELETE FROM observed")
        conn.execute("INSERT INTO observed SELECT g, 'v' || g FROM generate_series(1, 5) g")
        assert _simple(conn, "SELECT v FROM observed WHERE id = 2").get_value(0, 0) == b"v2"
        query = "SELECT v FROM observed WHERE id = %s"
        got = [conn.execute(query, [i], prepare=True).fetchone() for i in (1, 2, 3, 4, 5)]
        assert got == [("v1",), ("v2",), ("v3",), ("v4",), ("v5",)]
        with conn.pipeline():
            cursors = [conn.execute(query, [i], prepare=True) for i in (5, 4, 3)]
        assert [c.fetchone() for c in cursors] == [("v5",), ("v4",), ("v3",)]
        with conn.transaction():
            assert conn.execute(query, [1], prepare=True).fetchone() == ("v1",)
            conn.execute("UPDATE observed SET v = 'w1' WHERE id = 1")
            assert conn.execute(query, [1], prepare=True).fetchone() == ("w1",)
    reads = [r for r in observer.reads if "observed" in r[0]]
    assert len(reads) == 1 + 5 + 3 + 2
    assert all(
        tag == "SELECT 1" and elapsed is not None and elapsed >= 0 for _, tag, elapsed in reads
    )
    assert "UPDATE 1" in observer.afters and not any(
        a.startswith("SELECT") for a in observer.afters
    )


def test_errors_inside_relayed_read_groups(wire_server: Start) -> None:
    """A prepared read that fails: outside a block the session goes on; inside, PostgreSQL
    fails the block itself (25P02 next, nothing committed); pipelines keep their order."""
    observer = Observer()
    server = wire_server(hooks=[observer])
    query = "SELECT 10 / %s::int"
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        for divisor in (1, 2, 5, 10):
            conn.execute(query, [divisor], prepare=True)
        with pytest.raises(pge.DivisionByZero):
            conn.execute(query, [0], prepare=True)
        assert conn.execute(query, [2], prepare=True).fetchone() == (5,)
        with pytest.raises(pge.DivisionByZero), conn.pipeline():
            first = conn.execute(query, [5], prepare=True)
            conn.execute(query, [0], prepare=True)
        assert first.fetchone() == (2,)
        assert conn.execute(query, [10], prepare=True).fetchone() == (1,)
    with psycopg.connect(**server.conninfo()) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS observed_err (id int PRIMARY KEY)")
        conn.commit()
        conn.execute("INSERT INTO observed_err VALUES (7)")
        for divisor in (1, 2, 5, 10):
            conn.execute(query, [divisor], prepare=True)
        with pytest.raises(pge.DivisionByZero):
            conn.execute(query, [0], prepare=True)
        with pytest.raises(pge.InFailedSqlTransaction):
            conn.execute(query, [1], prepare=True)
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM observed_err").fetchone() == (0,)
        conn.execute("DROP TABLE observed_err")
        conn.commit()
    assert not any(tag.startswith("SELECT") for tag in observer.afters)
