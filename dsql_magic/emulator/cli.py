"""``dsql-emulator`` (or ``python -m dsql_magic.emulator``): a local Aurora DSQL, in the foreground.

``serve`` assembles one emulator — data dir, local IAM account, TLS certificates, embedded
PostgreSQL, token verifier, `Cluster` with its hooks — and runs the wire front until SIGINT or
SIGTERM. When it accepts connections it prints exactly one JSON line on stdout (the "ready line":
host, port, endpoint, region, cluster_id, ca_cert, the local credentials, admin_arn…); everything
else goes to stderr. Bad options, a busy port or an unusable data dir exit with code 2 and one line.
``token`` prints a fresh token minted with a data dir's local credentials (for psql).

This module is wiring only: no protocol, no SQL rules, no certificate or signature code of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import limits
from .config import AuthMode, ConfigError, ConflictInjection, EmulatorConfig

log = logging.getLogger("dsql_magic.emulator")

EXIT_USAGE = 2


class StartupError(Exception):
    """The emulator cannot start; the message is the one line the user sees."""


@dataclass
class Assembly:
    """The parts of one started emulator, before and while it serves."""

    config: EmulatorConfig
    data_dir: Path
    engine: Any  # engine.Engine
    account: Any  # iam.LocalAccount
    tls: Any  # tls.TlsFiles
    cluster: Any  # cluster.Cluster
    cloudwatch: Any = None  # cloudwatch.CloudWatchEndpoint (the cluster's per-minute metrics)

    def ready_info(self, host: str, port: int) -> dict[str, Any]:
        """The ready line's content (also what `Emulator` and ``%dsql emulator`` show)."""
        return {
            "host": host,
            "port": port,
            "endpoint": self.config.endpoint,
            "region": self.config.region,
            "cluster_id": self.config.cluster_id,
            "ca_cert": str(self.tls.ca_cert),
            "aws_access_key_id": self.account.admin.access_key_id,
            "aws_secret_access_key": self.account.admin.secret_access_key,
            "admin_arn": self.account.admin.arn,
            "data_dir": str(self.data_dir),
            "ephemeral": self.config.ephemeral,
            "auth": self.config.auth.value,
            "pid": os.getpid(),
            "cloudwatch_url": self.cloudwatch.url if self.cloudwatch is not None else None,
        }


@contextlib.contextmanager
def assembled(config: EmulatorConfig) -> Iterator[Assembly]:
    """Start everything but the listener; stop PostgreSQL and clean up on exit."""
    from . import cluster as cluster_mod
    from .engine import Engine, EngineError
    from .iam import LocalAccount, TokenVerifier
    from .tls import ensure_certificates, server_context, server_names

    check_port_free(config.host, config.port)
    if config.ephemeral:
        data_dir = Path(tempfile.mkdtemp(prefix="dsql-emulator-"))
    else:
        assert config.data_dir is not None
        data_dir = Path(config.data_dir).expanduser().absolute()
    engine = Engine(
        data_dir,
        max_connections=config.backend_max_connections,
        remove_on_stop=config.ephemeral,
    )
    try:
        try:
            engine.start()
            account = LocalAccount.load_or_create(data_dir, cluster_id=config.cluster_id)
        except (EngineError, ValueError) as exc:
            raise StartupError(str(exc)) from exc
        except OSError as exc:
            raise StartupError(
                f"data dir {data_dir} is not usable ({exc.strerror or exc}): "
                "choose another --data-dir or use --ephemeral"
            ) from exc
        config = config.replace(cluster_id=account.cluster_id)
        names = server_names(config.endpoint, config.region, [config.host])
        tls_files = ensure_certificates(data_dir, names)
        settings = cluster_mod.ClusterSettings(
            host=config.host,
            port=config.port,
            max_connections=config.max_connections,
            connection_rate=config.connection_rate,
            connection_burst=config.connection_burst,
            max_connection_age=config.max_connection_age,
            max_message_bytes=config.max_message_bytes,
            startup_timeout=config.startup_timeout,
            idle_timeout=config.idle_timeout,
            server_names=config.server_names,
        )
        cluster = cluster_mod.Cluster(
            backend=cluster_mod.BackendAddress(socket_dir=engine.socket_dir, port=engine.port),
            verifier=TokenVerifier(account, region=config.region, mode=config.auth),
            ssl_context=server_context(tls_files),
            settings=settings,
            hooks=_hooks(cluster_mod, config),
            config=config,
        )
        cloudwatch = _cloudwatch(cluster, config)
        try:
            yield Assembly(config, data_dir, engine, account, tls_files, cluster, cloudwatch)
        finally:
            cloudwatch.stop()
    finally:
        engine.stop()
        if config.ephemeral:
            shutil.rmtree(data_dir, ignore_errors=True)


def _cloudwatch(cluster: Any, config: EmulatorConfig) -> Any:
    """The CloudWatch endpoint serving the cluster's meter (issue 6), on the listen host."""
    from .cloudwatch import CloudWatchEndpoint
    from .metering import meter_of

    endpoint = CloudWatchEndpoint(
        lambda: meter_of(cluster), str(config.cluster_id), host=config.host
    )
    endpoint.start()
    return endpoint


def _hooks(cluster_mod: Any, config: EmulatorConfig) -> list[object]:
    hooks: list[object] = cluster_mod.default_hooks(config)
    if not config.disabled_hooks:
        return hooks
    return [h for h in hooks if type(h).__module__.rsplit(".", 1)[-1] not in config.disabled_hooks]


def check_port_free(host: str, port: int) -> None:
    """Fail fast, before initialising anything, when the TCP port is taken."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"port {port} on {host} is already in use: pass --port 0 to pick a free one"
                ) from exc
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


async def serve_forever(
    assembly: Assembly,
    *,
    ready: Callable[[dict[str, Any]], None],
    shutdown: asyncio.Event | None = None,
    exit_on_stdin_eof: bool = False,
) -> None:
    """Run the wire front until ``shutdown`` is set (SIGINT/SIGTERM set it by default).

    ``exit_on_stdin_eof``: also stop when stdin closes — the parent that started us (`Emulator`)
    holds the pipe, so its death, however abrupt, stops the emulator.
    """
    from .server import serve

    shutdown = shutdown or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, shutdown.set)
    if exit_on_stdin_eof:
        event = shutdown
        fd = sys.stdin.fileno()

        def watch_stdin() -> None:
            # os.read on the raw fd: a daemon thread blocked in a buffered read would hold the
            # buffer's lock and make the interpreter abort at exit.
            with contextlib.suppress(OSError, ValueError):
                while os.read(fd, 4096):
                    pass
            log.info("parent process gone (stdin closed): shutting down")
            loop.call_soon_threadsafe(event.set)

        threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()

    def on_ready(host: str, port: int) -> None:
        ready(assembly.ready_info(host, port))

    try:
        await serve(assembly.cluster, ready=on_ready, shutdown=shutdown)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {assembly.config.port} on {assembly.config.host} is already in use: "
                "pass --port 0 to pick a free one"
            ) from exc
        raise


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run the server on uvloop when it is installed (the relay's latency is mostly event-loop
    and TLS overhead, which uvloop's C implementation roughly halves), else on asyncio's loop.

    ``DSQL_EMULATOR_LOOP=asyncio`` forces the standard loop (for comparisons and debugging).
    """
    if os.environ.get("DSQL_EMULATOR_LOOP", "").strip().lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            log.debug("event loop: uvloop %s", uvloop.__version__)
            uvloop.run(main)
            return
    asyncio.run(main)


def run_serve(config: EmulatorConfig, *, out: Any = None, exit_on_stdin_eof: bool = False) -> None:
    """Assemble, serve until a signal, print the ready line on ``out`` (stdout)."""
    stream = out if out is not None else sys.stdout

    def print_ready(info: dict[str, Any]) -> None:
        stream.write(json.dumps(info) + "\n")
        stream.flush()
        log.info(
            "Aurora DSQL emulator ready: %s:%d (endpoint %s, data dir %s)",
            info["host"],
            info["port"],
            info["endpoint"],
            info["data_dir"],
        )

    with assembled(config) as assembly:
        run_event_loop(
            serve_forever(assembly, ready=print_ready, exit_on_stdin_eof=exit_on_stdin_eof)
        )
    log.info("emulator stopped")


# --- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsql-emulator",
        description="A local Aurora DSQL: PostgreSQL wire protocol, IAM tokens, TLS.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the emulator in the foreground")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument(
        "--port", type=int, default=limits.DEFAULT_PORT, help="TCP port; 0 picks a free one"
    )
    where = serve.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", type=Path, help="directory for data, keys and certificates")
    where.add_argument("--ephemeral", action="store_true", help="temporary data, removed on exit")
    serve.add_argument("--region", default="us-east-1")
    serve.add_argument("--cluster-id", help="cluster id (default: generated once per data dir)")
    serve.add_argument(
        "--auth",
        choices=[m.value for m in AuthMode],
        default=AuthMode.STRICT.value,
        help="strict: only the emulator's own credentials; permissive: any unexpired token",
    )
    serve.add_argument("--max-connections", type=int, default=limits.MAX_CONNECTIONS)
    serve.add_argument(
        "--connection-rate", type=float, default=float(limits.MAX_CONNECTION_RATE_PER_SECOND)
    )
    serve.add_argument("--connection-burst", type=int, default=limits.MAX_CONNECTION_BURST)
    serve.add_argument(
        "--max-connection-age",
        type=float,
        default=float(limits.MAX_CONNECTION_SECONDS),
        help="seconds before a connection is closed (DSQL: 3600)",
    )
    serve.add_argument("--idle-timeout", type=float, default=None)
    serve.add_argument(
        "--backend-max-connections",
        type=int,
        default=EmulatorConfig.backend_max_connections,
        help="PostgreSQL's own connection slots (one per client session)",
    )
    serve.add_argument(
        "--disable-hook",
        action="append",
        default=[],
        metavar="MODULE",
        help="leave out a rule module (policy, transactions, occ, ...) to compare with PostgreSQL",
    )
    serve.add_argument(
        "--inject-conflicts",
        metavar="SPEC",
        help='force OC000 at COMMIT for testing retries, e.g. "rate=0.2,table=accounts,seed=7"',
    )
    serve.add_argument("--log-level", default="INFO", help="stderr log level (INFO)")
    serve.add_argument("--exit-on-stdin-eof", action="store_true", help=argparse.SUPPRESS)

    token = sub.add_parser("token", help="print a token minted with a data dir's credentials")
    token.add_argument("--data-dir", type=Path, required=True)
    token.add_argument("--user", default=limits.DEFAULT_USER)
    token.add_argument("--hostname", help="host the token is for (default: the endpoint)")
    token.add_argument("--region", default="us-east-1")
    token.add_argument("--expires-in", type=int, default=limits.DEFAULT_TOKEN_TTL_SECONDS)
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    return EmulatorConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        ephemeral=args.ephemeral,
        region=args.region,
        cluster_id=args.cluster_id,
        auth=AuthMode(args.auth),
        max_connections=args.max_connections,
        connection_rate=args.connection_rate,
        connection_burst=args.connection_burst,
        max_connection_age=args.max_connection_age,
        idle_timeout=args.idle_timeout,
        backend_max_connections=args.backend_max_connections,
        disabled_hooks=frozenset(args.disable_hook),
        conflicts=_conflicts(getattr(args, "inject_conflicts", None)),
    )


def _conflicts(spec: str | None) -> ConflictInjection:
    """``--inject-conflicts`` (see `injection.parse_spec`) as the config's settings."""
    if not spec:
        return ConflictInjection()
    from .injection import InjectionSpecError, parse_spec

    try:
        parsed = parse_spec(spec)
    except InjectionSpecError as exc:
        raise ConfigError(f"--inject-conflicts: {exc}") from None
    return ConflictInjection(tuple(sorted(parsed.tables)), parsed.rate, parsed.seed)


def _token(args: argparse.Namespace) -> None:
    from .config import endpoint_for
    from .iam import ACCOUNT_FILE, LocalAccount, mint_token

    if not (args.data_dir / ACCOUNT_FILE).exists():
        raise StartupError(f"{args.data_dir} has no emulator account: run 'serve' on it first")
    account = LocalAccount.load_or_create(args.data_dir)
    hostname = args.hostname or endpoint_for(account.cluster_id, args.region)
    print(
        mint_token(
            account.admin,
            hostname=hostname,
            region=args.region,
            user=args.user,
            expires_in=args.expires_in,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dsql-emulator``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(args, "log_level", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Until the event loop takes over, SIGTERM unwinds like Ctrl-C so PostgreSQL is stopped.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        if args.command == "token":
            _token(args)
        else:
            run_serve(config_from_args(args), exit_on_stdin_eof=args.exit_on_stdin_eof)
    except (ConfigError, StartupError) as exc:
        print(f"dsql-emulator: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        log.info("interrupted")
    return 0


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
