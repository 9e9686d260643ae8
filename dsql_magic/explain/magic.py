"""The magic side of EXPLAIN: ``%dsql explain …`` and ``%%dsql --explain [analyze]``.

Parses the subcommand's options, picks the connection, calls `command.explain`, files the DPU
estimate in the ledger, and returns the display object (the plan widget, or a comparison). The
SQL after the options is passed on untouched (no shell-style splitting: SQL has its own quotes).
"""

from __future__ import annotations

import re
from typing import Any, Final

from dsql_magic.errors import UsageProblem
from dsql_magic.explain.command import ExplainError, ExplainResult, explain
from dsql_magic.explain.compare import compare_plans
from dsql_magic.explain.model import Plan
from dsql_magic.explain.parse import parse_plan
from dsql_magic.sqlsplit import SqlScanError, split_sql

_FLAGS: Final = {"--analyze", "--verbose", "--keep", "--compare", "--text", "--help", "-h"}
_VALUED: Final = {"--conn"}
_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
USAGE: Final = """\
%dsql explain [--analyze] [--verbose] [--keep] [--conn NAME] [--text] SQL
%%dsql explain [--analyze] [--verbose] [--keep] [--conn NAME] [--text]     (SQL in the cell)
%%dsql explain --compare [--analyze] …      (two statements in the cell, side by side)
%dsql explain --compare A B                 (two plans held in Python variables)

--analyze runs the statement (EXPLAIN ANALYZE VERBOSE: DSQL adds its DPU estimate). A write is
then run in a transaction that is rolled back, unless --keep is given. --text shows plain text."""


def _split_options(line: str) -> tuple[dict[str, Any], str]:
    options: dict[str, Any] = {}
    rest = line.strip()
    while rest.startswith("-"):
        word, _, after = rest.partition(" ")
        if word in _VALUED:
            value, _, after = after.strip().partition(" ")
            if not value:
                raise UsageProblem(f"{word} needs a value", "e.g. %dsql explain --conn NAME SQL")
            options[word[2:]] = value
        elif word in _FLAGS:
            options[word.lstrip("-")] = True
        else:
            break
        rest = after.strip()
    return options, rest


def cmd_explain(magic: Any, args: str, cell: str | None) -> object:
    """``%dsql explain``: see `USAGE`."""
    from dsql_magic.results import Message

    options, sql = _split_options(args)
    if options.get("help") or options.get("h"):
        return Message(USAGE)
    analyze = bool(options.get("analyze"))
    verbose = bool(options.get("verbose")) or analyze
    body = cell if cell is not None else sql
    if options.get("compare"):
        return _compare(magic, body, cell is None, options, analyze, verbose)
    if not body.strip():
        raise UsageProblem("no statement to explain", "usage: " + USAGE.splitlines()[0])
    result = run_explain(
        magic, body, analyze=analyze, verbose=verbose, keep=bool(options.get("keep")),
        conn=options.get("conn"),
    )  # fmt: skip
    return Message(result.text()) if options.get("text") else result


def explain_cell(
    magic: Any, cell: str, *, mode: str, conn: str | None = None, var: str | None = None
) -> object:
    """``%%dsql --explain [analyze]``: the cell's statement explained instead of run."""
    analyze = mode == "analyze"
    result = run_explain(magic, cell, analyze=analyze, verbose=analyze, keep=False, conn=conn)
    if var:
        shell = getattr(magic, "shell", None)
        if shell is not None:
            shell.user_ns[var] = result
    return result


def run_explain(
    magic: Any, sql: str, *, analyze: bool, verbose: bool, keep: bool, conn: str | None
) -> ExplainResult:
    from dsql_magic.dpu.command import record_plan
    from dsql_magic.execution import bind_parameters

    connection = magic.registry.get(conn)
    raw = connection.ensure()
    try:
        statements = split_sql(sql)
    except SqlScanError as exc:
        raise UsageProblem(str(exc), "close the quote or comment") from None
    if len(statements) != 1:
        raise UsageProblem(
            f"EXPLAIN takes exactly one statement; this has {len(statements)}",
            "explain them one at a time (or use --compare with two)",
        )
    namespace = magic.shell.user_ns if getattr(magic, "shell", None) is not None else {}
    params = bind_parameters(statements, namespace)[0]
    try:
        result = explain(
            raw, statements[0].text, analyze, verbose, keep_effects=keep, params=params
        )
    except ExplainError as exc:
        raise UsageProblem(str(exc)) from None
    except ValueError as exc:  # the server's answer was not a plan we can read
        raise UsageProblem(f"could not read the plan: {exc}") from None
    finally:
        connection.remember_status()
    if analyze:
        note = "rolled back: no data changed" if result.rolled_back else ""
        record_plan(magic, result.plan, statements[0].text, connection.name, note=note)
    return result


def _compare(
    magic: Any, body: str, line_form: bool, options: dict[str, Any], analyze: bool, verbose: bool
) -> object:
    names = body.split()
    if line_form and len(names) == 2 and all(_NAME_RE.match(n) for n in names):
        namespace = magic.shell.user_ns if getattr(magic, "shell", None) is not None else {}
        plans = [_plan_from(namespace, n) for n in names]
        return compare_plans(plans[0], plans[1], (names[0], names[1]))
    try:
        statements = split_sql(body)
    except SqlScanError as exc:
        raise UsageProblem(str(exc), "close the quote or comment") from None
    if len(statements) != 2:
        raise UsageProblem(
            f"--compare needs two statements (or two variable names); got {len(statements)}",
            "put two statements separated by ';' in the cell",
        )
    results = [
        run_explain(
            magic,
            s.text,
            analyze=analyze,
            verbose=verbose,
            keep=bool(options.get("keep")),
            conn=options.get("conn"),
        )
        for s in statements
    ]
    return compare_plans(results[0].plan, results[1].plan, ("A", "B"))


def _plan_from(namespace: dict[str, Any], name: str) -> Plan:
    if name not in namespace:
        raise UsageProblem(f"{name} is not a defined Python variable", "store a plan in it first")
    value = namespace[name]
    if isinstance(value, ExplainResult):
        return value.plan
    if isinstance(value, Plan):
        return value
    try:
        return parse_plan(value)
    except ValueError as exc:
        raise UsageProblem(f"{name} does not hold a plan: {exc}") from None
