"""The EXPLAIN widget as users meet it: real JupyterLab, in Debian's Chromium, driven by Playwright.

The tutorial ``04-explain-and-dpu.ipynb`` is opened in a JupyterLab served locally and run with
Run All Cells. The plan widget must render its tree (anywidget front end loaded by JupyterLab),
react to clicks (selecting a node fills the details panel; the toggle folds its children), and the
DPU badge must appear under cells. Screenshots go to pytest's tmp dir for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "04-explain-and-dpu.ipynb"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# What the probe of this machine kind found necessary for headless Chromium here.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A JupyterLab server on 127.0.0.1 whose root holds a copy of the tutorial."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    port = _free_port()
    log = open(root / "lab.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            f"--port={port}",
            "--ip=127.0.0.1",
            "--IdentityProvider.token=",
            "--ServerApp.password=",
            "--ServerApp.disable_check_xsrf=True",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--allow-root",
            f"--ServerApp.root_dir={root}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "JUPYTER_PLATFORM_DIRS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError((root / "lab.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_plan_widget_in_jupyterlab(lab: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (apt-get install chromium)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{lab}/lab/tree/{NOTEBOOK.name}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            # Run All only runs cells once the kernel is connected: wait for it to be idle.
            page.wait_for_selector(".jp-StatusBar-Widget:has-text('Idle')", timeout=120_000)
            page.click("li.lm-MenuBar-item:has-text('Run')")
            page.click("li.lm-Menu-item:has-text('Run All Cells')")

            # The first plan widget renders its tree: the anywidget front end was loaded.
            plan = page.locator(".dsqlx-plan").first
            try:
                plan.wait_for(timeout=240_000)
            except Exception:
                page.screenshot(path=str(tmp_path / "no-plan.png"), full_page=False)
                raise
            rows = plan.locator(".dsqlx-row")
            rows.first.wait_for(timeout=30_000)
            assert rows.count() >= 2
            assert "Index Only Scan" in plan.locator(".dsqlx-tree").inner_text()
            assert "DPU estimate" in plan.inner_text()
            page.screenshot(path=str(tmp_path / "plan.png"), full_page=False)

            # Selecting another node shows its details in the panel.
            details = plan.locator(".dsqlx-details")
            before = details.inner_text()
            rows.nth(1).locator(".dsqlx-name").click()
            page.wait_for_function(
                "([el, old]) => el.innerText !== old", arg=[details.element_handle(), before]
            )
            assert "Storage Scan" in details.inner_text()

            # The toggle folds the root's children away and back.
            shown = rows.count()
            rows.first.locator(".dsqlx-toggle").click()
            page.wait_for_function(
                "([el, n]) => el.querySelectorAll('.dsqlx-row').length < n",
                arg=[plan.element_handle(), shown],
            )
            rows.first.locator(".dsqlx-toggle").click()
            page.wait_for_function(
                "([el, n]) => el.querySelectorAll('.dsqlx-row').length === n",
                arg=[plan.element_handle(), shown],
            )

            # The last cell (%dsql dpu --plot) ran, and the DPU badge shows under cells.
            plot = page.locator(".jp-OutputArea-output", has_text="DPU per cell").first
            plot.wait_for(timeout=240_000)
            assert page.locator(".dsql-dpu-badge").count() >= 1
            errors = page.locator(".jp-OutputArea-output[data-mime-type*='error']").count()
            assert errors == 0
            page.screenshot(path=str(tmp_path / "end.png"), full_page=False)
        finally:
            browser.close()
