"""Errors the magics raise, classified from SQLSTATE (and DSQL's OC code) by a table kept as data.

Every failure a user sees goes through here so that it reads the same way: one short block with
the SQLSTATE, DSQL's ``OCnnn`` code when present, the server's message and a one-line hint saying
what to do next. The driver's exception stays attached as ``__cause__`` (with its ``diag``), so
``%tb`` or ``%config DsqlMagic.short_errors = False`` still shows everything.

Classification is by SQLSTATE, falling back by its two-character class, never by message text —
except for failures that happen before PostgreSQL answers (DNS, TCP, TLS), where libpq gives no
SQLSTATE and its own wording is all there is.

This module must never let a secret through: every text shown passes `scrub`, which removes
presigned-URL query parameters (``X-Amz-…``) and anything that looks like a DSQL token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import psycopg

# A DSQL token is a presigned URL without scheme: host/?Action=...&X-Amz-...; drop from the '?'.
_TOKEN_RE = re.compile(r"[\w.-]*/?\?Action=DbConnect\w*[^\s'\"]*")
_AMZ_PARAM_RE = re.compile(r"X-Amz-[A-Za-z-]+=[^&\s'\"]*")
_PASSWORD_RE = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)
_OC_CODE_RE = re.compile(r"\b(OC\d{3})\b")

REDACTED = "<redacted>"


def scrub(text: str) -> str:
    """Remove anything token-like from ``text`` (used on every message we show or log)."""
    text = _TOKEN_RE.sub(REDACTED, text)
    text = _AMZ_PARAM_RE.sub(REDACTED, text)
    return _PASSWORD_RE.sub(lambda m: m.group(1) + REDACTED, text)


def dsql_code(message: str) -> str | None:
    """DSQL's ``OCnnn`` code from a server message, if it has one."""
    m = _OC_CODE_RE.search(message)
    return m.group(1) if m else None


class DsqlMagicError(Exception):
    """Base of everything the magics raise for the user; shown short unless asked otherwise."""

    short: ClassVar[bool] = True  # set by the magics from the `short_errors` trait

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = scrub(message)
        self.hint = scrub(hint) if hint else None
        super().__init__(self.message)

    def lines(self) -> list[str]:
        out = [f"{type(self).__name__}: {self.message}"]
        if self.hint:
            out.append(f"hint: {self.hint}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def _render_traceback_(self) -> list[str]:
        """IPython calls this instead of printing a traceback (STYLE 2.5)."""
        if not type(self).short:
            import traceback

            return [scrub(line) for line in traceback.format_exception(self)]
        return self.lines()


class UsageProblem(DsqlMagicError):
    """Bad arguments or input to a magic (not a database problem)."""


class ConnectionFailed(DsqlMagicError):
    """Could not open a connection (DNS, TCP, TLS, authentication, cluster waking up)."""


class NotConnected(DsqlMagicError):
    """No connection to run on."""


class ConnectionLost(DsqlMagicError):
    """The server dropped the connection while a statement ran."""


class QueryError(DsqlMagicError):
    """The server refused or failed a statement; carries SQLSTATE and DSQL code."""

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None,
        code: str | None = None,
        hint: str | None = None,
        detail: str | None = None,
        statement: int | None = None,
        note: str | None = None,
    ) -> None:
        self.sqlstate = sqlstate
        self.code = code
        self.detail = scrub(detail) if detail else None
        self.statement = statement
        self.note = note
        super().__init__(message, hint)

    def lines(self) -> list[str]:
        tag = self.sqlstate or "-----"
        if self.code:
            tag += f" {self.code}"
        where = f" (statement {self.statement})" if self.statement else ""
        out = [f"{type(self).__name__} [{tag}]{where}: {self.message}"]
        if self.detail:
            out.append(f"detail: {self.detail}")
        if self.hint:
            out.append(f"hint: {self.hint}")
        if self.note:
            out.append(self.note)
        return out


class UnsupportedFeature(QueryError):
    """DSQL does not support this statement or feature (0A000)."""


class LimitExceeded(QueryError):
    """A DSQL limit was hit (54000 and friends)."""


class ConflictError(QueryError):
    """Optimistic concurrency conflict (40001 with OC000/OC001)."""


class PermissionDenied(QueryError):
    """The role lacks a privilege (42501)."""


class AccessDenied(QueryError):
    """Authentication refused (28000/28P01): IAM action, token or credentials."""


class SyntaxProblem(QueryError):
    """The statement does not parse or names something that does not exist (42xxx)."""


class DataProblem(QueryError):
    """Bad data for the statement (22xxx, 23xxx)."""


class TransactionAborted(QueryError):
    """The transaction is aborted; it must be rolled back (25P02)."""


class ResourceLimit(QueryError):
    """Connections, memory or rate limits (53xxx)."""


@dataclass(frozen=True)
class ErrorRule:
    cls: type[QueryError]
    hint: str | None


# (sqlstate, OC code or None) → class + hint. Looked up exactly, then by sqlstate alone, then by
# the sqlstate's two-character class. Hints say what to do next, in one line.
ERROR_TABLE: dict[tuple[str, str | None], ErrorRule] = {
    ("40001", "OC000"): ErrorRule(
        ConflictError,
        "another transaction changed the same rows first; re-run the cell (autoretry does this "
        "when it is safe)",
    ),
    ("40001", "OC001"): ErrorRule(
        ConflictError,
        "the schema changed under this transaction; re-run the cell",
    ),
    ("40001", None): ErrorRule(ConflictError, "serialization failure; re-run the cell"),
    ("0A000", None): ErrorRule(
        UnsupportedFeature,
        "Aurora DSQL does not support this; see the 'Unsupported PostgreSQL features' page. "
        "Indexes need CREATE INDEX ASYNC, one DDL per transaction, no DDL with DML",
    ),
    ("54000", None): ErrorRule(
        LimitExceeded,
        "a DSQL limit was hit: at most 3,000 changed rows and 10 MiB per transaction, 5 minutes "
        "per transaction; split the work into smaller transactions",
    ),
    ("54", None): ErrorRule(LimitExceeded, "a DSQL size or count limit was hit"),
    ("53", None): ErrorRule(
        ResourceLimit,
        "the cluster refused for capacity (connections, rate or memory); retry shortly",
    ),
    ("42501", None): ErrorRule(
        PermissionDenied,
        "the role lacks this privilege; connect as admin or GRANT it (custom roles also need an "
        "AWS IAM GRANT mapping)",
    ),
    ("28000", None): ErrorRule(
        AccessDenied,
        "access denied: the IAM identity needs dsql:DbConnectAdmin (user admin) or dsql:DbConnect "
        "(other roles), and valid, unexpired AWS credentials (e.g. `aws sso login`)",
    ),
    ("28P01", None): ErrorRule(
        AccessDenied,
        "the token was refused: check the region, the IAM action (dsql:DbConnectAdmin for admin, "
        "dsql:DbConnect otherwise) and that the AWS credentials have not expired",
    ),
    ("28", None): ErrorRule(AccessDenied, "authorization failed; check the IAM identity and role"),
    ("25P02", None): ErrorRule(
        TransactionAborted, "the transaction was aborted by an earlier error; run ROLLBACK"
    ),
    ("42", None): ErrorRule(SyntaxProblem, None),
    ("22", None): ErrorRule(DataProblem, None),
    ("23", None): ErrorRule(DataProblem, None),
}

ASYNC_INDEX_HINT = (
    "Aurora DSQL builds indexes asynchronously: use CREATE INDEX ASYNC, then wait for the job "
    "(SELECT sys.wait_for_job(job_id))"
)


def lookup(sqlstate: str | None, code: str | None) -> ErrorRule:
    """The rule for a SQLSTATE (+ OC code), falling back by class; QueryError without a hint."""
    if sqlstate:
        for key in ((sqlstate, code), (sqlstate, None), (sqlstate[:2], None)):
            rule = ERROR_TABLE.get(key)
            if rule is not None:
                return rule
    return ErrorRule(QueryError, None)


def from_database_error(
    exc: psycopg.Error, *, statement: int | None = None, sql: str | None = None
) -> QueryError:
    """Our error for a psycopg error that came with a server answer."""
    diag = exc.diag
    sqlstate = exc.sqlstate or diag.sqlstate
    lines = str(exc).strip().splitlines()
    message = diag.message_primary or (lines[0] if lines else type(exc).__name__)
    code = dsql_code(message)
    rule = lookup(sqlstate, code)
    hint = rule.hint
    if sqlstate == "0A000" and sql and _mentions_index(sql):
        hint = ASYNC_INDEX_HINT
    server_hint = diag.message_hint
    if server_hint:
        hint = f"{server_hint} — {hint}" if hint else server_hint
    return rule.cls(
        message,
        sqlstate=sqlstate,
        code=code,
        hint=hint,
        detail=diag.message_detail,
        statement=statement,
    )


def _mentions_index(sql: str) -> bool:
    words = sql.upper().split()
    return "INDEX" in words and "ASYNC" not in words and words[:1] == ["CREATE"]


# libpq connection failures carry no SQLSTATE; these are libpq's own (English) phrases.
_CONNECT_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        "could not translate host name",
        "the host name does not resolve: check the cluster endpoint and region "
        "(`%dsql clusters` lists them); with a private endpoint, use --hostaddr",
    ),
    (
        "certificate verify failed",
        "TLS verification failed: the server certificate does not match a trusted CA; "
        "pass --sslrootcert PATH (e.g. the emulator's CA) or check the system CA store",
    ),
    (
        "does not match host name",
        "the certificate is for another host name: connect with the cluster endpoint "
        "and use --hostaddr for the address",
    ),
    (
        "server certificate for",
        "the certificate is for another host name: connect with the cluster endpoint "
        "and use --hostaddr for the address",
    ),
    (
        "SSL",
        "the TLS handshake failed: DSQL needs SNI with the cluster endpoint name; connect by "
        "endpoint (not by IP) and use --hostaddr to pick the address",
    ),
    (
        "timeout expired",
        "no answer in time: an IDLE or INACTIVE cluster wakes up on the first connection and "
        "may take a while; check `%dsql clusters` and run connect again",
    ),
    (
        "Connection refused",
        "nothing listens at that address and port; check --port/--hostaddr, or whether the "
        "emulator is running",
    ),
)


_ACCESS_DENIED_PHRASES = (
    "access denied",
    "pg_hba.conf rejects",
    "password authentication failed",
    "authentication failed",
    "signature expired",
    "token expired",
)


def _access_hint(user: str, host: str, server_hint: str | None) -> str:
    action = "dsql:DbConnectAdmin" if user == "admin" else "dsql:DbConnect"
    return (
        f"user {user!r} at {host}: the IAM identity needs {action} on this cluster, the region "
        "must match, and the AWS credentials must be valid (expired credentials or token: "
        "refresh them, e.g. `aws sso login`)"
        + (f"; server hint: {server_hint}" if server_hint else "")
    )


def connection_error(exc: Exception, *, user: str, host: str) -> DsqlMagicError:
    """Our error for a failed connection attempt."""
    if isinstance(exc, psycopg.Error) and exc.sqlstate:
        err = from_database_error(exc)
        if isinstance(err, AccessDenied):
            err.hint = scrub(_access_hint(user, host, exc.diag.message_hint))
        return err
    text = scrub(str(exc).strip())
    first = text.splitlines()[0] if text else type(exc).__name__
    # libpq puts the server's FATAL text after "failed: "; show that part.
    reason = first.rsplit("failed: ", 1)[-1] if "FATAL" in first else first
    reason = re.sub(r"^(FATAL|ERROR):\s+", "", reason)
    lowered = text.lower()
    if any(phrase in lowered for phrase in _ACCESS_DENIED_PHRASES):
        server_hint = None
        for line in text.splitlines()[1:]:
            if line.strip().upper().startswith("HINT:"):
                server_hint = line.split(":", 1)[1].strip()
        return AccessDenied(
            f"could not connect to {host}: {reason}",
            sqlstate=None,
            hint=_access_hint(user, host, server_hint),
        )
    for needle, hint in _CONNECT_PATTERNS:
        if needle in text:
            return ConnectionFailed(f"could not connect to {host}: {reason}", hint)
    return ConnectionFailed(f"could not connect to {host}: {reason}")
