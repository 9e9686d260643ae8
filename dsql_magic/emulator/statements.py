"""Split client SQL into statements and classify each one, on libpg_query's parse tree.

Everything in the emulator that decides by statement (the dialect policy, transaction rules, OCC,
EXPLAIN rewriting, metering) starts from the `Statement` objects made here, so the SQL is parsed
once per distinct text (results are cached: a parse costs about 60 µs).

DSQL-only syntax that PostgreSQL cannot parse is recognised on the scanner's tokens, never with
regular expressions: ``CREATE [UNIQUE] INDEX ASYNC``, ``ALTER TABLE ASYNC`` and ``AWS IAM
GRANT/REVOKE``. For the first two the ``ASYNC`` token is cut out and the rest is parsed as
PostgreSQL (`Statement.pg_text`); the third is kept as tokens for the IAM command handler.

This module is pure: no I/O, no session state, no knowledge of which rules DSQL enforces.
"""

from __future__ import annotations

import enum
import importlib
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

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


@dataclass(frozen=True)
class Statement:
    """One statement of a client's SQL text.

    ``text`` is the statement as the client wrote it (no trailing semicolon, outer whitespace
    stripped); ``pg_text`` is what PostgreSQL can parse (``ASYNC`` removed), identical to ``text``
    for ordinary SQL. ``node`` is the statement's parse-tree node (``None`` for IAM, EMPTY and
    INVALID statements); ``node_name`` its type, e.g. ``"select_stmt"``.
    """

    text: str
    pg_text: str
    kind: StatementKind
    command: str
    node_name: str | None = None
    node: Any = field(default=None, compare=False, repr=False)
    is_async: bool = False
    parse_error: str | None = None

    @property
    def inner(self) -> Any:
        """The typed node inside ``node`` (e.g. the ``SelectStmt``), or ``None``."""
        if self.node is None or self.node_name is None:
            return None
        return getattr(self.node, self.node_name)

    @cached_property  # Statements are cached and shared: compute once
    def transaction_kind(self) -> str | None:
        """For TRANSACTION statements the libpg_query kind, e.g. ``"TRANS_STMT_COMMIT"``."""
        if self.kind is not StatementKind.TRANSACTION:
            return None
        return str(pb.TransactionStmtKind.Name(self.inner.kind))

    @cached_property  # Statements are cached and shared: compute once
    def locks_rows(self) -> bool:
        """True for ``SELECT … FOR UPDATE/SHARE/…`` (any locking clause, at any depth)."""
        if self.kind is not StatementKind.QUERY:
            return False
        return any(True for _ in postgast.find_nodes(self.node, pb.LockingClause))

    @cached_property  # Statements are cached and shared: compute once
    def read_only(self) -> bool:
        """True if it cannot change data or catalog: queries, SHOW, EXPLAIN without ANALYZE."""
        if self.kind is StatementKind.QUERY:
            return not self.locks_rows and not _has_data_modifying_cte(self.node)
        if self.kind is StatementKind.EMPTY:
            return True
        if self.kind is StatementKind.UTILITY:
            if self.node_name == "explain_stmt":
                return not _explain_analyzes(self.inner)
            return self.node_name == "variable_show_stmt"
        return False


def _has_data_modifying_cte(node: Any) -> bool:
    return any(
        True
        for cte in postgast.find_nodes(node, pb.CommonTableExpr)
        if cte.ctequery.WhichOneof("node") in _DML_NODES
    )


def _explain_analyzes(explain: Any) -> bool:
    return any(opt.def_elem.defname == "analyze" for opt in explain.options)


def _command(node_name: str, inner: Any, kind: StatementKind) -> str:
    """A short upper-case name for messages and metrics: ``SELECT``, ``CREATE INDEX``, ``BEGIN``."""
    if kind is StatementKind.TRANSACTION:
        name = pb.TransactionStmtKind.Name(inner.kind).removeprefix("TRANS_STMT_")
        return {"START": "BEGIN", "ROLLBACK_TO": "ROLLBACK TO"}.get(name, name).replace("_", " ")
    special = {
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
        "vacuum_stmt": "VACUUM" if getattr(inner, "is_vacuumcmd", False) else "ANALYZE",
        "truncate_stmt": "TRUNCATE",
        "drop_stmt": "DROP",
        "grant_stmt": "GRANT" if getattr(inner, "is_grant", False) else "REVOKE",
    }
    if node_name in special:
        return special[node_name]
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


def _from_parse(text: str, pg_text: str, is_async: bool) -> Statement:
    """Build a Statement from text known to hold exactly one statement (or none)."""
    try:
        result = postgast.parse(pg_text)
    except postgast.PgQueryError as exc:
        return Statement(text, pg_text, StatementKind.INVALID, "", parse_error=str(exc))
    if not result.stmts:
        return Statement(text, pg_text, StatementKind.EMPTY, "")
    node = result.stmts[0].stmt
    node_name = node.WhichOneof("node")
    inner = getattr(node, node_name)
    kind = _classify(node_name, inner)
    command = _command(node_name, inner, kind)
    if is_async:
        command += " ASYNC"
    return Statement(text, pg_text, kind, command, node_name, node, is_async)


@dataclass(frozen=True)
class _Token:
    start: int  # byte offsets into the UTF-8 encoded text
    end: int
    token: str
    upper: str  # the token's text, upper-cased (for IDENT-valued keywords like ASYNC, AWS, IAM)


def _token_name(value: int) -> str:
    """libpg_query names single-character tokens by their code, but not every code has a name."""
    try:
        return str(pb.Token.Name(value))
    except ValueError:
        return f"ASCII_{value}"


def _tokens(data: bytes) -> list[_Token]:
    scanned = postgast.scan(data.decode("utf-8"))
    out = []
    for t in scanned.tokens:
        name = _token_name(t.token)
        if name in {"SQL_COMMENT", "C_COMMENT"}:
            continue
        out.append(_Token(t.start, t.end, name, data[t.start : t.end].decode("utf-8").upper()))
    return out


def _chunk(data: bytes, tokens: list[_Token]) -> Statement:
    """Recognise DSQL-only syntax in one statement's tokens, then parse what PostgreSQL knows."""
    text = data[tokens[0].start : tokens[-1].end].decode("utf-8") if tokens else ""
    words = [t.upper for t in tokens[:4]]
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


@lru_cache(maxsize=4096)
def split_statements(sql: str) -> tuple[Statement, ...]:
    """Split ``sql`` into classified statements (cached by text).

    Statements are separated by top-level semicolons, found on scanner tokens, so quotes, dollar
    quotes, comments, ``E''`` strings and ``::`` casts are safe. A SQL-standard function body
    (``BEGIN ATOMIC … END``) contains semicolons of its own: text holding one is split by the
    full parser instead, which knows where such a body ends. An input with no statement gives
    an empty tuple.
    """
    data = sql.encode("utf-8")
    try:
        tokens = _tokens(data)
    except postgast.PgQueryError as exc:  # unterminated quote or comment
        return (
            Statement(sql.strip(), sql.strip(), StatementKind.INVALID, "", parse_error=str(exc)),
        )
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
        return (
            Statement(sql.strip(), sql.strip(), StatementKind.INVALID, "", parse_error=str(exc)),
        )
    return tuple(_from_parse(p.strip(), p.strip(), False) for p in parts if p.strip())
