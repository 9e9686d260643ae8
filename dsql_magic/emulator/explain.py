"""DSQL-shaped EXPLAIN: PostgreSQL's JSON plan plus catalog facts → Aurora DSQL's plan shape.

Aurora DSQL has no heap: the primary key *is* the table, every other index can INCLUDE columns,
and a condition runs at one of three levels (manual, "Filters in Aurora DSQL"): ``Index Cond``
(navigates the index), storage ``Filters`` (evaluated in storage, before transfer) or the query
processor's ``Filter`` (after transfer). This module rewrites PostgreSQL's scans into DSQL's nodes
(manual, "Reading Aurora DSQL EXPLAIN plans"):

* ``Seq Scan`` on a table without primary key → ``Full Scan (btree-table)`` → ``Storage Scan`` →
  ``B-Tree Scan``; on a table with one → ``Index Only Scan using <pkey>`` (the key covers every
  column) → ``Storage Scan`` → ``B-Tree Scan``;
* an index scan on the primary key, or on an index holding every column the query needs →
  ``Index Only Scan``; otherwise ``Index Scan`` with a ``Storage Scan`` on the index and a
  ``Storage Lookup`` → ``B-Tree Lookup`` on the table;
* other nodes (joins, sorts, aggregates, Insert…) keep PostgreSQL's shape.

The storage-pushdown rule (`pushable`): a conjunct goes to storage if it compares one column of the
scanned table with a constant or parameter (``= <> < <= > >=``, ``= ANY (array)``, ``IN``), tests a
column for NULL / true / false, or is a boolean column — and involves no ``numeric`` or floating
point value (the manual's ``balance > 100`` on a numeric column stays in the query processor).
Anything else (LIKE, functions, OR, other tables' columns, sub-plans) is a query-processor
``Filter``. Row counts between levels are split from PostgreSQL's figures (see `_levels`).

The pure part (`convert`, `render_text`, `render_json`, `dpu_work`) does no I/O; `ExplainHook`
runs PostgreSQL's ``EXPLAIN (FORMAT JSON, VERBOSE …)`` and the catalog lookup through the
statement context. It must not print or log statement parameters' values beyond the plan itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import postgast

from . import metering
from .statements import pb

if TYPE_CHECKING:
    from .hooks import StatementContext, Synthetic
    from .statements import Statement

JSON_OID = 114
TEXT_OID = 25


def _token_name(value: int) -> str:
    """The scanner token's name; single characters without one are named ``ASCII_<code>``."""
    try:
        return str(pb.Token.Name(value))
    except ValueError:
        return f"ASCII_{value}"


# --- options ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExplainOptions:
    """What the client asked for, and the statement to explain (its original text)."""

    query: str
    analyze: bool = False
    verbose: bool = False
    format: str = "text"
    costs: bool = True
    generic: bool = False  # the statement has $n parameters: see `_generic_plan`


def _truthy(elem: Any) -> bool:
    arg = elem.arg
    which = arg.WhichOneof("node")
    if which is None:
        return True
    if which == "a_const":
        c = arg.a_const
        if c.HasField("boolval"):
            return bool(c.boolval.boolval)
        if c.HasField("ival"):
            return c.ival.ival != 0
        if c.HasField("sval"):
            return c.sval.sval.lower() not in {"off", "false", "0", "no"}
    if which == "string":
        return arg.string.sval.lower() not in {"off", "false", "0", "no"}
    return True


def _option_value(elem: Any) -> str:
    arg = elem.arg
    which = arg.WhichOneof("node")
    if which == "string":
        return str(arg.string.sval).lower()
    if which == "a_const" and arg.a_const.HasField("sval"):
        return str(arg.a_const.sval.sval).lower()
    return ""


def explain_options(stmt: Statement) -> ExplainOptions | None:
    """The options of an ``EXPLAIN`` statement we answer in DSQL's shape, else None.

    None for anything else, and for formats other than TEXT and JSON (those go to PostgreSQL).
    """
    if stmt.node_name != "explain_stmt":
        return None
    opts: dict[str, Any] = {"analyze": False, "verbose": False, "format": "text", "costs": True}
    for option in stmt.inner.options:
        elem = option.def_elem
        name = elem.defname
        if name in {"analyze", "verbose", "costs"}:
            opts[name] = _truthy(elem)
        elif name == "format":
            opts["format"] = _option_value(elem)
        elif name in {"generic_plan", "settings", "wal"} and _truthy(elem):
            return None
    if opts["format"] not in {"text", "json"}:
        return None
    query = _explained_query(stmt.pg_text)
    if query is None:
        return None
    generic = _parameter_count(query) > 0
    if generic and opts["analyze"]:
        return None  # the values arrive after this hook runs: PostgreSQL answers as it is
    return ExplainOptions(query=query, generic=generic, **opts)


def _parameter_count(query: str) -> int:
    """The highest ``$n`` in the statement (extended protocol: values are bound later)."""
    try:
        tokens = postgast.scan(query).tokens
    except postgast.PgQueryError:
        return 0
    data = query.encode("utf-8")
    numbers = [int(data[t.start + 1 : t.end]) for t in tokens if _token_name(t.token) == "PARAM"]
    return max(numbers, default=0)


def _explained_query(text: str) -> str | None:
    """The text after ``EXPLAIN [ANALYZE] [VERBOSE] | EXPLAIN ( … )``, found on scanner tokens."""
    data = text.encode("utf-8")
    try:
        tokens = [t for t in postgast.scan(text).tokens if _token_name(t.token) != "SQL_COMMENT"]
    except postgast.PgQueryError:
        return None
    tokens = [t for t in tokens if _token_name(t.token) != "C_COMMENT"]
    if not tokens or data[tokens[0].start : tokens[0].end].upper() != b"EXPLAIN":
        return None
    i = 1
    if i < len(tokens) and _token_name(tokens[i].token) == "ASCII_40":
        depth = 0
        while i < len(tokens):
            name = _token_name(tokens[i].token)
            depth += name == "ASCII_40"
            depth -= name == "ASCII_41"
            i += 1
            if depth == 0:
                break
    else:
        while i < len(tokens) and data[tokens[i].start : tokens[i].end].upper() in {
            b"ANALYZE",
            b"ANALYSE",
            b"VERBOSE",
        }:
            i += 1
    if i >= len(tokens):
        return None
    return data[tokens[i].start : tokens[-1].end].decode("utf-8")


def internal_explain_sql(opts: ExplainOptions) -> str:
    """What the hook runs on PostgreSQL: always JSON and VERBOSE (for Output and qualifiers)."""
    analyze = ", ANALYZE" if opts.analyze else ""
    return f"EXPLAIN (FORMAT JSON, VERBOSE{analyze}) {opts.query}"


# --- catalog facts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexFacts:
    name: str
    keys: tuple[str, ...]
    include: tuple[str, ...] = ()
    primary: bool = False
    unique: bool = False

    @property
    def columns(self) -> frozenset[str]:
        return frozenset(self.keys) | frozenset(self.include)


@dataclass(frozen=True)
class TableFacts:
    schema: str
    name: str
    columns: tuple[str, ...]
    indexes: tuple[IndexFacts, ...] = ()
    reltuples: float = -1.0

    @property
    def primary_key(self) -> IndexFacts | None:
        return next((i for i in self.indexes if i.primary), None)

    def index(self, name: str) -> IndexFacts | None:
        return next((i for i in self.indexes if i.name == name), None)


@dataclass
class Catalog:
    """Tables by ``(schema, name)``; built from `CATALOG_SQL`'s JSON answer."""

    tables: dict[tuple[str, str], TableFacts] = field(default_factory=dict)

    def get(self, schema: str | None, name: str) -> TableFacts | None:
        if schema is not None:
            return self.tables.get((schema, name))
        return next((t for (_, n), t in self.tables.items() if n == name), None)

    @classmethod
    def from_json(cls, value: str | list[dict[str, Any]] | None) -> Catalog:
        data = json.loads(value) if isinstance(value, str) else (value or [])
        out = cls()
        for t in data:
            indexes = tuple(
                IndexFacts(
                    i["name"],
                    tuple(i["keys"] or ()),
                    tuple(i["include"] or ()),
                    bool(i["primary"]),
                    bool(i["unique"]),
                )
                for i in t["indexes"] or ()
            )
            facts = TableFacts(
                t["schema"], t["table"], tuple(t["columns"] or ()), indexes, float(t["reltuples"])
            )
            out.tables[(facts.schema, facts.name)] = facts
        return out


CATALOG_SQL = """
SELECT coalesce(json_agg(json_build_object(
  'schema', n.nspname, 'table', c.relname, 'reltuples', c.reltuples,
  'columns', (SELECT coalesce(json_agg(a.attname ORDER BY a.attnum), '[]')
                FROM pg_attribute a
               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
  'indexes', (SELECT coalesce(json_agg(json_build_object(
                'name', i.relname, 'primary', x.indisprimary, 'unique', x.indisunique,
                'keys', (SELECT coalesce(json_agg(a.attname ORDER BY k.n), '[]')
                           FROM unnest(x.indkey::int2[]) WITH ORDINALITY k(att, n)
                           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.att
                          WHERE k.n <= x.indnkeyatts),
                'include', (SELECT coalesce(json_agg(a.attname ORDER BY k.n), '[]')
                              FROM unnest(x.indkey::int2[]) WITH ORDINALITY k(att, n)
                              JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.att
                             WHERE k.n > x.indnkeyatts)) ORDER BY i.relname), '[]')
                FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
               WHERE x.indrelid = c.oid))), '[]')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid IN (SELECT to_regclass(r) FROM unnest($1::text[]) AS r)
"""


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def relations_of(plan: Any) -> list[str]:
    """Qualified names (``"schema"."table"``) of the relations a PostgreSQL JSON plan touches."""
    out: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if "Relation Name" in node:
            schema = node.get("Schema")
            name = _quote_ident(node["Relation Name"])
            out.add(f"{_quote_ident(schema)}.{name}" if schema else name)
        for child in node.get("Plans", ()):
            walk(child)

    walk(_top(plan)["Plan"])
    return sorted(out)


def array_literal(items: Iterable[str]) -> str:
    """A PostgreSQL text[] literal (for binding `CATALOG_SQL`'s parameter in text form)."""
    quoted = ('"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"' for i in items)
    return "{" + ",".join(quoted) + "}"


# --- expressions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tok:
    start: int
    end: int
    name: str
    text: str


def _tokens(text: str) -> list[_Tok]:
    data = text.encode("utf-8")
    out = []
    for t in postgast.scan(text).tokens:
        name = _token_name(t.token)
        if name not in {"SQL_COMMENT", "C_COMMENT"}:
            out.append(_Tok(t.start, t.end, name, data[t.start : t.end].decode("utf-8")))
    return out


def split_conjuncts(expr: str | None) -> list[str]:
    """PostgreSQL's ``((a) AND (b) AND (c))`` as ``["(a)", "(b)", "(c)"]``; others as one item.

    Cut on top-level ``AND`` tokens, then checked against libpg_query's parse of the expression
    (the count of AND arguments must match), so quotes, BETWEEN and nested ORs stay whole.
    """
    if not expr:
        return []
    text = expr.strip()
    val = _expr_node(text)
    try:
        toks = _tokens(text)
    except postgast.PgQueryError:
        return [text]
    if val is None or val.WhichOneof("node") != "bool_expr" or val.bool_expr.boolop != pb.AND_EXPR:
        return [text]
    data = text.encode("utf-8")
    # Drop one pair of parentheses that encloses everything.
    if toks and toks[0].name == "ASCII_40" and toks[-1].name == "ASCII_41":
        depth = 0
        encloses = True
        for k, t in enumerate(toks):
            depth += t.name == "ASCII_40"
            depth -= t.name == "ASCII_41"
            if depth == 0 and k < len(toks) - 1:
                encloses = False
                break
        if encloses:
            toks = toks[1:-1]
    parts: list[str] = []
    depth = 0
    start = toks[0].start if toks else 0
    for t in toks:
        depth += t.name == "ASCII_40"
        depth -= t.name == "ASCII_41"
        if depth == 0 and t.name == "AND":
            parts.append(data[start : t.start].decode("utf-8").strip())
            start = t.end
    if toks:
        parts.append(data[start : toks[-1].end].decode("utf-8").strip())
    if len(parts) != len(val.bool_expr.args) or any(not p for p in parts):
        return [text]
    return parts


def join_conjuncts(parts: Sequence[str]) -> str:
    """The inverse of `split_conjuncts`, in PostgreSQL's style."""
    if len(parts) == 1:
        return parts[0]
    return "(" + " AND ".join(parts) + ")"


def _expr_node(expr: str) -> Any:
    """The parse tree of one scalar expression, or None if ``expr`` is not exactly that."""
    try:
        parsed = postgast.parse("SELECT " + expr)
    except postgast.PgQueryError:
        return None
    if len(parsed.stmts) != 1 or parsed.stmts[0].stmt.WhichOneof("node") != "select_stmt":
        return None
    select = parsed.stmts[0].stmt.select_stmt
    if len(select.target_list) != 1 or select.from_clause or select.op != pb.SETOP_NONE:
        return None
    target = select.target_list[0].res_target
    if target.name or select.where_clause.WhichOneof("node") or select.sort_clause:
        return None
    return target.val


def column_refs(expr: str, alias: str) -> set[str] | None:
    """Columns of the relation ``alias`` that ``expr`` uses; None if it uses anything else that
    ties it to the query processor (other relations' columns, sub-plans)."""
    node = _expr_node(expr)
    if node is None:
        return None
    cols: set[str] = set()
    for ref in postgast.find_nodes(node, pb.ColumnRef):
        fields = [f.string.sval for f in ref.fields if f.WhichOneof("node") == "string"]
        if len(fields) == 1:
            cols.add(fields[0])
        elif len(fields) == 2 and fields[0] == alias:
            cols.add(fields[1])
        else:
            return None
    if "SubPlan" in expr or "InitPlan" in expr:
        return None
    return cols


_PUSHABLE_OPS = {"=", "<>", "<", "<=", ">", ">="}
_NOT_PUSHABLE_TYPES = {"numeric", "float4", "float8", "real", "double precision", "decimal"}


def _strip_casts(node: Any) -> tuple[Any, list[str]]:
    types: list[str] = []
    while node.WhichOneof("node") == "type_cast":
        tc = node.type_cast
        types.append(".".join(n.string.sval for n in tc.type_name.names).split(".")[-1])
        node = tc.arg
    return node, types


def _is_column(node: Any) -> bool:
    return bool(node.WhichOneof("node") == "column_ref")


def _is_constant(node: Any) -> bool:
    which = node.WhichOneof("node")
    if which in {"a_const", "param_ref"}:
        return True
    if which == "a_array_expr":
        return all(_is_constant(_strip_casts(e)[0]) for e in node.a_array_expr.elements)
    if which == "list":
        return all(_is_constant(_strip_casts(e)[0]) for e in node.list.items)
    return False


def pushable(expr: str) -> bool:
    """True if storage can evaluate ``expr`` (the rule in the module docstring)."""
    node = _expr_node(expr)
    if node is None:
        return False
    which = node.WhichOneof("node")
    if which == "column_ref":
        return True
    if which == "null_test":
        return _is_column(_strip_casts(node.null_test.arg)[0])
    if which == "boolean_test":
        return _is_column(_strip_casts(node.boolean_test.arg)[0])
    if which == "bool_expr" and node.bool_expr.boolop == pb.NOT_EXPR:
        return len(node.bool_expr.args) == 1 and _is_column(node.bool_expr.args[0])
    if which != "a_expr":
        return False
    a = node.a_expr
    if a.kind not in (pb.AEXPR_OP, pb.AEXPR_OP_ANY, pb.AEXPR_IN):
        return False
    ops = [n.string.sval for n in a.name]
    if len(ops) != 1 or ops[0] not in _PUSHABLE_OPS:
        return False
    left, ltypes = _strip_casts(a.lexpr)
    right, rtypes = _strip_casts(a.rexpr)
    if any(t in _NOT_PUSHABLE_TYPES or t.startswith("_") for t in ltypes):
        return False
    types = ltypes + [t.lstrip("_") for t in rtypes]
    if any(t in _NOT_PUSHABLE_TYPES for t in types):
        return False
    return (_is_column(left) and _is_constant(right)) or (
        a.kind == pb.AEXPR_OP and _is_constant(left) and _is_column(right)
    )


_KEY_OPS = {"=", "<", "<=", ">", ">="}


def key_condition(expr: str) -> bool:
    """True for a pushable conjunct that can navigate a key: ``=``, a range, or ``= ANY``."""
    node = _expr_node(expr)
    if node is None or node.WhichOneof("node") != "a_expr" or not pushable(expr):
        return False
    a = node.a_expr
    ops = [n.string.sval for n in a.name]
    if a.kind == pb.AEXPR_OP_ANY:
        return ops == ["="]
    return a.kind == pb.AEXPR_OP and len(ops) == 1 and ops[0] in _KEY_OPS


def unqualify(expr: str, aliases: Iterable[str]) -> str:
    """Drop ``alias.`` before column names (PostgreSQL's VERBOSE style → the plain style)."""
    names = set(aliases)
    if not names or not expr:
        return expr
    try:
        toks = _tokens(expr)
    except postgast.PgQueryError:
        return expr
    data = expr.encode("utf-8")
    cuts: list[tuple[int, int]] = []
    for k in range(len(toks) - 2):
        t = toks[k]
        ident = t.text[1:-1].replace('""', '"') if t.text.startswith('"') else t.text
        if (
            ident in names
            and toks[k + 1].name == "ASCII_46"
            and (k == 0 or toks[k - 1].name != "ASCII_46")
        ):
            cuts.append((t.start, toks[k + 1].end))
    if not cuts:
        return expr
    out = bytearray()
    pos = 0
    for a, b in cuts:
        out += data[pos:a]
        pos = b
    out += data[pos:]
    return out.decode("utf-8")


# --- conversion ------------------------------------------------------------------------------

SCAN_TYPES = {"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan"}
STORAGE_NODE_TYPES = {"Storage Scan", "B-Tree Scan", "Storage Lookup", "B-Tree Lookup"}
FULL_SCAN = "Full Scan (btree-table)"
_FILTER_MULTIPLIER = 3.0  # assumed rows kept per filter conjunct, for estimated input rows


@dataclass
class _Split:
    index_cond: str | None
    storage: list[str]
    processor: list[str]


def _levels(rows_in: float, rows_out: float, steps: Sequence[int]) -> list[float]:
    """Rows after each level of filtering, given rows in and out and each level's conjuncts.

    PostgreSQL reports only the rows before and after all of a scan's conditions; each conjunct
    is assumed to remove the same fraction (geometric interpolation), so a level with more
    conjuncts removes more rows. Levels without conjuncts keep their rows.
    """
    total = sum(steps)
    out = []
    applied = 0
    for s in steps:
        applied += s
        if total == 0 or rows_in <= 0:
            out.append(rows_out if total else rows_in)
            continue
        ratio = max(rows_out, 0.0) / rows_in
        out.append(rows_in * ratio ** (applied / total))
    return out


def _ordered(cols: Iterable[str], order: Sequence[str]) -> list[str]:
    wanted = set(cols)
    listed = [c for c in order if c in wanted]
    return listed + sorted(wanted - set(listed))


class _Converter:
    def __init__(self, catalog: Catalog, verbose: bool, analyze: bool) -> None:
        self.catalog = catalog
        self.verbose = verbose
        self.analyze = analyze
        self.aliases: set[str] = set()

    def node(self, pg: dict[str, Any]) -> dict[str, Any]:
        ptype = pg.get("Node Type")
        if ptype in SCAN_TYPES:
            converted = self.scan(pg)
            if converted is not None:
                return converted
        out = {k: v for k, v in pg.items() if k != "Plans" and not _dropped_key(k)}
        if "Alias" in pg:
            self.aliases.add(pg["Alias"])
        children = [self.node(c) for c in pg.get("Plans", ())]
        if children:
            out["Plans"] = children
        return out

    def scan(self, pg: dict[str, Any]) -> dict[str, Any] | None:
        ptype = pg["Node Type"]
        table = self.catalog.get(pg.get("Schema"), pg.get("Relation Name", ""))
        if table is None:
            return None
        alias = pg.get("Alias", table.name)
        self.aliases.add(alias)
        filters = split_conjuncts(pg.get("Filter"))
        index_cond = pg.get("Index Cond")
        index_name = pg.get("Index Name")
        if ptype == "Bitmap Heap Scan":
            kids = pg.get("Plans", ())
            if len(kids) != 1 or kids[0].get("Node Type") != "Bitmap Index Scan":
                return None
            index_cond = kids[0].get("Index Cond")
            index_name = kids[0].get("Index Name")
        output = list(pg.get("Output", ()))
        out_cols: set[str] = set()
        for item in output:
            refs = column_refs(item, alias)
            out_cols |= refs or set()
        storage: list[str] = []
        processor: list[str] = []
        cond_cols: dict[str, set[str]] = {}
        for c in filters:
            refs = column_refs(c, alias)
            if refs is not None and pushable(c):
                storage.append(c)
                cond_cols[c] = refs
            else:
                processor.append(c)
                out_cols |= refs or set()
        split = _Split(index_cond, storage, processor)
        if ptype == "Seq Scan":
            pk = table.primary_key
            if pk is None:
                return self.full_scan(pg, table, split, out_cols)
            # Rows are stored in key order: a range or equality on the key's first column
            # navigates the key (Index Cond) instead of filtering in storage.
            keyed = [c for c in storage if cond_cols[c] == {pk.keys[0]} and key_condition(c)]
            if keyed:
                split = _Split(join_conjuncts(keyed), [c for c in storage if c not in keyed],
                               processor)  # fmt: skip
            return self.covering(
                pg, table, pk, split, out_cols, input_is_table=True, key_steps=len(keyed)
            )
        index = table.index(index_name or "")
        if index is None:
            return None
        needed = out_cols | {c for cols in cond_cols.values() for c in cols}
        if index.primary or ptype == "Index Only Scan" or needed <= index.columns:
            return self.covering(pg, table, index, split, out_cols, input_is_table=False)
        return self.lookup(pg, table, index, split, out_cols, cond_cols)

    # rows
    def _rows(
        self, pg: dict[str, Any], table: TableFacts, n_filters: int, full: bool
    ) -> tuple[float, float, float, float]:
        """(estimated in, estimated out, actual in, actual out) for a scan."""
        est_out = float(pg.get("Plan Rows", 0))
        if full and table.reltuples >= 0:
            est_in = max(table.reltuples, est_out)
        else:
            est_in = est_out * (_FILTER_MULTIPLIER**n_filters)
            if table.reltuples >= 0:
                est_in = max(est_out, min(est_in, table.reltuples))
        act_out = float(pg.get("Actual Rows", 0))
        act_in = act_out + float(pg.get("Rows Removed by Filter", 0))
        return est_in, est_out, act_in, act_out

    def _base(self, pg: dict[str, Any], node_type: str, rows: float, act: float) -> dict[str, Any]:
        out: dict[str, Any] = {"Node Type": node_type}
        for key in ("Startup Cost", "Total Cost"):
            if key in pg:
                out[key] = pg[key]
        out["Plan Rows"] = round(rows)
        out["Plan Width"] = pg.get("Plan Width", 0)
        if self.analyze and "Actual Loops" in pg:
            out["Actual Rows"] = round(act)
            out["Actual Loops"] = pg["Actual Loops"]
        return out

    def _top(self, pg: dict[str, Any], node_type: str, split: _Split) -> dict[str, Any]:
        out: dict[str, Any] = {"Node Type": node_type}
        for key in ("Parent Relationship", "Subplan Name", "Index Name"):
            if key in pg:
                out[key] = pg[key]
        for key in ("Relation Name", "Schema", "Alias"):
            if key in pg:
                out[key] = pg[key]
        for key in (
            "Startup Cost",
            "Total Cost",
            "Plan Rows",
            "Plan Width",
            "Actual Startup Time",
            "Actual Total Time",
            "Actual Rows",
            "Actual Loops",
        ):
            if key in pg:
                out[key] = pg[key]
        if pg.get("Output"):
            out["Output"] = list(pg["Output"])
        if split.index_cond:
            out["Index Cond"] = split.index_cond
        if split.processor:
            out["Filter"] = join_conjuncts(split.processor)
        return out

    def full_scan(
        self, pg: dict[str, Any], table: TableFacts, split: _Split, out_cols: set[str]
    ) -> dict[str, Any]:
        n_s, n_p = len(split.storage), len(split.processor)
        est_in, est_out, act_in, act_out = self._rows(pg, table, n_s + n_p, True)
        (est_s,) = _levels(est_in, est_out, [n_s, n_p])[:1]
        (act_s,) = _levels(act_in, act_out, [n_s, n_p])[:1]
        top = self._top(pg, FULL_SCAN, split)
        if self.analyze and split.processor:
            top["Rows Removed by Filter"] = max(0, round(act_s) - round(act_out))
        storage = self._base(pg, "Storage Scan", est_s, act_s)
        storage["Relation Name"] = table.name
        storage["Projections"] = _ordered(out_cols, table.columns)
        if split.storage:
            storage["Filters"] = join_conjuncts(split.storage)
        btree = self._base(pg, "B-Tree Scan", est_in, act_in)
        btree["Relation Name"] = table.name
        storage["Plans"] = [btree]
        top["Plans"] = [storage]
        return top

    def covering(
        self,
        pg: dict[str, Any],
        table: TableFacts,
        index: IndexFacts,
        split: _Split,
        out_cols: set[str],
        *,
        input_is_table: bool,
        key_steps: int = 0,
    ) -> dict[str, Any]:
        n_s, n_p = len(split.storage), len(split.processor)
        full = input_is_table or not split.index_cond
        est_in, est_out, act_in, act_out = self._rows(pg, table, key_steps + n_s + n_p, full)
        if key_steps:  # conditions moved from PostgreSQL's Filter: the key reads fewer rows
            est_in, est_s, _ = _levels(est_in, est_out, [key_steps, n_s, n_p])
            act_in, act_s, _ = _levels(act_in, act_out, [key_steps, n_s, n_p])
        else:
            est_s = _levels(est_in, est_out, [n_s, n_p])[0]
            act_s = _levels(act_in, act_out, [n_s, n_p])[0]
        top = self._top(pg, "Index Only Scan", split)
        top["Index Name"] = index.name
        top = _reorder(top)
        if self.analyze and split.processor:
            top["Rows Removed by Filter"] = max(0, round(act_s) - round(act_out))
        storage = self._base(pg, "Storage Scan", est_s, act_s)
        storage["Index Name"] = index.name
        storage["Projections"] = _ordered(out_cols, table.columns)
        if split.storage:
            storage["Filters"] = join_conjuncts(split.storage)
        btree = self._base(pg, "B-Tree Scan", est_in, act_in)
        btree["Index Name"] = index.name
        if split.index_cond:
            btree["Index Cond"] = split.index_cond
        storage["Plans"] = [btree]
        top["Plans"] = [storage]
        return top

    def lookup(
        self,
        pg: dict[str, Any],
        table: TableFacts,
        index: IndexFacts,
        split: _Split,
        out_cols: set[str],
        cond_cols: dict[str, set[str]],
    ) -> dict[str, Any]:
        on_index = [c for c in split.storage if cond_cols[c] <= index.columns]
        on_table = [c for c in split.storage if c not in on_index]
        steps = [len(on_index), len(on_table), len(split.processor)]
        est_in, est_out, act_in, act_out = self._rows(pg, table, sum(steps), False)
        est_i, est_t, _ = _levels(est_in, est_out, steps)
        act_i, act_t, _ = _levels(act_in, act_out, steps)
        top = self._top(pg, "Index Scan", split)
        top["Index Name"] = index.name
        top = _reorder(top)
        if self.analyze and split.processor:
            top["Rows Removed by Filter"] = max(0, round(act_t) - round(act_out))
        scan = self._base(pg, "Storage Scan", est_i, act_i)
        scan["Index Name"] = index.name
        scan["Projections"] = _ordered(out_cols & index.columns, table.columns)
        if on_index:
            scan["Filters"] = join_conjuncts(on_index)
        btree = self._base(pg, "B-Tree Scan", est_in, act_in)
        btree["Index Name"] = index.name
        if split.index_cond:
            btree["Index Cond"] = split.index_cond
        scan["Plans"] = [btree]
        look = self._base(pg, "Storage Lookup", est_t, act_t)
        look["Relation Name"] = table.name
        from_table = out_cols - index.columns
        if from_table:
            look["Projections"] = _ordered(from_table, table.columns)
        if on_table:
            look["Filters"] = join_conjuncts(on_table)
        blook = self._base(pg, "B-Tree Lookup", est_i, act_i)
        blook["Relation Name"] = table.name
        look["Plans"] = [blook]
        top["Plans"] = [scan, look]
        return top


_DROPPED_PREFIXES = ("Shared ", "Local ", "Temp ", "I/O ", "WAL ")


def _dropped_key(key: str) -> bool:
    return key.startswith(_DROPPED_PREFIXES) or key in {"Parallel Aware", "Async Capable"}


def _reorder(top: dict[str, Any]) -> dict[str, Any]:
    """Put "Index Name" right after "Node Type" (PostgreSQL's JSON order)."""
    first = {"Node Type": top["Node Type"], "Index Name": top["Index Name"]}
    return first | {k: v for k, v in top.items() if k not in first}


def _top(plan: Any) -> dict[str, Any]:
    if isinstance(plan, str):
        plan = json.loads(plan)
    if isinstance(plan, list):
        plan = plan[0]
    if not isinstance(plan, dict) or "Plan" not in plan:
        raise ValueError("not a PostgreSQL EXPLAIN (FORMAT JSON) document")
    return plan


@dataclass
class DsqlPlan:
    """A DSQL-shaped plan: the root node (PostgreSQL JSON keys) and the statement's figures."""

    root: dict[str, Any]
    verbose: bool
    analyze: bool
    query_id: str | None = None
    planning_ms: float | None = None
    execution_ms: float | None = None
    dpu: metering.Dpu | None = None
    writes: bool = False
    aliases: frozenset[str] = frozenset()


def convert(
    pg_plan: Any, catalog: Catalog, *, verbose: bool, analyze: bool, query_id: str | None = None
) -> DsqlPlan:
    """PostgreSQL's JSON plan (text or parsed) → a `DsqlPlan` (no DPU figures yet)."""
    top = _top(pg_plan)
    conv = _Converter(catalog, verbose, analyze)
    root = conv.node(top["Plan"])
    return DsqlPlan(
        root=root,
        verbose=verbose,
        analyze=analyze,
        query_id=query_id,
        planning_ms=top.get("Planning Time"),
        execution_ms=top.get("Execution Time"),
        writes=_writes(root),
        aliases=frozenset(conv.aliases),
    )


def _writes(node: dict[str, Any]) -> bool:
    if node.get("Node Type") == "ModifyTable":
        return True
    return any(_writes(c) for c in node.get("Plans", ()))


def query_identifier(sql: str) -> str:
    """A 13-character identifier of the statement's normalised form, like DSQL's."""
    try:
        value = int(postgast.fingerprint(sql).fingerprint) & ((1 << 64) - 1)
    except postgast.PgQueryError:
        value = abs(hash(sql)) & ((1 << 64) - 1)
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    chars = []
    for _ in range(13):
        value, digit = divmod(value, 36)
        chars.append(alphabet[digit])
    return "".join(reversed(chars))


# --- DPU from a plan -------------------------------------------------------------------------


def dpu_work(plan: DsqlPlan, catalog: Catalog) -> metering.Work:
    """The model's inputs, read off an analysed DSQL plan (see docs/dpu-model.md).

    Reads: one storage request per B-Tree Scan loop and per looked-up row, the rows and bytes
    (rows × width) of the B-Tree levels. Writes: the rows a ModifyTable processed, plus one row per
    secondary index; an INSERT also checks each row against every unique key (one request each).
    """
    requests = rows_read = bytes_read = rows_written = bytes_written = 0

    def walk(node: dict[str, Any]) -> None:
        nonlocal requests, rows_read, bytes_read, rows_written, bytes_written
        kind = node.get("Node Type")
        loops = int(node.get("Actual Loops", 1) or 0)
        rows = int(node.get("Actual Rows", 0)) * loops
        width = int(node.get("Plan Width", 0))
        if kind == "B-Tree Scan":
            requests += loops
            rows_read += rows
            bytes_read += rows * width
        elif kind == "B-Tree Lookup":
            requests += rows
            rows_read += rows
            bytes_read += rows * width
        elif kind == "ModifyTable":
            source = next(
                (
                    c
                    for c in node.get("Plans", ())
                    if "Parent Relationship" not in c or c["Parent Relationship"] == "Outer"
                ),
                None,
            )
            n = (
                int(source.get("Actual Rows", 0)) * int(source.get("Actual Loops", 1))
                if source
                else 0
            )
            w = int(source.get("Plan Width", 0)) if source else 0
            table = catalog.get(node.get("Schema"), node.get("Relation Name", ""))
            secondary = sum(1 for i in table.indexes if not i.primary) if table else 0
            unique = sum(1 for i in table.indexes if i.unique) if table else 0
            rows_written += n * (1 + secondary)
            bytes_written += n * w + n * secondary * metering.INDEX_ENTRY_BYTES
            if node.get("Operation") == "Insert":
                requests += n * unique
        for child in node.get("Plans", ()):
            walk(child)

    walk(plan.root)
    return metering.Work(
        execution_ms=float(plan.execution_ms or 0.0),
        storage_requests=requests,
        rows_read=rows_read,
        bytes_read=bytes_read,
        rows_written=rows_written,
        bytes_written=bytes_written,
    )


# --- rendering -------------------------------------------------------------------------------


def _needs_quotes(name: str) -> bool:
    return not name.replace("_", "a").isalnum() or name.lower() != name or name[:1].isdigit()


def _qname(name: str) -> str:
    return '"' + name.replace('"', '""') + '"' if _needs_quotes(name) else name


def _rel(node: dict[str, Any], verbose: bool) -> str:
    rel = _qname(node["Relation Name"])
    if verbose and node.get("Schema"):
        rel = f"{_qname(node['Schema'])}.{rel}"
    alias = node.get("Alias")
    if alias and alias != node["Relation Name"]:
        rel += f" {_qname(alias)}"
    return rel


_AGG_NAMES = {"Plain": "Aggregate", "Sorted": "GroupAggregate", "Hashed": "HashAggregate"}


def header(node: dict[str, Any], verbose: bool) -> str:
    """A node's first line without costs, in PostgreSQL's (and DSQL's) text style."""
    kind = str(node.get("Node Type", "?"))
    if kind in STORAGE_NODE_TYPES:
        target = node.get("Index Name") or node.get("Relation Name", "")
        return f"{kind} on {_qname(target)}"
    if kind in {"Index Scan", "Index Only Scan"} and "Index Name" in node:
        return f"{kind} using {_qname(node['Index Name'])} on {_rel(node, verbose)}"
    if kind == "Aggregate":
        kind = _AGG_NAMES.get(node.get("Strategy", "Plain"), "MixedAggregate")
    elif kind in {"Hash Join", "Merge Join", "Nested Loop"}:
        jt = node.get("Join Type", "Inner")
        if jt != "Inner":
            kind = kind.removesuffix(" Join") + f" {jt} Join"
    elif kind == "SetOp":
        prefix = "HashSetOp" if node.get("Strategy") == "Hashed" else "SetOp"
        kind = f"{prefix} {node.get('Command', '')}".strip()
    elif kind == "ModifyTable":
        kind = str(node.get("Operation", kind))
    if node.get("Partial Mode") in {"Partial", "Finalize"}:
        kind = f"{node['Partial Mode']} {kind}"
    if node.get("Parallel Aware"):
        kind = f"Parallel {kind}"
    if "Relation Name" in node:
        return f"{kind} on {_rel(node, verbose)}"
    if "Index Name" in node:
        return f"{kind} on {_qname(node['Index Name'])}"
    for key in ("Function Name", "CTE Name"):
        if key in node:
            alias = node.get("Alias")
            extra = f" {_qname(alias)}" if alias and alias != node[key] else ""
            return f"{kind} on {node[key]}{extra}"
    if "Alias" in node and kind.endswith("Scan"):
        return f"{kind} on {_qname(node['Alias'])}"
    return kind


# Detail lines, in PostgreSQL's order; DSQL's Projections and Filters last.
_DETAILS = (
    "Output",
    "Group Key",
    "Sort Key",
    "Presorted Key",
    "Hash Cond",
    "Merge Cond",
    "Join Filter",
    "Rows Removed by Join Filter",
    "Index Cond",
    "Recheck Cond",
    "Rows Removed by Index Recheck",
    "Filter",
    "Rows Removed by Filter",
    "One-Time Filter",
    "Cache Key",
    "Projections",
    "Filters",
)
_EXPRESSION_KEYS = {
    "Output",
    "Group Key",
    "Sort Key",
    "Presorted Key",
    "Hash Cond",
    "Merge Cond",
    "Join Filter",
    "Index Cond",
    "Recheck Cond",
    "Filter",
    "One-Time Filter",
    "Cache Key",
    "Projections",
    "Filters",
}


def _fmt_rows(value: Any) -> str:
    number = float(value)
    return str(round(number)) if number == int(number) or number >= 100 else f"{number:.2f}"


def _costs(node: dict[str, Any], costs: bool, analyze: bool) -> str:
    out = ""
    if costs and "Total Cost" in node:
        out += (
            f" (cost={node['Startup Cost']:.2f}..{node['Total Cost']:.2f}"
            f" rows={round(node.get('Plan Rows', 0))} width={node.get('Plan Width', 0)})"
        )
    if analyze and "Actual Loops" in node:
        if node["Actual Loops"] == 0:
            out += " (never executed)"
        elif "Actual Total Time" in node:
            out += (
                f" (actual time={node['Actual Startup Time']:.3f}..{node['Actual Total Time']:.3f}"
                f" rows={_fmt_rows(node['Actual Rows'])} loops={node['Actual Loops']})"
            )
        else:
            out += f" (actual rows={_fmt_rows(node['Actual Rows'])} loops={node['Actual Loops']})"
    return out


def _plain(value: Any, key: str, plan: DsqlPlan) -> str:
    if isinstance(value, list):
        items = [str(v) for v in value]
        if key in _EXPRESSION_KEYS and not plan.verbose:
            items = [unqualify(i, plan.aliases) for i in items]
        return ", ".join(items)
    text = str(value)
    if key in _EXPRESSION_KEYS and not plan.verbose:
        text = unqualify(text, plan.aliases)
    return text


def render_text(plan: DsqlPlan, *, costs: bool = True) -> list[str]:
    """The plan as DSQL prints it: one line per list item (psql shows them as rows).

    Layout (the manual's scan examples): a node at column c, its details at c+2, its children's
    ``-> `` at c+4. Then Query Identifier (VERBOSE), Planning/Execution Time (ANALYZE) and the
    ``Statement DPU Estimate`` block (ANALYZE VERBOSE).
    """
    lines: list[str] = []

    def emit(node: dict[str, Any], col: int, arrow: bool) -> None:
        prefix = " " * col + ("-> " if arrow else "")
        lines.append(prefix + header(node, plan.verbose) + _costs(node, costs, plan.analyze))
        pad = " " * (col + 2)
        for key in _DETAILS:
            if key not in node:
                continue
            if key == "Output" and not plan.verbose:
                continue
            value = node[key]
            if value in (None, [], ""):
                continue
            lines.append(f"{pad}{key}: {_plain(value, key, plan)}")
        for child in node.get("Plans", ()):
            if child.get("Subplan Name"):
                lines.append(f"{pad}{child['Subplan Name']}")
            emit(child, col + 4, True)

    emit(plan.root, 0, False)
    if plan.verbose and plan.query_id:
        lines.append(f"Query Identifier: {plan.query_id}")
    if plan.analyze:
        if plan.planning_ms is not None:
            lines.append(f"Planning Time: {plan.planning_ms:.3f} ms")
        if plan.execution_ms is not None:
            lines.append(f"Execution Time: {plan.execution_ms:.3f} ms")
        if plan.verbose and plan.dpu is not None:
            lines.extend(metering.dpu_block(plan.dpu, writes=plan.writes))
    return lines


def _json_node(node: dict[str, Any], plan: DsqlPlan, costs: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "Plans":
            continue
        if not costs and key in {"Startup Cost", "Total Cost", "Plan Rows", "Plan Width"}:
            continue
        if key == "Output" and not plan.verbose:
            continue
        if key in _EXPRESSION_KEYS and not plan.verbose:
            if isinstance(value, list):
                value = [unqualify(str(v), plan.aliases) for v in value]
            elif isinstance(value, str):
                value = unqualify(value, plan.aliases)
        out[key] = value
    if node.get("Plans"):
        out["Plans"] = [_json_node(c, plan, costs) for c in node["Plans"]]
    return out


def render_json(plan: DsqlPlan, *, costs: bool = True) -> str:
    """``FORMAT JSON``: PostgreSQL's document shape, with DSQL's nodes and keys
    (``Projections`` a list, ``Filters`` the storage filter, ``Filter`` the query processor's)."""
    top: dict[str, Any] = {"Plan": _json_node(plan.root, plan, costs)}
    if plan.verbose and plan.query_id:
        top["Query Identifier"] = plan.query_id
    if plan.analyze:
        if plan.planning_ms is not None:
            top["Planning Time"] = plan.planning_ms
        if plan.execution_ms is not None:
            top["Execution Time"] = plan.execution_ms
        if plan.verbose and plan.dpu is not None:
            top["Statement DPU Estimate"] = metering.dpu_json(plan.dpu, writes=plan.writes)
    return json.dumps([top], indent=2)


# --- the hook --------------------------------------------------------------------------------


async def load_catalog(ctx: StatementContext, pg_plan: Any) -> Catalog:
    """Catalog facts for the relations in ``pg_plan``, through the session's own backend."""
    names = relations_of(pg_plan)
    if not names:
        return Catalog()
    results = await ctx.execute(CATALOG_SQL, (array_literal(names),))
    rows = results[-1].rows if results else ()
    return Catalog.from_json(rows[0][0] if rows else None)


def explain_plan(
    pg_plan: Any, catalog: Catalog, opts: ExplainOptions, *, query_id: str | None = None
) -> DsqlPlan:
    """Convert, and for ANALYZE attach the statement's DPU estimate."""
    plan = convert(pg_plan, catalog, verbose=opts.verbose, analyze=opts.analyze, query_id=query_id)
    if opts.analyze:
        plan.dpu = metering.estimate(dpu_work(plan, catalog))
    return plan


_PREPARED = "_dsql_emulator_explain"


async def _generic_plan(ctx: StatementContext, opts: ExplainOptions) -> Any:
    """The plan of a statement with ``$n`` parameters whose values are not known yet.

    Internal SQL is bound through the extended protocol, where PostgreSQL would plan with the
    bound values (even under GENERIC_PLAN), so the statement is prepared and explained with
    ``plan_cache_mode = force_generic_plan``, then the setting is put back.
    """
    shown = (await ctx.execute("SHOW plan_cache_mode"))[-1].rows[0][0]
    await ctx.execute(f"PREPARE {_PREPARED} AS {opts.query}")
    try:
        await ctx.execute("SET plan_cache_mode = force_generic_plan")
        try:
            nulls = ", ".join(["NULL"] * _parameter_count(opts.query))
            results = await ctx.execute(
                f"EXPLAIN (FORMAT JSON, VERBOSE) EXECUTE {_PREPARED}({nulls})"
            )
        finally:
            await ctx.execute(f"SET plan_cache_mode = {shown or 'auto'}")
    finally:
        await ctx.execute(f"DEALLOCATE {_PREPARED}")
    return results[-1].rows[0][0]


class ExplainHook:
    """Answers ``EXPLAIN`` (TEXT or JSON, with or without ANALYZE/VERBOSE) in DSQL's shape.

    ANALYZE runs the statement, as PostgreSQL and DSQL do; its DPU estimate is recorded in the
    meter as the statement's figures, so metering and the printed block agree.
    """

    async def before(self, stmt: Statement, ctx: StatementContext) -> Synthetic | None:
        from .hooks import Synthetic

        opts = explain_options(stmt)
        if opts is None:
            return None
        started = time.perf_counter()
        if opts.generic:
            pg_plan = await _generic_plan(ctx, opts)
        else:
            results = await ctx.execute(internal_explain_sql(opts))
            pg_plan = results[-1].rows[0][0]
        catalog = await load_catalog(ctx, pg_plan)
        plan = explain_plan(pg_plan, catalog, opts, query_id=query_identifier(opts.query))
        meter = metering.meter_of(ctx.cluster)
        if plan.dpu is not None:
            work = dpu_work(plan, catalog)
            figures = metering.StatementFigures(
                "EXPLAIN", plan.dpu, work, reads=work.storage_requests > 0, writes=plan.writes
            )
        else:
            elapsed = (time.perf_counter() - started) * 1000.0
            work = metering.Work(execution_ms=elapsed)
            figures = metering.StatementFigures(
                "EXPLAIN", metering.estimate(work), work, reads=False, writes=False
            )
        # Outside a block the EXPLAIN (and what ANALYZE ran) was its own transaction.
        meter.record_statement(ctx.session_id, figures, ends_transaction=not ctx.in_transaction)
        ctx.session[metering.SKIP_NEXT] = stmt
        if opts.format == "json":
            return Synthetic(
                ["QUERY PLAN"], [[render_json(plan, costs=opts.costs)]], "EXPLAIN", [JSON_OID]
            )
        rows = [[line] for line in render_text(plan, costs=opts.costs)]
        return Synthetic(["QUERY PLAN"], rows, "EXPLAIN", [TEXT_OID])


def make_hook(config: Any = None) -> ExplainHook | None:
    """The EXPLAIN hook for `cluster.default_hooks` (None when the config turns it off)."""
    if config is not None and getattr(config, "dsql_explain", True) is False:
        return None
    return ExplainHook()
