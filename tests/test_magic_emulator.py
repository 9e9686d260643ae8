"""The core magics against the emulator: real SigV4 verification, real DSQL rules and conflicts.

The magic connects exactly as to a real cluster (endpoint name, ``--hostaddr``, the emulator's
CA, a token signed with boto3 from the environment's credentials — here the emulator's local
identity), so the emulator checks every token. Conflicts come from the emulator's injection
(``sys.inject_conflicts``), raised at COMMIT like real ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dsql_magic.emulator.api import Emulator
from dsql_magic.errors import AccessDenied, ConflictError, LimitExceeded, UnsupportedFeature
from dsql_magic.limits import MAX_ROWS_PER_TRANSACTION

pytestmark = pytest.mark.emulator


def _line(emulator: Emulator, *extra: str) -> str:
    info = emulator.info
    return " ".join(
        [
            info.endpoint,
            f"--port {info.port}",
            f"--hostaddr {info.connect_host}",
            f"--sslrootcert {info.ca_cert}",
            *extra,
        ]
    )


@pytest.fixture
def on_emulator(
    emulator: Emulator, magic: Any, dsql: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Emulator]:
    """The shell connected to the session emulator as admin, with its local credentials."""
    info = emulator.info
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", info.aws_access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", info.aws_secret_access_key)
    monkeypatch.setenv("AWS_REGION", info.region)
    dsql.backoff_base = 0.001
    magic(line="connect " + _line(emulator, "--name emu"))
    yield emulator
    magic("SELECT sys.inject_conflicts(0)")


def test_verified_token_and_query(on_emulator: Emulator, magic: Any) -> None:
    df = magic("SELECT current_user AS who, 6 * 7 AS answer")
    assert (df["who"][0], int(df["answer"][0])) == ("admin", 42)


def test_foreign_credentials_are_denied(
    emulator: Emulator, magic: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aws_env's throwaway key is not an identity the emulator knows: the signature is refused.
    with pytest.raises(AccessDenied) as info:
        magic(line="connect " + _line(emulator, "--name stranger"))
    assert "dsql:DbConnectAdmin" in (info.value.hint or "")
    assert "X-Amz" not in str(info.value)


def test_injected_conflicts_are_retried(on_emulator: Emulator, magic: Any, table: str) -> None:
    magic(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    magic(f"SELECT sys.inject_conflicts(0.5, '{table}', 11)")
    retried = 0
    for i in range(6):
        out = magic(f"BEGIN; INSERT INTO {table} VALUES ({i}, 'x'); COMMIT")
        assert repr(out).startswith("BEGIN\nINSERT 0 1\nCOMMIT")
        retried += "succeeded after" in repr(out)
    magic("SELECT sys.inject_conflicts(0)")
    assert retried > 0  # half the commits conflict: some cells needed retries
    assert magic(f"SELECT count(*) AS n FROM {table}")["n"][0] == 6  # each row exactly once


def test_always_conflicting_gives_up(
    on_emulator: Emulator, magic: Any, dsql: Any, table: str
) -> None:
    magic(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    magic(f"SELECT sys.inject_conflicts(1.0, '{table}', 1)")
    dsql.max_retries = 2
    with pytest.raises(ConflictError) as info:
        magic(f"INSERT INTO {table} VALUES (1)")
    err = info.value
    assert (err.sqlstate, err.code) == ("40001", "OC000")
    assert "gave up after 2 retries" in (err.note or "")


def test_dsql_rules_get_hints(on_emulator: Emulator, magic: Any, table: str) -> None:
    magic(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)")
    with pytest.raises(UnsupportedFeature) as unsupported:
        magic(f"CREATE INDEX ON {table} (v)")
    assert "CREATE INDEX ASYNC" in (unsupported.value.hint or "")
    with pytest.raises(LimitExceeded) as limit:
        magic(
            f"INSERT INTO {table} SELECT g, g FROM generate_series(1, "
            f"{MAX_ROWS_PER_TRANSACTION + 1}) AS g"
        )
    assert limit.value.sqlstate == "54000" and "3,000" in (limit.value.hint or "")


def test_ctrl_c_cancels_on_the_emulator(on_emulator: Emulator, magic: Any, dsql: Any) -> None:
    import signal
    import threading
    import time

    raw = dsql.registry.get("emu").raw
    main = threading.main_thread().ident
    assert main is not None

    def interrupt_when_busy() -> None:
        for _ in range(400):  # wait until the statement is on the wire
            if raw.info.transaction_status.name == "ACTIVE":
                break
            time.sleep(0.025)
        time.sleep(0.2)
        signal.pthread_kill(main, signal.SIGINT)

    t = threading.Thread(target=interrupt_when_busy)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            magic("SELECT pg_sleep(60)")
    finally:
        t.join()
    assert dsql.registry.get("emu").raw is raw  # same connection, still usable
    assert int(magic("SELECT 7 AS x")["x"][0]) == 7
