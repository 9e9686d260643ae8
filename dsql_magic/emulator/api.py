"""`Emulator`: start and stop a local Aurora DSQL from Python, and connect to it like to a cluster.

The emulator runs in a child process (``python -m dsql_magic.emulator serve``), not in a thread:
a notebook kernel then shares no GIL or event loop with it, a crash or a hung query cannot take the
kernel down, and stopping it is a signal whose effect (PostgreSQL stopped, ephemeral data removed)
is guaranteed by the OS. The child also stops when this process dies: it watches its stdin pipe.

`Emulator.connect_kwargs` gives psycopg arguments exactly as for a real cluster — the endpoint as
``host`` with ``hostaddr=127.0.0.1``, a token freshly minted by boto3, ``sslmode=verify-full`` with
the emulator's CA — so code tested here runs unchanged against Aurora DSQL.

This module must not print or log tokens or the secret key (`EmulatorInfo`'s repr hides it); it
never imports the server in this process.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .. import limits

_STOP_TIMEOUT = 30.0


class EmulatorError(RuntimeError):
    """The emulator could not be started or reached; the message says why and what to do."""


@dataclass(frozen=True)
class EmulatorInfo:
    """What a running emulator announced in its ready line."""

    host: str
    port: int
    endpoint: str
    region: str
    cluster_id: str
    ca_cert: Path
    aws_access_key_id: str
    aws_secret_access_key: str = field(repr=False)
    admin_arn: str
    data_dir: Path
    ephemeral: bool
    pid: int
    cloudwatch_url: str | None = None  # the emulator's CloudWatch endpoint (boto3 endpoint_url)

    @classmethod
    def from_ready_line(cls, line: str) -> EmulatorInfo:
        raw = json.loads(line)
        return cls(
            host=str(raw["host"]),
            port=int(raw["port"]),
            endpoint=str(raw["endpoint"]),
            region=str(raw["region"]),
            cluster_id=str(raw["cluster_id"]),
            ca_cert=Path(raw["ca_cert"]),
            aws_access_key_id=str(raw["aws_access_key_id"]),
            aws_secret_access_key=str(raw["aws_secret_access_key"]),
            admin_arn=str(raw["admin_arn"]),
            data_dir=Path(raw["data_dir"]),
            ephemeral=bool(raw.get("ephemeral", False)),
            pid=int(raw.get("pid", 0)),
            cloudwatch_url=raw.get("cloudwatch_url"),
        )

    @property
    def connect_host(self) -> str:
        """The address to dial: the listen address, or loopback when listening on all."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host


class Emulator:
    """A local Aurora DSQL in a child process; use as a context manager or ``start()``/``stop()``.

    ``data_dir=None`` means ephemeral (a temporary directory, removed at stop). ``port=0`` picks
    a free port. ``extra_args`` are passed to ``dsql-emulator serve`` (e.g. lower limits in tests).
    """

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = "us-east-1",
        cluster_id: str | None = None,
        auth: str = "strict",
        extra_args: tuple[str, ...] = (),
        startup_timeout: float = 120.0,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute() if data_dir is not None else None
        self.host = host
        self.port = port
        self.region = region
        self.cluster_id = cluster_id
        self.auth = auth
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._info: EmulatorInfo | None = None
        self._log: IO[bytes] | None = None
        self._log_is_temp = False

    def __repr__(self) -> str:
        state = f"{self._info.endpoint}:{self._info.port}" if self._info else "stopped"
        return f"<Emulator {state}>"

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def info(self) -> EmulatorInfo:
        """The ready line of the running emulator."""
        if self._info is None or not self.running:
            raise EmulatorError("the emulator is not running: call start() first")
        return self._info

    def command(self) -> list[str]:
        """The command line of the child process."""
        cmd = [sys.executable, "-m", "dsql_magic.emulator", "serve"]
        cmd += ["--host", self.host, "--port", str(self.port), "--region", self.region]
        cmd += ["--auth", self.auth]
        cmd += ["--data-dir", str(self.data_dir)] if self.data_dir is not None else ["--ephemeral"]
        if self.cluster_id is not None:
            cmd += ["--cluster-id", self.cluster_id]
        cmd += ["--exit-on-stdin-eof", *self.extra_args]
        return cmd

    def start(self) -> Emulator:
        """Start the child and wait for its ready line (or its one-line error)."""
        if self.running:
            return self
        self._open_log()
        assert self._log is not None
        env = dict(os.environ)
        # Make this very package importable in the child even when not pip-installed.
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            start_new_session=True,  # a Ctrl-C in the kernel must not hit the emulator
        )
        try:
            line = self._read_ready_line()
            self._info = EmulatorInfo.from_ready_line(line)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the child (SIGTERM: PostgreSQL stopped, ephemeral data removed); idempotent."""
        proc, self._proc = self._proc, None
        self._info = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        if self._log is not None:
            self._log.close()
            self._log = None
            if self._log_is_temp and self.log_path is not None:
                with contextlib.suppress(OSError):
                    self.log_path.unlink()
                self.log_path = None
                self._log_is_temp = False

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _open_log(self) -> None:
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="dsql-emulator-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
            self._log_is_temp = True
        self._log = self.log_path.open("ab")

    def _read_ready_line(self) -> str:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        lines: queue.Queue[bytes] = queue.Queue()
        stdout = proc.stdout
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                if proc.poll() is not None or time.monotonic() > deadline:
                    break
                continue
            if line.strip():
                return line.decode()
            break
        proc.poll()
        raise EmulatorError(self._failure_text(proc.returncode))

    def _failure_text(self, code: int | None) -> str:
        tail = ""
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                text = self.log_path.read_text(errors="replace").strip().splitlines()
                errors = [ln for ln in text if "error" in ln.lower()]
                tail = (errors or text or [""])[-1]
        if code is None:
            return f"the emulator did not become ready in {self.startup_timeout:.0f}s. {tail}"
        return f"the emulator exited with code {code}: {tail}".strip()

    # --- connecting ------------------------------------------------------------------------------

    def token(
        self,
        user: str = limits.DEFAULT_USER,
        *,
        hostname: str | None = None,
        expires_in: int = limits.DEFAULT_TOKEN_TTL_SECONDS,
    ) -> str:
        """A fresh token minted by boto3 with the emulator's local credentials."""
        from .iam import Identity, mint_token

        info = self.info
        identity = Identity(info.aws_access_key_id, info.aws_secret_access_key, info.admin_arn)
        return mint_token(
            identity,
            hostname=hostname or info.endpoint,
            region=info.region,
            user=user,
            expires_in=expires_in,
        )

    def connect_kwargs(
        self, user: str = limits.DEFAULT_USER, *, via_endpoint: bool = True
    ) -> dict[str, Any]:
        """psycopg keyword arguments with a fresh token, ``sslmode=verify-full`` and our CA.

        ``via_endpoint`` (default) connects as to a real cluster: ``host=<endpoint>`` with
        ``hostaddr`` pointing here; otherwise ``host=localhost``.
        """
        info = self.info
        host = info.endpoint if via_endpoint else "localhost"
        kwargs: dict[str, Any] = {
            "host": host,
            "port": info.port,
            "user": user,
            "dbname": limits.DEFAULT_DATABASE,
            "password": self.token(user, hostname=host),
            "sslmode": "verify-full",
            "sslrootcert": str(info.ca_cert),
        }
        if via_endpoint:
            kwargs["hostaddr"] = info.connect_host
        return kwargs

    def connect(self, user: str = limits.DEFAULT_USER, **kwargs: Any) -> Any:
        """A psycopg 3 connection (extra keyword arguments go to ``psycopg.connect``)."""
        import psycopg

        return psycopg.connect(**{**self.connect_kwargs(user), **kwargs})

    def env(self) -> dict[str, str]:
        """Environment variables for psql and AWS tools (PGPASSWORD not included: mint one)."""
        info = self.info
        return {
            "PGHOST": info.endpoint,
            "PGHOSTADDR": info.connect_host,
            "PGPORT": str(info.port),
            "PGUSER": limits.DEFAULT_USER,
            "PGDATABASE": limits.DEFAULT_DATABASE,
            "PGSSLMODE": "verify-full",
            "PGSSLROOTCERT": str(info.ca_cert),
            "AWS_ACCESS_KEY_ID": info.aws_access_key_id,
            "AWS_SECRET_ACCESS_KEY": info.aws_secret_access_key,
            "AWS_REGION": info.region,
            "AWS_DEFAULT_REGION": info.region,
        }
