"""Run EXPLAIN for one statement on a psycopg connection and wrap the parsed plan for display.

``EXPLAIN ANALYZE`` executes the statement. For a statement that may write, `explain` therefore
runs it inside a transaction that it rolls back, unless the caller asked to keep the effects, and
says so in the result's note. It refuses (rather than roll back someone else's work) when the
connection already has a transaction open. Only ``EXPLAIN`` and the wrapping transaction are sent;
nothing else is run, and nothing is printed: the caller displays the `ExplainResult`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg import pq

from dsql_magic.explain.model import Plan
from dsql_magic.explain.parse import parse_plan
from dsql_magic.sqlsplit import SqlScanError, split_sql

if TYPE_CHECKING:
    from dsql_magic.explain.widget import PlanWidget

#: Statements whose first keyword says they only read; anything else may write.
READ_ONLY_STARTS: Final = frozenset({"SELECT", "VALUES", "TABLE", "SHOW"})
_WRITE_WORDS_RE: Final = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE)\b", re.IGNORECASE)
_EXPLAIN_PREFIX_RE: Final = re.compile(
    r"^\s*EXPLAIN\s*(?:\((?P<opts>[^)]*)\)|(?P<words>(?:(?:ANALY[SZ]E|VERBOSE)\s+)*))",
    re.IGNORECASE,
)
ROLLED_BACK_NOTE: Final = (
    "EXPLAIN ANALYZE ran this write inside a transaction that was rolled back: no data changed. "
    "Ask to keep the effects (--keep) to commit them."
)
KEPT_NOTE: Final = "EXPLAIN ANALYZE executed this write and its effects were kept."


class ExplainError(ValueError):
    """The statement cannot be explained as asked; the message says what to do instead."""


@dataclass
class ExplainResult:
    """A parsed plan plus how it was obtained; displays as the interactive plan widget."""

    plan: Plan
    sql: str
    analyze: bool
    verbose: bool
    writes: bool
    rolled_back: bool
    notes: list[str] = field(default_factory=list)

    def widget(self, title: str | None = None) -> PlanWidget:
        from dsql_magic.explain.widget import PlanWidget

        return PlanWidget(self.plan, title=title, note=" ".join(self.notes) or None)

    def text(self) -> str:
        from dsql_magic.explain.text import render_text

        return "\n".join([*self.notes, render_text(self.plan)])

    def __repr__(self) -> str:
        return self.text()

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.widget()._repr_mimebundle_(**kwargs)


def statement_writes(first_word: str, text: str) -> bool:
    """Whether a statement may change data (when unsure, it is treated as writing)."""
    if first_word == "WITH":
        return bool(_WRITE_WORDS_RE.search(text))
    return first_word not in READ_ONLY_STARTS


def explain(
    conn: psycopg.Connection[Any],
    sql: str,
    analyze: bool = False,
    verbose: bool = False,
    *,
    keep_effects: bool = False,
    params: Mapping[str, Any] | None = None,
) -> ExplainResult:
    """EXPLAIN one statement (``sql`` may itself start with EXPLAIN and its options)."""
    analyze, verbose, body = _strip_explain(sql, analyze, verbose)
    try:
        statements = split_sql(body)
    except SqlScanError as exc:
        raise ExplainError(f"{exc}; close the quote or comment") from None
    if len(statements) != 1:
        raise ExplainError(
            f"EXPLAIN takes exactly one statement; this has {len(statements)}. "
            "Explain them one at a time."
        )
    stmt = statements[0]
    writes = statement_writes(stmt.first_word, stmt.text)
    options = [o for o, on in (("ANALYZE", analyze), ("VERBOSE", verbose)) if on]
    query = f"EXPLAIN {' '.join(options)} {stmt.query if params else stmt.text}".replace("  ", " ")
    values = dict(params) if params else None
    notes: list[str] = []
    rolled_back = False
    if analyze and writes and not keep_effects:
        if conn.info.transaction_status != pq.TransactionStatus.IDLE:
            raise ExplainError(
                "a transaction is open on this connection, and EXPLAIN ANALYZE of a write would "
                "have to roll it back. COMMIT or ROLLBACK first, or keep the effects (--keep)."
            )
        rows = _run_rolled_back(conn, query, values)
        rolled_back = True
        notes.append(ROLLED_BACK_NOTE)
    else:
        rows = _fetch(conn, query, values)
        if analyze and writes:
            notes.append(KEPT_NOTE)
    plan = parse_plan(rows)
    return ExplainResult(
        plan=plan,
        sql=stmt.text,
        analyze=analyze,
        verbose=verbose,
        writes=writes,
        rolled_back=rolled_back,
        notes=notes,
    )


def _strip_explain(sql: str, analyze: bool, verbose: bool) -> tuple[bool, bool, str]:
    """Fold a leading ``EXPLAIN [ANALYZE] [VERBOSE]`` / ``EXPLAIN (…)`` into the flags."""
    match = _EXPLAIN_PREFIX_RE.match(sql)
    if not match:
        return analyze, verbose, sql
    words = (match["opts"] or match["words"] or "").upper().replace(",", " ").split()
    for i, word in enumerate(words):
        value = words[i + 1] if i + 1 < len(words) else ""
        enabled = value not in ("FALSE", "OFF", "0")
        if word in ("ANALYZE", "ANALYSE"):
            analyze = analyze or enabled
        elif word == "VERBOSE":
            verbose = verbose or enabled
    return analyze, verbose, sql[match.end() :]


def _fetch(conn: psycopg.Connection[Any], query: str, params: dict[str, Any] | None) -> list[Any]:
    with conn.cursor() as cur:
        cur.execute(query, params)
        return list(cur.fetchall())


def _run_rolled_back(
    conn: psycopg.Connection[Any], query: str, params: dict[str, Any] | None
) -> list[Any]:
    """Run `query` in its own transaction and always roll it back."""
    if conn.autocommit:
        with conn.transaction(force_rollback=True):
            return _fetch(conn, query, params)
    try:
        return _fetch(conn, query, params)
    finally:
        conn.rollback()
