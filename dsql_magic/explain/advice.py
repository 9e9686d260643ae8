"""Advice on a plan, only where the Aurora DSQL manual gives it.

Each rule names the manual passage it comes from ("Reading Aurora DSQL EXPLAIN plans", L2590-2688,
and its "Best Practices"). The rules read the plan model only; they never run SQL and never guess
at indexes the user has: they say what to look at and what DSQL's documentation recommends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from dsql_magic.explain.model import Plan, PlanNode
from dsql_magic.explain.parse import DSQL_NODE_TYPES

#: A scan of at least this many rows (estimated, or actual when known) counts as "large".
LARGE_SCAN_ROWS: Final = 10_000

_FULL_SCANS: Final = frozenset({"Full Scan", "Seq Scan", "Parallel Seq Scan"})
_SCANS_WITH_FILTERS: Final = frozenset(
    {"Full Scan", "Seq Scan", "Parallel Seq Scan", "Index Scan", "Index Only Scan",
     "Bitmap Heap Scan", "Index Scan Backward", "Index Only Scan Backward"}
)  # fmt: skip


@dataclass(frozen=True)
class Advice:
    """One piece of advice about one node."""

    node_id: int
    kind: Literal["full-scan", "processor-filter", "lookup", "statistics"]
    title: str
    detail: str
    source: str  # the manual passage it rests on


def advise(plan: Plan) -> list[Advice]:
    """All advice for `plan`, in node order."""
    out: list[Advice] = []
    analyzed_relations: set[str] = set()
    for node in plan.nodes():
        out.extend(_full_scan(node))
        out.extend(_processor_filters(node))
        out.extend(_lookup(node))
        stats = _statistics(node, analyzed_relations)
        if stats:
            out.append(stats)
    return out


def _scanned_rows(node: PlanNode) -> float:
    """The most rows any part of this scan touches (storage nodes below count)."""
    best = 0.0
    for n in node.walk():
        if n.estimated_rows is not None:
            best = max(best, n.estimated_rows)
        if n.actual_rows is not None:
            best = max(best, n.actual_rows * (n.loops or 1))
    return best


def _target(node: PlanNode) -> str:
    return node.relation or node.index or "the table"


def _full_scan(node: PlanNode) -> list[Advice]:
    if node.node_type not in _FULL_SCANS:
        return []
    rows = _scanned_rows(node)
    if rows < LARGE_SCAN_ROWS:
        return []
    return [
        Advice(
            node_id=node.id,
            kind="full-scan",
            title=f"Full scan of about {rows:,.0f} rows on {_target(node)}",
            detail=(
                "Every row is read. If this query runs often, index the columns it filters on "
                "(CREATE INDEX ASYNC …) or filter on the primary key; a table with no usable "
                "index scales badly."
            ),
            source="manual, Best Practices: avoid unindexed queries on large tables (L2688)",
        )
    ]


def _processor_filters(node: PlanNode) -> list[Advice]:
    if node.node_type not in _SCANS_WITH_FILTERS:
        return []
    out = []
    for cond in node.conditions:
        if cond.kind != "processor" or cond.label != "Filter":
            continue
        where = f" of index {node.index}" if node.index else ""
        out.append(
            Advice(
                node_id=node.id,
                kind="processor-filter",
                title=f"Filter {cond.text} runs in the query processor",
                detail=(
                    "Rows are transferred from storage before this filter drops them. If it is "
                    "selective, index those columns, or add them as INCLUDE columns"
                    f"{where} so that storage filters them before the transfer."
                ),
                source="manual, Filters in Aurora DSQL (L2580-2590) and Best Practices (L2685)",
            )
        )
    return out


def _lookup(node: PlanNode) -> list[Advice]:
    if node.node_type != "Storage Lookup":
        return []
    rows = node.actual_rows if node.actual_rows is not None else node.estimated_rows
    count = f"about {rows:,.0f} rows" if rows is not None else "rows"
    return [
        Advice(
            node_id=node.id,
            kind="lookup",
            title=f"Lookup of {count} in {_target(node)}",
            detail=(
                "The index does not hold every column the query needs, so each match is looked "
                "up in the table. Adding those columns as INCLUDE columns of the index can turn "
                "this into an Index Only Scan with no lookup."
            ),
            source="manual, Index Scan example (L2681) and Best Practices (L2686)",
        )
    ]


def _statistics(node: PlanNode, seen: set[str]) -> Advice | None:
    if node.node_type in DSQL_NODE_TYPES:  # storage nodes echo their scan's estimate
        return None
    if not node.misestimated or not node.relation or node.relation in seen:
        return None
    seen.add(node.relation)
    ratio = node.misestimate or 0.0
    return Advice(
        node_id=node.id,
        kind="statistics",
        title=f"Row estimate off by ×{ratio:,.0f} on {node.relation}",
        detail=(
            f"The planner expected {node.estimated_rows:,.0f} rows and got "
            f"{node.actual_rows:,.0f}. Up-to-date statistics (ANALYZE {node.relation}) give "
            "better plans."
        ),
        source="manual, Best Practices: keep statistics up to date (L2687)",
    )
