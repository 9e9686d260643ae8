"""The wire front end to end with real psycopg: relay, extended protocol, pipeline, COPY, cancel."""

from __future__ import annotations

import psycopg


def test_select_simple_and_extended(wire_server) -> None:
    server = wire_server()
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        assert conn.execute("SELECT 1 + %s", [41]).fetchone() == (42,)
        with conn.cursor() as cur:
            cur.execute(b"SELECT 'a'; SELECT 'b'", prepare=False)
        assert conn.pgconn.ssl_in_use
        assert conn.info.parameter_status("server_version").startswith("16")
