"""Money moves between accounts from several threads with retry: nothing hangs, none is lost."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(300)]

ConnInfo = Callable[..., dict[str, Any]]
THREADS = 4
ROUNDS = 8
ACCOUNTS = 4
START = 1_000


def _setup(conninfo: ConnInfo) -> str:
    table = f"bank_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**conninfo(), autocommit=True) as conn:
        for sql in (
            f"CREATE TABLE {table} (id int PRIMARY KEY, balance int NOT NULL)",
            f"INSERT INTO {table} SELECT g, {START} FROM generate_series(1, {ACCOUNTS}) g",
        ):
            for _ in range(5):
                try:
                    conn.execute(sql)
                    break
                except psycopg.errors.SerializationFailure:
                    continue
    return table


def _transfer_all(conninfo: ConnInfo, table: str) -> tuple[int, int]:
    """Run the workload; returns (commits, conflicts)."""
    barrier = threading.Barrier(THREADS)
    stats = {"commits": 0, "conflicts": 0}
    lock = threading.Lock()
    failures: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with psycopg.connect(**conninfo()) as conn:
                for _ in range(ROUNDS):
                    src, dst = rng.sample(range(1, ACCOUNTS + 1), 2)
                    amount = rng.randint(1, 50)
                    first = True
                    while True:
                        try:
                            row = conn.execute(
                                f"SELECT balance FROM {table} WHERE id = %s", (src,)
                            ).fetchone()
                            assert row is not None
                            conn.execute(
                                f"UPDATE {table} SET balance = balance - %s WHERE id = %s",
                                (amount, src),
                            )
                            # Everyone touches account 1, so that rounds really collide.
                            conn.execute(f"UPDATE {table} SET balance = balance + 0 WHERE id = 1")
                            conn.execute(
                                f"UPDATE {table} SET balance = balance + %s WHERE id = %s",
                                (amount, dst),
                            )
                            if first:
                                barrier.wait(timeout=60)  # all write before anyone commits
                            conn.commit()
                            with lock:
                                stats["commits"] += 1
                            break
                        except psycopg.errors.SerializationFailure:
                            conn.rollback()
                            with lock:
                                stats["conflicts"] += 1
                        finally:
                            first = False
        except BaseException as exc:
            failures.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert not failures, failures
    return stats["commits"], stats["conflicts"]


def _total(conninfo: ConnInfo, table: str) -> int:
    with psycopg.connect(**conninfo(), autocommit=True) as conn:
        row = conn.execute(f"SELECT sum(balance) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def test_transfers_conserve_money_and_conflict(emulator_conninfo: ConnInfo) -> None:
    table = _setup(emulator_conninfo)
    commits, conflicts = _transfer_all(emulator_conninfo, table)
    assert commits == THREADS * ROUNDS
    assert conflicts > 0
    assert _total(emulator_conninfo, table) == START * ACCOUNTS


def test_transfers_with_injected_conflicts(emulator_conninfo: ConnInfo) -> None:
    table = _setup(emulator_conninfo)
    with psycopg.connect(**emulator_conninfo(), autocommit=True) as admin:
        admin.execute("SELECT sys.inject_conflicts(0.3, %s, 42)".replace("%s", f"'{table}'"))
        try:
            commits, conflicts = _transfer_all(emulator_conninfo, table)
        finally:
            admin.execute("SELECT sys.inject_conflicts(0)")
    assert commits == THREADS * ROUNDS
    assert conflicts > 0
    assert _total(emulator_conninfo, table) == START * ACCOUNTS
