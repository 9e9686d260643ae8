"""The interactive plan: a collapsible tree with a node details panel, as an anywidget.

The state is in synced traits (``nodes``, ``expanded``, ``selected``, ``dpu``, ``advice``…); the
front end (``static/plan_widget.js`` and ``.css``, real files shipped in the wheel) renders only the
visible rows from that state and writes clicks back to ``expanded``/``selected``. Building the
widget is therefore one widget and a list of plain dicts, cheap even for large plans. anywidget
runs in JupyterLab, Notebook 7, VS Code and Colab; the mimebundle always carries the text and HTML
renderings for front ends without a widget manager (nbconvert, GitHub, terminals).

It must not run SQL or parse plans: it takes a parsed `Plan`.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any, Final

import anywidget
from traitlets import Dict, Int, List, Unicode

from dsql_magic.explain import style
from dsql_magic.explain.advice import advise
from dsql_magic.explain.html import render_html
from dsql_magic.explain.model import Plan, PlanNode
from dsql_magic.explain.text import render_text

STATIC: Final = Path(__file__).parent / "static"
#: Plans with at most this many nodes open fully; larger ones open this many levels deep.
OPEN_ALL_UP_TO: Final = 40
OPEN_DEPTH: Final = 3


def node_details(plan: Plan, node: PlanNode) -> list[list[str]]:
    """The rows of a node's details panel: figures first, then everything EXPLAIN printed."""
    est, act, mis = node.estimated_rows, node.actual_rows, node.misestimate
    candidates = [
        ("estimated rows", style.rows(est) if est is not None else ""),
        ("actual rows", style.rows(act) if act is not None else ""),
        ("loops", str(node.loops) if node.loops is not None else ""),
        ("time (incl. children)", style.ms(node.inclusive_ms) if node.inclusive_ms else ""),
        ("time share (self)", style.percent(plan.time_share(node))),
        ("misestimate", f"×{mis:,.0f}" if node.misestimated and mis else ""),
        ("cost", f"{node.startup_cost}..{node.total_cost}" if node.total_cost is not None else ""),
        ("width", str(node.width) if node.width is not None else ""),
    ]
    rows = [[label, value] for label, value in candidates if value]
    rows.extend([key or "note", value] for key, value in node.properties)
    return rows


def node_state(plan: Plan, node: PlanNode, parent: int | None, depth: int) -> dict[str, Any]:
    """The JSON-able description of one node that the ``nodes`` trait holds."""
    return {
        "id": node.id,
        "parent": parent,
        "depth": depth,
        "children": [c.id for c in node.children],
        "title": node.title,
        "node_type": node.node_type,
        "relation": node.relation,
        "index": node.index,
        "relationship": (
            node.parent_relationship
            if node.parent_relationship not in (None, "Outer", "Inner", "Member")
            else None
        ),
        "estimated_rows": node.estimated_rows,
        "actual_rows": node.actual_rows,
        "loops": node.loops,
        "time_share": plan.time_share(node),
        "misestimated": node.misestimated,
        "figures": style.figures(node),
        "projections": list(node.projections),
        "conditions": [
            {
                "kind": c.kind,
                "label": c.label,
                "text": c.text,
                "level": style.LEVEL_NAMES[c.kind],
                "colour": style.LEVEL_COLOURS[c.kind],
            }
            for c in node.conditions
        ],
        "details": node_details(plan, node),
    }


def plan_state(plan: Plan) -> list[dict[str, Any]]:
    """Every node's state, pre-order (so ``nodes[i]["id"] == i``); iterative for deep plans."""
    out: list[dict[str, Any]] = []
    stack: list[tuple[PlanNode, int | None, int]] = [(plan.root, None, 0)]
    while stack:
        node, parent, depth = stack.pop()
        out.append(node_state(plan, node, parent, depth))
        stack.extend((c, node.id, depth + 1) for c in reversed(node.children))
    return out


class PlanWidget(anywidget.AnyWidget):
    """An EXPLAIN plan to explore: click ▸/▾ to fold a subtree, a node's name for its details."""

    _esm = STATIC / "plan_widget.js"
    _css = STATIC / "plan_widget.css"

    nodes = List(Dict(), help="every node, pre-order (see node_state)").tag(sync=True)
    expanded = List(Int(), help="ids of nodes whose children are shown").tag(sync=True)
    selected = Int(0, help="id of the node shown in the details panel").tag(sync=True)
    dpu = Dict(help="the Statement DPU Estimate (empty when the plan has none)").tag(sync=True)
    dpu_minimums = Dict(help="transaction minimums printed next to Read/Write").tag(sync=True)
    dpu_note = Unicode(style.ESTIMATE_NOTE).tag(sync=True)
    advice = List(Dict(), help="advice from the manual, per node").tag(sync=True)
    title = Unicode("").tag(sync=True)
    note = Unicode("", help="how the plan was obtained (e.g. rolled back)").tag(sync=True)
    summary = Unicode("", help="planning/execution time and query id").tag(sync=True)

    def __init__(
        self, plan: Plan, *, title: str | None = None, note: str | None = None, **kwargs: Any
    ) -> None:
        self.plan = plan
        states = plan_state(plan)
        open_all = len(states) <= OPEN_ALL_UP_TO
        expanded = [
            s["id"] for s in states if s["children"] and (open_all or s["depth"] < OPEN_DEPTH)
        ]
        super().__init__(
            nodes=states,
            expanded=expanded,
            selected=0,
            dpu=dict(plan.dpu) if plan.dpu is not None else {},
            dpu_minimums=dict(plan.dpu_minimums),
            advice=[
                {"node": a.node_id, "kind": a.kind, "title": a.title, "detail": a.detail}
                for a in advise(plan)
            ],
            title=title or "",
            note=note or "",
            summary=style.summary(plan),
            **kwargs,
        )

    # -- the same actions the front end performs --------------------------------------------

    def toggle(self, node_id: int) -> None:
        """Fold or unfold the children of `node_id`."""
        current = set(self.expanded)
        if node_id in current:
            current.remove(node_id)
        elif 0 <= node_id < len(self.nodes) and self.nodes[node_id]["children"]:
            current.add(node_id)
        self.expanded = sorted(current)

    def select(self, node_id: int) -> None:
        if 0 <= node_id < len(self.nodes):
            self.selected = node_id

    def expand_all(self) -> None:
        self.expanded = [n["id"] for n in self.nodes if n["children"]]

    def collapse_all(self) -> None:
        self.expanded = []

    def is_visible(self, node_id: int) -> bool:
        """True when every ancestor of `node_id` is expanded (its row is on screen)."""
        open_ids = set(self.expanded)
        parent = self.nodes[node_id]["parent"]
        while parent is not None:
            if parent not in open_ids:
                return False
            parent = self.nodes[parent]["parent"]
        return True

    def visible(self) -> list[int]:
        """Ids of the rows on screen, in order (what the front end draws)."""
        return [n["id"] for n in self.nodes if self.is_visible(n["id"])]

    # -- representations ----------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"PlanWidget({self.plan.root.title!r}, {len(self.nodes)} nodes)"

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        bundle = super()._repr_mimebundle_(**kwargs)
        data, metadata = bundle if isinstance(bundle, tuple) else (bundle or {}, {})
        data = dict(data)
        note = f"{self.note}\n" if self.note else ""
        data["text/plain"] = note + render_text(self.plan)
        html = render_html(self.plan, title=self.title or None)
        if self.note:
            html = f"<div><i>{escape(self.note)}</i></div>{html}"
        data["text/html"] = html
        return data, dict(metadata)
