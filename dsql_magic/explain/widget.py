"""The interactive plan: a collapsible tree with a node details panel, built from ipywidgets 8.

Built only from ipywidgets' own controls (no custom front-end code), so it works wherever
ipywidgets does: JupyterLab, Notebook 7, VS Code, Colab. The state is in synced traits (``nodes``,
``expanded``, ``selected``, ``dpu``, ``advice``); the controls only mirror it, so setting a trait
from Python or clicking in the browser ends in the same place. Rows are built lazily when their
parent is first expanded, which keeps a large plan cheap to show. The mimebundle always carries the
text and HTML renderings for front ends without a widget manager (nbconvert, GitHub, terminals).

It must not run SQL or parse plans: it takes a parsed `Plan`.
"""

from __future__ import annotations

from html import escape
from typing import Any, Final

import ipywidgets as widgets
from traitlets import Dict, Int, List, observe

from dsql_magic.explain import style
from dsql_magic.explain.advice import advise
from dsql_magic.explain.html import (
    advice_html,
    bar_html,
    dpu_html,
    node_body_html,
    render_html,
)
from dsql_magic.explain.model import Plan, PlanNode
from dsql_magic.explain.text import render_text

#: Plans with at most this many nodes open fully; larger ones open this many levels deep.
OPEN_ALL_UP_TO: Final = 40
OPEN_DEPTH: Final = 3
_INDENT_PX: Final = 18
_EXPANDED, _COLLAPSED = "▾", "▸"


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
    }


class PlanWidget(widgets.VBox):
    """An EXPLAIN plan to explore: click ▸/▾ to fold a subtree, a node's name for its details."""

    nodes = List(Dict(), help="every node, pre-order (see node_state)").tag(sync=True)
    expanded = List(Int(), help="ids of nodes whose children are shown").tag(sync=True)
    selected = Int(0, help="id of the node shown in the details panel").tag(sync=True)
    dpu = Dict(help="the Statement DPU Estimate (empty when the plan has none)").tag(sync=True)
    advice = List(Dict(), help="advice from the manual, per node").tag(sync=True)

    def __init__(
        self, plan: Plan, *, title: str | None = None, note: str | None = None, **kwargs: Any
    ) -> None:
        self.plan = plan
        self._note = note
        self._by_id = {n.id: n for n in plan.nodes()}
        self._rows: dict[int, widgets.VBox] = {}
        self._toggles: dict[int, widgets.Button] = {}
        self._names: dict[int, widgets.Button] = {}
        self._child_boxes: dict[int, widgets.VBox] = {}
        self._title = title
        states: list[dict[str, Any]] = []
        self._collect(plan.root, None, 0, states)
        notes = advise(plan)
        self._header = widgets.HTML(self._header_html())
        self._details = widgets.HTML(layout=widgets.Layout(flex="2 1 0", min_width="220px"))
        self._tree = widgets.VBox(layout=widgets.Layout(flex="3 1 0", overflow="auto"))
        self._advice = widgets.HTML(advice_html(notes))
        super().__init__(
            children=[
                self._header,
                widgets.HBox([self._tree, self._details]),
                self._advice,
            ],
            **kwargs,
        )
        self.dpu = dict(plan.dpu) if plan.dpu is not None else {}
        self.advice = [
            {"node": n.node_id, "kind": n.kind, "title": n.title, "detail": n.detail} for n in notes
        ]
        self.nodes = states
        open_all = len(states) <= OPEN_ALL_UP_TO
        self.expanded = [
            s["id"] for s in states if s["children"] and (open_all or s["depth"] < OPEN_DEPTH)
        ]
        self._tree.children = [self._row(plan.root, 0)]
        self._sync_expanded()
        self._sync_selected()

    # -- state -> view --------------------------------------------------------------------------

    @observe("expanded")
    def _on_expanded(self, _change: Any) -> None:
        if self._rows:
            self._sync_expanded()

    @observe("selected")
    def _on_selected(self, _change: Any) -> None:
        if self._rows:
            self._sync_selected()

    def _sync_expanded(self) -> None:
        open_ids = set(self.expanded)
        # Building a row may reveal more expanded rows: repeat until every visible one exists.
        pending = [nid for nid in self._rows if nid in open_ids]
        while pending:
            nid = pending.pop()
            node = self._by_id[nid]
            box = self._child_boxes.get(nid)
            if box is not None and not box.children and node.children:
                depth = self.nodes[nid]["depth"] + 1
                box.children = [self._row(c, depth) for c in node.children]
                pending.extend(c.id for c in node.children if c.id in open_ids)
        for nid, toggle in self._toggles.items():
            is_open = nid in open_ids
            toggle.description = _EXPANDED if is_open else _COLLAPSED
            self._child_boxes[nid].layout.display = "" if is_open else "none"

    def _sync_selected(self) -> None:
        for nid, button in self._names.items():
            button.button_style = "info" if nid == self.selected else ""
        node = self._by_id.get(self.selected)
        self._details.value = self._details_html(node) if node is not None else ""

    # -- view -> state --------------------------------------------------------------------------

    def toggle(self, node_id: int) -> None:
        """Fold or unfold the children of `node_id`."""
        current = list(self.expanded)
        if node_id in current:
            current.remove(node_id)
        elif self._by_id.get(node_id) is not None and self._by_id[node_id].children:
            current.append(node_id)
        self.expanded = current

    def select(self, node_id: int) -> None:
        if node_id in self._by_id:
            self.selected = node_id

    def expand_all(self) -> None:
        self.expanded = [n.id for n in self._by_id.values() if n.children]

    def collapse_all(self) -> None:
        self.expanded = []

    def toggle_button(self, node_id: int) -> widgets.Button:
        """The ▸/▾ control of a node (for tests and for embedding)."""
        return self._toggles[node_id]

    def name_button(self, node_id: int) -> widgets.Button:
        return self._names[node_id]

    def is_visible(self, node_id: int) -> bool:
        """True when every ancestor of `node_id` is expanded (its row is on screen)."""
        parent = self.nodes[node_id]["parent"]
        open_ids = set(self.expanded)
        while parent is not None:
            if parent not in open_ids:
                return False
            parent = self.nodes[parent]["parent"]
        return True

    # -- building -------------------------------------------------------------------------------

    def _collect(
        self, node: PlanNode, parent: int | None, depth: int, out: list[dict[str, Any]]
    ) -> None:
        # Iterative: deep plans must not hit the recursion limit.
        stack = [(node, parent, depth)]
        while stack:
            current, par, dep = stack.pop()
            out.append(node_state(self.plan, current, par, dep))
            stack.extend((c, current.id, dep + 1) for c in reversed(current.children))
        out.sort(key=lambda s: s["id"])

    def _row(self, node: PlanNode, depth: int) -> widgets.VBox:
        indent = widgets.Box(layout=widgets.Layout(width=f"{depth * _INDENT_PX}px"))
        if node.children:
            toggle = widgets.Button(
                description=_COLLAPSED,
                tooltip="show or hide the children",
                layout=widgets.Layout(width="28px"),
            )
            toggle.on_click(lambda _b, nid=node.id: self.toggle(nid))
            self._toggles[node.id] = toggle
            lead: widgets.Widget = toggle
        else:
            lead = widgets.Box(layout=widgets.Layout(width="28px"))
        name = widgets.Button(
            description=node.title,
            tooltip=node.title,
            layout=widgets.Layout(width="auto", max_width="60%"),
        )
        name.on_click(lambda _b, nid=node.id: self.select(nid))
        self._names[node.id] = name
        figures = escape(style.figures(node))
        if node.misestimated:
            figures = f'<span style="color: {style.MISESTIMATE_COLOUR}">{figures} ⚠</span>'
        info = widgets.HTML(
            f'<span style="font-size: 12px">{figures}{bar_html(self.plan.time_share(node))}</span>'
        )
        parts: list[widgets.Widget] = [widgets.HBox([indent, lead, name, info])]
        body = node_body_html(node)
        if body:
            pad = (depth + 1) * _INDENT_PX + 28
            parts.append(
                widgets.HTML(f'<div style="font-size: 12px; padding-left: {pad}px">{body}</div>')
            )
        children = widgets.VBox()
        self._child_boxes[node.id] = children
        parts.append(children)
        row = widgets.VBox(parts)
        self._rows[node.id] = row
        return row

    def _header_html(self) -> str:
        title = f"<b>{escape(self._title)}</b><br>" if self._title else ""
        if self._note:
            title += f'<div style="font-style: italic">{escape(self._note)}</div>'

        summary = style.summary(self.plan)
        summary_html = f'<div style="opacity: 0.75">{escape(summary)}</div>' if summary else ""
        return f"{title}{dpu_html(self.plan)}{summary_html}"

    def _details_html(self, node: PlanNode) -> str:
        rows: list[tuple[str, str]] = [("node", node.title)]
        for label, value in (
            ("estimated rows", style.rows(node.estimated_rows)),
            ("actual rows", style.rows(node.actual_rows) if node.actual_rows is not None else ""),
            ("loops", str(node.loops) if node.loops is not None else ""),
            ("time (incl. children)", style.ms(node.inclusive_ms) if node.inclusive_ms else ""),
            ("time share (self)", style.percent(self.plan.time_share(node))),
            ("cost", f"{node.startup_cost}..{node.total_cost}" if node.total_cost else ""),
            ("width", str(node.width) if node.width is not None else ""),
        ):
            if value:
                rows.append((label, value))
        rows.extend((k or "note", v) for k, v in node.properties)
        table = "".join(
            f'<tr><td style="padding-right: 8px; vertical-align: top; opacity: 0.75">'
            f"{escape(k)}</td><td>{escape(v)}</td></tr>"
            for k, v in rows
        )
        notes = [a for a in self.advice if a["node"] == node.id]
        advice = "".join(
            f"<li><b>{escape(a['title'])}</b>: {escape(a['detail'])}</li>" for a in notes
        )
        return (
            '<div style="font-size: 12px; border-left: 2px solid rgba(127,127,127,0.4); '
            f'padding-left: 8px"><table>{table}</table>'
            f"{'<ul>' + advice + '</ul>' if advice else ''}</div>"
        )

    # -- representations ------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"PlanWidget({self.plan.root.title!r}, {len(self.nodes)} nodes)"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data: dict[str, Any] = dict(super()._repr_mimebundle_(**kwargs) or {})
        note = f"{self._note}\n" if self._note else ""
        data["text/plain"] = note + render_text(self.plan)
        html = render_html(self.plan, title=self._title)
        if self._note:
            html = f"<div><i>{escape(self._note)}</i></div>{html}"
        data["text/html"] = html
        return data
