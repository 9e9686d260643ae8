"""A plan as self-contained HTML, for saved notebooks, nbviewer, GitHub and the widget's fallback.

No JavaScript and no external resources: the tree collapses with native ``<details>`` elements and
all styling is inline, so the HTML reads the same wherever it is rendered (and still reads when a
sanitizer strips the styles). Pure: returns strings.
"""

from __future__ import annotations

from html import escape

from dsql_magic.explain import style
from dsql_magic.explain.advice import Advice, advise
from dsql_magic.explain.model import DPU_KEYS, Plan, PlanNode

_BOX = (
    "font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; "
    "line-height: 1.45; color: inherit"
)
_LIST = "list-style: none; margin: 0 0 0 1.1em; padding: 0"
_MUTED = "opacity: 0.75"


def render_html(plan: Plan, *, advice: bool = True, title: str | None = None) -> str:
    """The plan as one ``<div>``: DPU estimate, collapsible tree, summary, advice, legend."""
    parts = [f'<div class="dsql-plan" style="{_BOX}">']
    if title:
        parts.append(f"<div><b>{escape(title)}</b></div>")
    parts.append(dpu_html(plan))
    parts.append(f'<ul class="dsql-plan-tree" style="{_LIST}; margin-left: 0">')
    parts.append(_node_html(plan, plan.root))
    parts.append("</ul>")
    summary = style.summary(plan)
    if summary:
        parts.append(f'<div style="{_MUTED}">{escape(summary)}</div>')
    if advice:
        parts.append(advice_html(advise(plan)))
    parts.append(legend_html())
    parts.append("</div>")
    return "".join(parts)


def dpu_html(plan: Plan) -> str:
    """The DPU estimate as a one-row table (empty string when the plan has none)."""
    if plan.dpu is None:
        return ""
    cells = []
    for key in DPU_KEYS:
        value = plan.dpu.get(key)
        figure = "?" if value is None else f"{value:.5f}"
        minimum = plan.dpu_minimums.get(key)
        note = (
            f'<br><span style="{_MUTED}">txn min {minimum:.5f}</span>'
            if minimum is not None
            else ""
        )
        weight = "font-weight: bold; " if key == "total" else ""
        cells.append(
            f'<td style="{weight}padding: 2px 10px 2px 0">{key.capitalize()}<br>{figure}{note}</td>'
        )
    return (
        '<div class="dsql-plan-dpu" style="margin-bottom: 4px">'
        f'<table style="border-collapse: collapse"><tr><td style="padding-right: 10px">'
        f"<b>DPU estimate</b></td>{''.join(cells)}</tr></table>"
        f'<div style="{_MUTED}">{escape(style.ESTIMATE_NOTE)}</div></div>'
    )


def node_header_html(plan: Plan, node: PlanNode) -> str:
    """One node's header: type and target, figures, misestimate flag, time-share bar."""
    rel = node.parent_relationship
    tag = (
        f'<span style="{_MUTED}">[{escape(rel)}]</span> '
        if rel and rel not in ("Outer", "Inner", "Member")
        else ""
    )
    figures = escape(style.figures(node))
    if node.misestimated:
        figures = f'<span style="color: {style.MISESTIMATE_COLOUR}">{figures} ⚠</span>'
    return (
        f"{tag}<b>{escape(node.node_type)}</b>{escape(node.title[len(node.node_type) :])}"
        f' <span style="{_MUTED}">{figures}</span>{bar_html(plan.time_share(node))}'
    )


def bar_html(share: float | None) -> str:
    if share is None:
        return ""
    width = max(0.0, min(share, 1.0)) * 100
    return (
        ' <span title="share of execution time" style="display: inline-block; width: 60px; '
        'height: 8px; background: rgba(127,127,127,0.25); vertical-align: middle">'
        f'<span style="display: block; width: {width:.0f}%; height: 100%; '
        f'background: {style.BAR_COLOUR}"></span></span> {style.percent(share)}'
    )


def node_body_html(node: PlanNode) -> str:
    """Projections, output and conditions of a node, conditions coloured by level."""
    rows = []
    if node.projections:
        rows.append(f"projections: {escape(', '.join(node.projections))}")
    if node.output:
        rows.append(f'<span style="{_MUTED}">output: {escape(", ".join(node.output))}</span>')
    for cond in node.conditions:
        colour = style.LEVEL_COLOURS[cond.kind]
        rows.append(
            f'<span style="color: {colour}">{escape(style.LEVEL_NAMES[cond.kind])}: '
            f"{escape(cond.text)}</span>"
        )
    return "".join(f'<div style="margin-left: 1.1em">{r}</div>' for r in rows)


def _node_html(plan: Plan, node: PlanNode) -> str:
    header = node_header_html(plan, node)
    body = node_body_html(node)
    if not node.children:
        return f'<li data-node="{node.id}"><div>{header}</div>{body}</li>'
    children = "".join(_node_html(plan, c) for c in node.children)
    return (
        f'<li data-node="{node.id}"><details open><summary style="cursor: pointer">{header}'
        f'</summary>{body}<ul style="{_LIST}">{children}</ul></details></li>'
    )


def advice_html(notes: list[Advice]) -> str:
    if not notes:
        return ""
    items = "".join(
        f"<li><b>{escape(n.title)}</b> (node {n.node_id}): {escape(n.detail)} "
        f'<span style="{_MUTED}">[{escape(n.source)}]</span></li>'
        for n in notes
    )
    return f'<div class="dsql-plan-advice"><b>Advice</b><ul style="margin: 0">{items}</ul></div>'


def legend_html() -> str:
    items = " · ".join(
        f'<span style="color: {style.LEVEL_COLOURS[k]}">{escape(name)}</span>'
        for k, name in style.LEVEL_NAMES.items()
    )
    return f'<div style="{_MUTED}">filter levels, cheapest first: {items}</div>'
