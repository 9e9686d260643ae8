"""pytest plugin: the emulator's wire front (server + session) over a real PostgreSQL 16.

One embedded PostgreSQL (`Engine`, under pytest's tmp) per test session, shared by every wire
server the tests start. `wire_server` starts a front with the hooks and settings a test chooses,
in a background thread with its own event loop (so tests use ordinary sync psycopg), with real
TLS (the emulator's CA) and real IAM tokens minted by boto3 and checked by `TokenVerifier`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dsql_magic.emulator.cluster import BackendAddress, Cluster, ClusterSettings
from dsql_magic.emulator.engine import Engine
from dsql_magic.emulator.iam import LocalAccount, TokenVerifier, mint_token
from dsql_magic.emulator.server import serve
from dsql_magic.emulator.tls import ensure_certificates, server_context, server_names

REGION = "us-east-1"


@dataclass
class WireEnv:
    """The session-wide pieces: engine, TLS files, local IAM account."""

    engine: Engine
    ca_cert: Path
    account: LocalAccount
    tls_dir: Path

    @property
    def endpoint(self) -> str:
        return f"{self.account.cluster_id}.dsql.{REGION}.on.aws"


@dataclass
class WireServer:
    """One running front; `conninfo()` gives psycopg keyword arguments with a fresh token."""

    env: WireEnv
    cluster: Cluster
    host: str = "127.0.0.1"
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _stop: asyncio.Event | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    error: BaseException | None = None

    def token(self, user: str = "admin", hostname: str = "localhost") -> str:
        return mint_token(self.env.account.admin, hostname=hostname, region=REGION, user=user)

    def conninfo(self, user: str = "admin", **extra: Any) -> dict[str, Any]:
        info: dict[str, Any] = {
            "host": "localhost",
            "hostaddr": "127.0.0.1",
            "port": self.port,
            "user": user,
            "dbname": "postgres",
            "password": self.token(user),
            "sslmode": "verify-full",
            "sslrootcert": str(self.env.ca_cert),
            "connect_timeout": 10,
        }
        info.update(extra)
        return info

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's event loop thread and return its result."""
        assert self._loop is not None
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            try:
                box.append(fn())
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)
        return box[0] if box else None

    def start(self) -> None:
        started = threading.Event()

        def ready(host: str, port: int) -> None:
            self.host, self.port = host, port
            started.set()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._stop = asyncio.Event()
            try:
                loop.run_until_complete(serve(self.cluster, ready=ready, shutdown=self._stop))
            except BaseException as exc:  # reported by stop()
                self.error = exc
                started.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="wire-server", daemon=True)
        self._thread.start()
        if not started.wait(30):
            raise RuntimeError("the wire server did not start")
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)
            assert not self._thread.is_alive(), "the wire server did not shut down"
        if self.error is not None:
            raise self.error


@pytest.fixture(scope="session")
def wire_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WireEnv]:
    # Not under pytest's basetemp: every pytest process that starts chmods /tmp/pytest-of-<user>
    # back to 0700, which locks PostgreSQL's unprivileged user (we run as root) out of a data dir
    # below it whenever another pytest runs at the same time (initdb then aborts).
    root = Path(tempfile.mkdtemp(prefix="dsql-wire-"))
    engine = Engine(root / "data", remove_on_stop=True)
    try:
        engine.start()
        account = LocalAccount.generate()
        endpoint = f"{account.cluster_id}.dsql.{REGION}.on.aws"
        tls_dir = tmp_path_factory.mktemp("wire-tls")
        files = ensure_certificates(tls_dir, server_names(endpoint, REGION))
        yield WireEnv(engine, files.ca_cert, account, tls_dir)
    finally:
        engine.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def wire_server(wire_env: WireEnv) -> Iterator[Callable[..., WireServer]]:
    """Factory: ``wire_server(hooks=[...], **settings)`` starts a front; all stopped at teardown."""
    servers: list[WireServer] = []

    def start(hooks: Sequence[object] = (), **settings: Any) -> WireServer:
        files = ensure_certificates(wire_env.tls_dir, server_names(wire_env.endpoint, REGION))
        names = frozenset({"localhost", "127.0.0.1", "::1", wire_env.endpoint})
        cluster = Cluster(
            backend=BackendAddress(
                socket_dir=wire_env.engine.socket_dir, port=wire_env.engine.port
            ),
            verifier=TokenVerifier(wire_env.account, region=REGION),
            ssl_context=server_context(files),
            settings=ClusterSettings(server_names=names, **settings),
            hooks=hooks,
        )
        server = WireServer(wire_env, cluster)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
