"""pytest plugin: a plain embedded PostgreSQL 16 that looks like a DSQL endpoint from outside.

For the magics' own tests until they run against the emulator: one server per test session (the
emulator's `Engine`, under pytest's tmp, stopped at session end). The embedded build has no SSL,
so a small TLS front (`TlsFront`, threads) listens on 127.0.0.1 at a free TCP port, answers
libpq's SSLRequest, terminates TLS with a certificate (from a throwaway CA) naming a DSQL-style
endpoint, and relays bytes to PostgreSQL's unix socket — so ``sslmode=verify-full`` with
``--sslrootcert`` and ``--hostaddr`` is exercised for real, and cancel requests (plain or inside
TLS) reach PostgreSQL. Clients that do not ask for TLS are refused, as DSQL does.

Auth is ``trust`` (the real boto3 token is sent as the password and accepted), except role
``denied``, which pg_hba rejects (SQLSTATE 28000) to exercise the access-denied path.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dsql_magic.emulator.engine import Engine
from dsql_magic.emulator.tls import ensure_certificates, server_context, server_names

CLUSTER_ID = "abcdefghij0123456789abcdef"
REGION = "us-east-1"
ENDPOINT = f"{CLUSTER_ID}.dsql.{REGION}.on.aws"

_HBA = """\
local all denied reject
local all all trust
"""
_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102


class TlsFront:
    """TLS on 127.0.0.1:port in front of a PostgreSQL unix socket (test-only, thread per client)."""

    def __init__(self, context: ssl.SSLContext, socket_path: str) -> None:
        self._context = context
        self._socket_path = socket_path
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._clients: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept_loop, name="tls-front", daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.drop_all()

    def drop_all(self) -> None:
        """Cut every relayed connection (a network drop, as the client sees it)."""
        with self._lock:
            clients = list(self._clients)
        for sock in clients:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    @staticmethod
    def _read_packet(sock: socket.socket) -> bytes:
        head = _recv_exact(sock, 4)
        (length,) = struct.unpack("!I", head)
        return head + _recv_exact(sock, length - 4)

    def _serve(self, client: socket.socket) -> None:
        try:
            first = self._read_packet(client)
            code = struct.unpack("!I", first[4:8])[0]
            if code == _GSSENC_REQUEST:
                client.sendall(b"N")
                first = self._read_packet(client)
                code = struct.unpack("!I", first[4:8])[0]
            if code == _CANCEL_REQUEST:  # plain cancel: no TLS needed
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                upstream.connect(self._socket_path)
                upstream.sendall(first)
                upstream.close()
                client.close()
                return
            if code != _SSL_REQUEST:
                client.close()  # DSQL rejects connections without TLS
                return
            client.sendall(b"S")
            tls = self._context.wrap_socket(client, server_side=True)
        except (OSError, ssl.SSLError, struct.error):
            with contextlib.suppress(OSError):
                client.close()
            return
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(self._socket_path)
        with self._lock:
            self._clients.add(tls)
        try:
            _pump(tls, upstream)
        finally:
            with self._lock:
                self._clients.discard(tls)
            for sock in (tls, upstream):
                with contextlib.suppress(OSError):
                    sock.close()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("peer closed")
        buf += chunk
    return buf


def _pump(tls: ssl.SSLSocket, upstream: socket.socket) -> None:
    """Relay both ways until either side closes."""
    while True:
        if tls.pending():
            ready = [tls]
        else:
            try:
                ready, _, _ = select.select([tls, upstream], [], [], 5.0)
            except (OSError, ValueError):
                return
        for sock in ready:
            other = upstream if sock is tls else tls
            try:
                data = sock.recv(65536)
            except (OSError, ssl.SSLError):
                return
            if not data:
                return
            try:
                other.sendall(data)
            except (OSError, ssl.SSLError):
                return


@dataclass(frozen=True)
class PgServer:
    """How tests reach the server: as a DSQL endpoint (TLS) or directly as superuser."""

    endpoint: str
    region: str
    port: int
    hostaddr: str
    ca_file: Path
    engine: Engine
    front: TlsFront

    def connect_line(self, *extra: str) -> str:
        """Arguments for ``%dsql connect`` reaching this server as the fake cluster."""
        return " ".join(
            [
                self.endpoint,
                f"--port {self.port}",
                f"--hostaddr {self.hostaddr}",
                f"--sslrootcert {self.ca_file}",
                *extra,
            ]
        )

    def superuser(self) -> psycopg.Connection[Any]:
        """A direct connection over the unix socket (for setup and for killing sessions)."""
        return psycopg.connect(**self.engine.connect_kwargs(), autocommit=True)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """The session's PostgreSQL 16, reachable as ``ENDPOINT`` via 127.0.0.1 with TLS."""
    root = tmp_path_factory.mktemp("core_pg")
    tls = ensure_certificates(root / "ca", server_names(ENDPOINT, REGION))
    engine = Engine(root / "data", max_connections=60, remove_on_stop=True)
    engine.start()
    # PostgreSQL reads pg_hba.conf from its data dir; the file is its own (written as root,
    # readable by the server's system user through the data dir's ownership).
    hba = engine.pgdata / "pg_hba.conf"
    hba.write_text(_HBA)
    with psycopg.connect(**engine.connect_kwargs(), autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
    socket_path = str(engine.socket_dir / f".s.PGSQL.{engine.port}")
    front = TlsFront(server_context(tls), socket_path)
    port = front.port
    try:
        with psycopg.connect(**engine.connect_kwargs(), autocommit=True) as conn:
            conn.execute("CREATE ROLE analyst LOGIN")
            conn.execute("CREATE ROLE denied LOGIN")
            conn.execute("GRANT ALL ON SCHEMA public TO analyst")
        yield PgServer(
            endpoint=ENDPOINT,
            region=REGION,
            port=port,
            hostaddr="127.0.0.1",
            ca_file=tls.ca_cert,
            engine=engine,
            front=front,
        )
    finally:
        front.close()
        engine.stop()


@pytest.fixture
def connected(pg_server: PgServer, magic: Any) -> PgServer:
    """The test's shell connected (as admin, current connection ``main``) to `pg_server`."""
    magic(line="connect " + pg_server.connect_line("--name main"))
    return pg_server


@pytest.fixture
def table(request: pytest.FixtureRequest, pg_server: PgServer) -> Iterator[str]:
    """A table name unique to the test, dropped afterwards."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name).lower()[:50]
    yield name
    with pg_server.superuser() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")
