"""Shared by the core benchmarks: a throwaway embedded PostgreSQL 16 and a connected shell.

Everything talks to the same server over TCP loopback (no TLS), so the comparison is of
client-side overhead only. The magic connects with a real (throwaway-credential) IAM token
that PostgreSQL's trust auth accepts.
"""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from dsql_magic.emulator.engine import Engine


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Bench:
    engine: Engine
    shell: Any

    @property
    def socket_dir(self) -> str:
        return str(self.engine.socket_dir)

    def sqlalchemy_url(self) -> str:
        return f"postgresql+psycopg://admin@127.0.0.1:{self.engine.port}/postgres?sslmode=disable"

    def magic_connection(self) -> Any:
        return self.shell.magics_manager.registry["DsqlMagic"].registry.get().raw


@contextlib.contextmanager
def running() -> Iterator[Bench]:
    """An engine in a temp dir and an IPython shell connected to it with ``%dsql connect``."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-throwaway-secret")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    with tempfile.TemporaryDirectory(prefix="dsql-bench-") as tmp:
        port = _free_port()
        engine = Engine(
            Path(tmp), port=port, remove_on_stop=True, settings={"listen_addresses": "127.0.0.1"}
        )
        engine.start()
        (engine.pgdata / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\n"
        )
        with psycopg.connect(**engine.connect_kwargs(), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
        try:
            config = Config()
            config.HistoryManager.hist_file = ":memory:"
            shell = InteractiveShell.instance(config=config)
            shell.run_line_magic("load_ext", "dsql_magic")
            shell.run_line_magic(
                "dsql",
                f"connect localhost --region us-east-1 --port {port} --sslmode disable "
                "--name bench",
            )
            yield Bench(engine, shell)
            shell.run_line_magic("unload_ext", "dsql_magic")
        finally:
            engine.stop()


def compare(fns: dict[str, Callable[[], object]], n: int, repeat: int = 7) -> dict[str, float]:
    """Best-of-``repeat`` mean seconds per call over ``n`` calls, for each function.

    The functions take turns within each round, so a burst of load from other processes on a
    shared machine hits all of them alike instead of one.
    """
    for fn in fns.values():  # warm-up
        for _ in range(min(n, 20)):
            fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            gc.collect()
            started = time.perf_counter()
            for _ in range(n):
                fn()
            best[name] = min(best[name], (time.perf_counter() - started) / n)
    return best


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(rows: list[tuple[str, float, str]], unit: str = "ms") -> str:
    """A Markdown table: method, time, ratio/comment."""
    scale = 1000.0 if unit == "ms" else 1.0
    lines = [f"| method | {unit} | vs baseline |", "|---|---:|---|"]
    for name, seconds, note in rows:
        lines.append(f"| {name} | {seconds * scale:.3f} | {note} |")
    return "\n".join(lines)
