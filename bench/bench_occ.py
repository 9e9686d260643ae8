"""OCC and async index builds: the emulator against the same PostgreSQL directly.

Three measurements, side by side on one emulator and its embedded PostgreSQL:

- conflict-free write throughput (one client, ``BEGIN; UPDATE one row; COMMIT``) directly on
  PostgreSQL, through the emulator with the OCC hooks off (``--disable-hook occ``), and with
  them on: the ratio is the price of guarded statements (savepoint, held answer);
- the cost of a conflict: how long a conflicting ``UPDATE`` takes to answer (it is deferred),
  and how long the loser's ``COMMIT`` takes to answer 40001, for both commit orders;
- ``CREATE INDEX ASYNC`` + ``sys.wait_for_job`` against PostgreSQL's own ``CREATE INDEX`` on the
  same table, at 100k and 1M rows (the rows are loaded directly: DSQL's row limit would need
  hundreds of transactions).

Benchmarks measure; they never assert. Run with ``python -m bench occ [--quick]``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from dsql_magic.emulator.api import Emulator  # noqa: E402


def _direct(emu: Emulator) -> psycopg.Connection[Any]:
    socket_dir = emu.info.data_dir / "run"
    return psycopg.connect(
        host=str(socket_dir), port=5432, user="admin", dbname="postgres", autocommit=True
    )


def _retry(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> Any:
    for _ in range(5):
        try:
            return conn.execute(sql, params)
        except psycopg.errors.SerializationFailure:
            if not conn.autocommit:
                conn.rollback()
    raise RuntimeError(f"kept failing: {sql}")


def _tps(conn: psycopg.Connection[Any], n: int, key: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        conn.execute("UPDATE bench_acct SET balance = balance + %s WHERE id = %s", (i % 3, key))
        conn.commit()
    return n / (time.perf_counter() - started)


def _throughput(emu_occ: Emulator, emu_plain: Emulator, n: int) -> list[tuple[str, float]]:
    out = []
    paths: list[tuple[str, Callable[[], psycopg.Connection[Any]]]] = [
        ("PostgreSQL directly (unix socket)", lambda: _direct(emu_occ)),
        ("emulator, OCC hooks off", lambda: psycopg.connect(**emu_plain.connect_kwargs("admin"))),
        ("emulator, OCC on", lambda: psycopg.connect(**emu_occ.connect_kwargs("admin"))),
    ]
    for label, connect in paths:
        with connect() as conn:
            conn.autocommit = False
            _retry(conn, "SELECT 1 FROM bench_acct LIMIT 1")
            conn.rollback()
            _tps(conn, max(20, n // 10), 1)  # warm up
            best = max(_tps(conn, n, 1) for _ in range(3))
        out.append((label, best))
    return out


def _conflict_costs(emu: Emulator, trials: int) -> dict[str, list[float]]:
    costs: dict[str, list[float]] = {
        "deferred UPDATE answers": [],
        "loser's COMMIT → 40001 (winner committed first)": [],
        "first committer's COMMIT, taking the row over": [],
        "the other's COMMIT → 40001 (was taken over)": [],
    }
    a = psycopg.connect(**emu.connect_kwargs("admin"))
    b = psycopg.connect(**emu.connect_kwargs("admin"))
    try:
        for conn in (a, b):
            _retry(conn, "SELECT 1 FROM bench_acct LIMIT 1")
            conn.rollback()
        for i in range(trials):
            a.execute("UPDATE bench_acct SET balance = balance + 1 WHERE id = 2")
            t0 = time.perf_counter()
            b.execute("UPDATE bench_acct SET balance = balance + 1 WHERE id = 2")
            costs["deferred UPDATE answers"].append(time.perf_counter() - t0)
            if i % 2 == 0:
                a.commit()
                t0 = time.perf_counter()
                with contextlib.suppress(psycopg.errors.SerializationFailure):
                    b.commit()
                costs["loser's COMMIT → 40001 (winner committed first)"].append(
                    time.perf_counter() - t0
                )
            else:
                t0 = time.perf_counter()
                b.commit()
                costs["first committer's COMMIT, taking the row over"].append(
                    time.perf_counter() - t0
                )
                t0 = time.perf_counter()
                with contextlib.suppress(psycopg.errors.SerializationFailure):
                    a.commit()
                costs["the other's COMMIT → 40001 (was taken over)"].append(
                    time.perf_counter() - t0
                )
    finally:
        a.close()
        b.close()
    return costs


def _index_builds(emu: Emulator, sizes: list[int]) -> list[tuple[int, float, float]]:
    out = []
    with _direct(emu) as direct, psycopg.connect(**emu.connect_kwargs("admin")) as conn:
        conn.autocommit = True
        for rows in sizes:
            table = f"bench_idx_{rows}"
            direct.execute(f"DROP TABLE IF EXISTS {table}")
            direct.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, k text, v int)")
            direct.execute(
                f"INSERT INTO {table} SELECT g, md5(g::text), g % 1000"
                f" FROM generate_series(1, {rows}) g"
            )
            direct.execute(f"VACUUM ANALYZE {table}")
            t0 = time.perf_counter()
            direct.execute(f"CREATE INDEX {table}_pg ON {table} (k)")
            pg_seconds = time.perf_counter() - t0
            direct.execute(f"DROP INDEX {table}_pg")
            t0 = time.perf_counter()
            job = _retry(conn, f"CREATE INDEX ASYNC {table}_async ON {table} (k)").fetchone()[0]
            ok = _retry(conn, f"SELECT sys.wait_for_job('{job}')").fetchone()[0]
            async_seconds = time.perf_counter() - t0
            if not ok:
                raise RuntimeError(f"index build failed for {rows} rows")
            out.append((rows, pg_seconds, async_seconds))
            direct.execute(f"DROP TABLE {table}")
    return out


def run(quick: bool = False) -> str:
    n = 200 if quick else 1000
    trials = 6 if quick else 20
    sizes = [100_000] if quick else [100_000, 1_000_000]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-occ-") as tmp:
        base = Path(tmp)
        emu = Emulator(data_dir=base / "occ", log_path=base / "occ.log")
        plain = Emulator(
            data_dir=base / "plain",
            log_path=base / "plain.log",
            extra_args=("--disable-hook", "occ", "--disable-hook", "schema_version"),
        )
        emu.start()
        plain.start()
        try:
            for target in (emu, plain):
                with _direct(target) as d:
                    d.execute(
                        "CREATE TABLE IF NOT EXISTS bench_acct (id int PRIMARY KEY, balance int)"
                    )
                    d.execute("INSERT INTO bench_acct VALUES (1, 0), (2, 0) ON CONFLICT DO NOTHING")
            throughput = _throughput(emu, plain, n)
            costs = _conflict_costs(emu, trials)
            builds = _index_builds(emu, sizes)
        finally:
            plain.stop()
            emu.stop()
    base_tps = throughput[0][1]
    lines = [
        "## OCC and asynchronous index builds",
        "",
        f"### Conflict-free writes (1 client, {n} × `UPDATE` one row + `COMMIT`, best of 3)",
        "",
        "| path | transactions/s | vs PostgreSQL |",
        "|---|---:|---:|",
    ]
    for label, tps in throughput:
        lines.append(f"| {label} | {tps:,.0f} | {tps / base_tps:.2f}x |")
    occ_ratio = throughput[2][1] / throughput[1][1]
    lines += [
        "",
        f"- OCC machinery on vs off, same emulator path: **{occ_ratio:.2f}x** throughput",
        "",
        f"### Cost of a conflict (median of {trials // 2}–{trials} trials, ms)",
        "",
        "| step | median ms | max ms |",
        "|---|---:|---:|",
    ]
    for label, values in costs.items():
        if values:
            lines.append(
                f"| {label} | {statistics.median(values) * 1000:.1f} | {max(values) * 1000:.1f} |"
            )
    lines += [
        "",
        "### Index build: `CREATE INDEX ASYNC` + `sys.wait_for_job` vs PostgreSQL `CREATE INDEX`",
        "",
        "| rows | PostgreSQL CREATE INDEX s | ASYNC job (submit → wait returns) s | ratio |",
        "|---:|---:|---:|---:|",
    ]
    for rows, pg_s, async_s in builds:
        lines.append(f"| {rows:,} | {pg_s:.2f} | {async_s:.2f} | {async_s / pg_s:.2f}x |")
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines += [
        "",
        "The async build is `CREATE INDEX CONCURRENTLY` (two table scans, waits for older",
        "snapshots) run by the job runner, so it costs more than a plain build but blocks no one.",
        "",
        f"_{now}, {time.perf_counter() - started:.0f} s, Python {platform.python_version()}, "
        f"{platform.machine()}_",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
