"""Two plans side by side: what changed in cost, time, DPU and the shape of the scans.

`compare_plans` computes the differences (pure); `PlanComparison` renders them as text, as
self-contained HTML (the two plans in two columns) and, on request, as a widget holding two
`PlanWidget`s. It must not run SQL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from typing import TYPE_CHECKING, Any

from dsql_magic.explain.html import render_html
from dsql_magic.explain.model import DPU_KEYS, Plan
from dsql_magic.explain.text import render_text

if TYPE_CHECKING:
    import ipywidgets


@dataclass(frozen=True)
class Difference:
    """One compared figure; `better` says which side wins (None: equal or not comparable)."""

    name: str
    a: float | None
    b: float | None
    better: str | None


def _count(predicate: Callable[[Any], bool]) -> Callable[[Plan], float]:
    return lambda plan: float(sum(1 for n in plan.nodes() if predicate(n)))


_FIGURES: list[tuple[str, Callable[[Plan], float | None]]] = [
    *[
        (f"{k} DPU", (lambda plan, k=k: None if plan.dpu is None else plan.dpu.get(k)))
        for k in DPU_KEYS
    ],
    ("execution ms", lambda plan: plan.execution_ms),
    ("planning ms", lambda plan: plan.planning_ms),
    ("total cost", lambda plan: plan.root.total_cost),
    ("nodes", lambda plan: float(len(plan.nodes()))),
    ("full scans", _count(lambda n: n.node_type in ("Full Scan", "Seq Scan"))),
    ("storage lookups", _count(lambda n: n.node_type == "Storage Lookup")),
    ("processor filters", _count(lambda n: bool(n.conditions_of("processor")))),
    ("misestimates", _count(lambda n: n.misestimated)),
]


@dataclass
class PlanComparison:
    """The two plans, their labels and the per-figure differences (lower is better for all)."""

    a: Plan
    b: Plan
    labels: tuple[str, str] = ("A", "B")
    differences: list[Difference] = field(default_factory=list)

    def text(self) -> str:
        la, lb = self.labels
        width = max(len(d.name) for d in self.differences) if self.differences else 10
        lines = [f"{'':{width}}  {la:>14}  {lb:>14}  better"]
        for d in self.differences:
            lines.append(
                f"{d.name:{width}}  {_fmt(d.a):>14}  {_fmt(d.b):>14}  {d.better or ''}".rstrip()
            )
        lines += ["", f"── {la} ──", render_text(self.a), "", f"── {lb} ──", render_text(self.b)]
        return "\n".join(lines)

    def table_html(self) -> str:
        """The differences alone, as an HTML table."""
        la, lb = (escape(x) for x in self.labels)
        head = f"<tr><th></th><th>{la}</th><th>{lb}</th><th>better</th></tr>"
        body = "".join(
            f'<tr><td>{escape(d.name)}</td><td style="text-align: right">{_fmt(d.a)}</td>'
            f'<td style="text-align: right">{_fmt(d.b)}</td><td>{escape(d.better or "")}</td></tr>'
            for d in self.differences
        )
        return f'<table style="border-collapse: collapse; font-size: 12px">{head}{body}</table>'

    def html(self) -> str:
        """The differences, then both plans in two columns."""
        cell = 'style="vertical-align: top; padding-right: 16px; width: 50%"'
        return (
            f'<div class="dsql-plan-compare">{self.table_html()}'
            f"<table><tr><td {cell}>{render_html(self.a, title=self.labels[0])}</td>"
            f"<td {cell}>{render_html(self.b, title=self.labels[1])}</td></tr></table></div>"
        )

    def widget(self) -> ipywidgets.VBox:
        """Two interactive plans side by side under the table of differences."""
        import ipywidgets as widgets

        from dsql_magic.explain.widget import PlanWidget

        table = widgets.HTML(self.table_html())
        left = PlanWidget(self.a, title=self.labels[0], layout=widgets.Layout(width="50%"))
        right = PlanWidget(self.b, title=self.labels[1], layout=widgets.Layout(width="50%"))
        return widgets.VBox([table, widgets.HBox([left, right])])

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        return self.html()


def compare_plans(a: Plan, b: Plan, labels: tuple[str, str] = ("A", "B")) -> PlanComparison:
    """Compare two plans figure by figure (DPU, time, cost, scans, filters, misestimates)."""
    diffs = []
    for name, get in _FIGURES:
        va, vb = get(a), get(b)
        if va is None and vb is None:
            continue
        better = None
        if va is not None and vb is not None and va != vb:
            better = labels[0] if va < vb else labels[1]
        diffs.append(Difference(name=name, a=va, b=vb, better=better))
    return PlanComparison(a=a, b=b, labels=labels, differences=diffs)


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if value == int(value) and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:.5f}".rstrip("0").rstrip(".") if abs(value) < 1 else f"{value:,.3f}"
