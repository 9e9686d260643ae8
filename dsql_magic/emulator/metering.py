"""The emulator's DPU meter: a documented model of Aurora DSQL's DPUs, and what it has counted.

Three things live here, in this order:

1. The **model** (`Work` → `Dpu`): compute from execution time, read from storage requests, rows
   and bytes read, write from rows (table and index rows) and bytes written. The coefficients are
   calibrated on the manual's two ``Statement DPU Estimate`` examples (docs/dpu-model.md shows the
   arithmetic). The figures are *directional estimates*, never billing: real DSQL's formula is not
   published.
2. The **meter** (`Meter`): per statement, per transaction (with DSQL's transaction minimums),
   per session and per cluster, plus per-minute buckets named as the CloudWatch metrics of
   namespace ``AWS/AuroraDSQL``. Thread-safe: sessions record from the event loop while the
   CloudWatch endpoint reads from its own thread.
3. The **hook** (`MeteringHook`): meters every client statement cheaply, from what the statement
   returned or affected (its command tag) and how long it took, without running EXPLAIN; answers
   ``SELECT * FROM sys.session_dpu()`` and ``sys.last_statement_dpu()`` so a client can read its own
   figures.

It must not speak the wire protocol, start servers or import the session; the only SQL it runs is
a cached catalog lookup (index counts and row width of a written table) through the hook context.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .statements import StatementKind

if TYPE_CHECKING:
    from .hooks import CommandResult, StatementContext, Synthetic
    from .statements import Statement

# --- the model -------------------------------------------------------------------------------
# Calibration (docs/dpu-model.md): manual example 1 (SELECT of 120 rows × 36 bytes, 4.528 ms)
# gives Compute 0.01607, Read 0.04312; example 2 (INSERT of 3 rows × 122 bytes, 0.543 ms) gives
# Compute 0.01550, Read 0.00307, Write 0.01875.
COMPUTE_BASE_DPU = 0.015422  # per statement that reaches the query processor
COMPUTE_DPU_PER_MS = 0.000143  # per millisecond of execution
READ_DPU_PER_REQUEST = 0.0010233  # per storage request: a scan, a point lookup, a key check
READ_DPU_PER_ROW = 0.0001  # per row read from storage (before storage filters)
READ_DPU_PER_BYTE = 0.00000697  # per byte read from storage
WRITE_DPU_PER_ROW = 0.005  # per table or index row written
WRITE_DPU_PER_BYTE = 0.00001025  # per byte written
INDEX_ENTRY_BYTES = 32  # assumed size of one secondary-index row (key + row id)
DEFAULT_ROW_BYTES = 64  # assumed row size when nothing better is known

# Transaction minimums, from the manual's example 2 ("Transaction minimum: 0.00375 / 0.05000").
TRANSACTION_MIN_READ_DPU = 0.00375
TRANSACTION_MIN_WRITE_DPU = 0.05

DECIMALS = 5


@dataclass(slots=True)
class Work:
    """What a statement did, in the model's terms (all counts summed over loops).

    Value objects: treat as immutable (not frozen only because frozen construction costs
    microseconds on every metered statement).
    """

    execution_ms: float = 0.0
    storage_requests: int = 0
    rows_read: int = 0
    bytes_read: int = 0
    rows_written: int = 0  # table rows plus index rows
    bytes_written: int = 0
    processed: bool = True  # False: never reached the query processor (no compute charged)


@dataclass(slots=True)
class Dpu:
    """Compute, Read and Write DPUs; Total is their sum (as the manual defines it)."""

    compute: float = 0.0
    read: float = 0.0
    write: float = 0.0

    @property
    def total(self) -> float:
        return self.compute + self.read + self.write

    def __add__(self, other: Dpu) -> Dpu:
        return Dpu(self.compute + other.compute, self.read + other.read, self.write + other.write)

    def rounded(self) -> Dpu:
        """Each part at five decimals, as DSQL prints them (Total is then the sum of these)."""
        return Dpu(
            round(self.compute, DECIMALS), round(self.read, DECIMALS), round(self.write, DECIMALS)
        )


def estimate(work: Work) -> Dpu:
    """The model: DPUs of one statement from its work (see the module docstring)."""
    compute = 0.0
    if work.processed:
        compute = COMPUTE_BASE_DPU + COMPUTE_DPU_PER_MS * max(0.0, work.execution_ms)
    read = (
        READ_DPU_PER_REQUEST * work.storage_requests
        + READ_DPU_PER_ROW * work.rows_read
        + READ_DPU_PER_BYTE * work.bytes_read
    )
    write = WRITE_DPU_PER_ROW * work.rows_written + WRITE_DPU_PER_BYTE * work.bytes_written
    return Dpu(compute, read, write)


def with_transaction_minimums(dpu: Dpu, *, read: bool, wrote: bool) -> Dpu:
    """A transaction's DPUs after DSQL's minimums, which apply only if it read / wrote at all."""
    return Dpu(
        dpu.compute,
        max(dpu.read, TRANSACTION_MIN_READ_DPU) if read else dpu.read,
        max(dpu.write, TRANSACTION_MIN_WRITE_DPU) if wrote else dpu.write,
    )


def dpu_block(dpu: Dpu, *, writes: bool) -> list[str]:
    """The ``Statement DPU Estimate:`` lines of EXPLAIN ANALYZE VERBOSE, five decimals.

    As in the manual's examples, a writing statement shows the transaction minimums next to Read
    and Write; a read-only one shows none. Total is the sum of the three printed figures.
    """
    d = dpu.rounded()
    read = f"  Read: {d.read:.5f} DPU"
    write = f"  Write: {d.write:.5f} DPU"
    if writes:
        read += f" (Transaction minimum: {TRANSACTION_MIN_READ_DPU:.5f})"
        write += f" (Transaction minimum: {TRANSACTION_MIN_WRITE_DPU:.5f})"
    return [
        "Statement DPU Estimate:",
        f"  Compute: {d.compute:.5f} DPU",
        read,
        write,
        f"  Total: {d.total:.5f} DPU",
    ]


def dpu_json(dpu: Dpu, *, writes: bool) -> dict[str, float]:
    """The same block for ``FORMAT JSON`` (key ``"Statement DPU Estimate"`` of the top object)."""
    d = dpu.rounded()
    out = {"Compute": d.compute, "Read": d.read, "Write": d.write, "Total": round(d.total, 5)}
    if writes:
        out["Read Transaction Minimum"] = TRANSACTION_MIN_READ_DPU
        out["Write Transaction Minimum"] = TRANSACTION_MIN_WRITE_DPU
    return out


# --- the meter -------------------------------------------------------------------------------

# CloudWatch metric names (manual, "Monitoring Aurora DSQL with Amazon CloudWatch").
METRICS = (
    "TotalDPU",
    "ReadDPU",
    "WriteDPU",
    "ComputeDPU",
    "TotalTransactions",
    "ReadOnlyTransactions",
    "OccConflicts",
    "CommitLatency",
    "BytesRead",
    "BytesWritten",
    "ComputeTime",
)
MINUTE = 60
RETENTION_MINUTES = 6 * 60  # per-minute metrics kept six hours (memory stays bounded)
_MAX_SAMPLES = 2000  # transactions kept whole per minute (statistics exact up to this)
_FOLD_BATCH = 500  # later transactions are folded into aggregates this many at a time


@dataclass(slots=True)
class StatementFigures:
    """One metered statement: its DPUs (statement level, no minimums) and its work."""

    command: str
    dpu: Dpu
    work: Work
    reads: bool
    writes: bool


@dataclass(slots=True)
class Totals:
    """Accumulated figures: transaction-level DPUs (minimums applied) and counts."""

    compute: float = 0.0
    read: float = 0.0
    write: float = 0.0
    statements: int = 0
    transactions: int = 0

    @property
    def total(self) -> float:
        return self.compute + self.read + self.write

    def add(self, dpu: Dpu) -> None:
        self.compute += dpu.compute
        self.read += dpu.read
        self.write += dpu.write


class _Stat:
    """One metric's figures in one minute (or period): enough for CloudWatch's statistics."""

    __slots__ = ("count", "maximum", "minimum", "samples", "total")

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0
        self.minimum = math.inf
        self.maximum = -math.inf
        self.samples: list[float] = []

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1
        if value < self.minimum:
            self.minimum = value
        if value > self.maximum:
            self.maximum = value
        if len(self.samples) < _MAX_SAMPLES:
            self.samples.append(value)

    def merge(self, other: _Stat) -> None:
        self.total += other.total
        self.count += other.count
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        self.samples.extend(other.samples[: max(0, _MAX_SAMPLES - len(self.samples))])

    def value(self, stat: str) -> float:
        """CloudWatch's statistic ``stat``: Sum, Average, Minimum, Maximum, SampleCount, pNN."""
        if stat == "Sum":
            return self.total
        if stat == "SampleCount":
            return float(self.count)
        if stat == "Average":
            return self.total / self.count if self.count else 0.0
        if stat == "Minimum":
            return self.minimum
        if stat == "Maximum":
            return self.maximum
        if stat.startswith("p"):
            pct = float(stat[1:])
            ordered = sorted(self.samples)
            if not ordered:
                return 0.0
            k = min(len(ordered) - 1, max(0, math.ceil(pct / 100.0 * len(ordered)) - 1))
            return ordered[k]
        raise ValueError(stat)


class _Minute:
    """One minute of metrics, one row per transaction (a value per metric, None for "no
    sample"). The first `_MAX_SAMPLES` rows are kept whole (exact statistics, percentiles);
    later ones are folded into per-metric aggregates in batches, so recording stays one append.
    """

    __slots__ = ("folded", "pending", "rows")

    def __init__(self) -> None:
        self.rows: list[Sequence[float | None]] = []
        self.pending: list[Sequence[float | None]] = []
        self.folded: list[_Stat | None] = [None] * len(METRICS)

    def add_row(self, row: Sequence[float | None]) -> None:
        if len(self.rows) < _MAX_SAMPLES:
            self.rows.append(row)
            return
        self.pending.append(row)
        if len(self.pending) >= _FOLD_BATCH:
            self.fold()

    def fold(self) -> None:
        for i, column in enumerate(zip(*self.pending, strict=True)):
            values = [v for v in column if v is not None]
            if not values:
                continue
            stat = self.folded[i]
            if stat is None:
                stat = self.folded[i] = _Stat()
            stat.total += math.fsum(values)
            stat.count += len(values)
            stat.minimum = min(stat.minimum, min(values))
            stat.maximum = max(stat.maximum, max(values))
        self.pending.clear()

    def stat(self, index: int) -> _Stat:
        self.fold()
        out = _Stat()
        values = [v for r in self.rows if (v := r[index]) is not None]
        if values:
            out.total = math.fsum(values)
            out.count = len(values)
            out.minimum = min(values)
            out.maximum = max(values)
            out.samples = values
        folded = self.folded[index]
        if folded is not None:
            out.merge(folded)
        return out


_INDEX = {name: i for i, name in enumerate(METRICS)}


STATISTICS = ("Sum", "Average", "Minimum", "Maximum", "SampleCount")


def valid_statistic(stat: str) -> bool:
    """True for the statistics `Meter.datapoints` can compute (pNN with 0 <= NN <= 100)."""
    if stat in STATISTICS:
        return True
    if stat.startswith("p"):
        try:
            return 0.0 <= float(stat[1:]) <= 100.0
        except ValueError:
            return False
    return False


@dataclass(slots=True)
class _Pending:
    dpu: Dpu = field(default_factory=Dpu)
    work_bytes_read: int = 0
    work_bytes_written: int = 0
    execution_ms: float = 0.0
    reads: bool = False
    writes: bool = False
    statements: int = 0


class Meter:
    """Everything metered by one emulator, per session, per cluster and per minute.

    ``clock`` (seconds since the epoch) is injectable so tests can place transactions in minutes.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time, enabled: bool = True) -> None:
        self.clock = clock
        self.enabled = enabled
        self._lock = threading.Lock()
        self._sessions: dict[int, Totals] = {}
        self._pending: dict[int, _Pending] = {}
        self._last: dict[int, StatementFigures] = {}
        self._cluster = Totals()
        self._minutes: dict[int, _Minute] = {}
        self._current_start = -math.inf
        self._current = _Minute()

    # recording
    def record_statement(
        self, session_id: int, figures: StatementFigures, *, ends_transaction: bool = False
    ) -> None:
        """Add a statement to its session's open transaction (and end it, if it was its own)."""
        if not self.enabled:
            return
        with self._lock:
            if ends_transaction and session_id not in self._pending:
                self._record_own(session_id, figures)
                return
            # With a transaction open (e.g. a write earlier in the same multi-statement query),
            # the statement joins it; that transaction's end closes both.
            self._record(session_id, figures)

    def _record_own(self, session_id: int, f: StatementFigures) -> None:
        """The common case, kept cheap: a statement that is a whole committed transaction."""
        dpu = f.dpu
        compute, read, write = dpu.compute, dpu.read, dpu.write
        if f.reads and read < TRANSACTION_MIN_READ_DPU:
            read = TRANSACTION_MIN_READ_DPU
        if f.writes and write < TRANSACTION_MIN_WRITE_DPU:
            write = TRANSACTION_MIN_WRITE_DPU
        self._last[session_id] = f
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = Totals()
        for totals in (session, self._cluster):
            totals.compute += compute
            totals.read += read
            totals.write += write
            totals.statements += 1
            totals.transactions += 1
        work = f.work
        self._minute().add_row(
            (
                compute + read + write,
                read,
                write,
                compute,
                1.0,
                None if f.writes else 1.0,
                None,
                None,
                float(work.bytes_read),
                float(work.bytes_written),
                work.execution_ms,
            )
        )

    def _record(self, session_id: int, figures: StatementFigures) -> None:
        pending = self._pending.setdefault(session_id, _Pending())
        pending.dpu = pending.dpu + figures.dpu
        pending.work_bytes_read += figures.work.bytes_read
        pending.work_bytes_written += figures.work.bytes_written
        pending.execution_ms += figures.work.execution_ms
        pending.reads = pending.reads or figures.reads
        pending.writes = pending.writes or figures.writes
        pending.statements += 1
        self._last[session_id] = figures
        self._sessions.setdefault(session_id, Totals()).statements += 1
        self._cluster.statements += 1

    def end_transaction(
        self,
        session_id: int,
        *,
        committed: bool,
        commit_latency_ms: float | None = None,
        occ_conflict: bool = False,
    ) -> Dpu | None:
        """Close the session's open transaction: apply the minimums, add it everywhere.

        A transaction that did not commit wrote nothing to storage: its Write DPUs are dropped,
        its Compute and Read stay (the work was done). Returns the transaction's DPUs, or None
        if it had no metered statement.
        """
        if not self.enabled:
            return None
        with self._lock:
            return self._end(session_id, committed, commit_latency_ms, occ_conflict)

    def _end(
        self,
        session_id: int,
        committed: bool,
        commit_latency_ms: float | None,
        occ_conflict: bool,
    ) -> Dpu | None:
        pending = self._pending.pop(session_id, None)
        if pending is None or pending.statements == 0:
            if occ_conflict:
                self._occ()
            return None
        wrote = pending.writes and committed
        dpu = pending.dpu if committed else Dpu(pending.dpu.compute, pending.dpu.read, 0.0)
        dpu = with_transaction_minimums(dpu, read=pending.reads, wrote=wrote)
        session = self._sessions.setdefault(session_id, Totals())
        for totals in (session, self._cluster):
            totals.add(dpu)
            totals.transactions += 1
        # In METRICS order; None: this transaction adds no sample to that metric.
        self._minute().add_row(
            (
                dpu.total,
                dpu.read,
                dpu.write,
                dpu.compute,
                1.0,
                None if pending.writes else 1.0,
                1.0 if occ_conflict else None,
                commit_latency_ms if committed else None,
                float(pending.work_bytes_read),
                float(pending.work_bytes_written if wrote else 0),
                pending.execution_ms,
            )
        )
        return dpu

    def record_occ_conflict(self) -> None:
        """Count one transaction aborted by OCC (the OCC hook may call this; see the docs)."""
        if self.enabled:
            with self._lock:
                self._occ()

    def _occ(self) -> None:
        row: list[float | None] = [None] * len(METRICS)
        row[_INDEX["OccConflicts"]] = 1.0
        self._minute().add_row(tuple(row))

    def close_session(self, session_id: int) -> None:
        """Forget a disconnected session (its open transaction, if any, rolled back)."""
        self.end_transaction(session_id, committed=False)
        with self._lock:
            self._sessions.pop(session_id, None)
            self._last.pop(session_id, None)

    def _minute(self) -> _Minute:
        now = self.clock()
        if self._current_start <= now < self._current_start + MINUTE:
            return self._current
        start = int(now // MINUTE * MINUTE)
        bucket = self._minutes.get(start)
        if bucket is None:
            bucket = _Minute()
            self._minutes[start] = bucket
            self._expire(start)
        self._current_start, self._current = start, bucket
        return bucket

    def _expire(self, now_start: int) -> None:
        """Forget minutes older than `RETENTION_MINUTES` (memory stays bounded)."""
        oldest = now_start - RETENTION_MINUTES * MINUTE
        for start in [m for m in self._minutes if m < oldest]:
            del self._minutes[start]

    # reading
    def session_totals(self, session_id: int) -> Totals:
        """The session's figures so far: ended transactions plus its open one (no minimums yet)."""
        with self._lock:
            base = self._sessions.get(session_id, Totals())
            out = Totals(base.compute, base.read, base.write, base.statements, base.transactions)
            pending = self._pending.get(session_id)
            if pending is not None:
                out.add(pending.dpu)
            return out

    def last_statement(self, session_id: int) -> StatementFigures | None:
        with self._lock:
            return self._last.get(session_id)

    def cluster_totals(self) -> Totals:
        with self._lock:
            c = self._cluster
            return Totals(c.compute, c.read, c.write, c.statements, c.transactions)

    def datapoints(
        self, metric: str, start: float, end: float, period: int, stat: str
    ) -> list[tuple[int, float]]:
        """(timestamp, value) per ``period``-second bucket in [start, end) holding data, oldest
        first; the buckets are aligned on multiples of ``period`` since the epoch."""
        if metric not in METRICS:
            return []
        period = max(MINUTE, period // MINUTE * MINUTE)
        groups: dict[int, _Stat] = {}
        with self._lock:
            index = _INDEX[metric]
            for minute, stats in self._minutes.items():
                if not start <= minute < end:
                    continue
                s = stats.stat(index)
                if s.count == 0:
                    continue
                bucket = minute // period * period
                groups.setdefault(bucket, _Stat()).merge(s)
        return [(ts, groups[ts].value(stat)) for ts in sorted(groups)]

    def metric_names(self) -> Iterable[str]:
        return METRICS


# --- the hook --------------------------------------------------------------------------------

SESSION_DPU_COLUMNS = ("compute", "read", "write", "total", "statements", "transactions")
LAST_STATEMENT_COLUMNS = ("command", "compute", "read", "write", "total")
SKIP_NEXT = "dpu_skip_next"  # ctx.session key: the statement a hook answered and metered itself
_SYS_FUNCTIONS = {"session_dpu", "last_statement_dpu"}
_CHEAP_COMMANDS = {"SET", "SHOW", "RESET", "DISCARD", "DEALLOCATE", "LISTEN", "UNLISTEN"}


def meter_of(cluster: Any) -> Meter:
    """The cluster's meter, created on first use (shared by the hooks and CloudWatch)."""
    meter = getattr(cluster, "meter", None)
    if not isinstance(meter, Meter):
        meter = Meter()
        setattr(cluster, "meter", meter)  # noqa: B010 (Cluster declares no meter)
    return meter


def sys_function(stmt: Statement) -> str | None:
    """``"session_dpu"`` for ``SELECT * FROM sys.session_dpu()`` (likewise the other), else None.

    Only a plain ``SELECT … FROM sys.<fn>()`` with no other FROM item is recognised.
    """
    if stmt.node_name != "select_stmt" or "_dpu" not in stmt.text:
        return None
    inner = stmt.inner
    if len(inner.from_clause) != 1 or inner.where_clause.WhichOneof("node"):
        return None
    item = inner.from_clause[0]
    if item.WhichOneof("node") != "range_function":
        return None
    funcs = item.range_function.functions
    if len(funcs) != 1:
        return None
    call = funcs[0].list.items[0]
    if call.WhichOneof("node") != "func_call":
        return None
    names = [n.string.sval for n in call.func_call.funcname]
    if len(names) == 2 and names[0] == "sys" and names[1] in _SYS_FUNCTIONS:
        return names[1]
    return None


def sys_reply(meter: Meter, session_id: int, function: str) -> Synthetic:
    """The Synthetic answer of ``sys.session_dpu()`` / ``sys.last_statement_dpu()``."""
    from .hooks import Synthetic

    numeric = 1700
    int8 = 20
    if function == "session_dpu":
        t = meter.session_totals(session_id)
        d = Dpu(t.compute, t.read, t.write).rounded()  # Total: the sum of the printed parts
        row = (
            f"{d.compute:.5f}",
            f"{d.read:.5f}",
            f"{d.write:.5f}",
            f"{d.total:.5f}",
            t.statements,
            t.transactions,
        )
        return Synthetic(SESSION_DPU_COLUMNS, [row], "SELECT 1", [numeric] * 4 + [int8, int8])
    last = meter.last_statement(session_id)
    rows = []
    if last is not None:
        d = last.dpu.rounded()
        total = f"{d.total:.5f}"
        rows.append((last.command, f"{d.compute:.5f}", f"{d.read:.5f}", f"{d.write:.5f}", total))
    types = [25, numeric, numeric, numeric, numeric]
    return Synthetic(LAST_STATEMENT_COLUMNS, rows, f"SELECT {len(rows)}", types)


@dataclass(frozen=True)
class TableFacts:
    """What metering a write needs to know about its table (cached per catalog version)."""

    secondary_indexes: int
    unique_keys: int  # primary key and unique indexes: each inserted row is checked against them
    row_bytes: int


TABLE_FACTS_SQL = """
SELECT (SELECT count(*) FROM pg_index x WHERE x.indrelid = c.oid AND NOT x.indisprimary),
       (SELECT count(*) FROM pg_index x WHERE x.indrelid = c.oid AND x.indisunique),
       (SELECT coalesce(sum(coalesce(s.avg_width,
                 CASE WHEN t.typlen > 0 THEN t.typlen ELSE 32 END)), 0)
          FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
          LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname
               AND s.attname = a.attname
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = to_regclass($1)
"""


def _target_table(stmt: Statement) -> str | None:
    rel = getattr(stmt.inner, "relation", None)
    if rel is None or not rel.relname:
        return None
    name = '"' + rel.relname.replace('"', '""') + '"'
    if rel.schemaname:
        name = '"' + rel.schemaname.replace('"', '""') + '".' + name
    return name


_TRANSACTIONAL_KINDS = frozenset({StatementKind.DML, StatementKind.DDL, StatementKind.TRANSACTION})
_UNMETERED_KINDS = frozenset({StatementKind.TRANSACTION, StatementKind.EMPTY, StatementKind.IAM})


def _own_transaction(stmt: Statement, ctx: StatementContext) -> bool:
    """Read-only statements outside a block run without a transaction of the session's: no
    after_end follows, so they are their own transaction."""
    return not ctx.in_transaction and stmt.kind not in _TRANSACTIONAL_KINDS


class MeteringHook:
    """Meters every statement the session runs, and answers the ``sys`` DPU functions.

    Cheap by design (docs/dpu-model.md, "Metering every statement"): no EXPLAIN, only the
    statement's command tag (rows returned or affected), its wall time between ``before`` and
    ``after``, and, for writes, a catalog lookup cached per table and catalog version.
    """

    def __init__(self, meter: Meter | None = None) -> None:
        self._meter = meter
        self._facts: dict[tuple[str, int], TableFacts] = {}

    def meter(self, ctx: StatementContext) -> Meter:
        if self._meter is None:
            self._meter = meter_of(ctx.cluster)
        elif getattr(ctx.cluster, "meter", None) is not self._meter:
            setattr(ctx.cluster, "meter", self._meter)  # noqa: B010 (Cluster declares no meter)
        return self._meter

    async def before(self, stmt: Statement, ctx: StatementContext) -> Synthetic | None:
        function = sys_function(stmt)
        if function is not None:
            ctx.session[SKIP_NEXT] = stmt
            return sys_reply(self.meter(ctx), ctx.session_id, function)
        if ctx.session.get(SKIP_NEXT) is not stmt:
            ctx.session.pop(SKIP_NEXT, None)  # stale: a hook's reply got no after()
        ctx.session["dpu_started"] = time.perf_counter()
        return None

    def observe_read(self, stmt: Statement, result: CommandResult, ctx: StatementContext) -> None:
        """A read, metered as it completes (no catalog lookup: its tag says all we use)."""
        started = ctx.session.pop("dpu_started", None)
        if ctx.session.pop(SKIP_NEXT, None) is stmt:
            return  # answered by a hook (sys functions, EXPLAIN) that metered it already
        if stmt.kind in _UNMETERED_KINDS or stmt.command in _CHEAP_COMMANDS:
            self._maybe_end(stmt, ctx)
            return
        rows = result.rows_affected or 0
        work = Work(self._elapsed_ms(result, started), 1, rows, rows * DEFAULT_ROW_BYTES)
        self._record(stmt, work, ctx)

    @staticmethod
    def _elapsed_ms(result: CommandResult, started: float | None) -> float:
        """The session's own timing when it has one, else since `before`."""
        if result.elapsed_ms is not None:
            return result.elapsed_ms
        return (time.perf_counter() - started) * 1000.0 if started is not None else 0.0

    async def after(self, stmt: Statement, result: CommandResult, ctx: StatementContext) -> None:
        started = ctx.session.pop("dpu_started", None)
        if ctx.session.pop(SKIP_NEXT, None) is stmt:
            return  # answered by a hook (sys functions, EXPLAIN) that metered it already
        kind = stmt.kind
        if kind in _UNMETERED_KINDS or stmt.command in _CHEAP_COMMANDS:
            self._maybe_end(stmt, ctx)
            return
        elapsed_ms = self._elapsed_ms(result, started)
        if kind is StatementKind.QUERY:  # the common case, without a coroutine
            rows = result.rows_affected or 0
            work = Work(elapsed_ms, 1, rows, rows * DEFAULT_ROW_BYTES)
        else:
            work = await self._work(stmt, result, ctx, elapsed_ms)
        self._record(stmt, work, ctx)

    def _record(self, stmt: Statement, work: Work, ctx: StatementContext) -> None:
        kind = stmt.kind
        writes = kind is StatementKind.DML or kind is StatementKind.DDL
        figures = StatementFigures(
            stmt.command, estimate(work), work, reads=work.storage_requests > 0, writes=writes
        )
        own = not ctx.in_transaction and kind not in _TRANSACTIONAL_KINDS
        meter = self._meter if self._meter is not None else self.meter(ctx)
        meter.record_statement(ctx.session_id, figures, ends_transaction=own)

    def _maybe_end(self, stmt: Statement, ctx: StatementContext) -> None:
        if _own_transaction(stmt, ctx):
            self.meter(ctx).end_transaction(ctx.session_id, committed=True)

    async def _work(
        self, stmt: Statement, result: CommandResult, ctx: StatementContext, elapsed_ms: float
    ) -> Work:
        rows = result.rows_affected or 0
        if stmt.kind is StatementKind.QUERY or stmt.command == "COPY":
            data_bytes = getattr(result, "data_bytes", None)
            nbytes = int(data_bytes) if data_bytes is not None else rows * DEFAULT_ROW_BYTES
            return Work(elapsed_ms, 1, rows, nbytes)
        if stmt.kind is StatementKind.DML:
            facts = await self._table_facts(stmt, ctx)
            written = rows * (1 + facts.secondary_indexes)
            nbytes = rows * facts.row_bytes + rows * facts.secondary_indexes * INDEX_ENTRY_BYTES
            if stmt.command == "INSERT":
                return Work(elapsed_ms, rows * facts.unique_keys, 0, 0, written, nbytes)
            return Work(elapsed_ms, 1, rows, rows * facts.row_bytes, written, nbytes)
        return Work(elapsed_ms)

    async def _table_facts(self, stmt: Statement, ctx: StatementContext) -> TableFacts:
        table = _target_table(stmt)
        version = int(getattr(ctx.cluster, "catalog_version", 0))
        default = TableFacts(0, 1, DEFAULT_ROW_BYTES)
        if table is None:
            return default
        key = (table, version)
        facts = self._facts.get(key)
        if facts is None:
            try:
                results = await ctx.execute(TABLE_FACTS_SQL, (table,))
            except Exception:  # metering must never fail a statement
                return default
            rows = results[-1].rows if results else ()
            if not rows or rows[0][0] is None:
                return default
            secondary, unique, width = rows[0]
            facts = TableFacts(int(secondary or 0), int(unique or 0), int(width or 0) or 1)
            if len(self._facts) > 4096:
                self._facts.clear()
            self._facts[key] = facts
        return facts

    async def before_commit(self, ctx: StatementContext) -> None:
        ctx.txn.setdefault(COMMIT_STARTED, time.perf_counter())  # if no probe ran before us

    async def after_end(self, ctx: StatementContext, committed: bool) -> None:
        started = ctx.txn.get(COMMIT_STARTED)
        latency = (time.perf_counter() - started) * 1000.0 if started is not None else None
        # A COMMIT that was attempted and did not commit was refused at commit time: with
        # DSQL's rules that is an OCC conflict (OC000/OC001); see docs/dpu-model.md.
        occ = bool(ctx.txn.get("occ_conflict")) or (not committed and started is not None)
        self.meter(ctx).end_transaction(
            ctx.session_id, committed=committed, commit_latency_ms=latency, occ_conflict=occ
        )

    async def on_disconnect(self, ctx: StatementContext) -> None:
        self.meter(ctx).close_session(ctx.session_id)


COMMIT_STARTED = "dpu_commit_started"  # ctx.txn key: when COMMIT processing began


class CommitProbe:
    """Registered first of all hooks: notes when COMMIT processing starts, before any rule hook
    can refuse it, so the meter sees commit latency and refused commits (OccConflicts)."""

    async def before_commit(self, ctx: StatementContext) -> None:
        ctx.txn[COMMIT_STARTED] = time.perf_counter()


def make_commit_probe(config: Any = None) -> CommitProbe | None:
    """The probe for `cluster.default_hooks` (None when the config turns metering off)."""
    if config is not None and getattr(config, "metering", True) is False:
        return None
    return CommitProbe()


def make_hook(config: Any = None) -> MeteringHook | None:
    """The metering hook for `cluster.default_hooks` (None when the config turns metering off)."""
    if config is not None and getattr(config, "metering", True) is False:
        return None
    return MeteringHook()
