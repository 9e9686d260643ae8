"""pytest plugin: one running emulator for the DPU/EXPLAIN magic tests, and a shell connected to it.

``dpu_emulator`` is a `dsql_magic.emulator.Emulator` (child process, its own temporary data
directory, port picked by the OS), stopped at session end. ``emu_connected`` points the test's
shell (`tests.fix_shell`) at it as at a real cluster: the cluster endpoint with
``hostaddr=127.0.0.1``, the emulator's CA, and boto3 signing with the emulator's local credentials.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dsql_magic.emulator.api import Emulator


@pytest.fixture(scope="session")
def dpu_emulator() -> Iterator[Emulator]:
    base = Path(tempfile.mkdtemp(prefix="dsql-dpu-emu-"))
    emu = Emulator(data_dir=base / "data", log_path=base / "emulator.log")
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def emu_connected(dpu_emulator: Emulator, magic: Any, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """The test's shell connected to the emulator as connection ``emu``."""
    info = dpu_emulator.info
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", info.aws_access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", info.aws_secret_access_key)
    monkeypatch.setenv("AWS_REGION", info.region)
    monkeypatch.setenv("AWS_DEFAULT_REGION", info.region)
    magic(
        line=f"connect {info.endpoint} --port {info.port} --hostaddr {info.connect_host} "
        f"--sslrootcert {info.ca_cert} --name emu"
    )
    return dpu_emulator
