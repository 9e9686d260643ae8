"""Real PostgreSQL clients against a running emulator, each connecting as to Aurora DSQL.

Every client gets a token minted by boto3 (directly or through its own connector), TLS with
``verify-full`` against the emulator's CA, and the cluster endpoint as host name.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import time
import uuid
from typing import Any

import boto3
import psycopg
import pytest

from dsql_magic.emulator.api import Emulator
from tests.fix_emulator import ConnInfo, find_client

pytestmark = pytest.mark.emulator


def aws_env(emulator: Emulator) -> dict[str, str]:
    """A process environment with only the emulator's credentials (no real AWS profile)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PG"))}
    env.update(emulator.env())
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    return env


PGBENCH_DDL = [
    "CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88))",
    "CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84))",
    "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))",
    "CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp,"
    " filler char(22))",
]


def table_name() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


def test_psycopg3_through_endpoint(emulator_conninfo: ConnInfo) -> None:
    name = table_name()
    with psycopg.connect(**emulator_conninfo(), autocommit=True) as conn:
        assert (
            conn.info.parameter_status(
                "server_version",
            )
            is not None
        )
        assert str(conn.info.parameter_status("server_version")).startswith("16")
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
        conn.execute(f"INSERT INTO {name} VALUES (%s, %s), (%s, %s)", (1, "a", 2, "b"))
        rows = conn.execute(f"SELECT id, v FROM {name} WHERE id > %s ORDER BY id", (0,)).fetchall()
        assert rows == [(1, "a"), (2, "b")]
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            "admin",
            "postgres",
        )


def test_psycopg3_through_localhost(emulator: Emulator) -> None:
    with psycopg.connect(**emulator.connect_kwargs(via_endpoint=False)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.pgconn.ssl_in_use


def test_psycopg3_pipeline_and_copy(emulator_conninfo: ConnInfo) -> None:
    name = table_name()
    with psycopg.connect(**emulator_conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
        with conn.pipeline():
            cur = conn.cursor()
            for i in range(20):
                cur.execute(f"INSERT INTO {name} VALUES (%s, %s)", (i, f"v{i}"))
        with conn.cursor().copy(f"COPY {name} (id, v) FROM STDIN") as copy:
            for i in range(20, 40):
                copy.write_row((i, f"v{i}"))
        out = bytearray()
        with conn.cursor().copy(f"COPY (SELECT id FROM {name} ORDER BY id) TO STDOUT") as copy:
            for chunk in copy:
                out += chunk
        assert out.decode().split() == [str(i) for i in range(40)]


def test_psql(emulator: Emulator) -> None:
    env = aws_env(emulator)
    env["PGPASSWORD"] = emulator.token()
    psql = find_client("psql")
    result = subprocess.run(
        [str(psql), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", "SELECT 40 + 2, current_user"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42|admin"


def test_psql_refused_token_shows_dsql_message(emulator: Emulator) -> None:
    env = aws_env(emulator)
    token = emulator.token()
    env["PGPASSWORD"] = token[:-4] + ("0000" if not token.endswith("0000") else "1111")
    result = subprocess.run(
        [str(find_client("psql")), "-X", "-c", "SELECT 1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "unable to accept connection, access denied" in result.stderr
    assert env["PGPASSWORD"] not in result.stderr


def test_psycopg2(emulator_conninfo: ConnInfo) -> None:
    import psycopg2

    conn = psycopg2.connect(**emulator_conninfo())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT %s::int + 1", (41,))
            assert cur.fetchone() == (42,)
        conn.rollback()
    finally:
        conn.close()


def test_asyncpg(emulator: Emulator) -> None:
    import asyncpg

    info = emulator.info
    ctx = ssl.create_default_context(cafile=str(info.ca_cert))

    async def run() -> Any:
        # asyncpg has no hostaddr: dial localhost, which the certificate and token also name.
        conn = await asyncpg.connect(
            host="localhost",
            port=info.port,
            user="admin",
            database="postgres",
            password=emulator.token(hostname="localhost"),
            ssl=ctx,
        )
        try:
            value = await conn.fetchval("SELECT $1::int * 2", 21)
            rows = await conn.fetch("SELECT generate_series(1, 3) AS n")
            return value, [r["n"] for r in rows]
        finally:
            await conn.close()

    assert asyncio.run(run()) == (42, [1, 2, 3])


def test_sqlalchemy_with_aurora_dsql_dialect(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlalchemy as sa
    from aurora_dsql_sqlalchemy import create_dsql_engine

    for key, value in aws_env(emulator).items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    info = emulator.info
    engine = create_dsql_engine(
        host=info.endpoint,
        user="admin",
        sslrootcert=str(info.ca_cert),
        connect_args={"port": info.port, "hostaddr": "127.0.0.1"},
        pool_size=2,
    )
    name = table_name()
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)"))
        with engine.begin() as conn:
            conn.execute(sa.text(f"INSERT INTO {name} VALUES (:i, :v)"), [{"i": 1, "v": "x"}])
        with engine.connect() as conn:
            assert conn.execute(sa.text(f"SELECT v FROM {name}")).scalar_one() == "x"
    finally:
        engine.dispose()


def test_aurora_dsql_python_connector(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    import aurora_dsql_psycopg as dsql

    for key, value in aws_env(emulator).items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    info = emulator.info
    conn = dsql.connect(
        host=info.endpoint,
        user="admin",
        port=info.port,
        hostaddr="127.0.0.1",
        sslmode="verify-full",
        sslrootcert=str(info.ca_cert),
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone() == ("admin",)
    finally:
        conn.close()


def test_boto3_client_mints_a_token_the_emulator_accepts(emulator: Emulator) -> None:
    info = emulator.info
    client = boto3.session.Session(
        aws_access_key_id=info.aws_access_key_id,
        aws_secret_access_key=info.aws_secret_access_key,
        region_name=info.region,
    ).client("dsql")
    token = client.generate_db_connect_admin_auth_token(info.endpoint, info.region, 60)
    kwargs = {**emulator.connect_kwargs(), "password": token}
    with psycopg.connect(**kwargs) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_pgbench_select_only(emulator: Emulator, emulator_conninfo: ConnInfo) -> None:
    # pgbench -i would load 100,000 rows in one transaction, over DSQL's row limit: build the
    # tables as a DSQL user would (one DDL per transaction, small batches).
    with psycopg.connect(**emulator_conninfo(), autocommit=True) as conn:
        for ddl in PGBENCH_DDL:
            conn.execute(ddl)
        conn.execute("INSERT INTO pgbench_branches VALUES (1, 0, '')")
        conn.execute("INSERT INTO pgbench_tellers SELECT t, 1, 0, '' FROM generate_series(1, 10) t")
        for first in range(1, 2001, 1000):  # 1,000 rows + 1,000 index entries per transaction
            conn.execute(
                "INSERT INTO pgbench_accounts SELECT a, 1, 0, ''"
                f" FROM generate_series({first}, {first + 999}) a"
            )
    env = aws_env(emulator)
    env["PGPASSWORD"] = emulator.token(expires_in=3600)
    result = subprocess.run(
        [str(find_client("pgbench")), "-n", "-S", "-c", "4", "-j", "2", "-t", "50"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "number of transactions actually processed: 200/200" in result.stdout
    assert "number of failed transactions: 0" in result.stdout


def test_plaintext_connection_is_refused(emulator_conninfo: ConnInfo) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(**emulator_conninfo(sslmode="disable"))
    assert "TLS is required" in str(info.value) or "SSL" in str(info.value)


def test_sslmode_require_works(emulator_conninfo: ConnInfo) -> None:
    kwargs = emulator_conninfo(sslmode="require")
    kwargs.pop("sslrootcert")
    with psycopg.connect(**kwargs) as conn:
        assert conn.pgconn.ssl_in_use


def test_verify_full_with_another_ca_fails(
    emulator_conninfo: ConnInfo, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from dsql_magic.emulator.tls import ensure_certificates, server_names

    other = ensure_certificates(tmp_path_factory.mktemp("otherca"), server_names("x", "us-east-1"))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(**emulator_conninfo(sslrootcert=str(other.ca_cert)))


def test_verify_full_with_a_name_not_in_the_certificate_fails(
    emulator: Emulator, emulator_conninfo: ConnInfo
) -> None:
    kwargs = emulator_conninfo(host="example.com", hostaddr="127.0.0.1")
    kwargs["password"] = emulator.token(hostname="example.com")
    with pytest.raises(psycopg.OperationalError, match=r"does not match|certificate"):
        psycopg.connect(**kwargs)


def test_refused_tokens_reach_the_client_without_echo(
    emulator: Emulator, emulator_conninfo: ConnInfo
) -> None:
    cases = {
        "expired": emulator.token(expires_in=1),
        "wrong action": emulator.token(user="analyst"),
        "wrong host": emulator.token(hostname="other.dsql.us-east-1.on.aws"),
        "not a token": "hunter2hunter2",
    }

    time.sleep(2)  # let the 1-second token expire
    for case, token in cases.items():
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(**emulator_conninfo(password=token))
        text = str(info.value)
        assert "unable to accept connection, access denied" in text, case
        assert token not in text, case
        diag = getattr(info.value, "diag", None)
        if diag is not None and diag.sqlstate:
            assert diag.sqlstate == "28000", case


def test_custom_role_connects_only_when_mapped(
    emulator: Emulator, emulator_conninfo: ConnInfo
) -> None:
    role = f"analyst_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**emulator_conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} WITH LOGIN")
    # Refused during the login, as DSQL does: connect() itself fails.
    with pytest.raises(psycopg.OperationalError, match="access denied"):
        psycopg.connect(**emulator_conninfo(role))
    with psycopg.connect(**emulator_conninfo(), autocommit=True) as conn:
        conn.execute(f"AWS IAM GRANT {role} TO '{emulator.info.admin_arn}'")
    kwargs = emulator_conninfo(role)
    assert "Action=DbConnect&" in kwargs["password"]
    with psycopg.connect(**kwargs) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)


def test_direct_tls_negotiation_libpq_17(emulator_conninfo: ConnInfo) -> None:
    """libpq 17+ ``sslnegotiation=direct``: TLS first, ALPN ``postgresql`` (no SSLRequest)."""
    assert psycopg.pq.version() >= 170000, "psycopg-binary bundles libpq 17 or newer"
    with psycopg.connect(**emulator_conninfo(sslnegotiation="direct")) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)
