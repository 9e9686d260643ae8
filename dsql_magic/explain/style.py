"""What the plan renderers share: condition levels' names and colours, and figure formatting.

Text, HTML and the widget must say the same thing in the same words, so the words live here. This
module formats values; it does not build any output document.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from dsql_magic.explain.model import DPU_KEYS, ConditionKind, Plan, PlanNode

#: How each filtering level is named and coloured (green: cheapest, red: after the transfer).
LEVEL_NAMES: Final[Mapping[ConditionKind, str]] = {
    "index": "index condition",
    "storage": "storage filter",
    "processor": "query-processor filter",
}
LEVEL_COLOURS: Final[Mapping[ConditionKind, str]] = {
    "index": "#2e7d32",
    "storage": "#b26a00",
    "processor": "#c62828",
}
MISESTIMATE_COLOUR: Final = "#c62828"
BAR_COLOUR: Final = "#1f77b4"

ESTIMATE_NOTE: Final = "statement estimate from EXPLAIN ANALYZE VERBOSE; directional, not billing"


def rows(value: float | None) -> str:
    """Row counts as people read them: 1,000,000; 0.5 (PostgreSQL 18 prints fractions)."""
    if value is None:
        return "?"
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.2f}"


def ms(value: float | None) -> str:
    if value is None:
        return "?"
    if value >= 100:
        return f"{value:,.0f} ms"
    return f"{value:.3f} ms"


def percent(share: float | None) -> str:
    return "" if share is None else f"{share * 100:.0f}%"


def dpu_line(plan: Plan) -> str | None:
    """``Compute 0.01607 · Read 0.04312 · Write 0.00000 · Total 0.05919 DPU`` or None."""
    if plan.dpu is None:
        return None
    parts = []
    for key in DPU_KEYS:
        value = plan.dpu.get(key)
        figure = "?" if value is None else f"{value:.5f}"
        minimum = plan.dpu_minimums.get(key)
        if minimum is not None:
            figure += f" (txn min {minimum:.5f})"
        parts.append(f"{key.capitalize()} {figure}")
    return " · ".join(parts) + " DPU"


def figures(node: PlanNode) -> str:
    """``est 8 rows · actual 120 rows × 1 loop · 4.482 ms`` for one node."""
    parts = []
    if node.estimated_rows is not None:
        parts.append(f"est {rows(node.estimated_rows)} rows")
    if node.never_executed:
        parts.append("never executed")
    elif node.actual_rows is not None:
        loops = node.loops or 1
        text = f"actual {rows(node.actual_rows)} rows"
        if loops != 1:
            text += f" × {loops:,} loops"
        parts.append(text)
        if node.misestimated:
            parts.append(f"misestimate ×{node.misestimate or 0:,.0f}")
    if node.inclusive_ms is not None:
        parts.append(ms(node.inclusive_ms))
    if node.total_cost is not None:
        parts.append(f"cost {node.total_cost:,.2f}")
    return " · ".join(parts)


def summary(plan: Plan) -> str:
    """Planning/execution time and query identifier, one line (may be empty)."""
    parts = []
    if plan.planning_ms is not None:
        parts.append(f"planning {ms(plan.planning_ms)}")
    if plan.execution_ms is not None:
        parts.append(f"execution {ms(plan.execution_ms)}")
    if plan.query_identifier:
        parts.append(f"query id {plan.query_identifier}")
    return " · ".join(parts)
