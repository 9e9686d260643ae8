"""``dsql-emulator serve`` as a user runs it: ready line, signals, errors, persistence, cleanup."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dsql_magic.emulator.api import Emulator, EmulatorError, EmulatorInfo

pytestmark = pytest.mark.emulator

REPO = Path(__file__).resolve().parent.parent
READY_KEYS = {
    "host",
    "port",
    "endpoint",
    "region",
    "cluster_id",
    "ca_cert",
    "aws_access_key_id",
    "aws_secret_access_key",
    "admin_arn",
}


class Served:
    """A ``python -m dsql_magic.emulator serve`` child and its ready line."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dsql_magic.emulator", "serve", "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        self.line = self.proc.stdout.readline()
        if not self.line:
            self.proc.wait(30)
            assert self.proc.stderr is not None
            raise AssertionError(f"no ready line; stderr: {self.proc.stderr.read()[-2000:]}")
        self.ready: dict[str, Any] = json.loads(self.line)
        self.info = EmulatorInfo.from_ready_line(self.line)
        self.rest = ""

    def postmaster_pid(self) -> int:
        pid_file = self.info.data_dir / "pgdata" / "postmaster.pid"
        return int(pid_file.read_text().splitlines()[0])

    def connect(self, **extra: Any) -> psycopg.Connection[Any]:
        from dsql_magic.emulator.iam import Identity, mint_token

        identity = Identity(
            self.info.aws_access_key_id, self.info.aws_secret_access_key, self.info.admin_arn
        )
        token = mint_token(identity, hostname=self.info.endpoint, region=self.info.region)
        return psycopg.connect(
            host=self.info.endpoint,
            hostaddr="127.0.0.1",
            port=self.info.port,
            user="admin",
            dbname="postgres",
            password=token,
            sslmode="verify-full",
            sslrootcert=str(self.info.ca_cert),
            **extra,
        )

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        """Signal, wait; returns the exit code and stderr (the rest of stdout goes to .rest)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.rest, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.rest, err = self.proc.communicate()
        return self.proc.returncode, err


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dsql_magic.emulator", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def wait_dead(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def processes_using(path: Path) -> list[int]:
    """Processes whose command line mentions ``path`` (postgres -D <path>/pgdata ...)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(path).encode() in cmdline and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    yield path
    for pid in processes_using(path):  # never leave a process behind, even on failure
        os.kill(pid, signal.SIGKILL)


def test_ready_line_and_sigterm(data_dir: Path) -> None:
    served = Served("--data-dir", str(data_dir), "--region", "eu-west-1", "--cluster-id", "mycl")
    assert served.ready.keys() >= READY_KEYS
    assert served.ready["endpoint"] == "mycl.dsql.eu-west-1.on.aws"
    assert served.ready["port"] > 0 and served.ready["host"] == "127.0.0.1"
    assert served.ready["aws_access_key_id"].startswith("AKIA")
    assert Path(served.ready["ca_cert"]).exists()
    with served.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    postmaster = served.postmaster_pid()
    code, err = served.stop(signal.SIGTERM)
    assert code == 0, err
    assert served.ready["aws_secret_access_key"] not in err
    assert wait_dead(postmaster)
    assert processes_using(data_dir) == []
    assert served.rest == ""  # exactly one line on stdout


def test_sigint_stops_cleanly_and_data_persists(data_dir: Path) -> None:
    served = Served("--data-dir", str(data_dir))
    with served.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE keep (id int PRIMARY KEY)")
        conn.execute("INSERT INTO keep VALUES (7)")
    code, err = served.stop(signal.SIGINT)
    assert code == 0, err
    assert processes_using(data_dir) == []
    again = Served("--data-dir", str(data_dir))
    try:
        assert again.ready["cluster_id"] == served.ready["cluster_id"]
        assert again.ready["aws_access_key_id"] == served.ready["aws_access_key_id"]
        with again.connect() as conn:
            assert conn.execute("SELECT id FROM keep").fetchall() == [(7,)]
    finally:
        again.stop()


def test_kill_9_loses_no_committed_transaction(data_dir: Path) -> None:
    served = Served("--data-dir", str(data_dir))
    with served.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE crash (id int PRIMARY KEY)")
        for i in range(5):
            conn.execute(f"INSERT INTO crash VALUES ({i})")
    postmaster = served.postmaster_pid()
    served.proc.kill()
    served.proc.communicate()
    assert wait_dead(postmaster), "PostgreSQL outlived the killed emulator"
    again = Served("--data-dir", str(data_dir))
    try:
        with again.connect() as conn:
            assert conn.execute("SELECT count(*) FROM crash").fetchone() == (5,)
    finally:
        again.stop()
    assert processes_using(data_dir) == []


def test_ephemeral_leaves_nothing(tmp_path: Path) -> None:
    served = Served("--ephemeral")
    data = served.info.data_dir
    assert data.exists()
    code, err = served.stop()
    assert code == 0, err
    assert not data.exists()
    assert processes_using(data) == []


def test_busy_port_is_exit_2_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli("serve", "--data-dir", str(tmp_path / "d"), "--port", str(port))
    assert result.returncode == 2
    assert result.stdout == ""
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dsql-emulator: error: port ") and "already in use" in last
    assert not (tmp_path / "d").exists()  # nothing initialised


def test_unusable_data_dir_is_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_cli("serve", "--port", "0", "--data-dir", str(blocker / "data"))
    assert result.returncode == 2
    assert "dsql-emulator: error: data dir" in result.stderr
    assert "not usable" in result.stderr


def test_data_dir_in_use_is_exit_2(data_dir: Path) -> None:
    served = Served("--data-dir", str(data_dir))
    try:
        result = run_cli("serve", "--port", "0", "--data-dir", str(data_dir))
        assert result.returncode == 2
        assert "in use by another emulator" in result.stderr
        with served.connect() as conn:  # the first one is unharmed
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        served.stop()


@pytest.mark.parametrize(
    "args",
    [
        ["serve"],
        ["serve", "--ephemeral", "--data-dir", "x"],
        ["serve", "--ephemeral", "--region", "moon"],
        ["serve", "--ephemeral", "--port", "70000"],
        ["serve", "--ephemeral", "--cluster-id", "Bad_Id"],
    ],
)
def test_bad_options_are_exit_2(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "error" in result.stderr


def test_token_command_mints_a_working_token(data_dir: Path) -> None:
    served = Served("--data-dir", str(data_dir))
    try:
        result = run_cli("token", "--data-dir", str(data_dir))
        assert result.returncode == 0, result.stderr
        token = result.stdout.strip()
        assert token.startswith(served.info.endpoint + "/?Action=DbConnectAdmin&")
        with psycopg.connect(
            host=served.info.endpoint,
            hostaddr="127.0.0.1",
            port=served.info.port,
            user="admin",
            dbname="postgres",
            password=token,
            sslmode="verify-full",
            sslrootcert=str(served.info.ca_cert),
        ) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        served.stop()


def test_api_stops_when_parent_closes_stdin(tmp_path: Path) -> None:
    emu = Emulator(data_dir=tmp_path / "data").start()
    pid = emu.info.pid
    proc = emu._proc
    assert proc is not None and proc.stdin is not None
    proc.stdin.close()  # what the OS does when the parent dies
    assert proc.wait(60) == 0
    assert processes_using(tmp_path / "data") == []
    emu.stop()
    assert not alive(pid)


def test_api_reports_startup_failure(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        emu = Emulator(data_dir=tmp_path / "d", port=sock.getsockname()[1])
        with pytest.raises(EmulatorError, match="already in use"):
            emu.start()
    assert not emu.running


def test_api_info_hides_the_secret(emulator: Emulator) -> None:
    assert emulator.info.aws_secret_access_key not in repr(emulator.info)
    assert emulator.info.aws_secret_access_key not in repr(emulator)


def test_limits_options_reach_the_front(tmp_path: Path) -> None:
    served = Served(
        "--ephemeral",
        "--max-connection-age",
        "1.5",
        "--connection-rate",
        "0.01",
        "--connection-burst",
        "1",
    )
    try:
        with served.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            time.sleep(2.5)
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")  # closed after its maximum age
        with pytest.raises(psycopg.OperationalError, match="rate exceeded"):
            served.connect()  # the burst of 1 is used up; refill is 1 per 100 s
    finally:
        served.stop()


def test_permissive_auth_accepts_unknown_keys(tmp_path: Path) -> None:
    from dsql_magic.emulator.iam import Identity, mint_token, new_access_key_id

    served = Served("--ephemeral", "--auth", "permissive")
    try:
        stranger = Identity(new_access_key_id(), "not-the-emulators-secret-0000000000000000", "x")
        token = mint_token(stranger, hostname=served.info.endpoint, region=served.info.region)
        with psycopg.connect(
            host=served.info.endpoint,
            hostaddr="127.0.0.1",
            port=served.info.port,
            user="admin",
            dbname="postgres",
            password=token,
            sslmode="verify-full",
            sslrootcert=str(served.info.ca_cert),
        ) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        served.stop()


_KERNEL = """
import sys, time
from dsql_magic.emulator.api import Emulator
emu = Emulator(data_dir=sys.argv[1]).start()
print(emu.info.pid, flush=True)
time.sleep(600)
"""


def test_emulator_dies_with_a_killed_kernel(tmp_path: Path) -> None:
    """A notebook kernel killed with -9 takes its emulator and PostgreSQL with it."""
    data = tmp_path / "data"
    kernel = subprocess.Popen(
        [sys.executable, "-c", _KERNEL, str(data)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert kernel.stdout is not None
    emulator_pid = int(kernel.stdout.readline())
    postmaster = int((data / "pgdata" / "postmaster.pid").read_text().splitlines()[0])
    kernel.kill()
    kernel.wait()
    assert wait_dead(emulator_pid, 60)
    assert wait_dead(postmaster, 60)
    assert processes_using(data) == []


@pytest.mark.parametrize("choice", ["", "asyncio"])
def test_event_loop_is_uvloop_unless_asked_for_asyncio(
    choice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay runs on uvloop (an emulator dependency off Windows); the env var opts out."""
    import asyncio

    from dsql_magic.emulator.cli import run_event_loop

    monkeypatch.setenv("DSQL_EMULATOR_LOOP", choice)
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    run_event_loop(main())
    on_windows = sys.platform == "win32"  # no uvloop there (see pyproject.toml)
    expected = "asyncio" if choice == "asyncio" or on_windows else "uvloop"
    assert seen[0].startswith(expected)
