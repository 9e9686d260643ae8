"""Fixture plugins, one per layer (see docs/internals.md). Add yours to the list below."""

from __future__ import annotations

pytest_plugins: list[str] = []
pytest_plugins.append("tests.fix_explain_pg")
pytest_plugins.append("tests.fix_jobs_pg")
pytest_plugins.append("tests.fix_dialect_pg")
pytest_plugins.append("tests.fix_pg")
pytest_plugins.append("tests.fix_shell")
pytest_plugins.append("tests.fix_emuexplain_pg")
pytest_plugins.append("tests.fix_wire")
pytest_plugins.append("tests.fix_emulator")
pytest_plugins.append("tests.fix_dpu_emulator")
