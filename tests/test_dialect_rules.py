"""Table-driven tests straight from the dialect rules data (emulator/dialect/rules.yaml).

Each refused example must give its rule's SQLSTATE and exact message; each accepted example must
pass the policy and then run on a real PostgreSQL 16 (the emulator's engine, as ``admin``).
"""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dsql_magic.emulator.dialect import RulesError, load_rules, parse_rules, rules_text
from dsql_magic.emulator.policy import PREDICATES, check, unknown_predicates
from dsql_magic.emulator.statements import Statement, StatementKind, split_statements

RULES = load_rules()
REFUSED = [(r.id, sql) for r in RULES.rules for sql in r.refused]
ACCEPTED = [(r.id, sql) for r in RULES.rules for sql in r.accepted]


def _one(sql: str) -> Statement:
    stmts = split_statements(sql)
    assert len(stmts) == 1, sql
    assert stmts[0].kind is not StatementKind.INVALID, stmts[0].parse_error
    return stmts[0]


@pytest.mark.parametrize(("rule_id", "sql"), REFUSED, ids=[f"{i}:{s}" for i, s in REFUSED])
def test_refused_example_gives_rule_error(rule_id: str, sql: str) -> None:
    rule = RULES.by_id(rule_id)
    decision = check(_one(sql))
    assert decision.violation is not None, f"{sql!r} was accepted"
    assert decision.violation.rule.id == rule_id
    err = decision.error
    assert err is not None
    assert err.sqlstate == rule.sqlstate
    assert "{" not in err.message, "unfilled placeholder"
    if "{" not in rule.message:
        assert err.message == rule.message


@pytest.mark.parametrize(("rule_id", "sql"), ACCEPTED, ids=[f"{i}:{s}" for i, s in ACCEPTED])
def test_accepted_example_passes_policy_and_runs_on_pg16(
    rule_id: str, sql: str, dialect_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    stmt = _one(sql)
    decision = check(stmt)
    assert decision.violation is None, f"{sql!r} refused by {decision.violation.rule.id}"
    dialect_conn.execute(decision.forward or stmt.pg_text)


def test_every_rule_is_exercised_and_known() -> None:
    assert unknown_predicates(RULES) == []
    for rule in RULES.rules:
        if rule.action == "refuse" and rule.id not in {"table-columns", "view-definition-size"}:
            assert rule.refused, f"rule {rule.id} has no refused example"
    assert {r.predicate for r in RULES.rules} <= set(PREDICATES)


def test_exact_messages_for_observed_texts() -> None:
    def msg(sql: str) -> tuple[str, str]:
        err = check(_one(sql)).error
        assert err is not None
        return err.sqlstate, err.message

    assert msg("CREATE TABLE x (a int[])") == ("0A000", "datatype integer[] not supported")
    assert msg("CREATE TABLE x (a text[])") == ("0A000", "datatype text[] not supported")
    assert msg("CREATE TABLE x (id bigserial)") == ("42704", 'type "bigserial" does not exist')
    assert msg("CREATE TABLE x (id int GENERATED ALWAYS AS IDENTITY (CACHE 1))") == (
        "0A000",
        "datatype integer not supported, identity column type must be bigint",
    )
    assert msg("SET work_mem = '1MB'") == (
        "0A000",
        'setting configuration parameter "work_mem" not supported',
    )
    assert msg("BEGIN ISOLATION LEVEL SERIALIZABLE") == (
        "0A000",
        "Unsupported isolation level: SERIALIZABLE",
    )
    assert msg("ROLLBACK TO SAVEPOINT a") == (
        "0A000",
        "unsupported transaction statement: ROLLBACK TO",
    )
    assert msg("SHOW lc_collate") == ("42704", 'unrecognized configuration parameter "lc_collate"')
    assert msg("CREATE TABLESPACE x LOCATION '/x'") == (
        "0A000",
        "unsupported statement: CreateTableSpace",
    )


def test_table_column_limit_at_boundary(
    dialect_conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    ok = "CREATE TABLE wide (" + ", ".join(f"c{i} int" for i in range(255)) + ")"
    too_many = "CREATE TABLE wide (" + ", ".join(f"c{i} int" for i in range(256)) + ")"
    assert check(_one(ok)).violation is None
    dialect_conn.execute(ok)
    err = check(_one(too_many)).error
    assert err is not None
    assert (err.sqlstate, err.message) == ("54011", "tables can have at most 255 columns")


def test_view_definition_size_at_boundary() -> None:
    head = "CREATE VIEW big AS SELECT '"
    tail = "' AS s"
    limit = RULES.by_id("view-definition-size").args["max_bytes"]
    at_limit = head + "x" * (limit - len(head) - len(tail)) + tail
    over = head + "x" * (limit - len(head) - len(tail) + 1) + tail
    assert len(at_limit.encode()) == limit
    assert check(_one(at_limit)).violation is None
    err = check(_one(over)).error
    assert err is not None
    assert (err.sqlstate, err.message) == ("54000", "view definition too large")


def test_numeric_default_rewrite_creates_numeric_18_6(
    dialect_conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    decision = check(_one("CREATE TABLE money_t (id int PRIMARY KEY, amount numeric, d decimal)"))
    assert decision.forward is not None
    assert decision.rewrites == ("numeric-default",)
    dialect_conn.execute(decision.forward)
    rows = dialect_conn.execute(
        "SELECT column_name, numeric_precision, numeric_scale FROM information_schema.columns "
        "WHERE table_name = 'money_t' AND data_type = 'numeric' ORDER BY column_name"
    ).fetchall()
    assert rows == [("amount", 18, 6), ("d", 18, 6)]
    dialect_conn.execute("INSERT INTO money_t VALUES (1, 1.23456789, 2)")
    row = dialect_conn.execute("SELECT amount::text FROM money_t").fetchone()
    assert row == ("1.234568",)


def test_async_forms_are_validated_but_not_forwarded() -> None:
    stmt = _one("CREATE INDEX ASYNC ON t (a)")
    assert stmt.is_async
    assert check(stmt).violation is None
    assert check(_one("CREATE INDEX ASYNC ON t (a DESC)")).violation is not None


def test_non_sql_statements_pass() -> None:
    assert check(_one("AWS IAM GRANT r TO 'arn:aws:iam::123456789012:role/x'")).violation is None
    invalid = split_statements("SELEC 1")[0]
    assert check(invalid).violation is None


def test_rules_file_validation() -> None:
    assert parse_rules(rules_text()).version == RULES.version
    with pytest.raises(RulesError, match="duplicate"):
        parse_rules(
            "version: 1\nrules:\n"
            "- {id: a, predicate: vacuum, sqlstate: 0A000, message: m, source: observed}\n"
            "- {id: a, predicate: vacuum, sqlstate: 0A000, message: m, source: observed}\n"
        )
    with pytest.raises(RulesError, match="source"):
        parse_rules(
            "version: 1\nrules:\n"
            "- {id: a, predicate: vacuum, sqlstate: 0A000, message: m, source: guess}\n"
        )
    with pytest.raises(RulesError, match="unknown fields"):
        parse_rules(
            "version: 1\nrules:\n"
            "- {id: a, predicate: vacuum, sqlstate: 0A000, message: m, source: observed, x: 1}\n"
        )


EXAMPLES = [(r.id, sql, True) for r in RULES.rules for sql in r.refused] + [
    (r.id, sql, False) for r in RULES.rules for sql in r.accepted
]


@given(
    example=st.sampled_from(EXAMPLES),
    upper=st.lists(st.booleans(), min_size=1, max_size=64),
    gap=st.sampled_from([" ", "  ", "\n", "\t ", " /* c */ "]),
)
def test_decisions_ignore_case_and_spacing(
    example: tuple[str, str, bool], upper: list[bool], gap: str
) -> None:
    """Keywords in any case and any whitespace between tokens give the same decision."""
    rule_id, sql, refused = example
    if "'" in sql or '"' in sql or "$$" in sql:
        sql_variant = sql.replace(" ", gap) if "'" not in sql and '"' not in sql else sql
    else:
        words = sql.split(" ")
        cased = [w.upper() if upper[i % len(upper)] else w.lower() for i, w in enumerate(words)]
        sql_variant = gap.join(cased)
    variant = split_statements(sql_variant)
    assert len(variant) == 1
    decision = check(variant[0])
    if refused:
        assert decision.violation is not None
        assert decision.violation.rule.id == rule_id
    else:
        assert decision.violation is None
