"""DSQL's transaction rules and database limits, as a statement hook.

One DDL per transaction, no DDL and DML in one transaction, no ANALYZE inside ``BEGIN … COMMIT``,
3,000 mutated rows per transaction (the statement that crosses it fails), 10 MiB of modified data
(checked at COMMIT), 300 s transaction age, key/row/column sizes (at the statement when it wrote a
large value, at COMMIT at the latest), and the object-count limits (columns, indexes, schemas,
tables, views) that need the catalog. Written rows are found by ``xmin`` (this transaction's),
in the heap's tail first (a TID range scan), so commits stay cheap on big tables. Numbers come from
`dsql_magic.limits`; SQLSTATEs and texts from the rules data (``limits:`` in rules.yaml).

Per-transaction state lives in ``ctx.txn`` (fresh per transaction). Time comes from an injectable
clock so the age limit is testable. This module must not parse SQL text itself (it reads the
`Statement`'s parse tree) and must not change data: its internal queries only read the catalog
and the transaction's own rows.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import limits
from .dialect import RuleSet, load_rules
from .errors import DsqlError
from .statements import Statement, StatementKind

if TYPE_CHECKING:
    from .hooks import CommandResult, Reply, StatementContext

pb: Any = importlib.import_module("postgast.pg_query_pb2")

_STATE_KEY = "dsql.txnrules"
_BEGIN_KEY = "dsql.txnrules.begin"
# Schemas that are not the user's: PostgreSQL's own and DSQL's sys.
_SYSTEM_SCHEMAS = "('pg_catalog', 'information_schema', 'sys', 'pg_toast')"
_USER_SCHEMA_FILTER = f"n.nspname NOT IN {_SYSTEM_SCHEMAS} AND n.nspname NOT LIKE 'pg\\_%'"
# Types without index support in the manual's type tables (L1220-1266), plus json/jsonb.
_UNKEYABLE_TYPES = ("bytea", "interval", "time with time zone", "json", "jsonb")


@dataclass
class TxnState:
    """What the hook remembers about the current transaction."""

    started: float
    ddl: int = 0
    dml: int = 0
    rows: int = 0
    wrote: bool = False
    versions: int = 0  # new row versions (INSERT, UPDATE, COPY rows), per the command tags
    toasted: dict[str, int] = field(default_factory=dict)  # TOAST inserts seen, by table oid
    tables: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class TxnLimits:
    """The limits this hook enforces (DSQL's by default; tests may lower them)."""

    max_rows: int = limits.MAX_ROWS_PER_TRANSACTION
    max_bytes: int = limits.MAX_TRANSACTION_BYTES
    max_age: float = limits.MAX_TRANSACTION_AGE_SECONDS
    max_key_bytes: int = limits.MAX_KEY_BYTES
    max_row_bytes: int = limits.MAX_ROW_BYTES
    max_column_bytes: int = limits.MAX_COLUMN_BYTES
    max_columns: int = limits.MAX_TABLE_COLUMNS
    max_indexes: int = limits.MAX_INDEXES_PER_TABLE
    max_schemas: int = limits.MAX_SCHEMAS
    max_tables: int = limits.MAX_TABLES
    max_views: int = limits.MAX_VIEWS


def _is_ddl(stmt: Statement) -> bool:
    return stmt.kind in (StatementKind.DDL, StatementKind.IAM)


def _is_dml(stmt: Statement) -> bool:
    """INSERT/UPDATE/DELETE/COPY FROM, and queries whose WITH clause modifies data."""
    if stmt.kind is StatementKind.DML:
        return True
    if stmt.kind is not StatementKind.QUERY or "with" not in stmt.pg_text.lower():
        return False  # (skips two parse-tree walks for the plain queries that cannot modify)
    return not stmt.read_only and not stmt.locks_rows


def _is_analyze(stmt: Statement) -> bool:
    return stmt.node_name == "vacuum_stmt" and not stmt.inner.is_vacuumcmd


def _create_table_indexes(create: Any) -> int:
    """How many indexes a CREATE TABLE makes: its PRIMARY KEY and UNIQUE constraints."""
    kinds = (pb.CONSTR_PRIMARY, pb.CONSTR_UNIQUE)
    count = 0
    for elt in create.table_elts:
        if elt.WhichOneof("node") == "constraint":
            count += elt.constraint.contype in kinds
        elif elt.WhichOneof("node") == "column_def":
            count += sum(c.constraint.contype in kinds for c in elt.column_def.constraints)
    return count


def _qualified(rangevar: Any) -> tuple[str | None, str]:
    return (rangevar.schemaname or None, rangevar.relname)


def _relation_literal(schema: str | None, name: str) -> str:
    """A regclass text literal for ``schema.name`` (both quoted as identifiers)."""
    ident = '"' + name.replace('"', '""') + '"'
    if schema:
        ident = '"' + schema.replace('"', '""') + '".' + ident
    return ident


_FIRST_TAIL_BLOCKS = 16
_NEW_VERSION_COMMANDS = frozenset({"INSERT", "UPDATE", "COPY"})
# Tables whose TOAST relation this transaction inserted into, with what _measure_table needs.
_TOASTED_SQL = (
    "SELECT c.oid::text, quote_ident(n.nspname) || '.' || quote_ident(c.relname), "
    "t.n_tup_ins::text, "
    "(pg_relation_size(c.oid) / current_setting('block_size')::int)::text, "
    "pg_current_xact_id_if_assigned()::text "
    "FROM pg_stat_xact_all_tables t "
    "JOIN pg_class c ON c.reltoastrelid = t.relid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE t.n_tup_ins > 0 AND has_table_privilege(c.oid, 'SELECT')"
)


@dataclass(frozen=True)
class _Written:
    """A table this transaction wrote to, and its size in blocks."""

    relid: str
    qualified: str
    blocks: int

    def tail_start(self, versions: int) -> int:
        """First block of a tail big enough for ``versions`` new rows, one per block."""
        return max(0, self.blocks - _FIRST_TAIL_BLOCKS - versions)


class TransactionRules:
    """Statement hook enforcing DSQL's transaction rules and database limits."""

    def __init__(
        self,
        *,
        limits_: TxnLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        rules: RuleSet | None = None,
    ) -> None:
        self.limits = limits_ or TxnLimits()
        self.clock = clock
        self._rules = rules

    def _error(self, rule_id: str, **params: str) -> DsqlError:
        rules = self._rules or load_rules()
        return rules.by_id(rule_id).error(**params)

    def _state(self, ctx: StatementContext) -> TxnState:
        state = ctx.txn.get(_STATE_KEY)
        if state is None:
            began = ctx.session.pop(_BEGIN_KEY, None)
            started = began if ctx.in_transaction and began is not None else self.clock()
            state = TxnState(started=started)
            ctx.txn[_STATE_KEY] = state
        return state

    def _check_age(self, state: TxnState) -> None:
        if self.clock() - state.started > self.limits.max_age:
            raise self._error("age-limit")

    # --- hook methods ------------------------------------------------------------------------

    async def before(self, stmt: Statement, ctx: StatementContext) -> Reply | None:
        """Refuse what the transaction's state or the catalog's limits forbid."""
        if stmt.kind in (StatementKind.EMPTY, StatementKind.INVALID):
            return None
        if stmt.transaction_kind in ("TRANS_STMT_BEGIN", "TRANS_STMT_START"):
            # The session gives the block a fresh ctx.txn after BEGIN: remember when it began.
            ctx.session[_BEGIN_KEY] = self.clock()
            return None
        state = self._state(ctx)
        if stmt.kind is StatementKind.TRANSACTION:
            return None
        if ctx.in_transaction:
            self._check_age(state)
            if _is_analyze(stmt):
                raise self._error("analyze-in-transaction")
            if _is_ddl(stmt):
                if state.ddl:
                    raise self._error("multiple-ddl")
                if state.dml:
                    raise self._error("ddl-dml-mix")
            elif _is_dml(stmt) and state.ddl:
                raise self._error("ddl-dml-mix")
        if stmt.kind is StatementKind.DDL:
            await self._check_catalog_limits(stmt, ctx)
        # Counted here, not in `after`: a statement a later hook answers itself (CREATE INDEX
        # ASYNC's job_id) never reaches `after`. A statement that then fails ends the block.
        if _is_ddl(stmt):
            state.ddl += 1
        elif _is_dml(stmt):
            state.dml += 1
        return None

    async def after(self, stmt: Statement, result: CommandResult, ctx: StatementContext) -> None:
        """Count mutated rows; fail the statement that crosses the row limit."""
        if stmt.kind is not StatementKind.DML:
            return  # (a data-modifying WITH reports the rows it returns, not those it changed)
        state = self._state(ctx)
        rows = result.rows_affected or 0
        if rows:
            state.wrote = True
            state.rows += rows
            if state.rows > self.limits.max_rows:
                raise self._error("row-limit")
            if stmt.command in _NEW_VERSION_COMMANDS:
                state.versions += rows
                await self._check_toasted(ctx, state)

    async def before_commit(self, ctx: StatementContext) -> None:
        """Age, transaction size and key/row/column sizes of the rows this transaction wrote."""
        state = self._state(ctx)
        if ctx.in_transaction:
            self._check_age(state)
        if state.wrote:
            await self._check_written_rows(ctx)

    async def after_end(self, ctx: StatementContext, committed: bool) -> None:
        """Forget the finished transaction (robust even if the session reuses ``ctx.txn``)."""
        ctx.txn.pop(_STATE_KEY, None)

    # --- catalog-dependent limits ------------------------------------------------------------

    async def _scalar(
        self, ctx: StatementContext, sql: str, params: tuple[object, ...] = ()
    ) -> str:
        results = await ctx.execute(sql, params)
        value = results[-1].rows[0][0] if results and results[-1].rows else None
        return value or "0"

    async def _check_catalog_limits(self, stmt: Statement, ctx: StatementContext) -> None:
        name = stmt.node_name
        inner = stmt.inner
        lim = self.limits
        if name == "create_schema_stmt":
            count = await self._scalar(
                ctx, f"SELECT count(*) FROM pg_namespace n WHERE {_USER_SCHEMA_FILTER}"
            )
            if int(count) >= lim.max_schemas:
                raise self._error("schema-count")
        elif name == "create_stmt" and not inner.if_not_exists:
            if _create_table_indexes(inner) > lim.max_indexes:
                raise self._error("index-count")
            count = await self._scalar(
                ctx,
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                f"WHERE c.relkind IN ('r', 'p') AND {_USER_SCHEMA_FILTER}",
            )
            if int(count) >= lim.max_tables:
                raise self._error("table-count")
        elif name == "view_stmt" and not inner.replace:
            count = await self._scalar(
                ctx,
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                f"WHERE c.relkind = 'v' AND {_USER_SCHEMA_FILTER}",
            )
            if int(count) >= lim.max_views:
                raise self._error("view-count")
        elif name == "index_stmt":
            await self._check_index(inner, ctx)
        elif name == "alter_table_stmt":
            await self._check_alter_table(inner, ctx)

    async def _table_oid(self, ctx: StatementContext, rangevar: Any) -> str | None:
        schema, rel = _qualified(rangevar)
        results = await ctx.execute(
            "SELECT to_regclass($1)::oid::text", (_relation_literal(schema, rel),)
        )
        return results[-1].rows[0][0] if results and results[-1].rows else None

    async def _check_index(self, inner: Any, ctx: StatementContext) -> None:
        oid = await self._table_oid(ctx, inner.relation)
        if oid is None:
            return  # PostgreSQL will say the table does not exist
        count = await self._scalar(ctx, "SELECT count(*) FROM pg_index WHERE indrelid = $1", (oid,))
        if int(count) >= self.limits.max_indexes:
            raise self._error("index-count")
        columns = [p.index_elem.name for p in inner.index_params if p.index_elem.name]
        if not columns:
            return
        results = await ctx.execute(
            "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
            "WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
            (oid,),
        )
        types = {row[0]: row[1] for row in results[-1].rows} if results else {}
        for col in columns:
            typ = types.get(col)
            if typ in _UNKEYABLE_TYPES:
                raise self._error("key-datatype", type=str(typ))

    async def _check_alter_table(self, inner: Any, ctx: StatementContext) -> None:
        adds = [c for c in inner.cmds if c.alter_table_cmd.subtype == pb.AT_AddColumn]
        drops = [
            c.alter_table_cmd.name
            for c in inner.cmds
            if c.alter_table_cmd.subtype == pb.AT_DropColumn
        ]
        if not adds and not drops:
            return
        oid = await self._table_oid(ctx, inner.relation)
        if oid is None:
            return
        if adds:
            count = await self._scalar(
                ctx,
                "SELECT count(*) FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 "
                "AND NOT attisdropped",
                (oid,),
            )
            if int(count) + len(adds) > self.limits.max_columns:
                raise self._error("table-columns-alter")
        if drops:
            results = await ctx.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) "
                "WHERE i.indrelid = $1 AND i.indisprimary",
                (oid,),
            )
            pk = {row[0] for row in results[-1].rows} if results else set()
            for col in drops:
                if col in pk:
                    raise self._error("drop-primary-key-column", column=col)

    # --- sizes of the rows written -----------------------------------------------------------

    async def _check_toasted(self, ctx: StatementContext, state: TxnState) -> None:
        """Column and row sizes at the statement, when it wrote a large value.

        A value of more than about 2 KB is moved to the table's TOAST relation, so a rise in the
        transaction's TOAST inserts (one cheap statistics query) is the sign that the statement
        may have written an oversize column or row; only then are the new rows measured, in the
        heap's tail. What that misses (and key sizes) is caught at COMMIT.
        """
        found = await ctx.execute(_TOASTED_SQL)
        for relid, qualified, toasted, blocks, xid in found[-1].rows if found else ():
            if relid is None or qualified is None or xid is None:
                continue
            count = int(toasted or 0)
            if count <= state.toasted.get(relid, 0):
                continue
            state.toasted[relid] = count
            table = _Written(relid, qualified, int(blocks or 0))
            start = table.tail_start(state.versions)
            await self._measure_table(ctx, table, int(xid) % (1 << 32), start)

    async def _check_written_rows(self, ctx: StatementContext) -> None:
        """Measure what this transaction inserted or updated; refuse oversize rows or totals.

        Rows this transaction wrote are those whose ``xmin`` is its own xid or one of its
        subtransactions' (all at least the top xid; rows of later transactions are not in its
        REPEATABLE READ snapshot). Only tables the session may SELECT from can be measured.
        """
        xid_rows = await ctx.execute("SELECT pg_current_xact_id_if_assigned()::text")
        xid_text = xid_rows[-1].rows[0][0] if xid_rows and xid_rows[-1].rows else None
        if xid_text is None:
            return
        xid32 = int(xid_text) % (1 << 32)
        found_tables = await ctx.execute(
            "SELECT s.relid::text, quote_ident(s.schemaname) || '.' || quote_ident(s.relname), "
            "(pg_relation_size(s.relid) / current_setting('block_size')::int)::text "
            "FROM pg_stat_xact_user_tables s "
            "WHERE s.n_tup_ins + s.n_tup_upd > 0 AND has_table_privilege(s.relid, 'SELECT')"
        )
        tables = [
            _Written(relid, qualified, int(blocks or 0))
            for relid, qualified, blocks in (found_tables[-1].rows if found_tables else ())
            if relid is not None and qualified is not None
        ]
        # New row versions of an appending transaction sit at the end of the heap: first scan
        # each table's tail (a TID range scan); when fewer rows than the transaction wrote are
        # there (free space reused, updates in place), scan the whole tables.
        versions = self._state(ctx).versions
        found = total = 0
        for table in tables:
            rows, size = await self._measure_table(ctx, table, xid32, table.tail_start(versions))
            found, total = found + rows, total + size
        if found < versions:
            total = 0
            for table in tables:
                total += (await self._measure_table(ctx, table, xid32, 0))[1]
        if total > self.limits.max_bytes:
            raise self._error("size-limit", size=str(math.ceil(total / limits.MIB)))

    async def _measure_table(
        self, ctx: StatementContext, table: _Written, xid32: int, start: int
    ) -> tuple[int, int]:
        """Scan ``table`` from block ``start`` for this transaction's rows; refuse oversize ones.

        Returns how many of its rows were found there and their total size in bytes.
        """
        relid, qualified = table.relid, table.qualified
        cols = await ctx.execute(
            "SELECT quote_ident(attname), format_type(atttypid, NULL), attnum::text "
            "FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum",
            (relid,),
        )
        columns = [(r[0] or "", r[1] or "", int(r[2] or 0)) for r in cols[-1].rows] if cols else []
        if not columns:
            return 0, 0
        keys = await ctx.execute(
            "SELECT array_to_string(indkey, ' ') FROM pg_index WHERE indrelid = $1", (relid,)
        )
        key_sets = []
        for (indkey,) in keys[-1].rows if keys else ():
            nums = [int(n) for n in (indkey or "").split() if n != "0"]
            key_sets.append(nums)
        by_num = {num: i for i, (_, _, num) in enumerate(columns)}

        def size(name: str, typ: str) -> str:
            if typ in ("text", "character varying", "character", "bytea"):
                return f"coalesce(octet_length(x.{name}), 0)"
            return f"coalesce(pg_column_size(x.{name}), 0)"

        sizes = [size(name, typ) for name, typ, _ in columns]
        key_exprs = [
            " + ".join(sizes[by_num[n]] for n in nums if n in by_num) for nums in key_sets if nums
        ]
        row_expr = " + ".join(sizes)
        col_expr = f"greatest({', '.join(sizes)})" if len(sizes) > 1 else sizes[0]
        key_expr = f"greatest({', '.join(key_exprs)})" if key_exprs else "0"
        result = await ctx.execute(
            f"SELECT count(*)::text, coalesce(sum({row_expr}), 0)::text, "
            f"coalesce(max({row_expr}), 0)::text, coalesce(max({col_expr}), 0)::text, "
            f"coalesce(max({key_expr}), 0)::text FROM ONLY {qualified} x "
            f"WHERE x.ctid >= $2::tid AND x.xmin::text::bigint >= $1",
            (str(xid32), f"({start},0)"),
        )
        found, total, max_row, max_col, max_key = (int(v or 0) for v in result[-1].rows[0])
        if max_key > self.limits.max_key_bytes:
            raise self._error("key-size")
        if max_col > self.limits.max_column_bytes:
            raise self._error("column-size")
        if max_row > self.limits.max_row_bytes:
            raise self._error("row-size")
        return found, total


def make_hook(config: object = None) -> TransactionRules | None:
    """The transaction rules on their own, only when the ``policy`` hook is left out.

    Normally they run inside `policy.DsqlHooks` (so a dialect rewrite cannot hide a statement
    from them), and this returns None to avoid counting every statement twice.
    """
    disabled = frozenset(getattr(config, "disabled_hooks", None) or ())
    if "policy" in disabled and "txnrules" not in disabled:
        return TransactionRules()
    return None
