"""Measuring the rows a transaction wrote, cheaply, for DSQL's key/row/column/transaction sizes.

DSQL refuses a key over 1 KiB, a column over 1 MiB, a row over 2 MiB (at the statement) and a
transaction over 10 MiB of modified data (at COMMIT). PostgreSQL keeps no per-transaction byte
count, so the emulator measures the transaction's own rows (``xmin`` is its xid or one of its
subtransactions') with one aggregate query per table. The costly part is *finding* those rows;
this module decides where to look, so that the common path never scans a whole table:

- **Appended rows** (INSERT/COPY into a table without reusable free space, non-HOT updates of
  full pages) sit at the end of the heap: a TID range scan of the table's tail finds them.
- **Versions not in the tail** (UPDATEs in place / HOT, inserts into free space a VACUUM
  recorded) are scanned for exactly only when something about them could break a limit:
  the table got inserts (their keys and sizes are unknown), an UPDATE assigned an indexed
  column (key size), or the table's TOAST relation got inserts in this transaction (large
  values, see below) or holds values at all (which stored row widths leave out). Otherwise
  (UPDATEs that assigned only non-key columns of rows stored inline) their bytes are
  *estimated* at the table's average stored row width (pg_class relpages/reltuples), and an
  exact scan runs only when that estimate would take the transaction over its size limit.
  Inline values longer than about 2 KB are stored compressed, so for those the estimate
  counts compressed bytes where an exact scan counts raw ones (docs/emulator-fidelity.md).
- **Large values are seen through TOAST statistics**: any value over the 1 MiB column limit is
  stored out of line in the table's TOAST relation, even after compression. pglz (PostgreSQL's
  default) and lz4 compress at most about 255:1, so a value over 1 MiB stays over 4 KB
  compressed, which is above the 2 KB TOAST target a stored row is shrunk to; and a row over
  2 MiB cannot fit an 8 KB heap page inline (2 MiB / 8 KB = 256:1). So a write that breaks
  the column or row limit always raises ``pg_stat_get_xact_tuples_inserted(reltoastrelid)``,
  one cheap lookup for the statement's target table.

PostgreSQL's ``pg_stat_xact_*`` counters also hold the backend's earlier transactions until it
flushes them (at most once a second, between transactions), so per-transaction row counts come
from the command tags, and the statistics only say "something rose during this transaction".

Table metadata and the measuring SQL are cached per (relation, catalog version). This module
must not change data or raise DSQL errors: it reads the catalog, statistics and the
transaction's own rows, and returns measurements for `txnrules` to judge.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .hooks import StatementContext

TAIL_SLACK_BLOCKS = 16  # blocks scanned beyond one block per new row version
WHOLE_TABLE = 1 << 40  # "blocks back from the end" that means the whole table
_SMALL_LITERAL = 1024  # characters of an INSERT's literal that cannot make a large value
_DEFAULT_VARLENA_WIDTH = 32  # bytes per variable-width column when nothing better is known
_MEASURED_TYPES = ("text", "character varying", "character", "bytea")
META_MAX_AGE_SECONDS = 5.0  # row widths and the TOAST flag go stale as data changes

# After a write statement: its target relation, its TOAST inserts so far, the facts an estimate
# needs, whether the session may read the table and whether its TOAST relation holds data.
PROBE_SQL = (
    "SELECT c.oid::text, c.relkind::text, "
    "pg_stat_get_xact_tuples_inserted(c.reltoastrelid)::text, "
    "c.relpages::text, c.reltuples::text, current_setting('block_size'), "
    "has_table_privilege(c.oid, 'SELECT')::text, "
    "(c.reltoastrelid <> 0 AND pg_relation_size(c.reltoastrelid) > 0)::text "
    "FROM pg_class c WHERE c.oid = to_regclass($1)"
)

# Once per (relation, catalog version), refreshed every few seconds: its qualified name,
# columns and index keys, its average stored row width and whether its TOAST holds values.
META_SQL = (
    "SELECT c.relpages::text, c.reltuples::text, current_setting('block_size'), "
    "(c.reltoastrelid <> 0 AND pg_relation_size(c.reltoastrelid) > 0)::text, "
    "quote_ident(n.nspname) || '.' || quote_ident(c.relname), "
    "coalesce((SELECT json_agg(json_build_array(a.attname, format_type(a.atttypid, NULL), "
    "a.attnum, t.typlen) ORDER BY a.attnum) FROM pg_attribute a "
    "JOIN pg_type t ON t.oid = a.atttypid "
    "WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]')::text, "
    "coalesce((SELECT json_agg(array_to_string(i.indkey, ' ')) FROM pg_index i "
    "WHERE i.indrelid = c.oid), '[]')::text "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1"
)

# The tables written when a write could not be tied to one plain table (a view, a
# data-modifying WITH, MERGE): every table whose statistics show inserts or updates (this
# transaction's, or earlier ones not flushed yet: more tables than needed, never fewer).
WRITTEN_TABLES_SQL = (
    "SELECT s.relid::text FROM pg_stat_xact_user_tables s "
    "WHERE s.n_tup_ins + s.n_tup_upd > 0 AND has_table_privilege(s.relid, 'SELECT')"
)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class TableMeta:
    """A table's columns and keys, and the aggregate query that measures its new rows."""

    relid: str
    qualified: str
    indexed: frozenset[str]  # names of the columns in any index (key columns)
    fixed: frozenset[str]  # names of the fixed-width columns (int, float, timestamp…)
    row_width: float  # estimated bytes per row: stored width, else from the column types
    toast_data: bool  # its TOAST relation holds values (that stored widths leave out)
    select_sql: str  # "SELECT <relid>, count, sum, max row, max column, max key FROM ONLY t x"

    def benign_update(self, assigned: list[str]) -> bool:
        """True if an UPDATE assigning ``assigned`` cannot break a size limit by itself.

        Fixed-width, non-key columns leave every key, column and row the size it was; only
        the transaction's total grows, by about a row per updated row (`row_width`). Rows
        with values out of line are left to a measurement (their stored width leaves those out).
        """
        if not assigned or self.toast_data:
            return False
        return all(col in self.fixed and col not in self.indexed for col in assigned)

    def measure_sql(self, back_param: int) -> str:
        """This table's rows written by the current transaction, in its last ``$back_param``
        blocks (a TID range scan whose start is an InitPlan, evaluated once; the text stays
        the same from one transaction to the next, for the session's caches).

        ``age(xmin) <= 0`` picks the transaction's rows: age counts back from the
        transaction's own (stable) xid, so its rows give 0 and its subtransactions' (newer
        xids) less; rows of earlier transactions are older, and later ones are not in its
        REPEATABLE READ snapshot. Cheaper than comparing ``xmin`` as text, row by row.
        """
        return (
            f"{self.select_sql} WHERE x.ctid >= (SELECT format('(%s,0)', greatest(0, "
            f"pg_relation_size({int(self.relid)}) / current_setting('block_size')::int "
            f"- ${int(back_param)}::bigint)))::tid AND age(x.xmin) <= 0) s"
        )


def parse_meta(relid: str, row: tuple[str | None, ...]) -> TableMeta | None:
    """Build a `TableMeta` from a `META_SQL` row (None for a relation without columns)."""
    relpages, reltuples, block_size, toast_data, qualified, cols_json, keys_json = row
    columns = json.loads(cols_json or "[]")
    if qualified is None or not columns:
        return None
    by_num: dict[int, str] = {}
    sizes: list[str] = []
    type_width = 0
    for name, typ, attnum, typlen in columns:
        ref = f"x.{_ident(name)}"
        if typ in _MEASURED_TYPES:
            sizes.append(f"coalesce(octet_length({ref}), 0)")
        else:
            sizes.append(f"coalesce(pg_column_size({ref}), 0)")
        by_num[int(attnum)] = sizes[-1]
        type_width += int(typlen) if int(typlen) > 0 else _DEFAULT_VARLENA_WIDTH
    names = {int(attnum): name for name, _, attnum, _ in columns}
    fixed = frozenset(name for name, _, _, typlen in columns if int(typlen) > 0)
    key_exprs: list[str] = []
    indexed: set[str] = set()
    for indkey in json.loads(keys_json or "[]"):
        nums = [int(n) for n in (indkey or "").split() if n != "0"]
        indexed.update(names[n] for n in nums if n in names)
        parts = [by_num[n] for n in nums if n in by_num]
        if parts:
            key_exprs.append(" + ".join(parts))
    row_expr = " + ".join(sizes)
    col_expr = f"greatest({', '.join(sizes)})" if len(sizes) > 1 else sizes[0]
    key_expr = f"greatest({', '.join(key_exprs)})" if key_exprs else "0"
    select_sql = (
        f"SELECT {int(relid)}::oid::text, count(*)::text, coalesce(sum(r), 0)::text, "
        "coalesce(max(r), 0)::text, coalesce(max(c), 0)::text, coalesce(max(k), 0)::text "
        f"FROM (SELECT {row_expr} AS r, {col_expr} AS c, {key_expr} AS k "
        f"FROM ONLY {qualified} x"
    )
    width = stored_row_width(relpages, reltuples, block_size) or float(type_width)
    return TableMeta(
        relid, qualified, frozenset(indexed), fixed, width, toast_data == "true", select_sql
    )


class MetaCache:
    """`TableMeta` per (relation, catalog version, local DDL generation), refreshed after
    `META_MAX_AGE_SECONDS`; shared by the sessions."""

    def __init__(
        self, max_entries: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._entries: dict[tuple[str, int, int], tuple[float, TableMeta | None]] = {}
        self._max = max_entries
        self._clock = clock
        self.generation = 0  # bumped after any transaction that ran DDL through these hooks

    def invalidate(self) -> None:
        self.generation += 1
        self._entries.clear()

    def key(self, ctx: StatementContext, relid: str) -> tuple[str, int, int]:
        return (relid, int(getattr(ctx.cluster, "catalog_version", 0)), self.generation)

    async def get(self, ctx: StatementContext, relid: str) -> TableMeta | None:
        key = self.key(ctx, relid)
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and now - entry[0] < META_MAX_AGE_SECONDS:
            return entry[1]
        results = await ctx.execute(META_SQL, (relid,))
        rows = results[-1].rows if results else ()
        meta = parse_meta(relid, rows[0]) if rows else None
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[key] = (now, meta)
        return meta


@dataclass(frozen=True)
class Measured:
    """A table's rows found by one measuring scan: count, total bytes and the largest sizes."""

    found: int = 0
    total: int = 0
    max_row: int = 0
    max_column: int = 0
    max_key: int = 0


async def measure(ctx: StatementContext, scans: list[tuple[TableMeta, int]]) -> dict[str, Measured]:
    """Run the measuring scans (table, blocks back from its end) as one query, by relation id."""
    if not scans:
        return {}
    sql = " UNION ALL ".join(meta.measure_sql(i + 1) for i, (meta, _) in enumerate(scans))
    results = await ctx.execute(sql, [str(int(back)) for _, back in scans])
    out: dict[str, Measured] = {}
    for row in results[-1].rows if results else ():
        relid, *values = row
        if relid is not None:
            out[relid] = Measured(*(int(v or 0) for v in values))
    return out


@dataclass
class TableWrites:
    """What one transaction did to one table, from its statements' command tags and probes."""

    meta: TableMeta
    selectable: bool
    versions: int = 0  # new row versions (INSERT, UPDATE, COPY rows)
    benign: int = 0  # of which rows of UPDATEs that cannot change a size (not looked up)
    inserted: int = 0  # of which INSERT/COPY rows (INSERT … ON CONFLICT DO UPDATE counts here)
    key_updated: bool = False  # an UPDATE or ON CONFLICT DO UPDATE assigned an indexed column
    toasted: int = 0  # the TOAST inserts counter when last probed
    toast_rose: bool = False  # … and it rose during this transaction
    toast_data: bool = False  # its TOAST relation holds values (that stored widths leave out)
    row_width: float = 0.0  # stored bytes per row, for estimates

    def tail_blocks(self) -> int:
        """Blocks at the table's end that hold all the versions if they were appended."""
        return TAIL_SLACK_BLOCKS + self.versions

    @property
    def only_benign(self) -> bool:
        """All its versions come from `TableMeta.benign_update` UPDATEs: nothing to measure."""
        return self.versions == self.benign

    def needs_exact(self, found: int) -> bool:
        """True if versions not found in the tail could break a key, column or row limit."""
        if found >= self.versions:
            return False
        return self.inserted > 0 or self.key_updated or self.toast_rose or self.toast_data


def stored_row_width(relpages: str | None, reltuples: str | None, block_size: str | None) -> float:
    """Average stored bytes per row from pg_class (0 when the table was never analyzed)."""
    try:
        pages, tuples, size = float(relpages or 0), float(reltuples or 0), int(block_size or 0)
    except ValueError:
        return 0.0
    return pages * size / tuples if pages > 0 and tuples > 0 else 0.0


@dataclass
class Writes:
    """Per-transaction record of the tables written, by relation id."""

    tables: dict[str, TableWrites] = field(default_factory=dict)
    indirect: bool = False  # a write not tied to one plain table (view, partitioned, WITH)
    unknown_rows: bool = False  # … whose row count the command tag does not give (WITH, MERGE)


def small_literal_insert(stmt_inner: Any, node_name: str | None) -> bool:
    """True for an ``INSERT … VALUES`` whose values are all short literals, NULL, DEFAULT or
    ``CURRENT_…``: it cannot write a value over the column limit (only a column default
    could, and COMMIT measures the rows anyway), so it needs no TOAST lookup."""
    if node_name != "insert_stmt" or stmt_inner.HasField("on_conflict_clause"):
        return False
    if stmt_inner.HasField("with_clause") or not stmt_inner.HasField("select_stmt"):
        return False
    if stmt_inner.select_stmt.WhichOneof("node") != "select_stmt":
        return False
    lists = stmt_inner.select_stmt.select_stmt.values_lists
    return bool(lists) and all(_small_value(item) for v in lists for item in v.list.items)


def _small_value(node: Any) -> bool:
    kind = node.WhichOneof("node")
    if kind in ("sqlvalue_function", "set_to_default"):
        return True
    if kind == "type_cast":
        return bool(_small_value(node.type_cast.arg))
    if kind != "a_const":
        return False
    const = node.a_const
    which = const.WhichOneof("val")
    if const.isnull or which in (None, "ival", "boolval"):
        return True
    text = {"sval": const.sval.sval, "fval": const.fval.fval, "bsval": const.bsval.bsval}
    return len(text.get(which, "x" * (_SMALL_LITERAL + 1))) <= _SMALL_LITERAL


def assigned_columns(stmt_inner: Any, node_name: str | None) -> list[str]:
    """Columns an UPDATE (or INSERT … ON CONFLICT DO UPDATE) assigns, from its parse tree."""
    if node_name == "update_stmt":
        targets = stmt_inner.target_list
    elif node_name == "insert_stmt" and stmt_inner.HasField("on_conflict_clause"):
        targets = stmt_inner.on_conflict_clause.target_list
    else:
        return []
    return [t.res_target.name for t in targets if t.WhichOneof("node") == "res_target"]
