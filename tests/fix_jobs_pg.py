"""pytest plugin: a plain embedded PostgreSQL 16 for the job runner's tests (no DSQL rules).

The job runner talks to PostgreSQL directly (superuser, unix socket), so its tests need only the
engine, not the wire front. Autovacuum is off so that background ANALYZE is the runner's alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dsql_magic.emulator.engine import Engine


@pytest.fixture(scope="session")
def jobs_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = Engine(
        tmp_path_factory.mktemp("jobs-pg"),
        settings={"autovacuum": "off"},
        remove_on_stop=True,
    )
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture
def jobs_conninfo(jobs_engine: Engine) -> dict[str, Any]:
    """psycopg keyword arguments for the superuser over the engine's unix socket."""
    return jobs_engine.connect_kwargs()
