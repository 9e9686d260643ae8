"""docs/emulator-fidelity.md must be what tools/gen_fidelity_doc.py makes of the rules data."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from dsql_magic.emulator.dialect import load_rules

ROOT = Path(__file__).resolve().parent.parent


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_fidelity_doc", ROOT / "tools/gen_fidelity_doc.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fidelity_doc_matches_rules() -> None:
    expected = _tool().render(load_rules())
    current = (ROOT / "docs" / "emulator-fidelity.md").read_text(encoding="utf-8")
    assert current == expected, (
        "docs/emulator-fidelity.md disagrees with the rules; run "
        "`python tools/gen_fidelity_doc.py`. The page should read:\n\n" + expected
    )


def test_doc_lists_every_rule_and_difference() -> None:
    rules = load_rules()
    text = _tool().render(rules)
    for rule in (*rules.rules, *rules.limits):
        assert f"`{rule.id}`" in text
    for diff in rules.differences:
        assert diff.summary in text
