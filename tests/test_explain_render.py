"""Renderers of a plan: text and HTML snapshots, advice, widget state, side-by-side comparison.

Snapshots live in tests/fixtures/explain_snapshots/; after an intended change, regenerate them with
``DSQL_UPDATE_SNAPSHOTS=1 pytest tests/test_explain_render.py`` and review the diff.
"""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from dsql_magic.explain import parse_plan
from dsql_magic.explain.advice import advise
from dsql_magic.explain.compare import compare_plans
from dsql_magic.explain.html import render_html
from dsql_magic.explain.model import Plan
from dsql_magic.explain.text import render_text
from dsql_magic.explain.widget import OPEN_ALL_UP_TO, STATIC, PlanWidget

PLANS = Path(__file__).parent / "fixtures" / "plans"
SNAPSHOTS = Path(__file__).parent / "fixtures" / "explain_snapshots"
MANUAL = ["full_scan", "index_only_scan", "index_scan", "dpu_select", "dpu_insert"]


def manual(name: str) -> Plan:
    return parse_plan((PLANS / f"manual_{name}.txt").read_text())


def check_snapshot(name: str, actual: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("DSQL_UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
    assert path.exists(), f"missing snapshot {path}; create it with DSQL_UPDATE_SNAPSHOTS=1"
    assert actual == path.read_text()


@pytest.mark.parametrize("name", MANUAL)
def test_text_snapshot(name: str) -> None:
    check_snapshot(f"{name}.txt", render_text(manual(name)) + "\n")


@pytest.mark.parametrize("name", MANUAL)
def test_html_snapshot(name: str) -> None:
    check_snapshot(f"{name}.html", render_html(manual(name)) + "\n")


class _Checker(HTMLParser):
    """Collects tags and checks that every opened element is closed in order."""

    VOID = frozenset({"br"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()


@pytest.mark.parametrize("name", MANUAL)
def test_html_is_well_formed_and_needs_no_script(name: str) -> None:
    html = render_html(manual(name))
    checker = _Checker()
    checker.feed(html)
    checker.close()
    assert checker.stack == []
    assert "script" not in checker.tags and "<link" not in html
    assert html.count("<li data-node=") == len(manual(name).nodes())


def test_html_escapes_plan_text() -> None:
    plan = parse_plan("Seq Scan on t  (cost=0.00..1.00 rows=1 width=4)\n  Filter: (a = '<b>x</b>')")
    html = render_html(plan)
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html


def test_html_colours_conditions_by_level() -> None:
    html = render_html(manual("index_only_scan"))
    assert re.search(r'color: #2e7d32">index condition: \(customer_id', html)
    assert re.search(r'color: #b26a00">storage filter: \(\(status\)', html)
    assert re.search(r'color: #c62828">query-processor filter: \(balance', html)


def test_dpu_block_comes_first() -> None:
    text = render_text(manual("dpu_insert"))
    assert text.splitlines()[0] == (
        "DPU estimate: Compute 0.01550 · Read 0.00307 (txn min 0.00375) · "
        "Write 0.01875 (txn min 0.05000) · Total 0.03732 DPU"
    )
    html = render_html(manual("dpu_insert"))
    assert html.index("DPU estimate") < html.index("dsql-plan-tree")


# ------------------------------------------------------------------------------------------ advice


def test_advice_follows_the_manual() -> None:
    full = advise(manual("full_scan"))
    assert [(a.node_id, a.kind) for a in full] == [(0, "full-scan"), (0, "processor-filter")]
    assert "100,000 rows on transaction" in full[0].title
    only = advise(manual("index_only_scan"))
    assert [(a.node_id, a.kind) for a in only] == [(0, "processor-filter")]
    assert "INCLUDE columns of index idx1" in only[0].detail
    lookup = advise(manual("index_scan"))
    assert [(a.node_id, a.kind) for a in lookup] == [(0, "processor-filter"), (3, "lookup")]
    stats = advise(manual("dpu_select"))
    assert [(a.node_id, a.kind) for a in stats] == [(0, "statistics")]
    assert advise(manual("dpu_insert")) == []


def test_small_full_scan_gets_no_advice() -> None:
    plan = parse_plan("Seq Scan on t  (cost=0.00..1.00 rows=10 width=4)")
    assert advise(plan) == []


# ------------------------------------------------------------------------------------------ widget


def test_widget_state_of_the_index_scan_example() -> None:
    w = PlanWidget(manual("index_scan"))
    assert [n["title"] for n in w.nodes] == [
        "Index Scan using idx1 on account",
        "Storage Scan on idx1",
        "B-Tree Scan on account",
        "Storage Lookup on account",
        "B-Tree Lookup on transaction",
    ]
    assert [n["parent"] for n in w.nodes] == [None, 0, 1, 1, 3]
    root_conditions = [(c["kind"], c["colour"]) for c in w.nodes[0]["conditions"]]
    assert root_conditions == [("processor", "#c62828"), ("index", "#2e7d32")]
    assert [(c["kind"], c["colour"]) for c in w.nodes[3]["conditions"]] == [("storage", "#b26a00")]
    assert w.expanded == [0, 1, 3]  # small plans open fully
    assert w.selected == 0 and w.visible() == [0, 1, 2, 3, 4]
    assert [a["kind"] for a in w.advice] == ["processor-filter", "lookup"]
    assert w.dpu == {} and w.summary == ""
    assert ["estimated rows", "4"] in w.nodes[3]["details"]
    state = w.get_state()
    assert {"nodes", "expanded", "selected", "dpu", "advice", "_esm", "_css"} <= set(state)


def front_end_update(w: PlanWidget, **state: object) -> None:
    """Deliver a state update as the front end's ``save_changes()`` sends it over the comm."""
    w._handle_msg({"content": {"data": {"method": "update", "state": state}}})


def test_widget_click_from_the_front_end_collapses_and_selects() -> None:
    w = PlanWidget(manual("index_scan"))
    front_end_update(w, expanded=[0, 3])  # the ▾ of node 1 clicked
    assert w.expanded == [0, 3]
    assert w.visible() == [0, 1] and not w.is_visible(2) and not w.is_visible(4)
    front_end_update(w, selected=3)  # the name of node 3 clicked
    assert w.selected == 3
    front_end_update(w, expanded=[0, 1, 3])
    assert w.visible() == [0, 1, 2, 3, 4]


def test_widget_python_actions() -> None:
    w = PlanWidget(manual("index_scan"))
    w.toggle(1)
    assert w.expanded == [0, 3]
    w.toggle(1)
    assert w.expanded == [0, 1, 3]
    w.toggle(2)  # a leaf has nothing to open
    assert w.expanded == [0, 1, 3]
    w.select(4)
    assert w.selected == 4
    w.select(99)
    assert w.selected == 4
    w.collapse_all()
    assert w.visible() == [0]
    w.expand_all()
    assert w.visible() == [0, 1, 2, 3, 4]


def test_widget_opens_large_plans_a_few_levels_deep() -> None:
    deep = ["Result  (cost=0.00..0.01 rows=1 width=4)"]
    for depth in range(1, OPEN_ALL_UP_TO + 10):
        deep.append("  " * depth + f"->  Result  (cost=0.00..0.01 rows=1 width={depth})")
    w = PlanWidget(parse_plan("\n".join(deep)))
    assert w.expanded == [0, 1, 2]
    assert w.visible() == [0, 1, 2, 3]
    wide = ["Append  (cost=0.00..10.00 rows=100 width=4)"]
    for i in range(OPEN_ALL_UP_TO + 5):
        wide.append(f"  ->  Seq Scan on t{i}  (cost=0.00..1.00 rows=1 width=4)")
    assert len(PlanWidget(parse_plan("\n".join(wide))).visible()) == OPEN_ALL_UP_TO + 6


def test_widget_mimebundle_has_fallbacks() -> None:
    w = PlanWidget(manual("dpu_select"), note="a note")
    data, _metadata = w._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data
    assert data["text/plain"].startswith("a note\nDPU estimate: Compute 0.01607")
    assert "dsql-plan-tree" in data["text/html"] and "a note" in data["text/html"]
    assert repr(w) == (
        "PlanWidget('Index Only Scan using test_table_pkey on public.test_table', 3 nodes)"
    )
    assert w.dpu == {"compute": 0.01607, "read": 0.04312, "write": 0.0, "total": 0.05919}
    assert w.summary == "planning 11.415 ms · execution 4.528 ms · query id qymgw1m77maoe"


def test_front_end_files_are_in_the_package() -> None:
    assert STATIC.joinpath("plan_widget.js").is_file()
    assert STATIC.joinpath("plan_widget.css").is_file()
    assert "export default" in STATIC.joinpath("plan_widget.js").read_text()


# ----------------------------------------------------------------------------------------- compare


def test_compare_plans() -> None:
    cmp = compare_plans(manual("index_scan"), manual("index_only_scan"), ("lookup", "covering"))
    by_name = {d.name: d for d in cmp.differences}
    assert by_name["storage lookups"].better == "covering"
    assert by_name["nodes"].a == 5 and by_name["nodes"].b == 3
    assert "total DPU" not in by_name  # neither plan has a DPU block
    assert by_name["processor filters"].better is None
    text = cmp.text()
    assert "── lookup ──" in text and "── covering ──" in text
    html = cmp.html()
    assert html.count('class="dsql-plan"') == 2
    widget = cmp.widget()
    pair = widget.children[1]
    assert [type(c).__name__ for c in pair.children] == ["PlanWidget", "PlanWidget"]
    assert [c.title for c in pair.children] == ["lookup", "covering"]


def test_compare_dpu() -> None:
    cmp = compare_plans(manual("dpu_select"), manual("dpu_insert"))
    by_name = {d.name: d for d in cmp.differences}
    assert (by_name["total DPU"].a, by_name["total DPU"].b) == (0.05919, 0.03732)
    assert by_name["total DPU"].better == "B" and by_name["write DPU"].better == "A"
