"""Fixture plugins, one per layer (see docs/internals.md). Add yours to the list below."""

from __future__ import annotations

import gc

import pytest

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


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Freeze the heap once every test and fixture has finished.

    IPython's shell registers an atexit reset that runs a full ``gc.collect()`` over everything the
    suite allocated (over a GiB), which takes minutes on these machines. With the heap frozen that
    collection has nothing to walk and the interpreter exits at once.
    """
    gc.freeze()
