"""The emulator as the magics see it: one background emulator per kernel, and ``%dsql emulator``.

``%dsql connect --emulator [--data-dir DIR | --ephemeral]`` calls `connect_target`, which starts an
emulator (or reuses the kernel's running one) and returns a `ConnectTarget` exactly like a real
cluster's: the endpoint as host with ``hostaddr`` pointing here, the emulator's local credentials
for token minting, ``verify-full`` against its CA. The connection code path is the real one.
``%dsql emulator`` shows how other tools (psql…) can connect; ``%dsql emulator stop`` stops it.

Imported lazily by the magics only. It must not print tokens; the local credentials it shows are
the emulator's own throwaway identity, never real AWS ones.
"""

from __future__ import annotations

import atexit
import os
import shlex
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .api import Emulator, EmulatorError

if TYPE_CHECKING:
    from dsql_magic.connections import ConnectOptions, ConnectTarget

LABEL = "emulator"

_lock = threading.Lock()
_running: Emulator | None = None


def default_data_dir() -> Path:
    """Where ``%dsql connect --emulator`` keeps data unless told otherwise (per user)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dsql-magic" / "emulator"


def current() -> Emulator | None:
    """The kernel's running emulator, if any."""
    return _running if _running is not None and _running.running else None


def ensure_emulator(*, data_dir: str | Path | None = None, ephemeral: bool = False) -> Emulator:
    """Start the kernel's emulator, or reuse the running one when it fits the request."""
    global _running
    from dsql_magic.errors import UsageProblem

    if data_dir is not None and ephemeral:
        raise UsageProblem("use either --data-dir or --ephemeral, not both")
    wanted = Path(data_dir).expanduser().absolute() if data_dir is not None else None
    with _lock:
        running = current()
        if running is not None:
            info = running.info
            fits = (
                (wanted is None and not ephemeral)
                or (ephemeral and info.ephemeral)
                or (wanted is not None and wanted == info.data_dir)
            )
            if not fits:
                where = "an ephemeral data dir" if info.ephemeral else str(info.data_dir)
                raise UsageProblem(
                    f"this kernel's emulator already runs on {where}",
                    "run %dsql emulator stop first to start another one",
                )
            return running
        if not ephemeral and wanted is None:
            wanted = default_data_dir()
        emulator = Emulator(data_dir=None if ephemeral else wanted)
        try:
            emulator.start()
        except EmulatorError as exc:
            raise UsageProblem(
                f"the emulator did not start: {exc}",
                "try %dsql connect --emulator --ephemeral, or see the log: "
                + str(emulator.log_path or "(none)"),
            ) from None
        _running = emulator
        atexit.register(emulator.stop)
        return emulator


def stop() -> bool:
    """Stop the kernel's emulator; False if none was running."""
    global _running
    with _lock:
        emulator, _running = _running, None
    if emulator is None:
        return False
    was_running = emulator.running
    emulator.stop()
    atexit.unregister(emulator.stop)
    return was_running


def connect_target(
    options: ConnectOptions, *, data_dir: str | Path | None = None, ephemeral: bool = False
) -> ConnectTarget:
    """The `ConnectTarget` of the kernel's emulator (started if needed) for ``options.user``."""
    from dsql_magic.auth import AwsCredentials
    from dsql_magic.connections import ConnectTarget

    emulator = ensure_emulator(data_dir=data_dir, ephemeral=ephemeral)
    info = emulator.info
    return ConnectTarget(
        host=info.endpoint,
        region=info.region,
        port=info.port,
        user=options.user or "admin",
        hostaddr=info.connect_host,
        sslmode="verify-full",
        sslrootcert=str(info.ca_cert),
        credentials=AwsCredentials(info.aws_access_key_id, info.aws_secret_access_key),
        token_ttl=options.token_ttl,
        cluster_id=info.cluster_id,
        label=LABEL,
    )


def describe(emulator: Emulator) -> list[dict[str, Any]]:
    """Rows for ``%dsql emulator``: how to reach it, with psql and environment examples."""
    info = emulator.info
    env = emulator.env()
    psql_env = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k.startswith("PG"))
    token_cmd = f"python -m dsql_magic.emulator token --data-dir {shlex.quote(str(info.data_dir))}"
    rows = [
        ("endpoint", info.endpoint),
        ("host", info.connect_host),
        ("port", str(info.port)),
        ("region", info.region),
        ("cluster_id", info.cluster_id),
        ("ca_cert", str(info.ca_cert)),
        ("aws_access_key_id", info.aws_access_key_id),
        ("aws_secret_access_key", info.aws_secret_access_key),
        ("admin_arn", info.admin_arn),
        ("data_dir", str(info.data_dir) + (" (ephemeral)" if info.ephemeral else "")),
        ("psql", f'{psql_env} PGPASSWORD="$({token_cmd})" psql'),
    ]
    if info.cloudwatch_url:
        rows.insert(-1, ("cloudwatch_url", info.cloudwatch_url))
    return [{"setting": k, "value": v} for k, v in rows]


def cmd_emulator(magic: Any, args: str, cell: str | None) -> object:
    """``%dsql emulator [start|stop|status] [--data-dir DIR | --ephemeral]``."""
    from dsql_magic.errors import UsageProblem
    from dsql_magic.magics import make_parser, parse_args
    from dsql_magic.results import Message, table

    parser = make_parser("emulator", "Show, start or stop this kernel's local Aurora DSQL.")
    parser.add_argument("action", nargs="?", default="status", choices=["status", "start", "stop"])
    parser.add_argument("--data-dir", help="data directory (default: per-user, persistent)")
    parser.add_argument("--ephemeral", action="store_true", help="temporary data, gone at stop")
    ns = parse_args(parser, args)
    if isinstance(ns, Message):
        return ns
    if ns.action == "stop":
        closed = _close_emulator_connections(magic)
        if not stop():
            return Message("no emulator is running in this kernel")
        extra = f"; closed connection(s) {', '.join(closed)}" if closed else ""
        return Message("emulator stopped" + extra)
    if ns.action == "start":
        emulator = ensure_emulator(data_dir=ns.data_dir, ephemeral=ns.ephemeral)
    else:
        running = current()
        if running is None:
            raise UsageProblem(
                "no emulator is running in this kernel",
                "start one with %dsql connect --emulator (or %dsql emulator start)",
            )
        emulator = running
    return table(describe(emulator), "no emulator")


def _close_emulator_connections(magic: Any) -> list[str]:
    registry = getattr(magic, "registry", None)
    if registry is None:
        return []
    closed = []
    for name in registry.names():
        conn = registry.get(name)
        if getattr(conn.target, "label", None) == LABEL:
            registry.close(name)
            closed.append(name)
    return closed
