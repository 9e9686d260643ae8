"""Conflict injection: the settings parser, the seeded draws, and both switches end to end."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dsql_magic.emulator.api import Emulator
from dsql_magic.emulator.injection import (
    InjectionSpecError,
    Injector,
    make_settings,
    parse_spec,
)
from tests.fix_shell import Magic

ConnInfo = Callable[..., dict[str, Any]]


def test_parse_spec_forms() -> None:
    s = parse_spec("rate=0.25,table=Accounts,table=public.orders,seed=7")
    assert (s.rate, s.tables, s.seed) == (0.25, frozenset({"accounts", "orders"}), 7)
    assert parse_spec("table=a|b").rate == 1.0  # tables without a rate: every writer of them
    assert not parse_spec("").enabled
    assert parse_spec("rate=1").tables == frozenset()


@pytest.mark.parametrize("bad", ["rate=2", "rate=x", "colour=red", "rate", "seed=1.5"])
def test_parse_spec_refuses_with_the_format(bad: str) -> None:
    with pytest.raises(InjectionSpecError, match="key=value"):
        parse_spec(bad)


@given(st.floats(0, 1), st.integers(0, 2**32), st.lists(st.booleans(), max_size=50))
def test_draws_are_reproducible_for_a_seed(rate: float, seed: int, _: list[bool]) -> None:
    a, b = Injector(make_settings(rate, (), seed)), Injector(make_settings(rate, (), seed))
    assert [a.should_conflict(["t"]) for _ in range(30)] == [
        b.should_conflict(["t"]) for _ in range(30)
    ]


def test_tables_filter_and_rate_extremes() -> None:
    inj = Injector(make_settings(1.0, ["accounts"], 1))
    assert inj.should_conflict(["public.accounts"])
    assert not inj.should_conflict(["orders"])
    assert not inj.should_conflict([])  # read-only transactions never conflict
    inj.configure(make_settings(0.0))
    assert not inj.should_conflict(["accounts"])
    draws = Injector(make_settings(0.5, (), 3))
    hits = sum(draws.should_conflict(["t"]) for _ in range(1000))
    assert 350 < hits < 650


def _table(conn: psycopg.Connection[Any]) -> str:
    name = f"inj_{uuid.uuid4().hex[:8]}"
    for sql in (
        f"CREATE TABLE {name} (id int PRIMARY KEY, v int)",
        f"INSERT INTO {name} VALUES (1, 0)",
    ):
        for _ in range(5):
            try:
                conn.execute(sql)
                break
            except psycopg.errors.SerializationFailure:
                continue
    return name


@pytest.mark.emulator
@pytest.mark.timeout(120)
def test_runtime_switch_from_a_connection(emulator_conninfo: ConnInfo) -> None:
    with psycopg.connect(**emulator_conninfo(), autocommit=True) as admin:
        hot, cold = _table(admin), _table(admin)
        row = admin.execute(f"SELECT sys.inject_conflicts(1, '{hot}', 5)").fetchone()
        assert row is not None and "rate 1" in row[0]
        try:
            with psycopg.connect(**emulator_conninfo()) as conn:
                conn.execute(f"UPDATE {hot} SET v = v + 1 WHERE id = 1")
                with pytest.raises(psycopg.errors.SerializationFailure) as info:
                    conn.commit()
                assert "(OC000)" in str(info.value)
                conn.execute(f"UPDATE {cold} SET v = v + 1 WHERE id = 1")
                conn.commit()  # another table: untouched
                conn.execute(f"SELECT v FROM {hot}")
                conn.commit()  # reads never conflict
            with pytest.raises(psycopg.errors.SerializationFailure):
                admin.execute(f"UPDATE {hot} SET v = 5 WHERE id = 1")  # autocommit too
        finally:
            admin.execute("SELECT sys.inject_conflicts(0)")
        admin.execute(f"UPDATE {hot} SET v = 5 WHERE id = 1")
        assert admin.execute(f"SELECT v FROM {hot}").fetchone() == (5,)
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            admin.execute("SELECT sys.inject_conflicts(3)")


@pytest.mark.emulator
@pytest.mark.timeout(240)
def test_switch_at_start(tmp_path: Path) -> None:
    emu = Emulator(
        data_dir=tmp_path / "data",
        log_path=tmp_path / "emulator.log",
        extra_args=("--inject-conflicts", "rate=1,table=hot"),
    )
    emu.start()
    try:
        with psycopg.connect(**emu.connect_kwargs("admin"), autocommit=True) as conn:
            conn.execute("CREATE TABLE hot (id int PRIMARY KEY)")
            conn.execute("CREATE TABLE cold (id int PRIMARY KEY)")
        with psycopg.connect(**emu.connect_kwargs("admin"), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.SerializationFailure):
                conn.execute("INSERT INTO hot VALUES (1)")
            conn.execute("INSERT INTO cold VALUES (1)")
            assert conn.execute("SELECT count(*) FROM hot").fetchone() == (0,)
    finally:
        emu.stop()


@pytest.mark.emulator
@pytest.mark.timeout(180)
def test_magic_retries_injected_conflicts(magic: Magic) -> None:
    """The core OCC retry of ``%%dsql`` against the emulator, driven by seeded injection."""
    from dsql_magic.emulator import magic_support

    magic_support.stop()
    magic(line="connect --emulator --ephemeral")
    try:
        magic("CREATE TABLE retried (id int PRIMARY KEY)")
        magic("SELECT 1 FROM retried")  # settle OC001 from the CREATE
    except Exception:
        magic("SELECT 1 FROM retried")
    try:
        magic("SELECT sys.inject_conflicts(0.5, 'retried', 11)")
        notes = [repr(magic(f"INSERT INTO retried VALUES ({i})")) for i in range(8)]
        state = magic("SELECT sys.inject_conflicts()")
        injected = int(str(state.iloc[0, 0]).rsplit(";", 1)[1].split()[0])
        assert injected > 0
        assert any("succeeded after" in n for n in notes)
        magic("SELECT sys.inject_conflicts(0)")
        assert magic("SELECT count(*) AS n FROM retried")["n"][0] == 8
    finally:
        magic_support.stop()
