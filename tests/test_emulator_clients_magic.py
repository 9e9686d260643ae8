"""``%dsql connect --emulator`` and ``%dsql emulator`` through a real IPython shell."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from dsql_magic.emulator import magic_support
from dsql_magic.errors import UsageProblem
from tests.fix_shell import Magic

pytestmark = pytest.mark.emulator


@pytest.fixture
def no_emulator() -> Iterator[None]:
    """Each test starts without a kernel emulator and stops the one it started."""
    magic_support.stop()
    yield
    magic_support.stop()


def settings(frame: object) -> dict[str, str]:
    assert isinstance(frame, pd.DataFrame)
    return dict(zip(frame["setting"], frame["value"], strict=True))


def test_connect_emulator_runs_queries_and_reuses_it(
    magic: Magic, no_emulator: None, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    out = magic(line=f"connect --emulator --data-dir {data}")
    assert "connected to" in repr(out)
    frame = magic("SELECT current_user AS who, 40 + 2 AS answer")
    assert list(frame.itertuples(index=False, name=None)) == [("admin", 42)]
    first = magic_support.current()
    assert first is not None
    # A second connect reuses the kernel's emulator (same process, same port).
    magic(line=f"connect --emulator --data-dir {data} --name second")
    assert magic_support.current() is first
    assert first.info.data_dir == data.absolute()


def test_emulator_status_shows_how_to_connect_with_other_tools(
    magic: Magic, no_emulator: None
) -> None:
    magic(line="connect --emulator --ephemeral")
    shown = settings(magic(line="emulator"))
    emulator = magic_support.current()
    assert emulator is not None
    info = emulator.info
    assert shown["endpoint"] == info.endpoint
    assert shown["port"] == str(info.port)
    assert shown["ca_cert"] == str(info.ca_cert)
    assert shown["aws_access_key_id"] == info.aws_access_key_id
    assert "PGSSLMODE=verify-full" in shown["psql"]
    # What it shows is enough for another client to connect.
    with psycopg.connect(**emulator.connect_kwargs()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_emulator_stop_closes_its_connections(
    magic: Magic, dsql: object, no_emulator: None
) -> None:
    magic(line="connect --emulator --ephemeral --name emu")
    emulator = magic_support.current()
    assert emulator is not None
    data_dir = emulator.info.data_dir
    out = magic(line="emulator stop")
    assert "emulator stopped" in repr(out) and "emu" in repr(out)
    assert magic_support.current() is None
    assert not data_dir.exists()  # ephemeral data removed
    assert "no emulator" in repr(magic(line="emulator stop"))
    with pytest.raises(UsageProblem, match="no emulator is running"):
        magic(line="emulator")


def test_conflicting_request_is_a_usage_error(
    magic: Magic, no_emulator: None, tmp_path: Path
) -> None:
    magic(line="connect --emulator --ephemeral")
    with pytest.raises(UsageProblem, match="already runs"):
        magic(line=f"connect --emulator --data-dir {tmp_path / 'other'}")
