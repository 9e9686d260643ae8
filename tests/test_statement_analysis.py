"""The fast statement analysis gives exactly what the slow one gave.

Two splitters (`split_parsed`: one parse of the whole text; `split_on_tokens`: the scanner's
tokens, one parse per statement) must agree on generated multi-statement texts; the single-walk
facts on `Statement` must agree with `postgast.find_nodes` on every SQL string in the test
suite and the dialect rules' examples; the policy's rule index must never leave out a rule that
matches.
"""

from __future__ import annotations

import ast
import importlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import postgast
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsql_magic.emulator.dialect import load_rules
from dsql_magic.emulator.policy import PREDICATES, RuleIndex, evaluate, packaged_index
from dsql_magic.emulator.statements import (
    Statement,
    StatementKind,
    split_on_tokens,
    split_parsed,
    split_statements,
)

pb: Any = importlib.import_module("postgast.pg_query_pb2")
_DML = {"insert_stmt", "update_stmt", "delete_stmt", "merge_stmt"}


def _key(stmt: Statement) -> tuple[object, ...]:
    return (*(getattr(stmt, f) for f in ("text", "pg_text", "kind", "command")), _shape(stmt))


def _shape(stmt: Statement) -> tuple[object, ...]:
    """The rest of the statement, its parse tree with ``location`` offsets left out."""
    node = None
    if stmt.node is not None:
        node = type(stmt.node)()
        node.CopyFrom(stmt.node)
        _clear_locations(node)
        node = node.SerializeToString(deterministic=True)
    return (stmt.node_name, stmt.is_async, stmt.parse_error, node)


def _clear_locations(msg: Any) -> None:
    for fd, value in msg.ListFields():
        if fd.name == "location":
            msg.ClearField("location")
        elif fd.type == fd.TYPE_MESSAGE:
            for child in value if fd.is_repeated else (value,):
                _clear_locations(child)


# --------------------------------------------------------------------------- splitting

_PIECES = st.sampled_from(
    [
        "SELECT 1",
        "SELECT a FROM t WHERE id = 7",
        "select 'a;b'",
        "SELECT 'it''s; fine'",
        "SELECT E'esc\\';aped'",
        "SELECT $$dollar; quoted$$",
        "SELECT $tag$ a;b $$ still; inside $tag$",
        'SELECT "quoted;ident" FROM t',
        "SELECT 'é;ü', 'naïve'",
        "SELECT 'ünïcode' AS \"ñ\" FROM t",
        "SELECT\xa01",
        "SELECT 1::text, 'x'::varchar(10)",
        "SELECT a FROM t -- trailing; comment\n",
        "/* lead; */ SELECT 2",
        "SELECT /* inner */ 3",
        "BEGIN",
        "COMMIT",
        "UPDATE t SET a = a + 1 WHERE id = 3",
        "INSERT INTO t (a) VALUES (1), (2)",
        "WITH w AS (DELETE FROM t RETURNING *) SELECT * FROM w",
        "SELECT * FROM t FOR UPDATE",
        "CREATE INDEX ASYNC i ON t (a)",
        "CREATE INDEX async ON t (a)",
        "ALTER TABLE ASYNC t VALIDATE CONSTRAINT c",
        "AWS IAM GRANT r TO 'arn:aws:iam::123456789012:role/x'",
        "SELECT laws FROM draws",
        "SELEC 2",
        "SELECT (",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END",
        "CREATE RULE r AS ON INSERT TO t DO ALSO (NOTIFY a; NOTIFY b)",
        "SET search_path = public",
        "SHOW server_version",
        "EXPLAIN ANALYZE SELECT 1",
        "VALUES (1)",
        "",
        "SELECT 'unterminated",
    ]
)
_SEPARATORS = st.sampled_from([";", "; ", ";\n", " ;\t", ";;", ";\v", "\f;\r\n"])
_EDGES = st.sampled_from(["", " ", "\n", "\t \n", "\v", ";", " ; "])


@st.composite
def _texts(draw: st.DrawFn) -> str:
    parts = draw(st.lists(_PIECES, min_size=1, max_size=5))
    seps = [draw(_SEPARATORS) for _ in parts[1:]]
    body = parts[0] + "".join(sep + part for sep, part in zip(seps, parts[1:], strict=True))
    return draw(_EDGES) + body + draw(_EDGES)


@settings(max_examples=400, deadline=None)
@given(_texts())
def test_fast_split_equals_token_split(sql: str) -> None:
    slow = [_key(s) for s in split_on_tokens(sql)]
    fast = split_parsed(sql)
    if fast is not None:
        assert [_key(s) for s in fast] == slow
    assert [_key(s) for s in split_statements.__wrapped__(sql)] == slow


@pytest.mark.parametrize(
    ("sql", "fast"),
    [
        ("SELECT 1", True),
        ("  SELECT 1 ;  SELECT 'ü';", True),
        ("BEGIN; SELECT $$a;b$$; COMMIT", False),  # a semicolon inside a statement
        ("SELECT 1; SELEC 2", False),  # a parse error: each statement judged alone
        ("SELECT 1 -- note", False),  # comments stay out of the text: token path
        ("CREATE INDEX ASYNC i ON t (a)", False),
        ("SELECT 1\x00", False),
    ],
)
def test_which_path(sql: str, fast: bool) -> None:
    assert (split_parsed(sql) is not None) is fast
    assert [_key(s) for s in split_statements.__wrapped__(sql)] == [
        _key(s) for s in split_on_tokens(sql)
    ]


def test_each_statement_of_a_bad_text_keeps_its_own_verdict() -> None:
    kinds = [s.kind for s in split_statements("SELECT 1; SELEC 2; COMMIT")]
    assert kinds == [StatementKind.QUERY, StatementKind.INVALID, StatementKind.TRANSACTION]


# --------------------------------------------------------------------------- facts

_TESTS = Path(__file__).parent


@lru_cache(maxsize=1)
def _corpus() -> tuple[str, ...]:
    """Every string constant in the test suite holding a statement, and the rules' examples."""
    texts: set[str] = set()
    for path in sorted(_TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                texts.add(node.value)
    rules = load_rules()
    texts.update(sql for r in rules.rules for sql in (*r.refused, *r.accepted))
    texts.update(_TRICKY)
    out = []
    for text in sorted(texts):
        if len(text) > 20_000 or not text.strip():
            continue
        if any(s.node is not None for s in split_statements(text)):
            out.append(text)
    return tuple(out)


# Where a query can hold a table (or seem to): the cheap tests before a walk must not lie.
_TRICKY = [
    "SELECT 1 FOR UPDATE OF t",
    "TABLE t",
    "SELECT * INTO x FROM t",
    "SELECT (SELECT a FROM t)",
    "VALUES ((SELECT 1 FROM t))",
    "WITH x AS (SELECT 1) SELECT * FROM x",
    "WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x",
    "SELECT * FROM (SELECT * FROM (WITH d AS (UPDATE t SET a = 1 RETURNING a) SELECT 1) s) q",
    "SELECT * FROM generate_series(1, 3)",
    "SELECT * FROM ROWS FROM (generate_series(1, 2)) AS r",
    "SELECT * FROM t TABLESAMPLE SYSTEM (10)",
    "SELECT * FROM t FOR NO KEY UPDATE",
    "SELECT * FROM t FOR KEY SHARE SKIP LOCKED",
    "SELECT 'for update'",
    "SELECT now()",
    "SELECT sys.wait_for_job(123)",
    "INSERT INTO t SELECT * FROM u FOR UPDATE",
    "DECLARE c CURSOR FOR SELECT * FROM t FOR SHARE",
    "EXPLAIN SELECT * FROM t",
    "CREATE TABLE t2 (id int PRIMARY KEY, b text UNIQUE, CHECK (id > 0))",
    "ALTER TABLE t ADD CONSTRAINT u UNIQUE (a)",
]


def _found(node: Any, node_type: Any) -> list[Any]:
    return list(postgast.find_nodes(node, node_type))


def _statements() -> list[Statement]:
    out = []
    for text in _corpus():
        out += [s for s in split_statements.__wrapped__(text) if s.node is not None]
    return out


def test_the_corpus_is_large() -> None:
    stmts = _statements()
    assert len(stmts) > 300
    assert {s.kind for s in stmts} >= {StatementKind.QUERY, StatementKind.DML, StatementKind.DDL}


def test_single_walk_facts_equal_find_nodes() -> None:
    for stmt in _statements():
        _check_facts(stmt)


@settings(max_examples=200, deadline=None)
@given(_texts())
def test_single_walk_facts_equal_find_nodes_on_generated_texts(sql: str) -> None:
    for stmt in split_statements.__wrapped__(sql):
        if stmt.node is not None:
            _check_facts(stmt)


def _check_facts(stmt: Statement) -> None:
    """Every fact `Statement` derives from its one walk, against find_nodes walks."""
    query = stmt.kind is StatementKind.QUERY
    locks = _found(stmt.node, pb.LockingClause)
    ctes = _found(stmt.node, pb.CommonTableExpr)
    modifying = any(c.ctequery.WhichOneof("node") in _DML for c in ctes)
    ranges = _found(stmt.node, pb.RangeVar)
    assert stmt.has_locking_clause == bool(locks), stmt.text
    assert stmt.locks_rows == (query and bool(locks)), stmt.text
    assert stmt.has_data_modifying_cte == modifying, stmt.text
    if query:
        assert stmt.read_only == (not locks and not modifying), stmt.text
    relations = stmt.kind in (StatementKind.DML, StatementKind.DDL) or (query and ranges)
    assert stmt.reads_relations == bool(relations), stmt.text
    walked = {type(m).DESCRIPTOR.name for _, m in postgast.walk(stmt.node)}
    assert stmt.facts.types - {"Node"} == walked - {"Node"}, stmt.text
    for name in ("LockingClause", "CommonTableExpr", "Constraint"):
        expected = _found(stmt.node, getattr(pb, name))
        assert sorted(m.SerializeToString() for m in stmt.facts.of(name)) == sorted(
            m.SerializeToString() for m in expected
        ), (name, stmt.text)


def test_tricky_queries_are_in_the_corpus() -> None:
    texts = set(_corpus())
    assert set(_TRICKY) <= texts


def test_rule_index_never_leaves_out_a_matching_rule() -> None:
    index = packaged_index()
    seen: set[str] = set()
    for stmt in _statements():
        assert stmt.node_name is not None
        kept = {r.id for r in index.for_node(stmt.node_name)}
        for rule in index.rules.rules:
            if rule.id not in kept:
                assert PREDICATES[rule.predicate](stmt, rule.args) == [], (rule.id, stmt.text)
        decision = evaluate(stmt, index)
        if decision.violation is not None:
            seen.add(decision.violation.rule.id)
    # the corpus holds every rule's refused examples, so every refusing rule fired
    assert {r.id for r in index.rules.rules if r.refused} <= seen


def test_evaluate_takes_a_rule_set_or_an_index() -> None:
    rules = load_rules()
    (stmt,) = split_statements("TRUNCATE t")
    by_set, by_index = evaluate(stmt, rules), evaluate(stmt, RuleIndex(rules))
    assert by_set.violation is not None and by_index.violation is not None
    assert by_set.violation.rule.id == by_index.violation.rule.id == "truncate"
