"""The SQLSTATE → error class + hint table, scrubbing, and the short rendering."""

from __future__ import annotations

import psycopg
import pytest

from dsql_magic import errors as E

TOKEN = (
    "abc.dsql.us-east-1.on.aws/?Action=DbConnectAdmin&X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKID%2F20261128%2Fus-east-1%2Fdsql%2Faws4_request&X-Amz-Date=20261128T0"
    "&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=" + "ab" * 32
)


@pytest.mark.parametrize(
    ("sqlstate", "code", "cls"),
    [
        ("40001", "OC000", E.ConflictError),
        ("40001", "OC001", E.ConflictError),
        ("40001", None, E.ConflictError),
        ("0A000", None, E.UnsupportedFeature),
        ("54000", None, E.LimitExceeded),
        ("54011", None, E.LimitExceeded),  # falls back by class "54"
        ("53300", None, E.ResourceLimit),
        ("42501", None, E.PermissionDenied),
        ("42P01", None, E.SyntaxProblem),
        ("28000", None, E.AccessDenied),
        ("28P01", None, E.AccessDenied),
        ("25P02", None, E.TransactionAborted),
        ("XX000", None, E.QueryError),
        (None, None, E.QueryError),
    ],
)
def test_lookup(sqlstate: str | None, code: str | None, cls: type[E.QueryError]) -> None:
    assert E.lookup(sqlstate, code).cls is cls


def test_every_hint_is_one_line() -> None:
    for rule in E.ERROR_TABLE.values():
        assert rule.hint is None or "\n" not in rule.hint


def test_oc_code_from_message() -> None:
    assert E.dsql_code("change conflicts with another transaction (OC000)") == "OC000"
    assert E.dsql_code("please retry: (OC001)") == "OC001"
    assert E.dsql_code("no code here") is None


def test_scrub_removes_tokens_and_passwords() -> None:
    text = f"failed for password={TOKEN} and url {TOKEN} and password='x y'"
    out = E.scrub(text)
    assert "X-Amz-Signature" not in out and "ab" * 32 not in out and "x y" not in out
    assert E.REDACTED in out


def test_short_render_and_long_render() -> None:
    err = E.ConflictError(
        "change conflicts with another transaction (OC000)",
        sqlstate="40001",
        code="OC000",
        hint="re-run",
        statement=2,
        note="gave up after 5 retries",
    )
    lines = err._render_traceback_()
    assert lines[0] == (
        "ConflictError [40001 OC000] (statement 2): "
        "change conflicts with another transaction (OC000)"
    )
    assert lines[1:] == ["hint: re-run", "gave up after 5 retries"]
    E.DsqlMagicError.short = False
    try:
        try:
            raise err
        except E.ConflictError as caught:
            long = "".join(caught._render_traceback_())
        assert "Traceback" in long and "test_errors.py" in long
    finally:
        E.DsqlMagicError.short = True


def test_messages_are_scrubbed_on_construction() -> None:
    err = E.ConnectionFailed(f"could not connect: {TOKEN}", hint=TOKEN)
    assert "X-Amz-Signature" not in str(err) and "X-Amz" not in "".join(err._render_traceback_())


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        ('could not translate host name "x.invalid" to address', "does not resolve"),
        ("SSL error: certificate verify failed", "TLS verification failed"),
        ('server certificate for "localhost" does not match host name "x"', "another host name"),
        ("SSL SYSCALL error: EOF detected", "SNI"),
        ("timeout expired", "IDLE or INACTIVE"),
        ("connection to server at 127.0.0.1 port 1 failed: Connection refused", "nothing listens"),
    ],
)
def test_connection_failures_without_sqlstate(message: str, needle: str) -> None:
    err = E.connection_error(psycopg.OperationalError(message), user="admin", host="h")
    assert isinstance(err, E.ConnectionFailed)
    assert needle in (err.hint or "")


def test_create_index_hint_points_to_async() -> None:
    class Fake(psycopg.errors.FeatureNotSupported):
        pass

    exc = Fake("unsupported")
    err = E.from_database_error(exc, sql="CREATE INDEX i ON t (a)")
    assert isinstance(err, E.UnsupportedFeature)
    assert "CREATE INDEX ASYNC" in (err.hint or "")


def test_dsql_access_denied_text_with_server_hint() -> None:
    exc = psycopg.OperationalError(
        'connection to server at "127.0.0.1", port 5432 failed: FATAL:  unable to accept '
        "connection, access denied\nHINT:  Signature expired: 20261128T010000Z is now earlier"
    )
    err = E.connection_error(exc, user="admin", host="h")
    assert isinstance(err, E.AccessDenied)
    assert err.message == "could not connect to h: unable to accept connection, access denied"
    assert "dsql:DbConnectAdmin" in (err.hint or "") and "Signature expired" in (err.hint or "")
