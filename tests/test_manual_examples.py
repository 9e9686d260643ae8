"""The Aurora DSQL manual's own examples, run as written against the emulator.

Getting started (L396-430), the views chapter (L1586-1712), DDL and DML in transactions
(L1975-1996), the duplicate-email detection example (L2183-2225), database roles and IAM
(L1092-1139); then a psql script mixing valid and invalid statements, and an SQLAlchemy model
through the ``aurora-dsql-sqlalchemy`` dialect.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from dsql_magic.emulator.api import Emulator
from tests.fix_emulator import ConnInfo, find_client

pytestmark = pytest.mark.emulator


@pytest.fixture
def admin(emulator_conninfo: ConnInfo) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(**emulator_conninfo(), autocommit=True, connect_timeout=10) as conn:
        yield conn


def _script(conn: psycopg.Connection[Any], sql: str) -> list[Any]:
    """Run each statement of ``sql`` (the manual's blocks, split on ``;``); last rows returned."""
    rows: list[Any] = []
    for statement in (s.strip() for s in sql.split(";")):
        if statement:
            cur = conn.execute(statement)
            rows = cur.fetchall() if cur.description else []
    return rows


def test_getting_started(admin: psycopg.Connection[Any]) -> None:
    _script(
        admin,
        """
        CREATE SCHEMA IF NOT EXISTS test;
        CREATE TABLE IF NOT EXISTS test.hello_world (
            id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
            message VARCHAR(255) NOT NULL,
            created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
        );
        INSERT INTO test.hello_world (message)
        VALUES ('Hello, World!!');
        """,
    )
    rows = _script(admin, "SELECT * FROM test.hello_world")
    assert [r[1] for r in rows] == ["Hello, World!!"]
    assert isinstance(rows[0][0], uuid.UUID)
    _script(admin, "DROP TABLE test.hello_world; DROP SCHEMA test")


def test_views_chapter(admin: psycopg.Connection[Any]) -> None:
    _script(
        admin,
        """
        CREATE TABLE films (code char(5) PRIMARY KEY, title varchar(40), kind varchar(10),
                            classification varchar(10));
        INSERT INTO films VALUES ('c1', 'Airplane!', 'Comedy', 'PG'),
                                 ('c2', 'Alien', 'Horror', 'R'),
                                 ('c3', 'Brazil', 'Comedy', 'R');
        CREATE VIEW comedies AS
          SELECT *
          FROM films
          WHERE kind = 'Comedy';
        CREATE VIEW pg_comedies AS
          SELECT *
          FROM comedies
          WHERE classification = 'PG'
        WITH CASCADED CHECK OPTION;
        CREATE RECURSIVE VIEW public.nums_1_100 (n) AS
            VALUES (1)
        UNION ALL
            SELECT n+1 FROM nums_1_100 WHERE n < 100;
        CREATE VIEW vista AS SELECT text 'Hello World' AS hello;
        """,
    )
    assert _script(admin, "SELECT title FROM comedies ORDER BY code") == [
        ("Airplane!",),
        ("Brazil",),
    ]
    assert _script(admin, "SELECT title FROM pg_comedies") == [("Airplane!",)]
    with pytest.raises(psycopg.errors.WithCheckOptionViolation):
        admin.execute("INSERT INTO pg_comedies VALUES ('c4', 'Clue', 'Comedy', 'R')")
    assert _script(admin, "SELECT count(*), sum(n) FROM nums_1_100") == [(100, 5050)]
    assert _script(admin, "SELECT hello FROM vista") == [("Hello World",)]
    _script(admin, "CREATE VIEW foo AS SELECT 1 AS one; ALTER VIEW foo RENAME TO bar")
    assert _script(admin, "SELECT one FROM bar") == [(1,)]
    _script(
        admin,
        """
        CREATE TABLE base_table (id int, ts timestamp);
        CREATE VIEW a_view AS SELECT * FROM base_table;
        ALTER VIEW a_view ALTER COLUMN ts SET DEFAULT now();
        INSERT INTO base_table(id) VALUES(1);
        INSERT INTO a_view(id) VALUES(2)
        """,
    )
    rows = _script(admin, "SELECT id, ts IS NULL FROM base_table ORDER BY id")
    assert rows == [(1, True), (2, False)]
    _script(admin, "CREATE VIEW kinds AS SELECT DISTINCT kind FROM films; DROP VIEW kinds")


def test_ddl_and_dml_in_transactions(admin: psycopg.Connection[Any]) -> None:
    _script(admin, "BEGIN; CREATE TABLE mytable (ID_col integer); COMMIT")
    _script(admin, "CREATE TABLE FOO (ID_col integer)")
    _script(admin, "BEGIN; INSERT into FOO VALUES (1); COMMIT")
    admin.execute("BEGIN")
    admin.execute("CREATE TABLE FOO2 (ID_col integer)")
    with pytest.raises(psycopg.errors.FeatureNotSupported) as info:
        admin.execute("INSERT into FOO2 VALUES (1)")
    assert info.value.diag.message_primary == (
        "ddl and dml are not supported in the same transaction"
    )
    assert admin.execute("COMMIT").statusmessage == "ROLLBACK"
    assert _script(admin, "SELECT to_regclass('foo2') IS NULL") == [(True,)]


def test_duplicate_email_detection(admin: psycopg.Connection[Any]) -> None:
    _script(
        admin,
        """
        -- Drop the table if it exists
        DROP TABLE IF EXISTS users;

        -- Create the users table with a simple integer primary key
        CREATE TABLE users (
            user_id INTEGER PRIMARY KEY,
            email VARCHAR(255),
            first_name VARCHAR(100),
            last_name VARCHAR(100),
            created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
        );
        -- Insert sample data with explicit IDs
        INSERT INTO users (user_id, email, first_name, last_name) VALUES
        (1, 'john.doe@example.com', 'John', 'Doe'),
        (2, 'jane.smith@example.com', 'Jane', 'Smith'),
        (3, 'john.doe@example.com', 'Johnny', 'Doe'),
        (4, 'alice.wong@example.com', 'Alice', 'Wong'),
        (5, 'bob.jones@example.com', 'Bob', 'Jones'),
        (6, 'alice.wong@example.com', 'Alicia', 'Wong'),
        (7, 'bob.jones@example.com', 'Robert', 'Jones');
        """,
    )
    rows = _script(
        admin,
        """
        -- Query to find duplicates
        WITH duplicates AS (
            SELECT email, COUNT(*) as duplicate_count
            FROM users
            GROUP BY email
            HAVING COUNT(*) > 1
        )
        SELECT u.*, d.duplicate_count
        FROM users u
        INNER JOIN duplicates d ON u.email = d.email
        ORDER BY u.email, u.user_id;
        """,
    )
    assert [(r[0], r[1], r[-1]) for r in rows] == [
        (4, "alice.wong@example.com", 2),
        (6, "alice.wong@example.com", 2),
        (5, "bob.jones@example.com", 2),
        (7, "bob.jones@example.com", 2),
        (1, "john.doe@example.com", 2),
        (3, "john.doe@example.com", 2),
    ]


def test_roles_and_iam_example(admin: psycopg.Connection[Any]) -> None:
    arn = "arn:aws:iam::012345678912:role/example"
    _script(
        admin,
        f"""
        CREATE ROLE example WITH LOGIN;
        AWS IAM GRANT example TO '{arn}';
        CREATE SCHEMA myschema;
        GRANT USAGE ON SCHEMA myschema TO example;
        GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA myschema TO example;
        """,
    )
    cur = admin.execute("SELECT * FROM sys.iam_pg_role_mappings WHERE pg_role_name = 'example'")
    assert [d.name for d in cur.description or ()] == [
        "iam_oid",
        "arn",
        "pg_role_oid",
        "pg_role_name",
        "grantor_pg_role_oid",
        "grantor_pg_role_name",
    ]
    rows = cur.fetchall()
    assert [(r[1], r[3], r[5]) for r in rows] == [(arn, "example", "admin")]
    with pytest.raises(psycopg.Error) as info:
        admin.execute("GRANT CREATE ON DATABASE postgres TO example")
    assert info.value.diag.message_primary == "unsupported object type in GRANT"
    _script(admin, f"AWS IAM REVOKE example FROM '{arn}'")
    assert _script(
        admin, "SELECT count(*) FROM sys.iam_pg_role_mappings WHERE pg_role_name = 'example'"
    ) == [(0,)]


PSQL_SCRIPT = """\
CREATE TABLE psql_t (id int PRIMARY KEY, v text);
INSERT INTO psql_t VALUES (1, 'one'), (2, 'two');
TRUNCATE psql_t;
CREATE TABLE psql_arr (id int PRIMARY KEY, tags text[]);
CREATE INDEX psql_t_v ON psql_t (v);
SELECT count(*) FROM psql_t;
BEGIN;
SAVEPOINT sp;
SELECT 1;
COMMIT;
SET work_mem = '64MB';
SHOW server_version;
CREATE TABLE psql_s (id serial PRIMARY KEY);
SELECT v FROM psql_t ORDER BY id;
"""


def test_psql_script_of_valid_and_invalid_statements(emulator: Emulator, tmp_path: Path) -> None:
    script = tmp_path / "mixed.sql"
    script.write_text(PSQL_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PG"))}
    env.update(emulator.env())
    env["PGPASSWORD"] = emulator.token()
    result = subprocess.run(
        [str(find_client("psql")), "-X", "-At", "-f", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    got = []
    for line in result.stderr.splitlines():
        where, sep, text = line.partition("ERROR:")
        if sep:
            got.append((int(where.rstrip(": ").rsplit(":", 1)[-1]), text.strip()))
    expected = [
        (3, "unsupported statement: Truncate"),
        (4, "datatype text[] not supported"),
        (5, "unsupported mode. please use CREATE INDEX ASYNC."),
        (8, "unsupported transaction statement: SAVEPOINT"),
        (9, "current transaction is aborted, commands ignored until end of transaction block"),
        (11, 'setting configuration parameter "work_mem" not supported'),
        (13, 'type "serial" does not exist'),
    ]
    assert got == expected, result.stderr
    assert result.stdout.splitlines() == [
        "CREATE TABLE",
        "INSERT 0 2",
        "2",
        "BEGIN",
        "ROLLBACK",  # COMMIT of the aborted block
        "16.15",
        "one",
        "two",
    ], result.stdout


class Base(DeclarativeBase):
    """An SQLAlchemy model of two tables, created through the aurora-dsql dialect."""


class Owner(Base):
    __tablename__ = "sa_owner"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(sa.String(30))


class Pet(Base):
    __tablename__ = "sa_pet"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    name: Mapped[str] = mapped_column(sa.String(30))
    weight: Mapped[Decimal] = mapped_column(sa.Numeric(6, 2))
    born: Mapped[dt.date | None] = mapped_column(sa.Date, nullable=True)


def test_sqlalchemy_model_round_trip(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    from aurora_dsql_sqlalchemy import create_dsql_engine

    for key, value in emulator.env().items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    info = emulator.info
    engine = create_dsql_engine(
        host=info.endpoint,
        user="admin",
        sslrootcert=str(info.ca_cert),
        connect_args={"port": info.port, "hostaddr": "127.0.0.1"},
        pool_size=2,
    )
    try:
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            alice = Owner(name="Alice")
            session.add(alice)
            session.flush()
            session.add_all(
                [
                    Pet(owner_id=alice.id, name="Rex", weight=Decimal("12.50")),
                    Pet(owner_id=alice.id, name="Tom", weight=Decimal("4.25")),
                ]
            )
            session.commit()
        with Session(engine) as session:
            got = session.execute(
                sa.select(Owner.name, Pet.name, Pet.weight)
                .join(Pet, Pet.owner_id == Owner.id)
                .order_by(Pet.name)
            ).all()
        assert [tuple(r) for r in got] == [
            ("Alice", "Rex", Decimal("12.50")),
            ("Alice", "Tom", Decimal("4.25")),
        ]
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()


def test_index_example(admin: psycopg.Connection[Any]) -> None:
    _script(
        admin,
        """
        CREATE SCHEMA idx_test;

        CREATE TABLE idx_test.departments (name varchar(255) primary key NOT null,
            manager varchar(255),
            size varchar(4));
        INSERT INTO idx_test.departments VALUES ('Human Resources', 'John Doe', '10')
        """,
    )
    cur = admin.execute(
        "CREATE INDEX ASYNC test_index on idx_test.departments(name, manager, size)"
    )
    assert [d.name for d in cur.description or ()] == ["job_id"]
    (job_id,) = cur.fetchone() or ("",)
    assert len(job_id) == 26
    assert admin.execute(f"SELECT sys.wait_for_job('{job_id}')").fetchone() == (True,)
    with pytest.raises(psycopg.Error) as info:
        admin.execute("CREATE INDEX test_index2 on idx_test.departments(manager)")
    assert info.value.diag.message_primary == "unsupported mode. please use CREATE INDEX ASYNC."


def test_estimated_row_count_recipe(admin: psycopg.Connection[Any]) -> None:
    """L2497-2510: ``SELECT reltuples FROM pg_class WHERE relname = 'table_name'``."""
    import time

    _script(
        admin,
        """
        CREATE TABLE est_rows (id int PRIMARY KEY, v text);
        INSERT INTO est_rows SELECT g, 'x' FROM generate_series(1, 2000) g
        """,
    )
    deadline = time.monotonic() + 60  # background ANALYZE runs every few seconds
    estimate = -1.0
    while time.monotonic() < deadline:
        (estimate,) = admin.execute(
            "SELECT reltuples FROM pg_class WHERE relname = 'est_rows'"
        ).fetchone() or (-1.0,)
        if estimate > 0:
            break
        time.sleep(0.5)
    assert estimate == 2000
