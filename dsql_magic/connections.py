"""Where to connect and the live connections: endpoint parsing, `ConnectTarget`, the registry.

Parsing (`parse_target`) is pure: a cluster endpoint, a bare cluster id or a ``postgresql://`` URL
in, an `Endpoint` out, with the region inferred from the host name where it can be. A
`ConnectTarget` is everything needed to open a connection; the emulator builds one too
(``dsql_magic.emulator.magic_support.connect_target``). A `DsqlConnection` owns one psycopg
connection and replaces it transparently — with a freshly minted token — when it has dropped or
is close to DSQL's one-hour connection limit. `ConnectionRegistry` holds the named connections of
one magics instance; there are no module-level registries.

This module never logs, prints or stores a token: it is minted right before ``psycopg.connect`` and
passed only as the ``password`` keyword.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import psycopg

from dsql_magic import __version__
from dsql_magic.auth import ADMIN_USER, AwsCredentials, TokenMinter
from dsql_magic.errors import ConnectionLost, NotConnected, UsageProblem, connection_error
from dsql_magic.limits import (
    DEFAULT_DATABASE,
    DEFAULT_PORT,
    DEFAULT_TOKEN_TTL_SECONDS,
    MAX_CONNECTION_SECONDS,
)

# `<id>.dsql.<region>.on.aws`, also PrivateLink `<id>.dsql-fnh4.<region>.on.aws`.
_DSQL_HOST_RE = re.compile(r"^(?P<id>[a-z0-9]+)\.dsql[^.]*\.(?P<region>[a-z0-9-]+)\.on\.aws$")
_CLUSTER_ID_RE = re.compile(r"^[a-z0-9]{10,64}$")
# Reconnect this long before DSQL's hard limit, so a cell never starts on a dying connection.
RECONNECT_MARGIN_SECONDS = 120
APPLICATION_NAME = f"dsql-magic/{__version__}"
_VERIFYING = frozenset({"verify-ca", "verify-full"})


def resolve_sslrootcert(value: str | None) -> str | None:
    """A CA setting libpq can actually use; ``system`` becomes a real CA bundle file.

    libpq's ``sslrootcert=system`` loads OpenSSL's default paths, and the OpenSSL inside the
    psycopg-binary wheels points at a directory that does not exist on users' machines (e.g.
    ``/usr/lib/psycopg-openssl``), so verification would always fail. Unless ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR`` say where the roots are (OpenSSL honours them), use the bundle Python's
    own ``ssl`` module trusts, else certifi's, else botocore's.
    """
    if value != "system" or os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        return value
    for candidate in _ca_bundles():
        if candidate and os.path.isfile(candidate):
            return candidate
    return value


def _ca_bundles() -> list[str | None]:
    paths: list[str | None] = [ssl.get_default_verify_paths().cafile]
    try:
        import certifi

        paths.append(certifi.where())
    except ImportError:
        pass
    try:
        import botocore

        paths.append(os.path.join(os.path.dirname(botocore.__file__), "cacert.pem"))
    except ImportError:
        pass
    return paths


@dataclass(frozen=True)
class Endpoint:
    """A parsed connection target; no credentials, no network."""

    host: str
    region: str | None
    cluster_id: str | None
    port: int = DEFAULT_PORT
    user: str = ADMIN_USER
    dbname: str = DEFAULT_DATABASE


def region_from_host(host: str) -> str | None:
    m = _DSQL_HOST_RE.match(host.lower())
    return m.group("region") if m else None


def cluster_id_from_host(host: str) -> str | None:
    m = _DSQL_HOST_RE.match(host.lower())
    return m.group("id") if m else None


def _port(value: str | int | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        port = int(value)
    except ValueError:
        raise UsageProblem(f"port {value!r} is not a number", "use e.g. --port 5432") from None
    if not 0 < port < 65536:
        raise UsageProblem(f"port {port} is out of range", "use e.g. --port 5432")
    return port


def parse_target(
    target: str,
    *,
    region: str | None = None,
    user: str | None = None,
    port: int | None = None,
    default_region: str | None = None,
) -> Endpoint:
    """Parse an endpoint, bare cluster id or ``postgresql://`` URL; explicit options win."""
    target = target.strip()
    if not target:
        raise UsageProblem(
            "no cluster given",
            "pass an endpoint like <id>.dsql.us-east-1.on.aws or set DSQL_ENDPOINT",
        )
    url_user = url_region = url_db = None
    url_port: int | None = None
    if "://" in target:
        parsed = urlparse(target)
        if parsed.scheme not in ("postgresql", "postgres"):
            raise UsageProblem(
                f"unsupported URL scheme {parsed.scheme!r}", "use postgresql://admin@HOST/postgres"
            )
        if parsed.password:
            raise UsageProblem(
                "the URL contains a password",
                "leave it out: dsql-magic mints an IAM token for every connection",
            )
        host = parsed.hostname or ""
        url_user = unquote(parsed.username) if parsed.username else None
        try:
            url_port = _port(parsed.port)
        except ValueError as exc:  # urllib's own range/format check
            raise UsageProblem(
                f"bad port in URL: {exc}", "use e.g. postgresql://HOST:5432/postgres"
            ) from None
        url_db = parsed.path.lstrip("/") or None
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        url_region = query.get("region")
        url_user = query.get("user", url_user)
        url_port = _port(query.get("port")) or url_port
        if not host:
            raise UsageProblem(f"no host in {target!r}", "use postgresql://admin@HOST/postgres")
    else:
        host = target
    host_region = region_from_host(host)
    cluster_id = cluster_id_from_host(host)
    if "." not in host and _CLUSTER_ID_RE.match(host):
        cluster_id = host
        reg = region or url_region or default_region
        if not reg:
            raise UsageProblem(
                f"cannot tell the region of cluster {host!r}",
                "pass --region, set AWS_REGION, or use the full endpoint <id>.dsql.<region>.on.aws",
            )
        host = f"{host}.dsql.{reg}.on.aws"
        host_region = reg
    final_region = region or url_region or host_region or default_region
    return Endpoint(
        host=host if host.startswith("/") else host.lower(),  # "/dir": a unix socket
        region=final_region,
        cluster_id=cluster_id,
        port=port or url_port or DEFAULT_PORT,
        user=user or url_user or ADMIN_USER,
        dbname=url_db or DEFAULT_DATABASE,
    )


@dataclass(frozen=True)
class ConnectOptions:
    """What ``%dsql connect`` was given (defaults from configuration already applied).

    Passed to ``dsql_magic.emulator.magic_support.connect_target(options)`` for ``--emulator``.
    """

    target: str | None = None
    name: str | None = None
    region: str | None = None
    user: str | None = None
    profile: str | None = None
    port: int | None = None
    hostaddr: str | None = None
    token_ttl: int = DEFAULT_TOKEN_TTL_SECONDS
    sslmode: str = "verify-full"
    sslrootcert: str | None = "system"


@dataclass(frozen=True)
class ConnectTarget:
    """Everything needed to open (and re-open) a connection. Holds no token.

    ``host`` is what the token is signed for and what TLS verifies; ``hostaddr`` (optional) is the
    address actually dialled. ``credentials`` are explicit AWS credentials (the emulator's); when
    None, the boto3 session for ``profile`` (or the default chain) signs.
    """

    host: str
    region: str
    port: int = DEFAULT_PORT
    user: str = ADMIN_USER
    dbname: str = DEFAULT_DATABASE
    hostaddr: str | None = None
    sslmode: str = "verify-full"
    sslrootcert: str | None = "system"
    profile: str | None = None
    credentials: AwsCredentials | None = None
    token_ttl: int = DEFAULT_TOKEN_TTL_SECONDS
    cluster_id: str | None = None
    label: str | None = None  # shown instead of host in listings (e.g. "emulator")

    @classmethod
    def from_endpoint(cls, endpoint: Endpoint, **options: Any) -> ConnectTarget:
        if not endpoint.region:
            raise UsageProblem(
                f"cannot tell the region for {endpoint.host!r}",
                "pass --region or set AWS_REGION (tokens are signed for a region)",
            )
        return cls(
            host=endpoint.host,
            region=endpoint.region,
            port=endpoint.port,
            user=endpoint.user,
            dbname=endpoint.dbname,
            cluster_id=endpoint.cluster_id,
            **options,
        )

    def with_changes(self, **changes: Any) -> ConnectTarget:
        return replace(self, **changes)


Clock = Callable[[], float]


class DsqlConnection:
    """One named connection: a psycopg connection, re-opened with a fresh token when needed."""

    def __init__(
        self,
        name: str,
        target: ConnectTarget,
        minter: TokenMinter,
        *,
        connect_timeout: int = 30,
        clock: Clock = time.monotonic,
        max_age: float = MAX_CONNECTION_SECONDS - RECONNECT_MARGIN_SECONDS,
    ) -> None:
        self.name = name
        self.target = target
        self._minter = minter
        self._connect_timeout = connect_timeout
        self.clock = clock
        self._max_age = max_age
        self._conn: psycopg.Connection[Any] | None = None
        self._opened_at: float | None = None
        self.created_at = clock()
        self.reconnects = 0
        self.closed_by_user = False
        self._txn_open = False  # a transaction was open after the last cell

    def __repr__(self) -> str:
        return f"<DsqlConnection {self.name!r} {self.target.user}@{self.target.host} {self.state}>"

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> psycopg.Connection[Any]:
        """Open a new physical connection with a freshly minted token."""
        t = self.target
        token = self._minter.mint(
            host=t.host,
            region=t.region,
            user=t.user,
            ttl=t.token_ttl,
            profile=t.profile,
            credentials=t.credentials,
        )
        kwargs: dict[str, Any] = {
            "host": t.host,
            "port": t.port,
            "dbname": t.dbname,
            "user": t.user,
            "sslmode": t.sslmode,
            "application_name": APPLICATION_NAME,
            "connect_timeout": self._connect_timeout,
        }
        # libpq refuses sslrootcert=system with a weaker sslmode; "system" is only our default.
        if t.sslrootcert and not (t.sslrootcert == "system" and t.sslmode not in _VERIFYING):
            kwargs["sslrootcert"] = resolve_sslrootcert(t.sslrootcert)
        if t.hostaddr:
            kwargs["hostaddr"] = t.hostaddr
        try:
            # No automatic server-side prepare: notebook cells are one-offs re-run across DDL
            # (which any session may do, cluster-wide); prepared plans would only go stale.
            conn = psycopg.connect(
                autocommit=True, prepare_threshold=None, password=token.reveal(), **kwargs
            )
        except psycopg.Error as exc:
            raise connection_error(exc, user=t.user, host=self.display_host) from None
        finally:
            del token
        self._discard()  # an older physical connection, if any, is replaced
        self._conn = conn
        self._opened_at = self.clock()
        self.closed_by_user = False
        return conn

    def _healthy(self, conn: psycopg.Connection[Any]) -> bool:
        """Without a round trip: is an idle connection still there?

        A server that ends a session (pg_terminate_backend, DSQL's one-hour limit, a restart) sends
        a FATAL error and closes the socket, so an idle connection whose socket is readable has
        news; only then is it probed.
        """
        if conn.closed or conn.broken:
            return False
        status = conn.info.transaction_status
        if status not in (psycopg.pq.TransactionStatus.IDLE, psycopg.pq.TransactionStatus.INTRANS):
            return True  # busy or in a failed transaction: a probe would say nothing
        try:
            readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
        except (OSError, ValueError, psycopg.OperationalError):
            return False
        if not readable:
            return True
        # Unexpected input between statements: usually the server's goodbye. Its FATAL
        # message may arrive before the end of the stream, so ask with one cheap round trip.
        try:
            conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return not conn.broken

    def ensure(self) -> psycopg.Connection[Any]:
        """The live connection, re-opened if it dropped or is near the one-hour limit."""
        if self.closed_by_user:
            raise NotConnected(
                f"connection {self.name!r} is closed", "run %dsql connect again, or %dsql use NAME"
            )
        conn = self._conn
        idle = psycopg.pq.TransactionStatus.IDLE
        if (
            conn is not None
            and self._healthy(conn)
            and (not self._too_old() or conn.info.transaction_status != idle)
        ):
            return conn
        lost_txn = conn is not None and self._txn_open
        if conn is not None:
            self._discard()
            self.reconnects += 1
        self._txn_open = False
        fresh = self.open()
        if lost_txn:
            raise ConnectionLost(
                f"connection {self.name!r} dropped while a transaction was open; the server "
                "rolled it back",
                "reconnected with a fresh token: run the transaction again from BEGIN",
            )
        return fresh

    def remember_status(self) -> None:
        """Note whether a transaction is open, so a later drop is reported, never hidden."""
        conn = self._conn
        self._txn_open = bool(
            conn is not None
            and not conn.broken
            and not conn.closed
            and conn.info.transaction_status
            in (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR)
        )

    def _too_old(self) -> bool:
        return self._opened_at is not None and self.clock() - self._opened_at >= self._max_age

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken; nothing to save
                conn.close()

    def close(self) -> None:
        self._discard()
        self.closed_by_user = True

    @property
    def raw(self) -> psycopg.Connection[Any] | None:
        """The current psycopg connection, if one is open (for tests and advanced use)."""
        return self._conn

    @property
    def display_host(self) -> str:
        return self.target.label or self.target.host

    @property
    def state(self) -> str:
        conn = self._conn
        if self.closed_by_user:
            return "closed"
        if conn is None:
            return "not connected"
        if conn.closed or conn.broken:
            return "dropped (reconnects on next use)"
        status = conn.info.transaction_status
        return {
            psycopg.pq.TransactionStatus.IDLE: "idle",
            psycopg.pq.TransactionStatus.INTRANS: "in transaction",
            psycopg.pq.TransactionStatus.INERROR: "in failed transaction",
            psycopg.pq.TransactionStatus.ACTIVE: "busy",
        }.get(status, status.name.lower())

    def age_seconds(self) -> float | None:
        return None if self._opened_at is None else self.clock() - self._opened_at

    def describe(self) -> dict[str, Any]:
        """One row of ``%dsql connections`` (no secrets)."""
        age = self.age_seconds()
        return {
            "name": self.name,
            "endpoint": self.display_host,
            "user": self.target.user,
            "region": self.target.region,
            "age": "-" if age is None else _fmt_age(age),
            "state": self.state,
        }


def _fmt_age(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class ConnectionRegistry:
    """The named connections of one magics instance, and which one is current."""

    def __init__(self) -> None:
        self._conns: dict[str, DsqlConnection] = {}
        self.current: str | None = None

    def __contains__(self, name: object) -> bool:
        return name in self._conns

    def __len__(self) -> int:
        return len(self._conns)

    def names(self) -> list[str]:
        return list(self._conns)

    def add(self, conn: DsqlConnection) -> None:
        """Register (replacing and closing one of the same name) and make it current."""
        old = self._conns.pop(conn.name, None)
        if old is not None and old is not conn:
            old.close()
        self._conns[conn.name] = conn
        self.current = conn.name

    def get(self, name: str | None = None) -> DsqlConnection:
        if name is None:
            if self.current is None:
                raise NotConnected(
                    "not connected",
                    "run %dsql connect <cluster-endpoint> (or %dsql connect --emulator) first",
                )
            name = self.current
        conn = self._conns.get(name)
        if conn is None:
            known = ", ".join(self._conns) or "none"
            raise NotConnected(f"no connection named {name!r}", f"known connections: {known}")
        return conn

    def use(self, name: str) -> DsqlConnection:
        conn = self.get(name)
        self.current = name
        return conn

    def close(self, name: str | None = None) -> str:
        conn = self.get(name)
        conn.close()
        del self._conns[conn.name]
        if self.current == conn.name:
            self.current = next(reversed(self._conns), None) if self._conns else None
        return conn.name

    def close_all(self) -> None:
        for conn in list(self._conns.values()):
            conn.close()
        self._conns.clear()
        self.current = None

    def describe(self) -> list[dict[str, Any]]:
        rows = []
        for conn in self._conns.values():
            row = conn.describe()
            row["current"] = "*" if conn.name == self.current else ""
            rows.append(row)
        return rows
