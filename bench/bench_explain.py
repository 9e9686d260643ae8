"""EXPLAIN plans: parse + widget construction of a 200-node DSQL-shaped plan (target < 100 ms).

The plan is generated: a tree of Nested Loops over Index Only Scans / Index Scans with their
Storage Scan, B-Tree Scan and Storage Lookup children, with conditions at all three levels and
ANALYZE figures, ending in a DPU block, as the emulator prints it. Side by side: `json.loads` of
the same plan as FORMAT JSON (the floor for any parser), our parser on text and on JSON, the widget
(rows built lazily, as shown) and the widget fully expanded, and the text and HTML renderings.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from dsql_magic.explain.html import render_html
from dsql_magic.explain.parse import parse_plan
from dsql_magic.explain.text import render_text
from dsql_magic.explain.widget import PlanWidget

TARGET_MS = 100.0
NODES = 200


def _scan(depth: int, i: int) -> list[tuple[int, str, list[str]]]:
    """An Index Scan with storage children (5 nodes) or an Index Only Scan (3 nodes)."""
    figures = "(cost=0.15..8.17 rows=10 width=36) (actual time=0.010..0.020 rows=12 loops=3)"
    storage = "(cost=0.15..8.17 rows=10 width=36) (actual rows=12 loops=3)"
    if i % 2:
        return [
            (depth, f"Index Scan using t{i}_idx on public.t{i} {figures}",
             [f"Output: t{i}.id, t{i}.v", f"Index Cond: (t{i}.k = t0.id)",
              f"Filter: (t{i}.v > 'x{i}'::text)"]),
            (depth + 1, f"Storage Scan on t{i}_idx {storage}",
             ["Projections: id, k", f"Filters: (t{i}.s = 'on'::text)"]),
            (depth + 2, f"B-Tree Scan on t{i}_idx {storage}", [f"Index Cond: (t{i}.k = t0.id)"]),
            (depth + 2, f"Storage Lookup on t{i} {storage}", ["Projections: v"]),
            (depth + 3, f"B-Tree Lookup on t{i} {storage}", []),
        ]  # fmt: skip
    return [
        (depth, f"Index Only Scan using t{i}_pkey on public.t{i} {figures}",
         [f"Output: t{i}.id", f"Index Cond: (t{i}.id = t0.id)"]),
        (depth + 1, f"Storage Scan on t{i}_pkey {storage}", ["Projections: id"]),
        (depth + 2, f"B-Tree Scan on t{i}_pkey {storage}", [f"Index Cond: (t{i}.id = t0.id)"]),
    ]  # fmt: skip


def make_plan(nodes: int = NODES) -> str:
    """A DSQL-shaped EXPLAIN ANALYZE VERBOSE text with about `nodes` nodes."""
    root = "Append (cost=0.00..999.00 rows=1000 width=36) (actual time=0.1..40.0 rows=900 loops=1)"
    rows: list[tuple[int, str, list[str]]] = [(0, root, [])]
    i = 0
    while len(rows) < nodes - 5:
        i += 1
        rows.append(
            (
                1,
                "Nested Loop (cost=0.30..50.00 rows=10 width=72) "
                "(actual time=0.05..2.0 rows=12 loops=1)",
                ["Join Filter: (a.id = b.id)"],
            )
        )
        rows.extend(_scan(2, 2 * i))
        rows.extend(_scan(2, 2 * i + 1))
    lines = []
    for depth, header, props in rows:
        pad = "  " * depth * 2
        lines.append(f"{pad}{'-> ' if depth else ''}{header}")
        lines.extend(f"{pad}    {p}" for p in props)
    lines += [
        "Query Identifier: qymgw1m77maoe",
        "Planning Time: 1.234 ms",
        "Execution Time: 41.000 ms",
        "Statement DPU Estimate:",
        "  Compute: 0.02607 DPU",
        "  Read: 0.14312 DPU",
        "  Write: 0.00000 DPU",
        "  Total: 0.16919 DPU",
    ]
    return "\n".join(lines)


def to_json(text: str) -> str:
    """The same plan as FORMAT JSON (built from our model, in PostgreSQL's key names)."""
    plan = parse_plan(text)

    def node(n: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"Node Type": n.node_type, "Plan Rows": n.estimated_rows}
        if n.relation:
            out["Relation Name"] = n.relation
        if n.index:
            out["Index Name"] = n.index
        out.update({"Actual Rows": n.actual_rows, "Actual Loops": n.loops})
        for c in n.conditions:
            out[c.label] = c.text
        if n.projections:
            out["Projections"] = list(n.projections)
        if n.children:
            out["Plans"] = [node(c) for c in n.children]
        return out

    return json.dumps([{"Plan": node(plan.root), "Statement DPU Estimate": dict(plan.dpu or {})}])


def _time(fn: Callable[[], object], repeat: int) -> float:
    """Median milliseconds of `repeat` calls (after one warm-up)."""
    fn()
    samples = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def run(quick: bool = False) -> str:
    text = make_plan()
    doc = to_json(text)
    plan = parse_plan(text)
    count = len(plan.nodes())
    repeat = 5 if quick else 25

    def expanded() -> None:
        PlanWidget(parse_plan(text)).expand_all()

    cases = [
        ("`json.loads` of the FORMAT JSON plan (floor)", lambda: json.loads(doc)),
        ("`parse_plan` text", lambda: parse_plan(text)),
        ("`parse_plan` FORMAT JSON", lambda: parse_plan(doc)),
        ("`PlanWidget` (parsed plan; rows built as shown)", lambda: PlanWidget(plan)),
        ("**parse text + `PlanWidget`** (target < 100 ms)", lambda: PlanWidget(parse_plan(text))),
        ("parse + `PlanWidget` + expand all", expanded),
        ("`render_text`", lambda: render_text(plan)),
        ("`render_html`", lambda: render_html(plan)),
    ]
    results = [(name, _time(fn, repeat)) for name, fn in cases]
    floor = results[0][1]
    table = ["| step | ms | vs `json.loads` |", "|---|---:|---:|"]
    table += [f"| {name} | {ms:.2f} | {ms / floor:.0f}x |" for name, ms in results]
    headline = results[4][1]
    verdict = "met" if headline < TARGET_MS else "NOT met"
    return "\n".join(
        [
            f"## EXPLAIN: parse and widget for a {count}-node plan",
            "",
            f"Median of {repeat} runs each; a generated DSQL-shaped EXPLAIN ANALYZE VERBOSE plan "
            f"of {count} nodes ({len(text.splitlines())} lines of text).",
            "",
            *table,
            "",
            f"- parse + widget construction: **{headline:.1f} ms** (target < {TARGET_MS:.0f} ms): "
            f"{verdict}",
        ]
    )


if __name__ == "__main__":
    print(run(quick=True))
