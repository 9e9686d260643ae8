"""The plan widget's front end, run in Node against a minimal DOM with the state Python builds:
rows, colours, and clicks that write `expanded`/`selected` back, as in a notebook."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from dsql_magic.explain import parse_plan
from dsql_magic.explain.widget import STATIC, PlanWidget

HERE = Path(__file__).parent
PLANS = HERE / "fixtures" / "plans"


def _state(plan_text: str) -> dict[str, object]:
    state = PlanWidget(parse_plan(plan_text)).get_state()
    return {k: v for k, v in state.items() if not k.startswith("_")}


def test_front_end_renders_and_clicks(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "Node.js is needed to test the widget's front end (apt-get install nodejs)"
    states = {
        "index_scan": _state((PLANS / "manual_index_scan.txt").read_text()),
        "dpu_insert": _state((PLANS / "manual_dpu_insert.txt").read_text()),
        "markup": _state(
            "Seq Scan on t  (cost=0.00..1.00 rows=1 width=4)\n  Filter: (a = '<b>x</b>')"
        ),
    }
    path = tmp_path / "states.json"
    path.write_text(json.dumps(states))
    done = subprocess.run(
        [
            node,
            str(HERE / "js" / "plan_widget.test.mjs"),
            str(STATIC / "plan_widget.js"),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"]
    assert report["after_collapse"] == {"expanded": [0, 3], "rows": 2, "saves": 1}
    assert report["after_select"]["selected"] == 3
    # The same update, delivered to Python as the comm would, gives the same view state.
    widget = PlanWidget(parse_plan((PLANS / "manual_index_scan.txt").read_text()))
    widget._handle_msg({"content": {"data": {"method": "update", "state": {"expanded": [0, 3]}}}})
    assert widget.visible() == [0, 1]
