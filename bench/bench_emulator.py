"""The emulator against the same PostgreSQL directly: pgbench, psycopg loop, 32 clients, start time.

One emulator (child process, its own data dir) is started; its embedded PostgreSQL is also reached
directly over its unix socket, so both sides run on the same server, data and cache, side by side.
Through the emulator every statement pays TLS, the wire relay and DSQL's rule hooks; the ratios
show that cost. pgbench's tables are created directly (``pgbench -i``: its 100,000-row load is one
transaction, over DSQL's row limit), then used through both paths.

Benchmarks measure; they never assert. Run with ``python -m bench emulator [--quick]``.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dsql_magic.emulator.api import Emulator  # noqa: E402

TARGET_ADDED_MS = 0.3
TARGET_THROUGHPUT_RATIO = 0.5


@dataclass
class PgbenchResult:
    tps: float
    latency_ms: float
    failed: int
    processed: int


def _pgbench() -> str:
    found = shutil.which("pgbench")
    if found is None:
        raise RuntimeError("pgbench with TLS support is needed: apt-get install postgresql-client")
    return found


def _direct_env(emu: Emulator) -> dict[str, str]:
    socket_dir = emu.info.data_dir / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        {"PGHOST": str(socket_dir), "PGPORT": "5432", "PGUSER": "admin", "PGDATABASE": "postgres"}
    )
    return env


def _emulator_env(emu: Emulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({k: v for k, v in emu.env().items() if k.startswith("PG")})
    env["PGPASSWORD"] = emu.token(expires_in=3600)
    return env


def run_pgbench(env: dict[str, str], args: list[str]) -> PgbenchResult:
    out = subprocess.run(
        [_pgbench(), "-n", *args], env=env, capture_output=True, text=True, timeout=900
    )
    text = out.stdout + out.stderr
    if out.returncode not in (0, 2):  # 2: some transactions failed (reported below)
        raise RuntimeError(f"pgbench failed: {text[-600:]}")

    def number(pattern: str, default: float = 0.0) -> float:
        m = re.search(pattern, text)
        return float(m.group(1)) if m else default

    return PgbenchResult(
        tps=number(r"tps = ([\d.]+)"),
        latency_ms=number(r"latency average = ([\d.]+) ms"),
        failed=int(number(r"number of failed transactions: (\d+)")),
        processed=int(number(r"number of transactions actually processed: (\d+)")),
    )


def psycopg_loop(kwargs: dict[str, Any], n: int) -> list[float]:
    """Per-statement latencies (ms) of prepared single-row selects on one connection."""
    import psycopg

    times = []
    with psycopg.connect(**kwargs, autocommit=True) as conn:
        for i in range(50):  # warm up (and let psycopg prepare)
            conn.execute("SELECT abalance FROM pgbench_accounts WHERE aid = %s", (i + 1,))
        for i in range(n):
            started = time.perf_counter()
            conn.execute(
                "SELECT abalance FROM pgbench_accounts WHERE aid = %s", (i % 100_000 + 1,)
            ).fetchone()
            times.append((time.perf_counter() - started) * 1000)
    return times


def hook_modules() -> list[str]:
    """The rule modules `cluster.default_hooks` knows, to switch them all off."""
    from dsql_magic.emulator import cluster

    return [name.rsplit(".", 1)[-1] for name, _ in cluster._HOOK_FACTORIES]


def wire_only(duration: str) -> tuple[PgbenchResult, PgbenchResult]:
    """pgbench -S and -N (1 client) through an emulator with every rule hook disabled."""
    args = tuple(x for h in hook_modules() for x in ("--disable-hook", h))
    with (
        tempfile.TemporaryDirectory(prefix="bench-emulator-wire-") as tmp,
        Emulator(data_dir=Path(tmp) / "data", extra_args=args) as emu,
    ):
        init = subprocess.run(
            [_pgbench(), "-i", "-s", "1", "-q"],
            env=_direct_env(emu),
            capture_output=True,
            text=True,
        )
        if init.returncode != 0:
            raise RuntimeError(f"pgbench -i failed: {init.stderr[-500:]}")
        env = _emulator_env(emu)
        return (
            run_pgbench(env, ["-S", "-T", duration]),
            run_pgbench(env, ["-N", "-T", duration]),
        )


def start_relay(
    emu: Emulator, program: list[str] | None = None
) -> tuple[subprocess.Popen[str], int]:
    """A minimal TLS relay in front of the emulator's PostgreSQL: its process and port.

    ``program``: the relay to run, by default the Python one (bench/_tls_relay.py).
    """
    tls = emu.info.data_dir / "tls"
    proc = subprocess.Popen(
        [
            *(program or [sys.executable, str(Path(__file__).with_name("_tls_relay.py"))]),
            str(emu.info.data_dir / "run" / ".s.PGSQL.5432"),
            str(tls / "server.pem"),
            str(tls / "server-key.pem"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def build_c_relay(out_dir: Path) -> tuple[Path | None, str]:
    """Compile bench/_c_relay.c: the binary, or None and why not (no compiler, no OpenSSL)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler"
    binary = out_dir / "c_relay"
    built = subprocess.run(
        [
            compiler,
            "-O2",
            "-o",
            str(binary),
            str(Path(__file__).with_name("_c_relay.c")),
            "-lssl",
            "-lcrypto",
        ],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        return None, f"it did not compile (OpenSSL's headers: libssl-dev): {built.stderr[-200:]}"
    return binary, ""


def relay_env(direct: dict[str, str], port: int) -> dict[str, str]:
    """pgbench's environment for a bench relay on ``port`` (TLS without a token)."""
    env = {k: v for k, v in direct.items() if k != "PGHOST"}
    env.update({"PGHOST": "127.0.0.1", "PGPORT": str(port), "PGSSLMODE": "require"})
    return env


def best_loop(kwargs: dict[str, Any], n: int, rounds: int) -> list[float]:
    """The round with the lowest mean (the machine is shared: noise only ever adds)."""
    runs = [psycopg_loop(kwargs, n) for _ in range(rounds)]
    return min(runs, key=statistics.mean)


def start_time(data_dir: Path | None) -> float:
    started = time.perf_counter()
    emu = Emulator(data_dir=data_dir).start()
    took = time.perf_counter() - started
    emu.stop()
    return took


def run(quick: bool = False) -> str:
    duration = "5" if quick else "15"
    loop_n = 500 if quick else 3000
    rows: list[tuple[str, PgbenchResult, PgbenchResult]] = []
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-emulator-") as tmp:
        data = Path(tmp) / "data"
        emu = Emulator(data_dir=data).start()
        try:
            direct, through = _direct_env(emu), _emulator_env(emu)
            init = subprocess.run(
                [_pgbench(), "-i", "-s", "1", "-q"], env=direct, capture_output=True, text=True
            )
            if init.returncode != 0:
                raise RuntimeError(f"pgbench -i failed: {init.stderr[-500:]}")
            for mode, label in (("-S", "select-only (-S)"), ("-N", "simple update (-N)")):
                for clients in (1, 8):
                    args = [mode, "-c", str(clients), "-j", str(min(clients, 4)), "-T", duration]
                    if mode == "-N":
                        args += ["--max-tries=10"]  # DSQL conflicts (40001) are retried
                    d = run_pgbench(direct, args)
                    e = run_pgbench(through, args)
                    rows.append((f"{label}, {clients} client{'s' if clients > 1 else ''}", d, e))
            prepared_args = ["-S", "-M", "prepared", "-c", "1", "-T", duration]
            prepared = (run_pgbench(direct, prepared_args), run_pgbench(through, prepared_args))
            many = run_pgbench(through, ["-S", "-c", "32", "-j", "4", "-T", duration])
            direct_kwargs = {
                "host": str(emu.info.data_dir / "run"),
                "port": 5432,
                "user": "admin",
                "dbname": "postgres",
            }
            relay, relay_port = start_relay(emu)
            try:
                relay_kwargs = {
                    "host": "127.0.0.1",
                    "port": relay_port,
                    "user": "admin",
                    "dbname": "postgres",
                    "sslmode": "require",
                }
                relay_s = run_pgbench(
                    relay_env(direct, relay_port), ["-S", "-c", "1", "-T", duration]
                )
                rounds = 1 if quick else 3
                loop_direct = best_loop(direct_kwargs, loop_n, rounds)
                loop_emu = best_loop(emu.connect_kwargs(), loop_n, rounds)
                loop_relay = best_loop(relay_kwargs, loop_n, rounds)
            finally:
                relay.kill()
                relay.wait()
            c_binary, c_missing = build_c_relay(Path(tmp))
            c_relay_s: PgbenchResult | None = None
            if c_binary is not None:
                c_relay, c_port = start_relay(emu, [str(c_binary)])
                try:
                    c_relay_s = run_pgbench(
                        relay_env(direct, c_port), ["-S", "-c", "1", "-T", duration]
                    )
                finally:
                    c_relay.kill()
                    c_relay.wait()
        finally:
            emu.stop()
        warm = [start_time(data) for _ in range(1 if quick else 3)]
    wire_s, wire_n = wire_only(duration)
    with tempfile.TemporaryDirectory(prefix="bench-emulator-cold-") as tmp:
        cold = [start_time(Path(tmp) / f"cold{i}") for i in range(1 if quick else 2)]

    lines.append("## Emulator vs the same PostgreSQL directly")
    lines.append("")
    lines.append(
        "pgbench (scale 1, `-n`) on the emulator's own PostgreSQL 16: directly over its unix "
        "socket, and through the emulator (TLS verify-full, IAM token, wire relay, DSQL rule "
        f"hooks). {duration} s per run."
    )
    lines.append("")
    lines.append(
        "| workload | direct tps | emulator tps | throughput ratio | direct ms | emulator ms "
        "| added ms | failed |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, d, e in rows:
        ratio = e.tps / d.tps if d.tps else 0.0
        lines.append(
            f"| {label} | {d.tps:,.0f} | {e.tps:,.0f} | {ratio:.2f} | {d.latency_ms:.3f} "
            f"| {e.latency_ms:.3f} | {e.latency_ms - d.latency_ms:+.3f} | {e.failed} |"
        )
    for label, w, (_, d, _) in (
        ("select-only (-S), 1 client, no rule hooks", wire_s, rows[0]),
        ("simple update (-N), 1 client, no rule hooks", wire_n, rows[2]),
    ):
        ratio = w.tps / d.tps if d.tps else 0.0
        lines.append(
            f"| {label} | {d.tps:,.0f} | {w.tps:,.0f} | {ratio:.2f} | {d.latency_ms:.3f} "
            f"| {w.latency_ms:.3f} | {w.latency_ms - d.latency_ms:+.3f} | {w.failed} |"
        )
    lines.append("")
    lines.append(
        "Rows marked *no rule hooks* run a second emulator with every rule module disabled "
        "(`--disable-hook`): TLS, token check and the wire relay alone, against the same "
        "direct numbers; the difference to the full rows is the cost of DSQL's rules."
    )
    lines.append("")
    dm, em = statistics.mean(loop_direct), statistics.mean(loop_emu)

    def pct(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(q * len(values)))]

    rm = statistics.mean(loop_relay)
    lines.append(
        f"psycopg loop, {loop_n:,} prepared single-row selects on one connection (best of "
        f"{1 if quick else 3} rounds): direct {dm:.3f} ms mean (p50 {pct(loop_direct, 0.5):.3f}, "
        f"p99 {pct(loop_direct, 0.99):.3f}), emulator {em:.3f} ms mean "
        f"(p50 {pct(loop_emu, 0.5):.3f}, p99 {pct(loop_emu, 0.99):.3f})."
    )
    lines.append("")
    relay_ratio = relay_s.tps / rows[0][1].tps if rows[0][1].tps else 0.0
    lines.append(
        "The floor for any wire front written in Python: `bench/_tls_relay.py`, a minimal "
        "TLS-terminating relay on the same event loop (uvloop) that only copies bytes (no "
        "token check, no decoding, no rules), in front of the same PostgreSQL. psycopg loop "
        f"{rm:.3f} ms mean (added {rm - dm:+.3f} ms); pgbench -S, 1 client: "
        f"{relay_s.tps:,.0f} tps ({relay_ratio:.0%} of direct), {relay_s.latency_ms:.3f} ms. "
        f"The emulator's cost above that floor: **{em - rm:+.3f} ms** per statement."
    )
    lines.append("")
    if c_relay_s is not None:
        c_ratio = c_relay_s.tps / rows[0][1].tps if rows[0][1].tps else 0.0
        lines.append(
            "The ceiling for any relay, whatever its language: `bench/_c_relay.c`, the same "
            "byte-copying TLS relay in C (OpenSSL, blocking I/O, one process per connection). "
            f"pgbench -S, 1 client: {c_relay_s.tps:,.0f} tps ({c_ratio:.0%} of direct), "
            f"{c_relay_s.latency_ms:.3f} ms: the extra hop alone, before any decoding or rules."
        )
    else:
        lines.append(f"The compiled relay (`bench/_c_relay.c`) was not measured: {c_missing}.")
    lines.append("")
    pd, pe = prepared
    p_ratio = pe.tps / pd.tps if pd.tps else 0.0
    lines.append(
        f"pgbench -S with `-M prepared`, 1 client (the extended protocol, whose reads the "
        f"emulator relays as they come): direct {pd.tps:,.0f} tps, emulator {pe.tps:,.0f} tps "
        f"({p_ratio:.0%} of direct), {pd.latency_ms:.3f} vs {pe.latency_ms:.3f} ms."
    )
    lines.append("")
    one_select = rows[0]
    added = em - dm
    ratio1 = one_select[2].tps / one_select[1].tps if one_select[1].tps else 0.0
    met = "met" if added < TARGET_ADDED_MS else "NOT met"
    lines.append(
        f"- Added latency per statement (psycopg loop): **{added:.3f} ms** "
        f"(target < {TARGET_ADDED_MS} ms): {met}"
    )
    met = "met" if ratio1 >= TARGET_THROUGHPUT_RATIO else "NOT met"
    lines.append(
        f"- Throughput at 1 client (pgbench -S): **{ratio1:.0%}** of direct "
        f"(target >= {TARGET_THROUGHPUT_RATIO:.0%}): {met}"
    )
    ok = "met" if many.failed == 0 and many.processed > 0 else "NOT met"
    lines.append(
        f"- 32 concurrent clients (pgbench -S -c 32): {many.processed:,} transactions, "
        f"{many.tps:,.0f} tps, {many.failed} failed: {ok}"
    )
    lines.append(
        f"- Start time (`Emulator().start()`, child process included): cold (new data dir) "
        f"{max(cold):.2f} s (target < 15 s), warm {max(warm):.2f} s (target < 3 s)"
    )
    lines.append("")
    lines.append(  # `python -m bench` adds the date, duration and Python version below
        f"_{os.cpu_count()} CPUs shared with other work (load average "
        f"{os.getloadavg()[1]:.1f} at the end): compare the ratios, not the absolute numbers_"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
