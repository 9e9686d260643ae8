"""A plan as plain text, for terminals, logs and the ``text/plain`` part of a widget's output.

The tree is drawn with box characters; each node shows its figures, then its projections, output
and conditions tagged by filtering level; the DPU estimate comes first and advice last. Pure: it
returns a string and prints nothing.
"""

from __future__ import annotations

from dsql_magic.explain import style
from dsql_magic.explain.advice import Advice, advise
from dsql_magic.explain.model import Plan, PlanNode

_LEVEL_TAGS = {"index": "index cond", "storage": "storage filter", "processor": "processor filter"}


def render_text(plan: Plan, *, advice: bool = True, details: bool = True) -> str:
    """The whole plan as text; `details` adds projections, output and conditions per node."""
    lines: list[str] = []
    dpu = style.dpu_line(plan)
    if dpu:
        lines.append(f"DPU estimate: {dpu}")
        lines.append(f"  ({style.ESTIMATE_NOTE})")
    _node_lines(plan, plan.root, "", "", lines, details)
    summary = style.summary(plan)
    if summary:
        lines.append(summary)
    notes = advise(plan) if advice else []
    if notes:
        lines.append("Advice:")
        lines.extend(_advice_lines(notes))
    return "\n".join(lines)


def _node_lines(
    plan: Plan, node: PlanNode, lead: str, child_lead: str, out: list[str], details: bool
) -> None:
    head = node.title
    if node.parent_relationship and node.parent_relationship not in ("Outer", "Inner", "Member"):
        head = f"[{node.parent_relationship}] {head}"
    figures = style.figures(node)
    share = style.percent(plan.time_share(node))
    line = f"{lead}{head}"
    if figures:
        line += f"  ({figures})"
    if share:
        line += f"  [{share} of time]"
    out.append(line)
    last = len(node.children) - 1
    body = child_lead + ("│   " if node.children else "    ")
    if details:
        if node.projections:
            out.append(f"{body}projections: {', '.join(node.projections)}")
        if node.output:
            out.append(f"{body}output: {', '.join(node.output)}")
        for cond in node.conditions:
            out.append(f"{body}{_LEVEL_TAGS[cond.kind]}: {cond.text}")
    for i, child in enumerate(node.children):
        branch, cont = ("└── ", "    ") if i == last else ("├── ", "│   ")
        _node_lines(plan, child, child_lead + branch, child_lead + cont, out, details)


def _advice_lines(notes: list[Advice]) -> list[str]:
    out = []
    for note in notes:
        out.append(f"  * {note.title} (node {note.node_id})")
        out.append(f"    {note.detail}")
    return out
