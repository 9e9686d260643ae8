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
from . import rowsizes
from .dialect import RuleSet, load_rules
from .errors import DsqlError
from .statements import Statement, StatementKind

if TYPE_CHECKING:
    from .hooks import CommandResult, Reply, StatementContext

pb: Any = importlib.import_module("postgast.pg_query_pb2")

_STATE_KEY = "dsql.txnrules"
# Per session: (schema, name) -> (relid, metadata key) of tables written, so that an UPDATE
# that cannot change a size needs no lookup. Forgotten after DDL (the metadata key changes) and
# after anything that can change how names resolve (SET, RESET, DISCARD, set_config).
_NAMES_KEY = "dsql.txnrules.names"
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
    names_changed: bool = False  # a statement that can change name resolution ran
    versions: int = 0  # new row versions (INSERT, UPDATE, COPY rows), per the command tags
    writes: rowsizes.Writes = field(default_factory=rowsizes.Writes)  # by table


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
    if stmt.kind is not StatementKind.QUERY or not stmt.mentions("with"):
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


_NEW_VERSION_COMMANDS = frozenset({"INSERT", "UPDATE", "COPY"})
_INSERT_COMMANDS = frozenset({"INSERT", "COPY"})


def _write_target(stmt: Statement) -> Any:
    """The RangeVar an INSERT, UPDATE or COPY FROM writes to (None if there is none)."""
    if stmt.node_name not in ("insert_stmt", "update_stmt", "copy_stmt"):
        return None
    rel = getattr(stmt.inner, "relation", None)
    return rel if rel is not None and rel.relname else None


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
        self._metas = rowsizes.MetaCache()  # table metadata, shared by the sessions

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
        if stmt.node_name in ("variable_set_stmt", "discard_stmt") or stmt.mentions("set_config"):
            ctx.session.pop(_NAMES_KEY, None)  # (search_path, role: names may resolve anew)
            state.names_changed = True
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

    def observe_read(self, stmt: Statement, result: CommandResult, ctx: StatementContext) -> None:
        """A read changes no rows: nothing to count (so reads need not wait for `after`)."""

    async def after(self, stmt: Statement, result: CommandResult, ctx: StatementContext) -> None:
        """Count mutated rows; fail the statement that crosses the row limit."""
        if stmt.kind is not StatementKind.DML:
            if stmt.kind is StatementKind.QUERY and _is_dml(stmt):
                # A data-modifying WITH reports the rows it returns, not those it changed.
                state = self._state(ctx)
                state.wrote = state.writes.indirect = state.writes.unknown_rows = True
            return
        state = self._state(ctx)
        rows = result.rows_affected or 0
        if rows:
            state.wrote = True
            state.rows += rows
            if state.rows > self.limits.max_rows:
                raise self._error("row-limit")
            if stmt.command in _NEW_VERSION_COMMANDS:
                state.versions += rows
                await self._after_write(stmt, rows, ctx, state)
            elif stmt.command != "DELETE":  # MERGE: which rows are new versions is not known
                state.writes.indirect = state.writes.unknown_rows = True

    async def before_commit(self, ctx: StatementContext) -> None:
        """Age, transaction size and key/row/column sizes of the rows this transaction wrote."""
        state = self._state(ctx)
        if ctx.in_transaction:
            self._check_age(state)
        if state.wrote:
            await self._check_written_rows(ctx, state)

    async def after_end(self, ctx: StatementContext, committed: bool) -> None:
        """Forget the finished transaction (robust even if the session reuses ``ctx.txn``).

        After DDL, forget the cached table metadata too (the cluster's catalog version only
        moves when the schema-version hook runs).
        """
        state = ctx.txn.pop(_STATE_KEY, None)
        if state is not None and state.ddl:
            self._metas.invalidate()
        if state is not None and state.names_changed:
            ctx.session.pop(_NAMES_KEY, None)  # a rollback may have undone a SET

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

    # --- sizes of the rows written (see rowsizes.py for how they are found cheaply) ----------

    def _judge(self, m: rowsizes.Measured) -> None:
        """Refuse the largest key, column or row measured if it breaks DSQL's limit."""
        if m.max_key > self.limits.max_key_bytes:
            raise self._error("key-size")
        if m.max_column > self.limits.max_column_bytes:
            raise self._error("column-size")
        if m.max_row > self.limits.max_row_bytes:
            raise self._error("row-size")

    async def _measure(
        self, ctx: StatementContext, scans: list[tuple[rowsizes.TableMeta, int]]
    ) -> dict[str, rowsizes.Measured]:
        found = await rowsizes.measure(ctx, scans)
        for m in found.values():
            self._judge(m)
        return found

    async def _after_write(
        self, stmt: Statement, rows: int, ctx: StatementContext, state: TxnState
    ) -> None:
        """Note what a write statement did to its table; measure now if it wrote a large value.

        One lookup for the statement's target table (its TOAST inserts and what an estimate
        needs). A value over the column limit always goes to TOAST (rowsizes.py says why), so
        only a rise in that counter prompts measuring at the statement, in the heap's tail
        first. Writes that cannot make a large value, to a table the session already looked
        up, need no lookup (`_known_write`).
        """
        writes = state.writes
        target = _write_target(stmt)
        if target is None:
            writes.indirect = True
            return
        name = _qualified(target)
        assigned = rowsizes.assigned_columns(stmt.inner, stmt.node_name)
        if await self._known_write(stmt, ctx, name, assigned, rows):
            return
        found = await ctx.execute(rowsizes.PROBE_SQL, (_relation_literal(*name),))
        row = found[-1].rows[0] if found and found[-1].rows else None
        if row is None or row[0] is None:
            writes.indirect = True
            return
        _, relkind, toasted, relpages, reltuples, block_size, readable, toast_data = row
        relid = str(row[0])
        meta = await self._metas.get(ctx, relid) if relkind == "r" else None
        if meta is None:
            writes.indirect = True  # a view: the tables written are found at COMMIT
            return
        selectable = readable == "true"
        names = ctx.session.setdefault(_NAMES_KEY, {})
        names[name] = (relid, self._metas.key(ctx, relid), selectable)
        table = self._table(writes, meta, selectable)
        table.versions += rows
        table.row_width = rowsizes.stored_row_width(relpages, reltuples, block_size)
        table.toast_data = toast_data == "true"
        if stmt.command in _INSERT_COMMANDS:
            table.inserted += rows
        if any(col in meta.indexed for col in assigned):
            table.key_updated = True
        count = int(toasted or 0)
        if count <= table.toasted:
            return
        table.toasted, table.toast_rose = count, True
        if not table.selectable:
            return
        tail = await self._measure(ctx, [(meta, table.tail_blocks())])
        if tail.get(relid, rowsizes.Measured()).found < table.versions:
            await self._measure(ctx, [(meta, rowsizes.WHOLE_TABLE)])  # rare: large values

    @staticmethod
    def _table(
        writes: rowsizes.Writes, meta: rowsizes.TableMeta, selectable: bool
    ) -> rowsizes.TableWrites:
        table = writes.tables.get(meta.relid)
        if table is None:
            table = writes.tables[meta.relid] = rowsizes.TableWrites(meta, selectable)
        table.selectable = selectable
        return table

    async def _known_write(
        self,
        stmt: Statement,
        ctx: StatementContext,
        name: tuple[str | None, str],
        assigned: list[str],
        rows: int,
    ) -> bool:
        """Note, without any lookup, a write to a table this session looked up before that
        cannot write a large value: an UPDATE that cannot change a size
        (`TableMeta.benign_update`, estimated at COMMIT), or an INSERT of short literals
        (`rowsizes.small_literal_insert`, measured at COMMIT)."""
        update = stmt.node_name == "update_stmt"
        if not update and not rowsizes.small_literal_insert(stmt.inner, stmt.node_name):
            return False
        known = ctx.session.get(_NAMES_KEY, {}).get(name)
        if known is None or known[1] != self._metas.key(ctx, known[0]):
            return False
        meta = await self._metas.get(ctx, known[0])
        if meta is None or (update and not meta.benign_update(assigned)):
            return False
        table = self._table(self._state(ctx).writes, meta, known[2])
        table.versions += rows
        if update:
            table.benign += rows
        else:
            table.inserted += rows
            table.row_width = table.row_width or meta.row_width
            table.toast_data = table.toast_data or meta.toast_data
        return True

    async def _check_written_rows(self, ctx: StatementContext, state: TxnState) -> None:
        """Measure what this transaction inserted or updated; refuse oversize rows or totals.

        Rows this transaction wrote are those whose ``xmin`` is its own xid or one of its
        subtransactions' (all at least the top xid; rows of later transactions are not in its
        REPEATABLE READ snapshot). Only tables the session may SELECT from can be measured.
        One query scans every written table's tail; whole tables are scanned only when rows
        not in the tail could break a limit (`TableWrites.needs_exact`) or when the estimate of
        the others' bytes would take the transaction over its size limit.
        """
        writes = state.writes
        if writes.indirect:
            await self._check_all_written(ctx, state)
            return
        exact: dict[str, int] = {}  # relid -> bytes, for tables whose rows were all measured
        estimated: dict[str, float] = {}  # relid -> estimated bytes of versions not found
        rescan: list[rowsizes.TableWrites] = []
        for t in writes.tables.values():
            if t.versions and t.only_benign:
                estimated[t.meta.relid] = t.versions * t.meta.row_width
        tables = [
            t for t in writes.tables.values() if t.selectable and t.versions and not t.only_benign
        ]
        tail = await self._measure(ctx, [(t.meta, t.tail_blocks()) for t in tables])
        for t in tables:
            m = tail.get(t.meta.relid, rowsizes.Measured())
            if t.needs_exact(m.found):
                rescan.append(t)
                continue
            exact[t.meta.relid] = m.total
            missing = t.versions - m.found
            if missing > 0:
                width = max(t.row_width or t.meta.row_width, m.total / m.found if m.found else 0)
                estimated[t.meta.relid] = missing * width
        if sum(exact.values()) + sum(estimated.values()) > self.limits.max_bytes:
            rescan += [t for t in writes.tables.values() if t.meta.relid in estimated]
            rescan = [t for t in rescan if t.selectable]
            estimated.clear()
        if rescan:
            full = await self._measure(ctx, [(t.meta, rowsizes.WHOLE_TABLE) for t in rescan])
            for t in rescan:
                exact[t.meta.relid] = full.get(t.meta.relid, rowsizes.Measured()).total
        self._check_total(sum(exact.values()))

    async def _check_all_written(self, ctx: StatementContext, state: TxnState) -> None:
        """COMMIT after writes not tied to one plain table: every table the statistics show
        written is measured, in its tail and then whole if rows are missing (the slow path)."""
        found_tables = await ctx.execute(rowsizes.WRITTEN_TABLES_SQL)
        metas: list[rowsizes.TableMeta] = []
        for (relid,) in found_tables[-1].rows if found_tables else ():
            meta = await self._metas.get(ctx, relid) if relid is not None else None
            if meta is not None:
                metas.append(meta)
        back = rowsizes.TAIL_SLACK_BLOCKS + state.versions
        tail = await self._measure(ctx, [(meta, back) for meta in metas])
        total = sum(m.total for m in tail.values())
        if state.writes.unknown_rows or sum(m.found for m in tail.values()) < state.versions:
            full = await self._measure(ctx, [(meta, rowsizes.WHOLE_TABLE) for meta in metas])
            total = sum(m.total for m in full.values())
        self._check_total(total)

    def _check_total(self, total: float) -> None:
        if total > self.limits.max_bytes:
            raise self._error("size-limit", size=str(math.ceil(total / limits.MIB)))


def make_hook(config: object = None) -> TransactionRules | None:
    """The transaction rules on their own, only when the ``policy`` hook is left out.

    Normally they run inside `policy.DsqlHooks` (so a dialect rewrite cannot hide a statement
    from them), and this returns None to avoid counting every statement twice.
    """
    disabled = frozenset(getattr(config, "disabled_hooks", None) or ())
    if "policy" in disabled and "txnrules" not in disabled:
        return TransactionRules()
    return None
