"""The wire front end to end with real psycopg: relay, extended protocol, pipeline, COPY, cancel.

Every test talks TLS (verify-full against the emulator's CA) with a real boto3 token to a real
PostgreSQL 16 behind the front (tests/fix_wire.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import psycopg
import pytest
from psycopg import errors as pge

from tests.fix_wire import WireServer

Start = Callable[..., WireServer]


def test_simple_and_extended_queries(wire_server: Start) -> None:
    server = wire_server()
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1 + %s", [41]).fetchone() == (42,)
        with conn.cursor() as cur:
            cur.execute(b"SELECT 'a'; SELECT 'b'")
            assert cur.fetchone() == ("a",)
            assert cur.nextset()
            assert cur.fetchone() == ("b",)
        assert conn.info.parameter_status(
            "server_version",
        ).startswith("16")
        assert conn.execute("SHOW TimeZone").fetchone() == ("UTC",)
        # named prepared statements, executed many times
        for i in range(8):
            row = conn.execute("SELECT %s::int * 2", [i], prepare=True).fetchone()
            assert row == (i * 2,)


def test_errors_keep_the_session_usable(wire_server: Start) -> None:
    server = wire_server()
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        with pytest.raises(pge.UndefinedTable):
            conn.execute("SELECT * FROM no_such_table")
        with pytest.raises(pge.DivisionByZero):
            conn.execute("SELECT 1 / %s", [0])
        assert conn.execute("SELECT 'ok'").fetchone() == ("ok",)


def test_transactions_and_isolation(wire_server: Start) -> None:
    server = wire_server()
    with psycopg.connect(**server.conninfo()) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS wire_txn (id int PRIMARY KEY, v text)")
        conn.commit()
        conn.execute("DELETE FROM wire_txn")
        conn.execute("INSERT INTO wire_txn VALUES (1, 'x')")
        iso = conn.execute("SHOW transaction_isolation").fetchone()
        assert iso == ("repeatable read",)
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM wire_txn").fetchone() == (0,)
        conn.commit()


def test_pipeline_mode(wire_server: Start) -> None:
    server = wire_server()
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS wire_pipe (id int PRIMARY KEY)")
        conn.execute("DELETE FROM wire_pipe")
        with conn.pipeline():
            cur = conn.cursor()
            for i in range(50):
                cur.execute("INSERT INTO wire_pipe VALUES (%s)", [i])
            cur.execute("SELECT count(*) FROM wire_pipe")
        assert cur.fetchone() == (50,)
        # an error inside a pipeline is reported, and the connection recovers
        with pytest.raises(pge.UniqueViolation), conn.pipeline():
            conn.execute("INSERT INTO wire_pipe VALUES (1)")
            conn.execute("SELECT 1")
        assert conn.execute("SELECT count(*) FROM wire_pipe").fetchone() == (50,)


def test_copy_in_and_out(wire_server: Start) -> None:
    server = wire_server()
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS wire_copy (id int PRIMARY KEY, v text)")
        conn.execute("DELETE FROM wire_copy")
        with conn.cursor() as cur:
            with cur.copy("COPY wire_copy (id, v) FROM STDIN") as copy:
                for i in range(1000):
                    copy.write_row((i, f"v{i}"))
            assert conn.execute("SELECT count(*) FROM wire_copy").fetchone() == (1000,)
            out = bytearray()
            with cur.copy("COPY (SELECT id FROM wire_copy ORDER BY id LIMIT 3) TO STDOUT") as copy:
                for chunk in copy:
                    out += chunk
            assert bytes(out) == b"0\n1\n2\n"


def test_cancel_reaches_the_backend(wire_server: Start) -> None:
    server = wire_server()
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        # cancel_safe() waits without holding the GIL (the server runs in this process).
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        try:
            with pytest.raises(pge.QueryCanceled):
                conn.execute("SELECT pg_sleep(30)")
        finally:
            timer.cancel()
        assert conn.execute("SELECT 1").fetchone() == (1,)


_LEGACY_CANCEL = """
import json, sys, threading, psycopg
conn = psycopg.connect(**json.loads(sys.argv[1]), autocommit=True)
threading.Timer(0.5, conn.cancel).start()
try:
    conn.execute("SELECT pg_sleep(30)")
except psycopg.errors.QueryCanceled:
    print("canceled")
print(conn.execute("SELECT 7").fetchone()[0])
"""


def test_legacy_cancel_from_another_process(wire_server: Start) -> None:
    """libpq's blocking PQcancel (``conn.cancel()``), from a client process like any other."""
    server = wire_server()
    result = subprocess.run(
        [sys.executable, "-c", _LEGACY_CANCEL, json.dumps(server.conninfo())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.split() == ["canceled", "7"], result.stderr


def test_database_other_than_postgres_is_refused(wire_server: Start) -> None:
    server = wire_server()
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(**server.conninfo(dbname="other"))
    assert 'database "other" does not exist' in str(info.value)


def test_bad_token_is_refused_without_echo(wire_server: Start) -> None:
    server = wire_server()
    bad = server.token()[:-4] + "AAAA"
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(**server.conninfo(password=bad))
    text = str(info.value)
    assert "unable to accept connection, access denied" in text
    assert bad not in text and "X-Amz-Signature" not in text


def test_plaintext_is_refused(wire_server: Start) -> None:
    server = wire_server()
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(**server.conninfo(sslmode="disable"))
    assert "TLS is required" in str(info.value)


def test_connection_quota_and_rate(wire_server: Start) -> None:
    server = wire_server(max_connections=1)
    with psycopg.connect(**server.conninfo(), autocommit=True) as first:
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(**server.conninfo())
        assert "too many open connections" in str(info.value)
        assert first.execute("SELECT 1").fetchone() == (1,)
    slow = wire_server(connection_rate=0.01, connection_burst=1)
    psycopg.connect(**slow.conninfo()).close()
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(**slow.conninfo())
    assert "rate exceeded" in str(info.value)


def test_connection_closed_after_max_age(wire_server: Start) -> None:
    server = wire_server(max_connection_age=1.0)
    conn = psycopg.connect(**server.conninfo(), autocommit=True)
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        deadline = time.monotonic() + 20
        while not conn.closed and time.monotonic() < deadline:
            try:
                conn.execute("SELECT 1")
            except psycopg.OperationalError:
                break
            time.sleep(0.2)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()


def test_direct_tls_negotiation(wire_server: Start) -> None:
    if psycopg.pq.version() < 170000:
        pytest.fail("libpq 17+ needed for sslnegotiation=direct; psycopg[binary] ships it")
    server = wire_server()
    with psycopg.connect(**server.conninfo(sslnegotiation="direct"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_graceful_shutdown_tells_clients(wire_server: Start) -> None:
    server = wire_server()
    conn = psycopg.connect(**server.conninfo(), autocommit=True)
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        server.stop()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**server.conninfo(connect_timeout=3))


def test_idle_timeout_closes_a_silent_client(wire_server: Start) -> None:
    server = wire_server(idle_timeout=0.5)
    conn = psycopg.connect(**server.conninfo(), autocommit=True)
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        time.sleep(1.5)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()


def test_multi_statement_query_is_one_implicit_transaction(wire_server: Start) -> None:
    class Noop:
        async def after(self, stmt: object, result: object, ctx: object) -> None:
            return None

    for hooks in ([], [Noop()]):  # relayed as is, and split statement by statement
        server = wire_server(hooks=hooks)
        with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS wire_multi (id int PRIMARY KEY)")
            conn.execute("DELETE FROM wire_multi")
            res = conn.pgconn.exec_(b"INSERT INTO wire_multi VALUES (1); SELECT 1/0")
            assert res.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"22012"
            assert conn.execute("SELECT count(*) FROM wire_multi").fetchone() == (0,)
            with conn.cursor() as cur:
                cur.execute(b"INSERT INTO wire_multi VALUES (2); SELECT count(*) FROM wire_multi")
                assert cur.statusmessage == "INSERT 0 1"
                assert cur.nextset() and cur.fetchone() == (1,)


def test_backend_death_ends_only_that_session(wire_server: Start) -> None:
    server = wire_server()
    with (
        psycopg.connect(**server.conninfo(), autocommit=True) as victim,
        psycopg.connect(**server.conninfo(), autocommit=True) as other,
    ):
        row = victim.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        engine = server.env.engine
        with psycopg.connect(**engine.connect_kwargs(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [row[0]])
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
        assert other.execute("SELECT 2").fetchone() == (2,)
    with psycopg.connect(**server.conninfo(), autocommit=True) as fresh:
        assert fresh.execute("SELECT 3").fetchone() == (3,)
