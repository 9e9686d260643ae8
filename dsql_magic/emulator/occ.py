"""Optimistic concurrency as Aurora DSQL does it, on top of PostgreSQL's row locks.

Design note
-----------
DSQL never makes a transaction wait: the first transaction to COMMIT wins, and a transaction
whose writes (or ``FOR UPDATE`` / ``FOR KEY SHARE`` reads) meet a row changed by a concurrent
transaction fails *at its COMMIT* with 40001 ``change conflicts with another transaction
(OC000)``. PostgreSQL at REPEATABLE READ has the right snapshots but the wrong conflict rule: the
second writer of a row blocks until the first ends (two connections in one notebook thread would
hang forever), then fails at the statement.

The session guards every writing statement for this hook (`guard`): the statement runs behind an
internal savepoint with a short ``lock_timeout`` (`LOCK_TIMEOUT_MS`, set per connection), and its
answer is held back until PostgreSQL is done with it. Then:

- no conflict: the answer goes to the client as it is;
- ``40001`` at the statement means the row was changed by a transaction that committed after our
  snapshot, so we have lost already: the statement is undone, the client gets a plausible answer
  (below) and the transaction is marked lost; its COMMIT fails with OC000;
- ``55P03`` (lock timeout) means another transaction still open has written the row: nobody has
  committed yet, so nobody has lost yet. The statement is undone and *deferred*: the client gets
  a plausible answer and the transaction goes on. At COMMIT the deferred statements are replayed
  in order, with the client's own parameters (the snapshot is unchanged):
  * the other transaction committed meanwhile → the replay meets 40001 → OC000 (it won);
  * it rolled back → the replay succeeds → we commit with the statement's real effect;
  * it is still open → we are the first committer and should win. If the holder is idle in its
    transaction, its backend transaction is rolled back and a fresh one begun in its place (its
    session stays usable), it is marked lost (its own COMMIT will fail with OC000), and our
    replay goes through. If it is busy running a statement, we cannot take its transaction
    away safely, and we fail with OC000 instead (listed as a difference in docs/emulator.md).
- DDL that meets a lock (a table in use by an open transaction) fails at once with OC001
  instead of waiting.

A plausible answer for a deferred statement: ``UPDATE``/``DELETE`` report the number of rows their
WHERE matches in the snapshot (counted with the statement's own parameters; 1 if that cannot be
evaluated); ``INSERT … VALUES`` the number of rows listed; ``SELECT … FOR UPDATE`` returns its rows
as read from the snapshot without locking (PostgreSQL runs it, so types and formats are right);
``RETURNING`` lists of deferred statements are read from the snapshot (`_returning_sql`).

Foreign keys: PostgreSQL's own FK checks take ``FOR KEY SHARE`` locks on the referenced row, so a
delete of a row another open transaction's insert references meets a lock (deferred, decided at
COMMIT), while a non-key update of it does not (``FOR NO KEY UPDATE`` and ``KEY SHARE`` coexist):
DSQL's observed behaviour, for free.

Conflict injection (`injection.Injector`) adds OC000 at COMMIT for chosen writers; the
``SELECT sys.inject_conflicts(rate [, tables [, seed]])`` call is answered here.

This module must not import the server or session; it works through the hook API only.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import postgast

from .errors import DsqlError
from .hooks import BoundStatement, Forward, Reply, StatementContext, Synthetic
from .injection import InjectionSettings, InjectionSpecError, Injector, make_settings, parse_spec
from .schema_version import schema_conflict
from .statements import Statement, StatementKind

log = logging.getLogger(__name__)

pb: Any = importlib.import_module("postgast.pg_query_pb2")

LOCK_TIMEOUT_MS = 25
SERIALIZATION_FAILURE = "40001"
LOCK_NOT_AVAILABLE = "55P03"
UNIQUE_VIOLATION = "23505"
_LOST = "occ_lost"
_DEFERRED = "occ_deferred"
_TABLES = "occ_tables"
_PID = "occ_backend_pid"
_GEN = "occ_txn_number"  # how many transactions this session has ended
_MAX_OUTCOMES = 100_000
BOOL_OID = 16

# How long a replay at COMMIT may wait for a holder we are taking the row from.
_REPLAY_TIMEOUT_MS = 1000
QUERY_CANCELED = "57014"
_PROBE_MS = 60  # how long a probe waits for a lock while we look at who holds it
_LOST_STATES = frozenset(
    {SERIALIZATION_FAILURE, LOCK_NOT_AVAILABLE, UNIQUE_VIOLATION, QUERY_CANCELED}
)


@dataclass(frozen=True)
class _Deferred:
    """A statement undone after a lock wait, and who held the rows (pid, transaction number)."""

    bound: BoundStatement
    holders: list[tuple[int, int]]


def write_conflict() -> DsqlError:
    """OC000 as DSQL words it (observed; the manual says ``mutation conflicts …``)."""
    return DsqlError(SERIALIZATION_FAILURE, "change conflicts with another transaction (OC000)")


def _injection_from_config(config: Any) -> InjectionSettings:
    conflicts = getattr(config, "conflicts", None)
    if conflicts is None:
        return InjectionSettings()
    if isinstance(conflicts, str):
        return parse_spec(conflicts)
    rate = float(getattr(conflicts, "rate", 0.0) or 0.0)
    tables = tuple(getattr(conflicts, "tables", ()) or ())
    if tables and rate == 0.0:
        rate = 1.0  # tables named without a rate: every writer of them
    return make_settings(rate, tables, getattr(conflicts, "seed", None))


def _target_table(stmt: Statement) -> str | None:
    inner = stmt.inner
    relation = getattr(inner, "relation", None) if inner is not None else None
    if relation is None or not relation.relname:
        return None
    return f"{relation.schemaname}.{relation.relname}" if relation.schemaname else relation.relname


def _strip_locking(sql: str) -> str | None:
    """The same query without FOR UPDATE / FOR KEY SHARE (None if it cannot be rewritten)."""
    try:
        tree = postgast.parse(sql)
    except postgast.PgQueryError:
        return None
    for select in postgast.find_nodes(tree, pb.SelectStmt):
        del select.locking_clause[:]
    return str(postgast.deparse(tree))


def _dml(sql: str, kinds: tuple[str, ...]) -> tuple[Any, str, Any] | None:
    """(parse tree, node kind, typed node) of a DML statement of one of ``kinds`` without WITH."""
    try:
        tree = postgast.parse(sql)
    except postgast.PgQueryError:
        return None
    node = tree.stmts[0].stmt
    kind = node.WhichOneof("node")
    if kind not in kinds:
        return None
    inner = getattr(node, kind)
    return None if inner.HasField("with_clause") else (tree, kind, inner)


def _select_rows_of(select: Any, kind: str, inner: Any) -> None:
    """Make ``select`` read the rows an UPDATE/DELETE matches: its table, FROM/USING and WHERE."""
    del select.from_clause[:]
    select.from_clause.add().range_var.CopyFrom(inner.relation)
    for item in inner.from_clause if kind == "update_stmt" else inner.using_clause:
        select.from_clause.add().CopyFrom(item)
    if inner.HasField("where_clause"):
        select.where_clause.CopyFrom(inner.where_clause)


def _count_sql(sql: str) -> str | None:
    """``SELECT count(*)`` of the rows an UPDATE/DELETE's WHERE matches (same parameters)."""
    found = _dml(sql, ("update_stmt", "delete_stmt"))
    if found is None:
        return None
    _, kind, inner = found
    out = postgast.parse("SELECT count(*) FROM x")
    _select_rows_of(out.stmts[0].stmt.select_stmt, kind, inner)
    return str(postgast.deparse(out))


def _returning_sql(sql: str) -> str | None:
    """For a deferred DML with RETURNING: its RETURNING list read from the snapshot.

    ``UPDATE``/``DELETE``: the rows their WHERE matches, as they are in the snapshot (a DELETE
    returns exactly those; an UPDATE the values before its change). ``INSERT``: no rows, with
    the right columns. None if the statement has no RETURNING or cannot be rewritten.
    """
    found = _dml(sql, ("update_stmt", "delete_stmt", "insert_stmt"))
    if found is None:
        return None
    tree, kind, inner = found
    returning = list(inner.returning_clause.exprs)
    if not returning:
        return None
    out = postgast.parse("SELECT 1 FROM x")
    select = out.stmts[0].stmt.select_stmt
    del select.target_list[:]
    for item in returning:
        select.target_list.add().CopyFrom(item)
    if kind == "insert_stmt":
        del select.from_clause[:]
        select.from_clause.add().range_var.CopyFrom(inner.relation)
        select.where_clause.CopyFrom(
            postgast.parse("SELECT WHERE false").stmts[0].stmt.select_stmt.where_clause
        )
    else:
        _select_rows_of(select, kind, inner)
    if _params(out) != _params(tree):
        return None  # a parameter would be left without a type: not worth the risk
    return str(postgast.deparse(out))


def _params(tree: Any) -> set[int]:
    return {int(p.number) for p in postgast.find_nodes(tree, pb.ParamRef)}


def _values_count(stmt: Statement) -> int:
    inner = stmt.inner
    select = getattr(inner, "select_stmt", None)
    if select is not None and select.HasField("select_stmt"):
        return max(1, len(select.select_stmt.values_lists))
    return 1


def _inject_call(stmt: Statement) -> Any | None:
    """The ``sys.inject_conflicts(...)`` call if this is ``SELECT sys.inject_conflicts(...)``."""
    if stmt.node_name != "select_stmt" or stmt.inner is None:
        return None
    targets = stmt.inner.target_list
    if len(targets) != 1 or len(stmt.inner.from_clause) != 0:
        return None
    val = targets[0].res_target.val
    if val.WhichOneof("node") != "func_call":
        return None
    name = [n.string.sval.lower() for n in val.func_call.funcname]
    return val.func_call if name == ["sys", "inject_conflicts"] else None


def _const(node: Any) -> object:
    """A constant argument: number, string or NULL (anything else is refused)."""
    kind = node.WhichOneof("node")
    if kind == "type_cast":
        return _const(node.type_cast.arg)
    if kind != "a_const":
        raise InjectionSpecError("sys.inject_conflicts takes constants only")
    const = node.a_const
    if const.isnull:
        return None
    which = const.WhichOneof("val")
    if which == "ival":
        return int(const.ival.ival)
    if which == "fval":
        return float(const.fval.fval)
    if which == "sval":
        return str(const.sval.sval)
    raise InjectionSpecError("sys.inject_conflicts: unexpected argument")


class OccHook:
    """DSQL's optimistic concurrency (see the module's design note)."""

    def __init__(self, injection: InjectionSettings | None = None) -> None:
        self.injector = Injector(injection)
        self._sessions: dict[int, StatementContext] = {}  # backend pid -> its session
        self._inspector_conn: Any = None
        # (backend pid, transaction number) -> committed?, for transactions that have ended
        self._outcomes: dict[tuple[int, int], bool] = {}

    # --- session lifecycle ----------------------------------------------------------------

    async def on_connect(self, ctx: StatementContext) -> None:
        results = await ctx.execute(
            f"SET lock_timeout = '{LOCK_TIMEOUT_MS}ms'; SELECT pg_backend_pid()"
        )
        pid = int(results[-1].rows[0][0] or 0)
        ctx.session[_PID] = pid
        self._sessions[pid] = ctx

    async def on_disconnect(self, ctx: StatementContext) -> None:
        self._sessions.pop(int(ctx.session.get(_PID, 0)), None)

    # --- statements ---------------------------------------------------------------------------

    def guard(self, stmt: Statement) -> bool:
        if stmt.node_name == "copy_stmt" or stmt.is_async:
            return False  # COPY streams through the session; ASYNC DDL is answered by jobs
        return stmt.kind in (StatementKind.DML, StatementKind.DDL) or stmt.locks_rows

    async def before(self, stmt: Statement, ctx: StatementContext) -> Reply | None:
        call = _inject_call(stmt)
        if call is not None:
            return self._configure_injection(call)
        if stmt.kind is StatementKind.DML:
            table = _target_table(stmt)
            if table is not None:
                ctx.txn.setdefault(_TABLES, set()).add(table)
        return None

    async def on_error(
        self, stmt: Statement, error: DsqlError, ctx: StatementContext
    ) -> Reply | DsqlError | None:
        if error.sqlstate not in (SERIALIZATION_FAILURE, LOCK_NOT_AVAILABLE):
            return None
        if stmt.kind is StatementKind.DDL:
            return schema_conflict()
        bound = ctx.current
        if bound is None:
            return None
        if error.sqlstate == SERIALIZATION_FAILURE:
            ctx.txn[_LOST] = True
            return await self._plausible_reply(stmt, bound, ctx)
        found = await self._find_holders(ctx, bound)
        if isinstance(found, list):
            ctx.txn.setdefault(_DEFERRED, []).append(_Deferred(bound, found))
            return await self._plausible_reply(stmt, bound, ctx)
        return found

    async def before_commit(self, ctx: StatementContext) -> None:
        if ctx.txn.get(_LOST):
            raise write_conflict()
        deferred: list[_Deferred] = ctx.txn.get(_DEFERRED, [])
        taken: set[tuple[int, int]] = set()  # holders whose transaction we took already
        for item in deferred:
            for holder in item.holders:
                if holder in taken:
                    continue  # its client may be busy again by now: no need to ask twice
                outcome = self._outcomes.get(holder)
                if outcome:
                    raise write_conflict()  # it committed first (a write or a footprint)
                if outcome is None:
                    if not await self._doom(ctx, *holder):
                        raise write_conflict()
                    taken.add(holder)
            await self._replay(item.bound, ctx)
        if self.injector.should_conflict(ctx.txn.get(_TABLES, ())):
            raise write_conflict()

    async def after_end(self, ctx: StatementContext, committed: bool) -> None:
        pid = int(ctx.session.get(_PID, 0))
        number = int(ctx.session.get(_GEN, 0))
        if len(self._outcomes) >= _MAX_OUTCOMES:
            self._outcomes.clear()  # only transactions still open can matter; be simple
        self._outcomes[(pid, number)] = committed
        ctx.session[_GEN] = number + 1

    # --- the pieces -----------------------------------------------------------------------------

    def _configure_injection(self, call: Any) -> Synthetic:
        try:
            args = [_const(a) for a in call.args]
            if not args:  # no arguments: report the settings and what was injected so far
                text = f"{self.injector.settings.describe()}; {self.injector.injected} injected"
                return Synthetic(["inject_conflicts"], [[text]], "SELECT 1")
            if len(args) > 3:
                raise InjectionSpecError("use sys.inject_conflicts(rate [, tables [, seed]])")
            rate = float(args[0] or 0.0)  # type: ignore[arg-type]
            tables_arg = args[1] if len(args) > 1 else None
            tables = [] if tables_arg is None else str(tables_arg).split(",")
            seed_arg = args[2] if len(args) > 2 else None
            seed = None if seed_arg is None else int(seed_arg)  # type: ignore[call-overload]
            settings = make_settings(rate, tables, seed)
        except (InjectionSpecError, TypeError, ValueError) as exc:
            raise DsqlError("22023", str(exc), hint=_INJECT_HINT) from exc
        self.injector.configure(settings)
        self.injector.injected = 0
        return Synthetic(["inject_conflicts"], [[settings.describe()]], "SELECT 1")

    async def _plausible_reply(
        self, stmt: Statement, bound: BoundStatement, ctx: StatementContext
    ) -> Reply:
        if stmt.kind is StatementKind.QUERY:
            plain = _strip_locking(bound.sql)
            if plain is not None:
                return Forward(plain)
            return Synthetic([], [], "SELECT 0")
        returning = _returning_sql(bound.sql)
        if returning is not None:
            return Forward(returning)
        command = stmt.command
        if command == "INSERT":
            return Synthetic([], [], f"INSERT 0 {_values_count(stmt)}")
        count = 1
        count_sql = _count_sql(bound.sql)
        if count_sql is not None:
            count = await self._count(ctx, bound, count_sql)
        return Synthetic([], [], f"{command} {count}")

    async def _count(self, ctx: StatementContext, bound: BoundStatement, sql: str) -> int:
        await ctx.execute("SAVEPOINT _dsql_occ_count")
        try:
            rows = (await ctx.execute_bound(bound, sql))[0].rows
            await ctx.execute("RELEASE SAVEPOINT _dsql_occ_count")
            return int(rows[0][0] or 0)
        except (DsqlError, IndexError, ValueError):
            with contextlib.suppress(DsqlError):
                await ctx.execute("ROLLBACK TO SAVEPOINT _dsql_occ_count")
                await ctx.execute("RELEASE SAVEPOINT _dsql_occ_count")
            return 1

    async def _replay(self, bound: BoundStatement, ctx: StatementContext) -> None:
        """Run a deferred statement for real, at COMMIT; decide who won."""
        await ctx.execute("SAVEPOINT _dsql_occ_replay")
        try:
            await ctx.execute_bound(bound)
            await ctx.execute("RELEASE SAVEPOINT _dsql_occ_replay")
            return
        except DsqlError as err:
            if err.sqlstate in (SERIALIZATION_FAILURE, UNIQUE_VIOLATION):
                raise write_conflict() from None  # the other one committed first
            if err.sqlstate != LOCK_NOT_AVAILABLE:
                raise
        await ctx.execute("ROLLBACK TO SAVEPOINT _dsql_occ_replay")
        await ctx.execute("RELEASE SAVEPOINT _dsql_occ_replay")
        # The holder is still open: we commit first, so we win. Wait for the row once more,
        # and while we wait, take the holder's transaction away from it.
        await ctx.execute(f"SET LOCAL lock_timeout = '{_REPLAY_TIMEOUT_MS}ms'")
        replay = asyncio.ensure_future(ctx.execute_bound(bound))
        try:
            await self._doom_blockers(ctx, replay)
            await replay
        except DsqlError as err:
            if err.sqlstate in _LOST_STATES:
                raise write_conflict() from None
            raise
        finally:
            if not replay.done():
                replay.cancel()
        await ctx.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'")

    async def _doom_blockers(self, ctx: StatementContext, replay: asyncio.Future[Any]) -> None:
        """While ``replay`` waits for a lock, roll back the transactions it waits for.

        Only sessions of this emulator that sit idle inside their transaction are taken: their
        backend transaction is rolled back and a fresh one begun (the session stays usable), and
        they are marked lost, so that their own COMMIT fails with OC000. If a blocker is busy or
        not ours, our wait is cancelled instead, and we lose.
        """
        me = int(ctx.session.get(_PID, 0))
        inspector = await self._inspector(ctx)
        while not replay.done():
            cur = await inspector.execute(
                "SELECT a.pid, a.state FROM pg_stat_activity a"
                " WHERE a.pid = ANY(pg_blocking_pids(%s))",
                (me,),
            )
            blockers = [(int(pid), str(state)) for pid, state in await cur.fetchall()]
            if blockers:
                takeable = all(
                    pid in self._sessions
                    and self._sessions[pid] is not ctx
                    and state == "idle in transaction"
                    for pid, state in blockers
                )
                if not takeable:
                    return  # the replay's lock timeout will end it: we lose
                for pid, _ in blockers:
                    if not await self._doom(ctx, pid, self._number(pid)):
                        return
            await asyncio.wait({replay}, timeout=0.005)

    async def _doom(self, ctx: StatementContext, pid: int, number: int) -> bool:
        """Take an open transaction away from its session (we commit first, so we win).

        Only a session of this emulator idle inside that very transaction can be taken: its
        backend transaction is rolled back and a fresh one begun (the session stays usable),
        and it is marked lost, so its own COMMIT fails with OC000. False if it cannot be.
        """
        other = self._sessions.get(pid)
        if other is None or other is ctx:
            return other is None  # disconnected: its transaction is gone already
        if int(other.session.get(_GEN, 0)) != number:
            return not self._outcomes.get((pid, number), False)
        inspector = await self._inspector(ctx)
        cur = await inspector.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,))
        row = await cur.fetchone()
        if row is None or row[0] != "idle in transaction":
            return False
        if not other.idle() or int(other.session.get(_GEN, 0)) != number:
            return False  # busy (or just ended): not safe to take its transaction now
        other.txn[_LOST] = True
        try:
            await other.execute("ROLLBACK; BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT")
        except DsqlError:
            return False
        return True

    async def _find_holders(
        self, ctx: StatementContext, bound: BoundStatement
    ) -> list[tuple[int, int]] | Reply | DsqlError:
        """Who holds the rows this statement waited for: run it again and watch it wait.

        The statement runs behind a savepoint with a slightly longer lock timeout while our own
        superuser connection asks ``pg_blocking_pids``; the wait then ends by that timeout and
        the statement is undone. If nothing blocks it any more, it simply completes:
        then it is kept, and answered for real.
        """
        me = int(ctx.session.get(_PID, 0))
        inspector = await self._inspector(ctx)
        await ctx.execute(f"SAVEPOINT _dsql_occ_probe; SET LOCAL lock_timeout = '{_PROBE_MS}ms'")
        probe = asyncio.ensure_future(ctx.execute_bound(bound))
        holders: list[tuple[int, int]] = []
        while not probe.done():
            cur = await inspector.execute("SELECT pg_blocking_pids(%s)", (me,))
            row = await cur.fetchone()
            pids = [int(p) for p in (row[0] if row else [])]
            if pids:
                # Known: the probe's own lock timeout ends it (never a cancel signal, which
                # could land on a later statement of this session).
                holders = [(p, self._number(p)) for p in pids]
                break
            await asyncio.wait({probe}, timeout=0.002)
        try:
            results = await probe
        except DsqlError as err:
            await ctx.execute("ROLLBACK TO SAVEPOINT _dsql_occ_probe")
            await ctx.execute(
                f"RELEASE SAVEPOINT _dsql_occ_probe; SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'"
            )
            if err.sqlstate == SERIALIZATION_FAILURE:
                ctx.txn[_LOST] = True
                return holders
            if err.sqlstate in (QUERY_CANCELED, LOCK_NOT_AVAILABLE):
                return holders
            return err
        await ctx.execute(
            f"RELEASE SAVEPOINT _dsql_occ_probe; SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'"
        )
        tag = results[-1].tag if results else ""
        if results and results[-1].columns:
            plain = _strip_locking(bound.sql)
            return Forward(plain) if plain is not None else Synthetic([], [], tag)
        return Synthetic([], [], tag)

    def _number(self, pid: int) -> int:
        other = self._sessions.get(pid)
        return int(other.session.get(_GEN, 0)) if other is not None else -1

    async def _inspector(self, ctx: StatementContext) -> Any:
        """A superuser connection of our own, to see who blocks whom (psycopg, lazily)."""
        if self._inspector_conn is None or self._inspector_conn.closed:
            import psycopg

            backend = ctx.cluster.backend
            conn = await psycopg.AsyncConnection.connect(
                host=str(backend.socket_dir),
                port=backend.port,
                user=backend.user,
                dbname=backend.database,
                autocommit=True,
                application_name="dsql-emulator-occ",
            )
            if self._inspector_conn is None or self._inspector_conn.closed:
                self._inspector_conn = conn
            else:  # another session's task connected meanwhile: one is enough
                await conn.close()
        return self._inspector_conn


_INJECT_HINT = (
    "Use SELECT sys.inject_conflicts(rate [, 'table1,table2' [, seed]]); rate 0 turns it off."
)


def make_hook(config: Any = None) -> OccHook:
    return OccHook(_injection_from_config(config))


__all__: Sequence[str] = ("OccHook", "make_hook", "write_conflict")
