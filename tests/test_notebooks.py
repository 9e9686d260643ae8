"""Every tutorial notebook runs top to bottom on the embedded emulator, as a user's Run All would.

Cells tagged ``raises-exception`` are meant to fail (they show what DSQL refuses); any other error
fails the test. Committed notebooks carry no outputs (outputs could hold secrets and churn diffs).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
SIGNATURE = re.compile(r"X-Amz-Signature=[0-9a-f]{16}")


def test_there_are_tutorials() -> None:
    assert any(p.name == "01-getting-started.ipynb" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name}: strip outputs before committing"
            assert cell.execution_count is None


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_top_to_bottom(path: Path, tmp_path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=240,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    failures = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if errors and "raises-exception" not in cell.metadata.get("tags", []):
            failures.append((cell.source, errors[0].ename, errors[0].evalue))
    assert not failures, failures
    # The executed notebook, as a user would save it, holds no token.
    assert not SIGNATURE.search(json.dumps(nb))
