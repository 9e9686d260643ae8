"""OCC taking an idle holder's transaction while that holder's client speaks up.

The winner of a conflict runs ``ROLLBACK; BEGIN …; SELECT`` on the idle loser's backend from its
own task (occ.py, `OccHook._doom`). If the loser's client sends its next statement meanwhile, the
loser's session must wait until that is done: before it did, both queued replies on one backend
and one wake-up, the winner's COMMIT never got its answer and the loser's statement ran outside
its transaction (the flaky hangs of test_occ_invariant.py).

Made deterministic from one thread: the loser's PostgreSQL backend is stopped (SIGSTOP) so that
the takeover waits, the loser's client sends while it waits, then the backend is resumed.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import pq

from dsql_magic.emulator.occ import OccHook

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(120)]

_WAIT = 30.0  # how long a step may take before the test calls it lost (never hit when correct)


def _until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + _WAIT
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.005)


def _send(conn: psycopg.Connection[Any], sql: str) -> None:
    """Send a simple Query without waiting for its answer."""
    pgconn = conn.pgconn
    pgconn.send_query(sql.encode())
    while pgconn.flush():
        select.select([], [pgconn.socket], [], _WAIT)


def _results(conn: psycopg.Connection[Any]) -> list[pq.abc.PGresult]:
    """All results of what was sent, up to ReadyForQuery; fails (not hangs) if they never come."""
    pgconn = conn.pgconn
    out: list[pq.abc.PGresult] = []
    deadline = time.monotonic() + _WAIT
    while True:
        pgconn.consume_input()
        while pgconn.is_busy():
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail("no answer from the emulator: a reply was lost")
            select.select([pgconn.socket], [], [], left)
            pgconn.consume_input()
        res = pgconn.get_result()
        if res is None:
            return out
        out.append(res)


@pytest.fixture
def occ_server(wire_server: Callable[..., Any]) -> Iterator[tuple[Any, OccHook]]:
    hook = OccHook()
    yield wire_server(hooks=[hook]), hook


def test_takeover_of_an_idle_holder_waits_for_nothing_it_should_not(
    occ_server: tuple[Any, OccHook],
) -> None:
    server, hook = occ_server
    table = f"occ_take_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**server.conninfo(), autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL)")
        setup.execute(f"INSERT INTO {table} VALUES (1, 0), (2, 0)")
    with (
        psycopg.connect(**server.conninfo()) as winner,
        psycopg.connect(**server.conninfo()) as loser,
    ):
        row = loser.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        loser_pid = int(row[0])
        loser.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")  # holds row 1
        cur = winner.execute(f"UPDATE {table} SET v = v + 10 WHERE id = 1")  # deferred
        assert cur.rowcount == 1
        loser_ctx = hook._sessions[loser_pid]
        loser_session = loser_ctx.executor.__self__  # type: ignore[attr-defined]
        assert server.call(loser_ctx.idle)

        os.kill(loser_pid, signal.SIGSTOP)
        try:
            _send(winner, "COMMIT")  # first committer: takes the idle loser's transaction
            _until("the takeover started", lambda: not server.call(loser_ctx.idle))
            _send(loser, f"UPDATE {table} SET v = v + 100 WHERE id = 2")
            _until("the loser's session read it", lambda: not loser_session.reading)
        finally:
            os.kill(loser_pid, signal.SIGCONT)

        (commit,) = _results(winner)
        assert commit.status == pq.ExecStatus.COMMAND_OK, commit.error_message
        assert commit.command_status == b"COMMIT"
        (update,) = _results(loser)
        assert update.status == pq.ExecStatus.COMMAND_OK, update.error_message
        assert update.command_status == b"UPDATE 1"  # in the fresh transaction the takeover began
        _send(loser, "COMMIT")
        (lost,) = _results(loser)
        assert lost.error_field(pq.DiagnosticField.SQLSTATE) == b"40001"
        assert b"(OC000)" in (lost.error_message or b"")
        with contextlib.suppress(psycopg.Error):
            loser.rollback()  # psycopg's own view of the block, after the low-level COMMIT
    with psycopg.connect(**server.conninfo(), autocommit=True) as check:
        rows = check.execute(f"SELECT id, v FROM {table} ORDER BY id").fetchall()
    assert rows == [(1, 10), (2, 0)]
