"""pytest plugin: a real IPython shell with dsql_magic loaded, and throwaway AWS credentials.

`ip` is a fresh `InteractiveShell` per test (history in memory, so the hygiene test can read it),
with ``%load_ext dsql_magic`` done and unloaded afterwards. Two ways to run things, as STYLE 2.6
and 3.3 ask: `magic(ip)` calls the magic directly and lets exceptions out (assert on them), while
``ip.run_cell`` goes through IPython's error display, as a notebook does.

`aws_env` gives boto3 throwaway credentials (the tokens are real SigV4, signed with a fake key)
and isolates it from any real AWS configuration on the machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from dsql_magic.magics import DsqlMagic

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Throwaway AWS credentials and region; no real config files are read."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE", "DSQL_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def ip(aws_env: None) -> Iterator[InteractiveShell]:
    """A fresh shell with the extension loaded; connections closed afterwards."""
    InteractiveShell.clear_instance()
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "dsql_magic")
    try:
        yield shell
    finally:
        shell.run_line_magic("unload_ext", "dsql_magic")
        InteractiveShell.clear_instance()


@pytest.fixture
def dsql(ip: InteractiveShell) -> DsqlMagic:
    """The shell's DsqlMagic instance (registry, minter, traits)."""
    magics = ip.magics_manager.registry["DsqlMagic"]
    assert isinstance(magics, DsqlMagic)
    return magics


Magic = Callable[..., Any]


@pytest.fixture
def magic(ip: InteractiveShell) -> Magic:
    """``magic("SQL")`` runs ``%%dsql`` with a cell, ``magic(line=...)`` the line form; raises."""

    def run(cell: str | None = None, line: str = "") -> Any:
        if cell is None:
            return ip.run_line_magic("dsql", line)
        return ip.run_cell_magic("dsql", line, cell)

    return run
