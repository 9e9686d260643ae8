"""The emulator's error type and the catalog of named constructors for wire and auth refusals.

Everything the emulator refuses is a `DsqlError`; the session turns it into an ErrorResponse (and,
for FATAL ones, closes the connection). Refusals are built here, by name, so that the SQLSTATE and
the exact text DSQL uses live in one place (dialect rules build theirs from their own data).
Texts follow ``dsql-observed.md`` ("Connections") and the manual where the service has not moved.

This module must not import anything from the rest of the emulator, and a message, detail or hint
built here must never contain a token, secret or signed URL.
"""

from __future__ import annotations

from typing import Literal

Severity = Literal["ERROR", "FATAL"]

# SQLSTATE codes used by the wire front (PostgreSQL's errcodes).
INVALID_AUTHORIZATION = "28000"
INVALID_PASSWORD = "28P01"
PROTOCOL_VIOLATION = "08P01"
TOO_MANY_CONNECTIONS = "53300"
CONFIGURATION_LIMIT_EXCEEDED = "53400"
INVALID_CATALOG_NAME = "3D000"
FEATURE_NOT_SUPPORTED = "0A000"
IN_FAILED_TRANSACTION = "25P02"
ADMIN_SHUTDOWN = "57P01"
QUERY_CANCELED = "57014"
IDLE_SESSION_TIMEOUT = "57P05"
INTERNAL_ERROR = "XX000"
PROGRAM_LIMIT_EXCEEDED = "54000"


class DsqlError(Exception):
    """A refusal the client sees as an ErrorResponse: SQLSTATE, message, optional detail and hint.

    ``severity`` is ``"FATAL"`` when the connection ends with it (authentication, limits), else
    ``"ERROR"``. ``str(err)`` is the message alone, as psql would print it after ``ERROR:``.
    """

    def __init__(
        self,
        sqlstate: str,
        message: str,
        *,
        detail: str | None = None,
        hint: str | None = None,
        severity: Severity = "ERROR",
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.hint = hint
        self.severity: Severity = severity

    @property
    def fatal(self) -> bool:
        """True when the connection must be closed after sending this error."""
        return self.severity == "FATAL"

    def __repr__(self) -> str:
        return (
            f"DsqlError({self.sqlstate!r}, {self.message!r}, detail={self.detail!r}, "
            f"hint={self.hint!r}, severity={self.severity!r})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # Pickles with its keywords (Exception's default would drop them).
        return (_rebuild, (self.sqlstate, self.message, self.detail, self.hint, self.severity))


def _rebuild(
    sqlstate: str, message: str, detail: str | None, hint: str | None, severity: Severity
) -> DsqlError:
    return DsqlError(sqlstate, message, detail=detail, hint=hint, severity=severity)


# --- authentication and connection admission -------------------------------------------------


def access_denied(hint: str | None = None) -> DsqlError:
    """A token that fails verification (bad signature, expired, wrong action/region/host...).

    The hint says why, as DSQL does (``Signature expired: …``); it must never quote the token.
    """
    return DsqlError(
        INVALID_AUTHORIZATION,
        "unable to accept connection, access denied",
        hint=hint,
        severity="FATAL",
    )


def password_required() -> DsqlError:
    """The client closed or answered the password request without a password."""
    return access_denied("Provide an IAM authentication token as the password.")


def too_many_connections() -> DsqlError:
    """The cluster's open-connection quota is used up (observed text, SQLSTATE 53300)."""
    return DsqlError(
        TOO_MANY_CONNECTIONS,
        "Unable to accept connection, too many open connections.",
        severity="FATAL",
    )


def connection_rate_exceeded() -> DsqlError:
    """More new connections per second than the cluster's rate allows (observed, 53400)."""
    return DsqlError(
        CONFIGURATION_LIMIT_EXCEEDED,
        "Unable to accept connection, rate exceeded.",
        severity="FATAL",
    )


def database_does_not_exist(name: str) -> DsqlError:
    """DSQL has exactly one database, ``postgres``."""
    return DsqlError(
        INVALID_CATALOG_NAME,
        f'database "{name}" does not exist',
        hint='Aurora DSQL has one database: connect with dbname "postgres".',
        severity="FATAL",
    )


def tls_required() -> DsqlError:
    """A plaintext startup: DSQL accepts TLS connections only."""
    return DsqlError(
        INVALID_AUTHORIZATION,
        "unable to accept connection, TLS is required",
        hint="Connect with sslmode=require or stricter (verify-full with the emulator's CA).",
        severity="FATAL",
    )


def unsupported_protocol(major: int, minor: int) -> DsqlError:
    """A startup packet asking for a protocol version other than 3.x."""
    return DsqlError(
        FEATURE_NOT_SUPPORTED,
        f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0",
        severity="FATAL",
    )


def protocol_violation(message: str) -> DsqlError:
    """A malformed or unexpected message; the connection is closed."""
    return DsqlError(PROTOCOL_VIOLATION, message, severity="FATAL")


def message_too_large(size: int, limit: int) -> DsqlError:
    """A protocol message over the size limit (DSQL closes the connection)."""
    return DsqlError(
        PROGRAM_LIMIT_EXCEEDED,
        f"protocol message of {size} bytes exceeds the limit of {limit} bytes",
        hint="Send smaller statements or batches.",
        severity="FATAL",
    )


def connection_age_exceeded() -> DsqlError:
    """The connection reached its maximum duration (DSQL closes it; the manual gives no text)."""
    return DsqlError(
        ADMIN_SHUTDOWN,
        "terminating connection: maximum connection duration reached",
        hint="Reconnect; keep pooled connections younger than 60 minutes.",
        severity="FATAL",
    )


def idle_timeout() -> DsqlError:
    """A client that sent nothing for longer than the idle timeout."""
    return DsqlError(
        IDLE_SESSION_TIMEOUT,
        "terminating connection due to idle timeout",
        severity="FATAL",
    )


def server_shutting_down() -> DsqlError:
    """The emulator is stopping."""
    return DsqlError(
        ADMIN_SHUTDOWN,
        "terminating connection due to administrator command",
        severity="FATAL",
    )


def backend_unavailable() -> DsqlError:
    """The embedded PostgreSQL could not be reached for this session."""
    return DsqlError(
        INTERNAL_ERROR,
        "unable to accept connection, the emulator's storage engine is unavailable",
        hint="Check the emulator's log (stderr); restart it if PostgreSQL stopped.",
        severity="FATAL",
    )


# --- statements --------------------------------------------------------------------------------


def in_failed_transaction() -> DsqlError:
    """A statement after a refusal inside ``BEGIN … COMMIT`` (observed: 25P02 until the end)."""
    return DsqlError(
        IN_FAILED_TRANSACTION,
        "current transaction is aborted, commands ignored until end of transaction block",
    )


def internal_error(message: str) -> DsqlError:
    """An emulator bug surfaced to the client rather than hanging it."""
    return DsqlError(INTERNAL_ERROR, f"emulator internal error: {message}")
