"""Statement analysis per statement (the emulator's pure-Python hot path), old way vs new.

For each statement kind, every text distinct (so no text cache hits, as in the simple protocol
with literals inlined), the whole analysis the emulator's hooks run: split + classify, the
dialect policy's decision, and the ``read_only`` / ``locks_rows`` / ``reads_relations`` /
``_is_dml`` facts. Caches keyed by text are bypassed.

- ``old``: the old way, rebuilt from today's parts: the token path (`split_on_tokens`:
  scanner, then one parse per statement), every rule tried in file order, one
  ``postgast.find_nodes`` walk per question. The predicates themselves are today's (the old
  ones walked the tree too), so the real old code was slower still (SELECT by key about
  260-290 µs on the machine that measured the new one at about 41 µs);
- ``new``: `split_statements` as it runs now (one parse of the whole text when possible), the
  rule index, and the shared facts on `Statement`.

Rounds are interleaved and the best round kept; the target is about 50 µs per statement.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import Any

import postgast

from dsql_magic.emulator import policy, statements, txnrules
from dsql_magic.emulator.statements import Statement, StatementKind

pb: Any = importlib.import_module("postgast.pg_query_pb2")

TARGET_US = 50.0

KINDS: dict[str, Callable[[int], str]] = {
    "SELECT by key": lambda i: f"SELECT abalance FROM pgbench_accounts WHERE aid = {i};",
    "UPDATE": lambda i: f"UPDATE pgbench_accounts SET abalance = abalance + {i} WHERE aid = {i}",
    "INSERT … VALUES": lambda i: (
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
        f"VALUES (1, 2, {i}, 5, CURRENT_TIMESTAMP)"
    ),
    "4 statements": lambda i: (
        f"BEGIN; UPDATE t SET a = {i} WHERE id = 1; SELECT a FROM t WHERE id = {i}; COMMIT;"
    ),
    "BEGIN": lambda i: "BEGIN",
    "COMMIT": lambda i: "COMMIT",
    "with a comment": lambda i: f"SELECT a FROM t WHERE id = {i} -- by id",
}


def _any(node: Any, node_type: Any) -> bool:
    return any(True for _ in postgast.find_nodes(node, node_type))


def _old_facts(stmt: Statement) -> tuple[bool, bool, bool]:
    """locks_rows, read_only, reads_relations as computed before (a walk each)."""
    query = stmt.kind is StatementKind.QUERY
    locks = query and _any(stmt.node, pb.LockingClause)
    modifying = query and any(
        cte.ctequery.WhichOneof("node") in statements._DML_NODES
        for cte in postgast.find_nodes(stmt.node, pb.CommonTableExpr)
    )
    reads = stmt.kind in (StatementKind.DML, StatementKind.DDL) or (
        query and _any(stmt.node, pb.RangeVar)
    )
    return locks, not locks and not modifying, reads


def _old_check(stmt: Statement) -> str | None:
    """Every rule in file order (no index), the way `policy.evaluate` ran before."""
    if stmt.node is None:
        return None
    for rule in policy.packaged_index().rules.rules:
        if policy.PREDICATES[rule.predicate](stmt, rule.args):
            return rule.id
    return None


def old(sql: str) -> list[object]:
    return [
        (_old_check(stmt), _old_facts(stmt), txnrules._is_dml(stmt))
        for stmt in statements.split_on_tokens(sql)
    ]


_split = statements.split_statements.__wrapped__
_check = policy.check.__wrapped__


def new(sql: str) -> list[object]:
    return [
        (
            _check(stmt),
            stmt.locks_rows,
            stmt.read_only,
            stmt.reads_relations,
            txnrules._is_dml(stmt),
        )
        for stmt in _split(sql)
    ]


def _per_text_us(fn: Callable[[str], object], texts: list[str]) -> float:
    started = time.perf_counter()
    for text in texts:
        fn(text)
    return (time.perf_counter() - started) / len(texts) * 1e6


def run(quick: bool = False) -> str:
    n = 500 if quick else 3000
    rounds = 3 if quick else 7
    ways = {"old": old, "new": new}
    best: dict[tuple[str, str], float] = {}
    for kind, make in KINDS.items():
        texts = [make(i) for i in range(n)]
        for r in range(rounds):
            for name in list(ways)[r % 2 :] + list(ways)[: r % 2]:
                us = _per_text_us(ways[name], texts)
                best[kind, name] = min(best.get((kind, name), us), us)
    lines = [
        "## Statement analysis (split, classify, policy, facts), µs per text",
        "",
        f"Best of {rounds} interleaved rounds of {n} distinct texts; caches bypassed.",
        "",
        "| statement | old | new | old / new |",
        "|---|---:|---:|---:|",
    ]
    for kind in KINDS:
        o, w = best[kind, "old"], best[kind, "new"]
        lines.append(f"| {kind} | {o:.1f} | {w:.1f} | {o / w:.1f}x |")
    single = best["SELECT by key", "new"]
    verdict = "met" if single <= TARGET_US else "not met"
    lines += [
        "",
        f"- SELECT by key, new: **{single:.1f} µs** (target ≤ {TARGET_US:.0f} µs): {verdict}",
    ]
    return "\n".join(lines)
