"""Hooks' parameterised SQL stays prepared on the session's backend, and survives clients that
drop every prepared statement (DEALLOCATE ALL, DISCARD ALL) in any protocol.

Through a real emulator: a write transaction's COMMIT runs the size-limit query with parameters
(txnrules/rowsizes), so it is the statement kept. Were the session to keep using a statement the
client had dropped, that COMMIT would fail with "prepared statement … does not exist".
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from dsql_magic.emulator.kept_statements import KeptStatements, drops_all, tag_drops_all
from dsql_magic.emulator.statements import Statement, split_statements
from tests.fix_emulator import ConnInfo

KEPT = (
    "SELECT name FROM pg_prepared_statements WHERE name LIKE '\\_dsql\\_emulator\\_k%' ORDER BY 1"
)


def _one(sql: str) -> Statement:
    (stmt,) = split_statements(sql)
    return stmt


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("DEALLOCATE ALL", True),
        ("DEALLOCATE PREPARE ALL", True),
        ("deallocate all", True),
        ("DISCARD ALL", True),
        ("DISCARD PLANS", True),  # forgotten needlessly: costs one parse, never an error
        ("DEALLOCATE q1", False),
        ("SELECT 1", False),
        ("PREPARE q AS SELECT 1", False),
    ],
)
def test_drops_all(sql: str, expected: bool) -> None:
    assert drops_all(_one(sql)) is expected


def test_drops_all_without_a_statement() -> None:
    assert drops_all(None) is False


def test_tags_that_drop_everything() -> None:
    assert tag_drops_all("DEALLOCATE ALL") and tag_drops_all("DISCARD ALL")
    assert not tag_drops_all("DEALLOCATE") and not tag_drops_all("SELECT 1")


def test_names_are_never_reused_and_the_limit_holds() -> None:
    kept = KeptStatements(limit=2)
    first = kept.add("SELECT $1")
    assert first is not None and kept.get("SELECT $1") == first
    kept.forget("SELECT $1")
    assert kept.get("SELECT $1") is None
    again = kept.add("SELECT $1")
    assert again is not None and again != first  # the old one may still exist on the backend
    assert kept.add("SELECT $2") is not None
    assert kept.add("SELECT $3") is None and len(kept) == 2  # full: run unkept
    kept.forget_all()
    assert len(kept) == 0 and kept.add("SELECT $3") not in (None, first, again)


# --- through the emulator ------------------------------------------------------------------


@dataclass
class Client:
    conn: psycopg.Connection
    table: str

    def write(self, n: int) -> None:
        """One write transaction: its COMMIT runs the kept size-limit query."""
        with self.conn.transaction():
            self.conn.execute(f"INSERT INTO {self.table} VALUES (%s, 'x')", (n,))

    def kept(self) -> list[str]:
        return [r[0] for r in self.conn.execute(KEPT).fetchall()]

    def rows(self) -> int:
        row = self.conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def client(emulator_conninfo: ConnInfo) -> Iterator[Client]:
    table = f"kept_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**emulator_conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
        yield Client(conn, table)


def test_the_commit_query_is_prepared_once(client: Client) -> None:
    client.write(1)
    kept = client.kept()
    assert kept, "a write transaction's COMMIT should keep its size query prepared"
    for n in range(2, 6):
        client.write(n)
    assert client.kept() == kept  # the same statements, not new ones
    assert client.rows() == 5


@pytest.mark.parametrize("drop", ["DEALLOCATE ALL", "DISCARD ALL", "DEALLOCATE PREPARE ALL"])
def test_commit_after_the_client_dropped_every_statement(client: Client, drop: str) -> None:
    client.write(1)
    before = client.kept()
    assert before
    client.conn.execute(drop)
    assert client.kept() == []
    client.write(2)  # prepared anew, under a new name
    after = client.kept()
    assert after and not set(after) & set(before)
    assert client.rows() == 2


def test_deallocate_all_inside_the_transaction_simple_protocol(client: Client) -> None:
    client.write(1)
    pgconn = client.conn.pgconn
    # One simple Query: the COMMIT's hooks run after the DEALLOCATE ALL, in the same block.
    pgconn.exec_(
        f"BEGIN; INSERT INTO {client.table} VALUES (2, 'y'); DEALLOCATE ALL; COMMIT".encode()
    )
    assert pgconn.error_message == b""
    assert client.rows() == 2


def test_deallocate_all_in_an_extended_protocol_pipeline(
    emulator_conninfo: ConnInfo, client: Client
) -> None:
    client.write(1)
    with psycopg.connect(**emulator_conninfo()) as conn:
        other = Client(conn, client.table)
        other.write(10)  # this session keeps its own statement
        assert other.kept()
        with conn.pipeline():
            conn.execute(f"INSERT INTO {client.table} VALUES (11, 'p')")
            conn.execute("DEALLOCATE ALL")
            conn.execute(f"INSERT INTO {client.table} VALUES (12, 'p')")
        conn.commit()  # its size query is prepared anew
        assert other.kept()
        conn.commit()
    assert client.rows() == 4


def test_deallocate_all_then_commit_in_one_pipeline(
    emulator_conninfo: ConnInfo, client: Client
) -> None:
    """The COMMIT's hooks run before PostgreSQL has answered the DEALLOCATE ALL sent just before:
    the session must forget its kept statements when it sends the drop, not when it hears back."""
    client.write(1)
    with psycopg.connect(**emulator_conninfo()) as conn:
        other = Client(conn, client.table)
        other.write(10)
        assert other.kept()
        with conn.pipeline():
            conn.execute(f"INSERT INTO {client.table} VALUES (11, 'p')")
            conn.execute("DEALLOCATE ALL")
            conn.commit()
        assert other.kept()
    assert client.rows() == 3
