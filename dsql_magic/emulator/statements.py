"""Split client SQL into statements and classify each one, on libpg_query's parse tree.

Everything in the emulator that decides by statement (the dialect policy, transaction rules, OCC,
EXPLAIN rewriting, metering) starts from the `Statement` objects made here, so the SQL is parsed
once per distinct text (results are cached), and this runs on every statement a client sends:
it is the emulator's hot path (budget: tens of microseconds per statement).

Two ways to split, with identical results: text PostgreSQL parses as it stands (no comments, no
DSQL-only syntax, no semicolon inside a statement) is split from ONE parse of the whole text, by
the statements' locations; anything else goes through the scanner's tokens, one parse per
statement, so each statement of a text gets its own valid or INVALID result. Parse-tree
``location`` fields are offsets into whatever text was parsed (the whole text or the statement):
nothing may rely on them.

DSQL-only syntax that PostgreSQL cannot parse is recognised on the scanner's tokens, never with
regular expressions: ``CREATE [UNIQUE] INDEX ASYNC``, ``ALTER TABLE ASYNC`` and ``AWS IAM
GRANT/REVOKE``. For the first two the ``ASYNC`` token is cut out and the rest is parsed as
PostgreSQL (`Statement.pg_text`); the third is kept as tokens for the IAM command handler.

This module is pure: no I/O, no session state, no knowledge of which rules DSQL enforces.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, AnyStr, Generic, NamedTuple, TypeVar, overload

import postgast

# Imported dynamically: the generated protobuf stub does not parse under mypy, and mypy always
# reads stub files it can see, whatever follow_imports says.
pb: Any = importlib.import_module("postgast.pg_query_pb2")


class StatementKind(enum.Enum):
    """What a statement does, as far as DSQL's transaction rules care."""

    QUERY = "query"  # SELECT / VALUES / TABLE without INTO; may still lock (see `locks_rows`)
    DML = "dml"  # INSERT, UPDATE, DELETE, MERGE, COPY FROM, SELECT INTO
    DDL = "ddl"  # catalog changes: CREATE/ALTER/DROP, GRANT/REVOKE, COMMENT, ...
    TRANSACTION = "transaction"  # BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ...
    UTILITY = "utility"  # SET, SHOW, EXPLAIN, ANALYZE, VACUUM, COPY TO, LISTEN, DO, ...
    IAM = "iam"  # DSQL's AWS IAM GRANT / AWS IAM REVOKE
    EMPTY = "empty"  # only comments or whitespace
    INVALID = "invalid"  # PostgreSQL cannot parse it; forward it and let PostgreSQL say why


# Parse-tree node names (the protobuf ``Node`` oneof) by kind. Anything not listed is UTILITY.
_DDL_NODES = frozenset(
    {
        "create_stmt",
        "create_table_as_stmt",
        "create_schema_stmt",
        "create_seq_stmt",
        "alter_seq_stmt",
        "create_function_stmt",
        "alter_function_stmt",
        "create_trig_stmt",
        "create_event_trig_stmt",
        "create_extension_stmt",
        "create_domain_stmt",
        "create_enum_stmt",
        "create_range_stmt",
        "composite_type_stmt",
        "define_stmt",
        "create_role_stmt",
        "alter_role_stmt",
        "alter_role_set_stmt",
        "drop_role_stmt",
        "createdb_stmt",
        "dropdb_stmt",
        "alterdb_stmt",
        "alter_database_set_stmt",
        "create_table_space_stmt",
        "drop_table_space_stmt",
        "create_foreign_table_stmt",
        "create_foreign_server_stmt",
        "create_fdw_stmt",
        "create_user_mapping_stmt",
        "create_policy_stmt",
        "alter_policy_stmt",
        "create_publication_stmt",
        "create_subscription_stmt",
        "create_stats_stmt",
        "create_cast_stmt",
        "create_conversion_stmt",
        "create_op_class_stmt",
        "create_op_family_stmt",
        "create_am_stmt",
        "create_transform_stmt",
        "create_plang_stmt",
        "rule_stmt",
        "view_stmt",
        "index_stmt",
        "alter_table_stmt",
        "alter_domain_stmt",
        "alter_enum_stmt",
        "alter_owner_stmt",
        "alter_object_schema_stmt",
        "alter_default_privileges_stmt",
        "alter_table_move_all_stmt",
        "alter_system_stmt",
        "rename_stmt",
        "drop_stmt",
        "drop_owned_stmt",
        "reassign_owned_stmt",
        "grant_stmt",
        "grant_role_stmt",
        "comment_stmt",
        "sec_label_stmt",
        "refresh_mat_view_stmt",
        "truncate_stmt",
    }
)
_DML_NODES = frozenset({"insert_stmt", "update_stmt", "delete_stmt", "merge_stmt"})


_T = TypeVar("_T")


class _cached(Generic[_T]):
    """``functools.cached_property`` without its lock (Python < 3.12 takes one on every first
    access, which costs microseconds; Statements are immutable, so a race only computes twice).

    A non-data descriptor: the value lands in the instance ``__dict__`` and later reads never
    reach this object (so it also works on frozen dataclasses).
    """

    def __init__(self, func: Callable[[Any], _T]) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _cached[_T]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> _T: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> _T | _cached[_T]:
        if obj is None:
            return self
        value = self.func(obj)
        obj.__dict__[self.name] = value
        return value


# Message types whose instances `TreeFacts` keeps (the rest it only notes as present).
_KEPT_NODES = frozenset({"LockingClause", "CommonTableExpr", "Constraint"})


@dataclass(frozen=True)
class TreeFacts:
    """What one walk of a parse tree found: which node types occur, and a few of the nodes.

    Several hooks ask presence questions of every statement (any ``FOR UPDATE``? any
    data-modifying ``WITH``? any table?); one walk answers them all. ``types`` holds protobuf
    message names (``"RangeVar"``, ``"LockingClause"``, ...); ``nodes`` the instances of the
    types in `_KEPT_NODES`, in no particular order.
    """

    types: frozenset[str]
    nodes: dict[str, tuple[Any, ...]] = field(compare=False)

    def of(self, name: str) -> tuple[Any, ...]:
        """The kept nodes of message type ``name`` (one of `_KEPT_NODES`)."""
        return self.nodes.get(name, ())


_NO_FACTS = TreeFacts(frozenset(), {})
# Per protobuf field descriptor: (message type name or None for scalars, repeated?).
_FIELDS: dict[Any, tuple[str | None, bool]] = {}


def _field_info(fd: Any) -> tuple[str | None, bool]:
    info = (fd.message_type.name if fd.type == fd.TYPE_MESSAGE else None, bool(fd.is_repeated))
    _FIELDS[fd] = info
    return info


def tree_facts(node: Any) -> TreeFacts:
    """Walk ``node`` once (iteratively, set fields only) and record what it contains.

    Each visited message costs a Python object and a ``ListFields`` call (about 1.5 µs), so
    callers first rule a walk out with cheaper tests where they can.
    """
    types: set[str] = set()
    kept: dict[str, list[Any]] = {}
    stack = [node]
    pop, push, extend = stack.pop, stack.append, stack.extend
    fields = _FIELDS
    while stack:
        for fd, value in pop().ListFields():
            name, repeated = fields.get(fd) or _field_info(fd)
            if name is None:
                continue
            types.add(name)
            if repeated:
                extend(value)
            else:
                push(value)
            if name in _KEPT_NODES:
                kept.setdefault(name, []).extend(value if repeated else (value,))
    return TreeFacts(frozenset(types), {k: tuple(v) for k, v in kept.items()})


@dataclass(frozen=True)
class Statement:
    """One statement of a client's SQL text.

    ``text`` is the statement as the client wrote it (no trailing semicolon, outer whitespace
    stripped); ``pg_text`` is what PostgreSQL can parse (``ASYNC`` removed), identical to ``text``
    for ordinary SQL. ``node`` is the statement's parse-tree node (``None`` for IAM, EMPTY and
    INVALID statements); ``node_name`` its type, e.g. ``"select_stmt"``.

    The derived facts below are cached on the object (Statements are cached and shared): each
    is computed at most once, and they share one tree walk (`facts`).
    """

    text: str
    pg_text: str
    kind: StatementKind
    command: str
    node_name: str | None = None
    node: Any = field(default=None, compare=False, repr=False)
    is_async: bool = False
    parse_error: str | None = None

    @_cached
    def inner(self) -> Any:
        """The typed node inside ``node`` (e.g. the ``SelectStmt``), or ``None``."""
        if self.node is None or self.node_name is None:
            return None
        return getattr(self.node, self.node_name)

    @_cached
    def lower_text(self) -> str:
        """``pg_text`` lower-cased: for cheap "could the tree hold X" tests before a walk."""
        return self.pg_text.lower()

    def mentions(self, word: str) -> bool:
        """True if ``word`` (lower-case) occurs in the text, in any case.

        A necessary condition for a keyword being in the statement, so False rules a tree walk
        out; True decides nothing (the word may be in a string or a name).
        """
        return word in self.lower_text

    @_cached
    def facts(self) -> TreeFacts:
        """The node types in the parse tree (one walk, shared by every question below)."""
        return _NO_FACTS if self.node is None else tree_facts(self.node)

    @_cached
    def transaction_kind(self) -> str | None:
        """For TRANSACTION statements the libpg_query kind, e.g. ``"TRANS_STMT_COMMIT"``."""
        if self.kind is not StatementKind.TRANSACTION:
            return None
        return str(pb.TransactionStmtKind.Name(self.inner.kind))

    @_cached
    def has_locking_clause(self) -> bool:
        """True if a ``FOR UPDATE/SHARE/…`` clause occurs anywhere in the tree (any kind)."""
        if self.node is None or not _may_lock(self):
            return False
        return "LockingClause" in self.facts.types

    @_cached
    def locks_rows(self) -> bool:
        """True for ``SELECT … FOR UPDATE/SHARE/…`` (any locking clause, at any depth)."""
        return self.kind is StatementKind.QUERY and self.has_locking_clause

    @_cached
    def has_data_modifying_cte(self) -> bool:
        """True if a ``WITH`` query (at any depth) is an INSERT, UPDATE, DELETE or MERGE."""
        if self.node is None or not self.mentions("with"):
            return False
        return any(
            cte.ctequery.WhichOneof("node") in _DML_NODES
            for cte in self.facts.of("CommonTableExpr")
        )

    @_cached
    def read_only(self) -> bool:
        """True if it cannot change data or catalog: queries, SHOW, EXPLAIN without ANALYZE."""
        if self.kind is StatementKind.QUERY:
            return not self.locks_rows and not self.has_data_modifying_cte
        if self.kind is StatementKind.EMPTY:
            return True
        if self.kind is StatementKind.UTILITY:
            if self.node_name == "explain_stmt":
                return not _explain_analyzes(self.inner)
            return self.node_name == "variable_show_stmt"
        return False

    @_cached
    def reads_relations(self) -> bool:
        """True if the statement names any table, view or index (so it reads the catalog).

        DML and DDL always do; a query does when its tree holds a ``RangeVar``.
        """
        if self.kind in (StatementKind.DML, StatementKind.DDL):
            return True
        if self.kind is not StatementKind.QUERY or self.node is None:
            return False
        for item in self.inner.from_clause:  # the usual case, without a walk
            if item.WhichOneof("node") == "range_var":
                return True
        if not any(word in self.lower_text for word in _RELATION_WORDS):
            return False
        return "RangeVar" in self.facts.types


# In a query, a RangeVar comes from FROM, TABLE, INTO or FOR UPDATE OF: without one of these
# words in the text there is none (checked against full walks by tests/test_statement_analysis).
_RELATION_WORDS = ("from", "table", "into", "of")


def _may_lock(stmt: Statement) -> bool:
    """A locking clause needs FOR and one of UPDATE/SHARE (NO KEY UPDATE, KEY SHARE)."""
    text = stmt.lower_text
    return "for" in text and ("update" in text or "share" in text)


def _explain_analyzes(explain: Any) -> bool:
    return any(opt.def_elem.defname == "analyze" for opt in explain.options)


_COMMANDS = {
    "select_stmt": "SELECT",
    "insert_stmt": "INSERT",
    "update_stmt": "UPDATE",
    "delete_stmt": "DELETE",
    "merge_stmt": "MERGE",
    "copy_stmt": "COPY",
    "index_stmt": "CREATE INDEX",
    "create_stmt": "CREATE TABLE",
    "view_stmt": "CREATE VIEW",
    "variable_set_stmt": "SET",
    "variable_show_stmt": "SHOW",
    "explain_stmt": "EXPLAIN",
    "truncate_stmt": "TRUNCATE",
    "drop_stmt": "DROP",
}
_TRANSACTION_COMMANDS = {"START": "BEGIN", "ROLLBACK_TO": "ROLLBACK TO"}


def _command(node_name: str, inner: Any, kind: StatementKind) -> str:
    """A short upper-case name for messages and metrics: ``SELECT``, ``CREATE INDEX``, ``BEGIN``."""
    if kind is StatementKind.TRANSACTION:
        name = pb.TransactionStmtKind.Name(inner.kind).removeprefix("TRANS_STMT_")
        return _TRANSACTION_COMMANDS.get(name, name).replace("_", " ")
    command = _COMMANDS.get(node_name)
    if command is not None:
        return command
    if node_name == "vacuum_stmt":
        return "VACUUM" if getattr(inner, "is_vacuumcmd", False) else "ANALYZE"
    if node_name == "grant_stmt":
        return "GRANT" if getattr(inner, "is_grant", False) else "REVOKE"
    return node_name.removesuffix("_stmt").replace("_", " ").upper()


def _classify(node_name: str, inner: Any) -> StatementKind:
    if node_name == "transaction_stmt":
        return StatementKind.TRANSACTION
    if node_name in _DML_NODES:
        return StatementKind.DML
    if node_name == "select_stmt":
        return StatementKind.DML if inner.HasField("into_clause") else StatementKind.QUERY
    if node_name == "copy_stmt":
        return StatementKind.DML if inner.is_from else StatementKind.UTILITY
    if node_name in _DDL_NODES:
        return StatementKind.DDL
    return StatementKind.UTILITY


def _from_node(text: str, pg_text: str, node: Any, is_async: bool) -> Statement:
    node_name = node.WhichOneof("node")
    inner = getattr(node, node_name)
    kind = _classify(node_name, inner)
    command = _command(node_name, inner, kind)
    if is_async:
        command += " ASYNC"
    return Statement(text, pg_text, kind, command, node_name, node, is_async)


def _from_parse(text: str, pg_text: str, is_async: bool) -> Statement:
    """Build a Statement from text known to hold exactly one statement (or none)."""
    try:
        result = postgast.parse(pg_text)
    except postgast.PgQueryError as exc:
        return Statement(text, pg_text, StatementKind.INVALID, "", parse_error=str(exc))
    if not result.stmts:
        return Statement(text, pg_text, StatementKind.EMPTY, "")
    return _from_node(text, pg_text, result.stmts[0].stmt, is_async)


# --------------------------------------------------------------------------- splitting


@lru_cache(maxsize=4096)
def split_statements(sql: str) -> tuple[Statement, ...]:
    """Split ``sql`` into classified statements (cached by text).

    Statements are separated by top-level semicolons, so quotes, dollar quotes, comments,
    ``E''`` strings and ``::`` casts are safe. A SQL-standard function body (``BEGIN ATOMIC …
    END``) contains semicolons of its own: text holding one is split by the full parser
    instead, which knows where such a body ends. An input with no statement gives an empty
    tuple.
    """
    fast = split_parsed(sql)
    return split_on_tokens(sql) if fast is None else fast


# Text the single-parse path leaves to the token path: DSQL-only syntax (ASYNC, AWS IAM) and
# BEGIN ATOMIC bodies (substring tests: a false alarm only costs the slower path).
_TOKEN_PATH_WORDS = ("async", "aws", "atomic")
# PostgreSQL's whitespace (scan.l ``space``); statement text is stripped of it at both ends.
_PG_SPACE = " \t\n\r\f\v"
_PG_SPACE_BYTES = _PG_SPACE.encode()


def split_parsed(sql: str) -> tuple[Statement, ...] | None:
    """The statements of ``sql`` from one parse of the whole text, or None for the token path.

    Gives up (None) whenever the result could differ from `split_on_tokens`: comments (the
    token path leaves leading and trailing ones out of ``text``), NUL characters, DSQL-only
    syntax, a parse error anywhere (the token path judges each statement on its own), or a
    semicolon inside a statement (e.g. a rule's action list, or one in a string literal).
    """
    if "--" in sql or "/*" in sql or "\x00" in sql:
        return None
    lowered = sql.lower()
    if any(word in lowered for word in _TOKEN_PATH_WORDS):
        return None
    try:
        result = postgast.parse(sql)
    except postgast.PgQueryError:
        return None
    if sql.isascii():  # stmt_location/stmt_len are byte offsets
        return _from_locations(sql, result.stmts, _PG_SPACE, ";")
    return _from_locations(sql.encode("utf-8"), result.stmts, _PG_SPACE_BYTES, b";")


def _from_locations(
    data: AnyStr, raws: Any, space: AnyStr, semicolon: AnyStr
) -> tuple[Statement, ...] | None:
    """Statements from the parse result's locations into ``data`` (str, or UTF-8 bytes)."""
    gaps = space + semicolon
    out: list[Statement] = []
    end = 0
    for raw in raws:
        start = raw.stmt_location
        stop = start + raw.stmt_len if raw.stmt_len else len(data)
        chunk = data[start:stop]
        if semicolon in chunk or data[end:start].strip(gaps):
            return None
        end = stop
        stripped = chunk.strip(space)
        text = stripped if isinstance(stripped, str) else stripped.decode("utf-8")
        out.append(_from_node(text, text, raw.stmt, False))
    if data[end:].strip(gaps):
        return None
    return tuple(out)


class _Token(NamedTuple):
    start: int  # byte offsets into the UTF-8 encoded text
    end: int
    token: str


def _token_names() -> dict[int, str]:
    return {v.number: v.name for v in pb.Token.DESCRIPTOR.values}


_TOKEN_NAMES = _token_names()
_COMMENT_CODES = frozenset({pb.Token.Value("SQL_COMMENT"), pb.Token.Value("C_COMMENT")})


def _token_name(value: int) -> str:
    """libpg_query names single-character tokens by their code, but not every code has a name."""
    name = _TOKEN_NAMES.get(value)
    return f"ASCII_{value}" if name is None else name


def _tokens(data: bytes) -> list[_Token]:
    """The scanner's tokens, comments left out."""
    scanned = postgast.scan(data.decode("utf-8"))
    comments = _COMMENT_CODES
    return [
        _Token(t.start, t.end, _token_name(t.token))
        for t in scanned.tokens
        if t.token not in comments
    ]


def _upper(data: bytes, token: _Token) -> str:
    """The token's text, upper-cased (for IDENT-valued keywords like ASYNC, AWS, IAM)."""
    return data[token.start : token.end].decode("utf-8").upper()


# The first words of DSQL-only syntax (AWS IAM GRANT/REVOKE, CREATE INDEX ASYNC, ALTER TABLE ASYNC).
_DSQL_FIRST_WORDS = frozenset({"AWS", "CREATE", "ALTER"})


def _chunk(data: bytes, tokens: list[_Token]) -> Statement:
    """Recognise DSQL-only syntax in one statement's tokens, then parse what PostgreSQL knows."""
    text = data[tokens[0].start : tokens[-1].end].decode("utf-8") if tokens else ""
    if not tokens or _upper(data, tokens[0]) not in _DSQL_FIRST_WORDS:
        return _from_parse(text, text, False)
    words = [_upper(data, t) for t in tokens[:4]]
    if words[:3] in (["AWS", "IAM", "GRANT"], ["AWS", "IAM", "REVOKE"]):
        return Statement(text, text, StatementKind.IAM, " ".join(words[:3]))
    # CREATE [UNIQUE] INDEX ASYNC ... and ALTER TABLE ASYNC ...: cut the ASYNC token out.
    async_at = None
    if words[:1] == ["CREATE"]:
        i = 2 if words[1:2] == ["UNIQUE"] else 1
        if words[i : i + 2] == ["INDEX", "ASYNC"] and tokens[i + 1].token == "IDENT":
            async_at = i + 1
    elif words[:3] == ["ALTER", "TABLE", "ASYNC"] and tokens[2].token == "IDENT":
        async_at = 2
    if async_at is None:
        return _from_parse(text, text, False)
    base = tokens[0].start
    cut = tokens[async_at]
    pg_bytes = data[base : cut.start] + data[cut.end : tokens[-1].end]
    return _from_parse(text, pg_bytes.decode("utf-8"), True)


def split_on_tokens(sql: str) -> tuple[Statement, ...]:
    """Split ``sql`` on the scanner's tokens and parse each statement on its own.

    The general path (see `split_statements`): handles comments, DSQL-only syntax, and text
    where some statements are invalid (each gets its own INVALID result).
    """
    data = sql.encode("utf-8")
    try:
        tokens = _tokens(data)
    except postgast.PgQueryError as exc:  # unterminated quote or comment
        return (_invalid(sql, str(exc)),)
    if any(t.token == "ATOMIC" for t in tokens):
        return _split_with_parser(sql)
    out: list[Statement] = []
    current: list[_Token] = []
    for tok in tokens:
        if tok.token == "ASCII_59":
            if current:
                out.append(_chunk(data, current))
            current = []
        else:
            current.append(tok)
    if current:
        out.append(_chunk(data, current))
    return tuple(out)


def _invalid(sql: str, error: str) -> Statement:
    text = sql.strip()
    return Statement(text, text, StatementKind.INVALID, "", parse_error=error)


def _split_with_parser(sql: str) -> tuple[Statement, ...]:
    try:
        parts = postgast.split(sql)
    except postgast.PgQueryError as exc:
        return (_invalid(sql, str(exc)),)
    return tuple(_from_parse(p.strip(), p.strip(), False) for p in parts if p.strip())
