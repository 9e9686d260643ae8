"""Check each statement against DSQL's dialect rules, on libpg_query's parse tree.

`check` is a pure function: a `Statement` in, a `Decision` out (the error DSQL answers with, or
the PostgreSQL text to run instead, or nothing to do). The rules are data (`emulator/dialect/`);
this module holds only the named predicates the data refers to (`PREDICATES`), each a small
function over the protobuf tree, and which statements each can concern (`SCOPES`: a statement
runs only the rules that can apply to it, as this is done for every statement a client sends).
`DialectPolicy` is the statement hook that applies `check` before PostgreSQL sees a statement.

This module must never match SQL text with regular expressions, never talk to PostgreSQL (rules
that need the catalog live in `txnrules.py`), and never build an error message by hand: every
refusal's text comes from the rules data.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import postgast

from .dialect import Rule, RuleSet, load_rules
from .errors import DsqlError
from .hooks import CommandResult, Forward, Synthetic, bound_methods
from .statements import Statement, StatementKind

if TYPE_CHECKING:
    from .hooks import Reply, StatementContext

pb: Any = importlib.import_module("postgast.pg_query_pb2")

Params = dict[str, str]
Predicate = Callable[[Statement, dict[str, Any]], list[Params]]

# PostgreSQL's internal type names → the names format_type() prints (and DSQL quotes).
_TYPE_DISPLAY = {
    "int2": "smallint",
    "int4": "integer",
    "int8": "bigint",
    "float4": "real",
    "float8": "double precision",
    "bool": "boolean",
    "varchar": "character varying",
    "bpchar": "character",
    "varbit": "bit varying",
    "timestamptz": "timestamp with time zone",
    "timestamp": "timestamp without time zone",
    "timetz": "time with time zone",
    "time": "time without time zone",
}
# Node tags whose CamelCase is not a plain conversion of the protobuf field name.
_TAG_OVERRIDES = {"create_plang_stmt": "CreatePLang"}


# --------------------------------------------------------------------------- helpers


def type_name_of(type_name: Any) -> str:
    """The bare (last) name of a TypeName node, lower-case: ``int4``, ``serial``, ``money``."""
    names = [n.string.sval for n in type_name.names]
    return names[-1].lower() if names else ""


def type_schema_of(type_name: Any) -> str | None:
    """The schema a TypeName names explicitly (``pg_catalog`` for built-in keywords), or None."""
    names = [n.string.sval for n in type_name.names]
    return names[-2].lower() if len(names) > 1 else None


def display_type(type_name: Any) -> str:
    """The type as PostgreSQL's format_type() names it, typmods left out: ``integer[]``."""
    name = type_name_of(type_name)
    shown = (
        _TYPE_DISPLAY.get(name, name) if type_schema_of(type_name) in (None, "pg_catalog") else name
    )
    return shown + "[]" * len(type_name.array_bounds)


def _typmods(type_name: Any) -> list[int]:
    out = []
    for mod in type_name.typmods:
        const = mod.a_const
        out.append(const.ival.ival if const.HasField("ival") else 0)
    return out


def _is_builtin(type_name: Any) -> bool:
    return type_schema_of(type_name) in (None, "pg_catalog")


def _column_defs(stmt: Statement) -> Iterator[Any]:
    """Column definitions a statement creates: CREATE TABLE columns, ALTER TABLE ADD COLUMN."""
    inner = stmt.inner
    if stmt.node_name == "create_stmt":
        for elt in inner.table_elts:
            if elt.WhichOneof("node") == "column_def":
                yield elt.column_def
    elif stmt.node_name == "alter_table_stmt" and inner.objtype == pb.OBJECT_TABLE:
        for cmd in inner.cmds:
            at = cmd.alter_table_cmd
            if at.subtype == pb.AT_AddColumn and _cmd_def(at).WhichOneof("node") == "column_def":
                yield _cmd_def(at).column_def


def _cmd_def(cmd: Any) -> Any:
    """An AlterTableCmd's ``def`` field (a Python keyword, hence getattr)."""
    return getattr(cmd, "def")


def _alter_cmds(stmt: Statement) -> Iterator[Any]:
    """The subcommands of ``ALTER TABLE`` (not ALTER VIEW/INDEX/SEQUENCE, which share the node)."""
    if stmt.node_name == "alter_table_stmt" and stmt.inner.objtype == pb.OBJECT_TABLE:
        for cmd in stmt.inner.cmds:
            yield cmd.alter_table_cmd


def _def_value(elem: Any) -> str | None:
    """A DefElem's argument as text (numbers as their digits), or None without an argument."""
    if not elem.HasField("arg"):
        return None
    arg = elem.arg
    which = arg.WhichOneof("node")
    if which == "integer":
        return str(arg.integer.ival)
    if which == "float":
        return str(arg.float.fval)
    if which == "string":
        return str(arg.string.sval)
    if which == "a_const":
        const = arg.a_const
        kind = const.WhichOneof("val")
        if kind == "sval":
            return str(const.sval.sval)
        if kind == "ival":
            return str(const.ival.ival)
    if which == "type_name":
        return type_name_of(arg.type_name)
    return None


def _option(options: Any, name: str) -> Any | None:
    for opt in options:
        if opt.WhichOneof("node") == "def_elem" and opt.def_elem.defname == name:
            return opt.def_elem
    return None


def _cache_ok(value: str | None, minimum: int) -> bool:
    if value is None:
        return False
    try:
        cache = int(float(value))
    except ValueError:
        return False
    return cache == 1 or cache >= minimum


def node_tag(node_name: str) -> str:
    """PostgreSQL's node tag without ``Stmt``: ``createdb_stmt`` → ``Createdb``."""
    if node_name in _TAG_OVERRIDES:
        return _TAG_OVERRIDES[node_name]
    base = node_name.removesuffix("_stmt")
    return "".join(part[:1].upper() + part[1:] for part in base.split("_"))


# --------------------------------------------------------------------------- predicates


def _p_statement(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if stmt.node_name in args["nodes"]:
        return [{"tag": node_tag(stmt.node_name or "")}]
    return []


def _p_select_into(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if stmt.node_name == "select_stmt" and stmt.inner.HasField("into_clause"):
        return [{}]
    return []


def _p_vacuum(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    return [{}] if stmt.node_name == "vacuum_stmt" and stmt.inner.is_vacuumcmd else []


def _p_define(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if stmt.node_name == "define_stmt" and pb.ObjectType.Name(stmt.inner.kind) in args["kinds"]:
        return [{}]
    return []


def _p_function_language(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if stmt.node_name != "create_function_stmt" or stmt.inner.is_procedure:
        return []
    lang = _option(stmt.inner.options, "language")
    language = (_def_value(lang) or "sql").lower() if lang is not None else "sql"
    return [] if language in args["allowed"] else [{"language": language}]


def _p_procedure(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    return [{}] if stmt.node_name == "create_function_stmt" and stmt.inner.is_procedure else []


def _p_tablesample(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    # The text test only spares the tree walk; the decision is taken on the tree.
    if stmt.node is None or not stmt.mentions("tablesample"):
        return []
    return [{}] if "RangeTableSample" in stmt.facts.types else []


def _p_locking_clause(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if not stmt.has_locking_clause:
        return []
    allowed = set(args["allowed"])
    for clause in stmt.facts.of("LockingClause"):
        if pb.LockClauseStrength.Name(clause.strength) not in allowed:
            return [{}]
    return []


def _p_transaction(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if stmt.kind is StatementKind.TRANSACTION and stmt.transaction_kind in args["kinds"]:
        return [{"command": stmt.command}]
    return []


def _p_isolation_level(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if stmt.transaction_kind not in ("TRANS_STMT_BEGIN", "TRANS_STMT_START"):
        return []
    level = _option(stmt.inner.options, "transaction_isolation")
    value = (_def_value(level) or "") if level is not None else ""
    if level is None or value.lower() in args["allowed"]:
        return []
    return [{"level": value.upper()}]


def _p_set_parameter(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if stmt.node_name != "variable_set_stmt":
        return []
    inner = stmt.inner
    if inner.kind == pb.VAR_RESET_ALL:
        return []
    name = inner.name
    if "names" in args:
        return [{"name": name}] if name in args["names"] else []
    lowered = name.lower()
    if lowered in args["allowed"] or any(lowered.startswith(p) for p in args["allowed_prefixes"]):
        return []
    return [{"name": lowered}]


def _p_show_parameter(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if stmt.node_name == "variable_show_stmt" and stmt.inner.name.lower() in args["names"]:
        return [{"name": stmt.inner.name.lower()}]
    return []


def _p_persistence(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if stmt.node_name not in args["nodes"]:
        return []
    inner = stmt.inner
    relation = {"create_stmt": "relation", "view_stmt": "view", "create_seq_stmt": "sequence"}
    rel = getattr(inner, relation[stmt.node_name or ""])
    return [{}] if rel.relpersistence == args["persistence"] else []


def _p_create_table_clause(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if stmt.node_name != "create_stmt":
        return []
    clause = args["clause"]
    try:
        present = bool(stmt.inner.HasField(clause))
    except ValueError:  # a repeated or plain field: present when non-empty
        present = bool(len(getattr(stmt.inner, clause)))
    return [{}] if present else []


def _p_constraint(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if stmt.node_name not in ("create_stmt", "alter_table_stmt"):
        return []
    wanted = set(args["contypes"])
    for con in stmt.facts.of("Constraint"):
        if pb.ConstrType.Name(con.contype) in wanted:
            return [{}]
    return []


def _p_column_type(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    types = set(args.get("types", ()))
    for col in _column_defs(stmt):
        tn = col.type_name
        if args.get("arrays") and len(tn.array_bounds) > 0:
            return [{"type": display_type(tn), "column": col.colname}]
        if _is_builtin(tn) and type_name_of(tn) in types:
            return [{"type": display_type(tn), "column": col.colname}]
    return []


def _identity_columns(stmt: Statement) -> Iterator[tuple[Any, Any]]:
    for col in _column_defs(stmt):
        for con in col.constraints:
            if con.constraint.contype == pb.CONSTR_IDENTITY:
                yield col, con.constraint


def _p_identity_cache(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    for col, con in _identity_columns(stmt):
        cache = _option(con.options, "cache")
        if not _cache_ok(_def_value(cache) if cache is not None else None, args["min"]):
            return [{"column": col.colname}]
    return []


def _p_identity_type(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    for col, _con in _identity_columns(stmt):
        tn = col.type_name
        if not (_is_builtin(tn) and type_name_of(tn) in args["allowed"]) or tn.array_bounds:
            return [{"type": display_type(tn), "column": col.colname}]
    return []


def _p_sequence_cache(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if stmt.node_name == "create_seq_stmt":
        cache = _option(stmt.inner.options, "cache")
    elif stmt.node_name == "alter_seq_stmt":
        cache = _option(stmt.inner.options, "cache")
        if cache is None:
            return []
    else:
        return []
    value = _def_value(cache) if cache is not None else None
    return [] if _cache_ok(value, args["min"]) else [{}]


def _p_type_length(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    for col in _column_defs(stmt):
        tn = col.type_name
        if _is_builtin(tn) and type_name_of(tn) in args["types"]:
            mods = _typmods(tn)
            if mods and mods[0] > args["max"]:
                return [{"length": str(mods[0]), "column": col.colname}]
    return []


def _numeric_columns(stmt: Statement) -> Iterator[Any]:
    for col in _column_defs(stmt):
        tn = col.type_name
        if _is_builtin(tn) and type_name_of(tn) == "numeric" and not tn.array_bounds:
            yield col


def _p_numeric_limits(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    for col in _numeric_columns(stmt):
        mods = _typmods(col.type_name)
        if not mods:
            continue
        precision, scale = mods[0], (mods[1] if len(mods) > 1 else 0)
        if precision > args["max_precision"] or scale > args["max_scale"]:
            return [{"precision": str(precision), "scale": str(scale), "column": col.colname}]
    return []


def _p_numeric_default(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    for col in _numeric_columns(stmt):
        if not col.type_name.typmods:
            return [{"column": col.colname}]
    return []


def _p_table_columns(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if stmt.node_name != "create_stmt":
        return []
    count = sum(1 for _ in _column_defs(stmt))
    return [{"count": str(count)}] if count > args["max"] else []


def _p_key_columns(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    limit = args["max"]
    if stmt.node_name == "index_stmt":
        return [{}] if len(stmt.inner.index_params) > limit else []
    if stmt.node_name == "create_stmt":
        for con in stmt.facts.of("Constraint"):
            if con.contype in (pb.CONSTR_PRIMARY, pb.CONSTR_UNIQUE) and len(con.keys) > limit:
                return [{}]
    return []


def _p_view_definition_size(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if stmt.node_name == "view_stmt" and len(stmt.text.encode("utf-8")) > args["max_bytes"]:
        return [{}]
    return []


def _p_create_index(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if stmt.node_name == "index_stmt" and stmt.is_async == args["async"]:
        return [{}]
    return []


def _p_index_option(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if stmt.node_name == "index_stmt" and getattr(stmt.inner, args["option"]):
        return [{}]
    return []


def _p_index_elem(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if stmt.node_name != "index_stmt":
        return []
    for param in stmt.inner.index_params:
        elem = param.index_elem
        if args["check"] == "ordering" and elem.ordering != pb.SORTBY_DEFAULT:
            return [{"column": elem.name}]
        if args["check"] == "opclass" and len(elem.opclass) > 0:
            return [{"column": elem.name}]
    return []


def _p_index_method(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if stmt.node_name == "index_stmt" and stmt.inner.access_method not in args["allowed"]:
        return [{"method": stmt.inner.access_method}]
    return []


def _p_add_column_constraint(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if stmt.node_name != "alter_table_stmt":
        return []
    for col in _column_defs(stmt):
        if len(col.constraints) > 0:
            return [{"column": col.colname}]
    return []


def _p_add_constraint(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    allowed = set(args["not_valid_allowed"])
    for cmd in _alter_cmds(stmt):
        if cmd.subtype != pb.AT_AddConstraint:
            continue
        con = _cmd_def(cmd).constraint
        if pb.ConstrType.Name(con.contype) not in allowed or not con.skip_validation:
            return [{}]
    return []


def _p_alter_table_cmd(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if "async" in args and stmt.is_async != args["async"]:
        return []
    subtypes = args["subtypes"]
    for cmd in _alter_cmds(stmt):
        name = pb.AlterTableType.Name(cmd.subtype)
        if name in subtypes:
            shown = subtypes[name] if isinstance(subtypes, dict) else name
            return [{"subcommand": shown}]
    return []


def _p_alter_table_async(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if not stmt.is_async or stmt.node_name != "alter_table_stmt":
        return []
    for cmd in _alter_cmds(stmt):
        if pb.AlterTableType.Name(cmd.subtype) not in args["allowed"]:
            return [{}]
    return []


def _p_grant_object(stmt: Statement, args: dict[str, Any]) -> list[Params]:
    if (
        stmt.node_name == "grant_stmt"
        and pb.ObjectType.Name(stmt.inner.objtype) in args["objtypes"]
    ):
        return [{"command": "GRANT" if stmt.inner.is_grant else "REVOKE"}]
    return []


PREDICATES: dict[str, Predicate] = {
    "statement": _p_statement,
    "select_into": _p_select_into,
    "vacuum": _p_vacuum,
    "define": _p_define,
    "function_language": _p_function_language,
    "procedure": _p_procedure,
    "tablesample": _p_tablesample,
    "locking_clause": _p_locking_clause,
    "transaction": _p_transaction,
    "isolation_level": _p_isolation_level,
    "set_parameter": _p_set_parameter,
    "show_parameter": _p_show_parameter,
    "persistence": _p_persistence,
    "create_table_clause": _p_create_table_clause,
    "constraint": _p_constraint,
    "column_type": _p_column_type,
    "identity_cache": _p_identity_cache,
    "identity_type": _p_identity_type,
    "sequence_cache": _p_sequence_cache,
    "type_length": _p_type_length,
    "numeric_limits": _p_numeric_limits,
    "numeric_default": _p_numeric_default,
    "table_columns": _p_table_columns,
    "key_columns": _p_key_columns,
    "view_definition_size": _p_view_definition_size,
    "create_index": _p_create_index,
    "index_option": _p_index_option,
    "index_elem": _p_index_elem,
    "index_method": _p_index_method,
    "add_column_constraint": _p_add_column_constraint,
    "add_constraint": _p_add_constraint,
    "alter_table_cmd": _p_alter_table_cmd,
    "alter_table_async": _p_alter_table_async,
    "grant_object": _p_grant_object,
}

Scope = Callable[[dict[str, Any]], "frozenset[str] | None"]


def _nodes(*names: str) -> Scope:
    scope = frozenset(names)
    return lambda args: scope


def _nodes_arg(args: dict[str, Any]) -> frozenset[str]:
    return frozenset(args["nodes"])


def _any_node(args: dict[str, Any]) -> None:
    return None


_TABLE_DDL = _nodes("create_stmt", "alter_table_stmt")
_INDEX = _nodes("index_stmt")
_ALTER_TABLE = _nodes("alter_table_stmt")

# For each predicate, the statements (parse-tree node names) it can match, given a rule's
# args; None: any statement. A predicate returns no match for any other node, so `evaluate`
# skips those rules (tests/test_statement_analysis.py checks this on every example).
SCOPES: dict[str, Scope] = {
    "statement": _nodes_arg,
    "select_into": _nodes("select_stmt"),
    "vacuum": _nodes("vacuum_stmt"),
    "define": _nodes("define_stmt"),
    "function_language": _nodes("create_function_stmt"),
    "procedure": _nodes("create_function_stmt"),
    "tablesample": _any_node,
    "locking_clause": _any_node,
    "transaction": _nodes("transaction_stmt"),
    "isolation_level": _nodes("transaction_stmt"),
    "set_parameter": _nodes("variable_set_stmt"),
    "show_parameter": _nodes("variable_show_stmt"),
    "persistence": _nodes_arg,
    "create_table_clause": _nodes("create_stmt"),
    "constraint": _TABLE_DDL,
    "column_type": _TABLE_DDL,
    "identity_cache": _TABLE_DDL,
    "identity_type": _TABLE_DDL,
    "sequence_cache": _nodes("create_seq_stmt", "alter_seq_stmt"),
    "type_length": _TABLE_DDL,
    "numeric_limits": _TABLE_DDL,
    "numeric_default": _TABLE_DDL,
    "table_columns": _nodes("create_stmt"),
    "key_columns": _nodes("index_stmt", "create_stmt"),
    "view_definition_size": _nodes("view_stmt"),
    "create_index": _INDEX,
    "index_option": _INDEX,
    "index_elem": _INDEX,
    "index_method": _INDEX,
    "add_column_constraint": _ALTER_TABLE,
    "add_constraint": _ALTER_TABLE,
    "alter_table_cmd": _ALTER_TABLE,
    "alter_table_async": _ALTER_TABLE,
    "grant_object": _nodes("grant_stmt"),
}


class RuleIndex:
    """A rule set's rules by the statement node they can apply to, each list in file order.

    Built from the rules data and `SCOPES`, so a plain SELECT runs the three or so rules that
    can concern it, not all of them.
    """

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        # An unknown predicate gets no scope: `evaluate` then fails on it as it always did.
        self._scoped = [
            (rule, SCOPES.get(rule.predicate, _any_node)(rule.args)) for rule in rules.rules
        ]
        self._by_node: dict[str, tuple[Rule, ...]] = {}

    def for_node(self, node_name: str) -> tuple[Rule, ...]:
        """The rules that can match a statement whose node is ``node_name``."""
        found = self._by_node.get(node_name)
        if found is None:
            found = tuple(r for r, scope in self._scoped if scope is None or node_name in scope)
            self._by_node[node_name] = found
        return found


# --------------------------------------------------------------------------- rewrites


def _rewrite_numeric_default(stmt: Statement, rule: Rule) -> str:
    """The statement with every unconstrained numeric column given DSQL's default typmods."""
    tree = postgast.parse(stmt.pg_text)
    node = tree.stmts[0].stmt
    shadow = Statement(stmt.pg_text, stmt.pg_text, stmt.kind, stmt.command, stmt.node_name, node)
    for col in _numeric_columns(shadow):
        if col.type_name.typmods:
            continue
        for value in (rule.args["precision"], rule.args["scale"]):
            mod = col.type_name.typmods.add()
            mod.a_const.ival.ival = value
    return str(postgast.deparse(tree))


_REWRITES: dict[str, Callable[[Statement, Rule], str]] = {
    "numeric_default": _rewrite_numeric_default,
}


# --------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class Violation:
    """A rule a statement breaks, with the values its message names."""

    rule: Rule
    params: tuple[tuple[str, str], ...]

    def error(self) -> DsqlError:
        """A fresh DsqlError for this refusal (fresh: exceptions carry tracebacks)."""
        params = dict(self.params)
        return DsqlError(
            self.rule.sqlstate,
            self.rule.format_message(params),
            detail=self.rule.format_detail(params),
        )


@dataclass(frozen=True)
class Decision:
    """What the dialect says about one statement.

    ``violation`` set: DSQL refuses the statement. Else ``forward`` set: run that SQL on
    PostgreSQL instead (a rewrite, e.g. DSQL's numeric defaults). Else: run it as it is.
    ``rewrites`` names the rules that produced ``forward``.
    """

    violation: Violation | None = None
    forward: str | None = None
    rewrites: tuple[str, ...] = ()

    @property
    def error(self) -> DsqlError | None:
        """The refusal as a fresh DsqlError, or None."""
        return None if self.violation is None else self.violation.error()


_OK = Decision()


def evaluate(stmt: Statement, rules: RuleSet | RuleIndex) -> Decision:
    """Apply ``rules`` in file order: the first refusing rule wins; rewrites accumulate."""
    if stmt.node is None or stmt.node_name is None:
        return _OK
    index = rules if isinstance(rules, RuleIndex) else RuleIndex(rules)
    forward: str | None = None
    rewrites: list[str] = []
    for rule in index.for_node(stmt.node_name):
        predicate = PREDICATES[rule.predicate]
        matches = predicate(stmt, rule.args)
        if not matches:
            continue
        if rule.action == "rewrite":
            current = stmt if forward is None else _reparse(stmt, forward)
            forward = _REWRITES[rule.predicate](current, rule)
            rewrites.append(rule.id)
            continue
        return Decision(violation=Violation(rule, tuple(sorted(matches[0].items()))))
    return Decision(forward=forward, rewrites=tuple(rewrites)) if rewrites else _OK


def _reparse(stmt: Statement, sql: str) -> Statement:
    node = postgast.parse(sql).stmts[0].stmt
    return Statement(sql, sql, stmt.kind, stmt.command, stmt.node_name, node, stmt.is_async)


@lru_cache(maxsize=1)
def packaged_index() -> RuleIndex:
    """The packaged rules, indexed (built once per process)."""
    return RuleIndex(load_rules())


@lru_cache(maxsize=4096)
def check(stmt: Statement) -> Decision:
    """The packaged rules' decision on ``stmt`` (cached by statement text and form)."""
    return evaluate(stmt, packaged_index())


def unknown_predicates(rules: RuleSet) -> list[str]:
    """Rule ids whose predicate this module does not define (the tests keep this empty)."""
    bad = [r.id for r in rules.rules if r.predicate not in PREDICATES or r.predicate not in SCOPES]
    bad += [r.id for r in rules.rules if r.action == "rewrite" and r.predicate not in _REWRITES]
    return bad


class DialectPolicy:
    """Statement hook: refuse what DSQL refuses, rewrite what DSQL rewrites, before PostgreSQL.

    ``CREATE INDEX ASYNC`` and ``ALTER TABLE ASYNC`` are only validated here; running them is
    the job runner's (a later hook).
    """

    def __init__(self, rules: RuleSet | None = None) -> None:
        self._rules = None if rules is None else RuleIndex(rules)

    def decide(self, stmt: Statement) -> Decision:
        """The decision for ``stmt`` under this hook's rules."""
        return check(stmt) if self._rules is None else evaluate(stmt, self._rules)

    async def before(self, stmt: Statement, ctx: StatementContext) -> Reply | None:
        """Raise DSQL's error for a refused statement; forward a rewritten one."""
        decision = self.decide(stmt)
        if decision.violation is not None:
            raise decision.violation.error()
        if decision.forward is not None and not stmt.is_async:
            return Forward(decision.forward)
        return None


class DsqlHooks:
    """DSQL's dialect, transaction rules, environment and roles as one hook, in that order.

    One object, so that a rewrite (`Forward`) by the dialect does not hide the statement from
    the transaction rules, and a statement answered here (`Synthetic`: ``SHOW server_version``,
    ``AWS IAM GRANT``) is still counted by them (the session calls no ``after`` for those).
    """

    def __init__(self, parts: list[object]) -> None:
        unobserving = [p for p in parts if hasattr(p, "after") and not hasattr(p, "observe_read")]
        if unobserving:  # `observe_read` below promises the session that reads need no `after`
            raise TypeError(f"{type(unobserving[0]).__name__} has after() but no observe_read()")
        self.parts = parts
        # Bound methods looked up once: `before` and `observe_read` run for every statement.
        self._befores = bound_methods(parts, "before")
        self._afters = bound_methods(parts, "after")
        self._observers = bound_methods(parts, "observe_read")

    async def before(self, stmt: Statement, ctx: StatementContext) -> Reply | None:
        """Every part's ``before``; the first Synthetic answers, a Forward is kept to the end."""
        forward: Reply | None = None
        for method in self._befores:
            reply = await method(stmt, ctx)
            if isinstance(reply, Synthetic):
                result = CommandResult(reply.tag)
                for after in self._afters:
                    await after(stmt, result, ctx)
                return reply
            if reply is not None:
                forward = reply
        return forward

    async def after(self, stmt: Statement, result: CommandResult, ctx: StatementContext) -> None:
        """Every part's ``after``."""
        for method in self._afters:
            await method(stmt, result, ctx)

    def observe_read(self, stmt: Statement, result: CommandResult, ctx: StatementContext) -> None:
        """Every part's ``observe_read`` (each part with an ``after`` has one)."""
        for method in self._observers:
            method(stmt, result, ctx)

    async def before_commit(self, ctx: StatementContext) -> None:
        """Every part's ``before_commit``."""
        for method in bound_methods(self.parts, "before_commit"):
            await method(ctx)

    async def after_end(self, ctx: StatementContext, committed: bool) -> None:
        """Every part's ``after_end``."""
        for method in bound_methods(self.parts, "after_end"):
            await method(ctx, committed)

    async def on_connect(self, ctx: StatementContext) -> None:
        """Every part's ``on_connect``."""
        for method in bound_methods(self.parts, "on_connect"):
            await method(ctx)


def disabled_hooks(config: object) -> frozenset[str]:
    """The hook module names the config leaves out (``EmulatorConfig.disabled_hooks``)."""
    return frozenset(getattr(config, "disabled_hooks", None) or ())


def make_hook(config: object = None) -> DsqlHooks | None:
    """DSQL's dialect hooks for `cluster.default_hooks`: dialect, txnrules, environment, roles.

    ``txnrules`` and ``roles`` can be left out like any hook module (``--disable-hook``);
    leaving out ``policy`` leaves out the dialect, the environment and roles, and then
    `txnrules.make_hook` supplies the transaction rules on their own.
    """
    from . import environment, roles, txnrules

    disabled = disabled_hooks(config)
    parts: list[object] = [DialectPolicy()]
    if "txnrules" not in disabled:
        parts.append(txnrules.TransactionRules())
    parts.append(environment.Environment())
    if "roles" not in disabled:
        parts.append(roles.Roles())
    return DsqlHooks(parts)
