"""Connecting for real (TLS verify-full, IAM token as password), several connections, reconnects,
dropped connections, Ctrl-C, and connection errors — through a real shell on PostgreSQL 16."""

from __future__ import annotations

import select
import signal
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell

from dsql_magic.connections import APPLICATION_NAME
from dsql_magic.errors import AccessDenied, ConnectionFailed, ConnectionLost, NotConnected
from dsql_magic.results import Message
from tests.fix_pg import PgServer


def _backend_pid(magic: Any, conn: str | None = None) -> int:
    line = f"--conn {conn} " if conn else ""
    return int(magic(line=line + "SELECT pg_backend_pid() AS pid")["pid"][0])


def _terminate(pg: PgServer, pid: int) -> None:
    with pg.superuser() as su:
        su.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))


def _wait_readable(dsql: Any, name: str = "main") -> None:
    """Wait until the client has the server's goodbye (synchronisation, not a timing assert)."""
    raw = dsql.registry.get(name).raw
    select.select([raw.pgconn.socket], [], [], 10)


def test_token_is_the_password(connected: PgServer, dsql: Any) -> None:
    raw = dsql.registry.get("main").raw
    query = parse_qs(urlparse("https://" + raw.info.password).query)
    assert query["Action"] == ["DbConnectAdmin"]
    assert query["X-Amz-Credential"][0].split("/")[2:4] == ["us-east-1", "dsql"]
    assert raw.info.password not in raw.info.dsn  # psycopg never puts it in the DSN it shows
    params = raw.info.get_parameters()
    assert params["sslmode"] == "verify-full" and params["hostaddr"] == "127.0.0.1"
    assert raw.pgconn.ssl_in_use


def test_other_users_get_dbconnect(pg_server: PgServer, magic: Any, dsql: Any) -> None:
    magic(line="connect " + pg_server.connect_line("--user analyst --name an"))
    raw = dsql.registry.get("an").raw
    assert parse_qs(urlparse("https://" + raw.info.password).query)["Action"] == ["DbConnect"]
    assert magic(line="SELECT current_user AS u")["u"][0] == "analyst"


def test_several_connections(pg_server: PgServer, magic: Any, dsql: Any) -> None:
    magic(line="connect " + pg_server.connect_line("--name one"))
    magic(line="connect " + pg_server.connect_line("--name two --user analyst"))
    assert magic(line="SELECT current_user AS u")["u"][0] == "analyst"
    assert magic(line="--conn one SELECT current_user AS u")["u"][0] == "admin"
    listing = magic(line="connections")
    assert isinstance(listing, pd.DataFrame)
    assert listing.set_index("name")["current"].to_dict() == {"one": "", "two": "*"}
    assert set(listing.columns) >= {"name", "endpoint", "user", "region", "age", "state"}
    assert "using connection 'one'" in repr(magic(line="use one"))
    assert magic(line="SELECT current_user AS u")["u"][0] == "admin"
    assert "closed connection 'one'; current is now 'two'" in repr(magic(line="close"))
    magic(line="close two")
    assert isinstance(magic(line="connections"), Message)
    with pytest.raises(NotConnected):
        magic("SELECT 1")


def test_cluster_id_and_env_endpoint(pg_server: PgServer, magic: Any, monkeypatch: Any) -> None:
    cluster_id = pg_server.endpoint.split(".")[0]
    rest = pg_server.connect_line().split(" ", 1)[1]
    out = magic(line=f"connect {cluster_id} --region us-east-1 {rest}")
    assert f"connection '{cluster_id}'" in repr(out)
    monkeypatch.setenv("DSQL_ENDPOINT", pg_server.endpoint)
    out = magic(line=f"connect {rest} --name fromenv")
    assert "fromenv" in repr(out) and magic("SELECT 1 AS x")["x"][0] == 1


def test_reconnect_after_server_drops_idle_connection(
    connected: PgServer, magic: Any, dsql: Any
) -> None:
    first = _backend_pid(magic)
    _terminate(connected, first)
    _wait_readable(dsql)
    second = _backend_pid(magic)  # transparent: the cell just works
    assert second != first and dsql.registry.get("main").reconnects == 1


def test_statement_interrupted_by_drop_is_reported(
    connected: PgServer, magic: Any, dsql: Any
) -> None:
    pid = _backend_pid(magic)

    def kill_when_sleeping() -> None:
        with connected.superuser() as su:
            for _ in range(200):
                row = su.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND query LIKE %s",
                    (pid, "%pg_sleep%"),
                ).fetchone()
                if row:
                    break
                time.sleep(0.05)
            su.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))

    killer = threading.Thread(target=kill_when_sleeping)
    killer.start()
    try:
        with pytest.raises(ConnectionLost) as info:
            magic("SELECT pg_sleep(60)")
    finally:
        killer.join()
    assert "dropped while running" in str(info.value)
    assert "next cell reconnects" in (info.value.hint or "")
    assert _backend_pid(magic) != pid


def test_drop_with_open_transaction_is_never_hidden(
    connected: PgServer, magic: Any, dsql: Any, table: str
) -> None:
    magic(f"CREATE TABLE {table} (id int)")
    magic(f"BEGIN; INSERT INTO {table} VALUES (1)")
    _terminate(connected, _backend_pid(magic))
    _wait_readable(dsql)
    with pytest.raises(ConnectionLost, match="transaction was open"):
        magic("COMMIT")
    assert len(magic(f"SELECT * FROM {table}")) == 0  # and now it works again


def test_reconnects_before_the_one_hour_limit(connected: PgServer, magic: Any, dsql: Any) -> None:
    conn = dsql.registry.get("main")
    now = [1_000_000.0]
    conn.clock = lambda: now[0]
    conn.open()  # stamp the opening time with the fake clock
    first = _backend_pid(magic)
    now[0] += 59 * 60  # past the reconnect margin, inside DSQL's 60 minutes
    second = _backend_pid(magic)
    assert second != first


def test_ctrl_c_cancels_on_server_and_keeps_connection(
    connected: PgServer, magic: Any, dsql: Any
) -> None:
    pid = _backend_pid(magic)
    main = threading.main_thread().ident
    assert main is not None

    def interrupt_when_sleeping() -> None:
        with connected.superuser() as su:
            for _ in range(200):
                if su.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND query LIKE %s",
                    (pid, "%pg_sleep%"),
                ).fetchone():
                    break
                time.sleep(0.05)
        signal.pthread_kill(main, signal.SIGINT)

    t = threading.Thread(target=interrupt_when_sleeping)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            magic("BEGIN; SELECT pg_sleep(60)")
    finally:
        t.join()
    with connected.superuser() as su:
        state = su.execute("SELECT state, query FROM pg_stat_activity WHERE pid = %s", (pid,))
        row = state.fetchone()
    assert row is not None and row[0] == "idle"  # cancelled on the server, rolled back
    assert _backend_pid(magic) == pid and dsql.registry.get("main").reconnects == 0


def test_access_denied_names_the_iam_action(pg_server: PgServer, magic: Any) -> None:
    with pytest.raises(AccessDenied) as info:
        magic(line="connect " + pg_server.connect_line("--user denied"))
    err = info.value
    assert "rejects connection" in err.message and "dsql:DbConnect" in (err.hint or "")
    assert "dsql:DbConnectAdmin" not in (err.hint or "")


def test_tls_verification_failure(pg_server: PgServer, magic: Any, tmp_path: Any) -> None:
    other_ca = tmp_path / "ca.pem"
    from dsql_magic.emulator.tls import ensure_certificates

    other_ca.write_bytes(ensure_certificates(tmp_path / "x", ["localhost"]).ca_cert.read_bytes())
    line = pg_server.connect_line().replace(str(pg_server.ca_file), str(other_ca))
    with pytest.raises(ConnectionFailed) as info:
        magic(line="connect " + line)
    assert "TLS" in (info.value.hint or "")


def test_certificate_for_another_name(pg_server: PgServer, magic: Any) -> None:
    line = pg_server.connect_line().replace("us-east-1", "eu-west-3")
    with pytest.raises(ConnectionFailed) as info:
        magic(line="connect " + line)
    assert "another host name" in (info.value.hint or "")


def test_nothing_listening(pg_server: PgServer, magic: Any) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = pg_server.connect_line().replace(f"--port {pg_server.port}", f"--port {port}")
    with pytest.raises(ConnectionFailed) as info:
        magic(line="connect " + line)
    assert "nothing listens" in (info.value.hint or "")


def test_emulator_flag_without_emulator_module(
    pg_server: PgServer, magic: Any, monkeypatch: Any
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "dsql_magic.emulator.magic_support", None)
    with pytest.raises(Exception, match="emulator is not available") as info:
        magic(line="connect --emulator")
    assert "pip install 'dsql-magic[emulator]'" in str(info.value)


def test_application_name_and_unload_closes(
    connected: PgServer, magic: Any, dsql: Any, ip: InteractiveShell
) -> None:
    assert magic("SHOW application_name")["application_name"][0] == APPLICATION_NAME
    raw = dsql.registry.get("main").raw
    ip.run_line_magic("unload_ext", "dsql_magic")
    assert raw.closed
    ip.run_line_magic("load_ext", "dsql_magic")


def test_url_target(pg_server: PgServer, magic: Any, dsql: Any) -> None:
    url = f"postgresql://analyst@{pg_server.endpoint}:{pg_server.port}/postgres?region=us-east-1"
    rest = f"--hostaddr {pg_server.hostaddr} --sslrootcert {pg_server.ca_file} --name viaurl"
    magic(line=f"connect {url} {rest}")
    assert magic("SELECT current_user AS u")["u"][0] == "analyst"
    assert dsql.registry.get("viaurl").target.port == pg_server.port


def test_system_roots(pg_server: PgServer, magic: Any, monkeypatch: Any) -> None:
    line = pg_server.connect_line().replace(f"--sslrootcert {pg_server.ca_file}", "")
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with pytest.raises(ConnectionFailed) as info:  # our test CA is not a system root
        magic(line=f"connect {line} --name sys1")
    assert "TLS" in (info.value.hint or "")
    monkeypatch.setenv("SSL_CERT_FILE", str(pg_server.ca_file))  # now it is
    magic(line=f"connect {line} --name sys2")
    assert magic("SELECT 1 AS x")["x"][0] == 1


def test_profile_and_token_ttl(
    pg_server: PgServer, magic: Any, dsql: Any, tmp_path: Any, monkeypatch: Any
) -> None:
    creds = tmp_path / "aws-credentials"  # the file aws_env points AWS_SHARED_CREDENTIALS_FILE at
    creds.write_text(
        "[analytics]\naws_access_key_id = AKIDPROFILE000000000\n"
        "aws_secret_access_key = profile-secret\n"
    )
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    magic(line="connect " + pg_server.connect_line("--profile analytics --token-ttl 120"))
    password = dsql.registry.get().raw.info.password
    query = parse_qs(urlparse("https://" + password).query)
    assert query["X-Amz-Credential"][0].startswith("AKIDPROFILE000000000/")
    assert query["X-Amz-Expires"] == ["120"]


def test_silent_server_suggests_a_waking_cluster(
    pg_server: PgServer, magic: Any, dsql: Any
) -> None:
    import socket

    # Accepts TCP but never answers, like a cluster that is still waking up.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        dsql.connect_timeout = 2  # libpq's minimum
        line = pg_server.connect_line().replace(f"--port {pg_server.port}", f"--port {port}")
        with pytest.raises(ConnectionFailed) as info:
            magic(line="connect " + line)
    assert "IDLE or INACTIVE" in (info.value.hint or "")
