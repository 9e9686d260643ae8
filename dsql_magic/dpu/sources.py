"""Where DPU figures come from: adapters that turn each source's answer into `DpuFigures`.

- `EmulatorMeter`: the emulator's own meter, read with ``SELECT * FROM sys.session_dpu()`` before
  and after a cell (exact for the emulator, immediate). Only asked of loopback endpoints, so a real
  cluster never sees the query.
- `figures_from_plan`: the ``Statement DPU Estimate`` block of ``EXPLAIN ANALYZE VERBOSE``.
- `CloudWatchSource`: ``AWS/AuroraDSQL`` metrics ``ComputeDPU``/``ReadDPU``/``WriteDPU``/
  ``TotalDPU`` for dimension ``ResourceId`` = cluster id, via boto3 ``get_metric_data``: per
  minute, cluster-wide (every client's work, plus background work), arriving minutes later.

Each adapter reads; none records, displays or caches tokens. Errors from a source become a short
note on the entry, never a failed cell.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import psycopg
from psycopg import pq

from dsql_magic.dpu.ledger import CLOUDWATCH, DpuFigures, DpuLedger, LedgerEntry
from dsql_magic.explain.model import Plan

SESSION_DPU_SQL: Final = "SELECT * FROM sys.session_dpu()"
NAMESPACE: Final = "AWS/AuroraDSQL"
DIMENSION: Final = "ResourceId"
METRICS: Final = {
    "compute": "ComputeDPU",
    "read": "ReadDPU",
    "write": "WriteDPU",
    "total": "TotalDPU",
}
MINUTE: Final = dt.timedelta(minutes=1)
#: After this long without a datapoint, a CloudWatch minute is taken as zero (no activity).
CLOUDWATCH_GIVE_UP: Final = dt.timedelta(minutes=15)
_LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})


# ----------------------------------------------------------------------------- emulator meter


@dataclass(frozen=True)
class MeterReading:
    """The session's running totals as ``sys.session_dpu()`` reports them."""

    figures: DpuFigures
    statements: int
    transactions: int


def is_local(host: str, hostaddr: str | None) -> bool:
    """True for an endpoint dialled on loopback: the emulator, never a real cluster."""
    return (hostaddr or host) in _LOOPBACK


def read_meter(conn: psycopg.Connection[Any], *, known_meter: bool = False) -> MeterReading | None:
    """The session's DPU so far, or None when the server has no meter (not the emulator).

    Inside an open transaction it asks only a server already known to have the meter, so that a
    server without the function can never abort the user's transaction.
    """
    status = conn.info.transaction_status
    if not (
        status == pq.TransactionStatus.IDLE
        or (known_meter and status == pq.TransactionStatus.INTRANS)
    ):
        return None
    try:
        with conn.cursor() as cur:
            # Never a server-side prepared statement: the answer must be computed now (a
            # prepared sys.session_dpu() on the emulator returned the figures of its Parse).
            cur.execute(SESSION_DPU_SQL, prepare=False)
            row = cur.fetchone()
            names = [c.name for c in cur.description or []]
    except psycopg.Error:
        if not conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.INERROR:
            conn.rollback()  # we were IDLE: only our own failed query is rolled back
        return None
    if row is None:
        return None
    values = dict(zip(names, row, strict=False))
    try:
        figures = DpuFigures(
            compute=_number(values["compute"]),
            read=_number(values["read"]),
            write=_number(values["write"]),
            total=_number(values["total"]),
        )
        return MeterReading(
            figures, int(values.get("statements", 0)), int(values.get("transactions", 0))
        )
    except (KeyError, TypeError, ValueError):
        return None


def meter_delta(before: MeterReading, after: MeterReading) -> DpuFigures:
    """What happened between two readings (never negative: a reconnect resets the meter)."""
    b, a = before.figures, after.figures
    if a.sum < b.sum:
        return a
    return DpuFigures(
        compute=round(a.compute - b.compute, 6),
        read=round(a.read - b.read, 6),
        write=round(a.write - b.write, 6),
        total=round(a.sum - b.sum, 6),
    )


def _number(value: object) -> float:
    if isinstance(value, float | int | Decimal | str):
        return float(value)
    raise TypeError(f"not a number: {type(value).__name__}")


# ---------------------------------------------------------------------------- EXPLAIN estimate


def figures_from_plan(plan: Plan) -> DpuFigures | None:
    """The plan's ``Statement DPU Estimate``, or None when it has none."""
    if plan.dpu is None:
        return None
    get = plan.dpu.get
    return DpuFigures(
        compute=get("compute") or 0.0,
        read=get("read") or 0.0,
        write=get("write") or 0.0,
        total=get("total"),
    )


# ---------------------------------------------------------------------------------- CloudWatch


def minute_floor(t: dt.datetime) -> dt.datetime:
    return t.replace(second=0, microsecond=0)


class CloudWatchSource:
    """Cluster-wide DPU per minute from CloudWatch, for one cluster."""

    label = CLOUDWATCH

    def __init__(self, client: Any, cluster_id: str) -> None:
        self.client = client  # a boto3 CloudWatch client (AWS, moto, or the emulator's endpoint)
        self.cluster_id = cluster_id
        self._claimed: set[dt.datetime] = set()  # minutes already attributed to an entry

    def minutes(self, start: dt.datetime, end: dt.datetime) -> dict[dt.datetime, DpuFigures]:
        """DPU per minute in [start, end), by minute start (UTC); minutes without data absent."""
        queries = [
            {
                "Id": key,
                "MetricStat": {
                    "Metric": {
                        "Namespace": NAMESPACE,
                        "MetricName": metric,
                        "Dimensions": [{"Name": DIMENSION, "Value": self.cluster_id}],
                    },
                    "Period": 60,
                    "Stat": "Sum",
                },
                "ReturnData": True,
            }
            for key, metric in METRICS.items()
        ]
        values: dict[str, dict[dt.datetime, float]] = {k: {} for k in METRICS}
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "MetricDataQueries": queries,
                "StartTime": start,
                "EndTime": end,
                "ScanBy": "TimestampAscending",
            }
            if token:
                kwargs["NextToken"] = token
            answer = self.client.get_metric_data(**kwargs)
            for result in answer.get("MetricDataResults", []):
                key = result.get("Id")
                if key not in values:
                    continue
                for stamp, value in zip(
                    result.get("Timestamps", []), result.get("Values", []), strict=False
                ):
                    minute = minute_floor(_utc(stamp))
                    values[key][minute] = values[key].get(minute, 0.0) + float(value)
            token = answer.get("NextToken")
            if not token:
                break
        stamps = sorted(set().union(*[set(v) for v in values.values()]))
        return {
            m: DpuFigures(
                compute=values["compute"].get(m, 0.0),
                read=values["read"].get(m, 0.0),
                write=values["write"].get(m, 0.0),
                total=values["total"].get(m),
            )
            for m in stamps
        }

    def fill(self, ledger: DpuLedger, now: dt.datetime) -> int:
        """Fill pending CloudWatch entries whose minutes have data (or are too old to get any).

        Each minute is attributed to the first entry that covers it, so that cells sharing a
        minute do not count it twice. Returns how many entries were filled.
        """
        pending = [e for e in ledger.pending() if e.source == CLOUDWATCH]
        if not pending:
            return 0
        start = min(minute_floor(e.started) for e in pending)
        end = max(minute_floor(e.ended) for e in pending) + MINUTE
        data = self.minutes(start, end)
        filled = 0
        for entry in pending:
            covered = _minutes_of(entry)
            have = [m for m in covered if m in data]
            old_enough = now - entry.ended > CLOUDWATCH_GIVE_UP
            if not have and not old_enough:
                continue
            mine = [m for m in covered if m not in self._claimed]
            total = DpuFigures(0.0, 0.0, 0.0, 0.0)
            for m in mine:
                if m in data:
                    total = total + data[m]
            self._claimed.update(mine)
            ledger.fill(entry.id, total, note=_note(covered, mine, have))
            filled += 1
        return filled


def _minutes_of(entry: LedgerEntry) -> list[dt.datetime]:
    out = []
    m = minute_floor(entry.started)
    while m <= entry.ended:
        out.append(m)
        m += MINUTE
    return out


def _note(covered: list[dt.datetime], mine: list[dt.datetime], have: list[dt.datetime]) -> str:
    first, last = covered[0], covered[-1]
    span = f"{first:%H:%M}" + (f"–{last:%H:%M}" if last != first else "")
    note = f"cluster-wide, minute {span} UTC (all clients and background work)"
    if len(mine) < len(covered):
        note += "; a minute shared with an earlier cell is counted there"
    if not have:
        note += "; no datapoints (no activity reported)"
    return note


def _utc(stamp: object) -> dt.datetime:
    if isinstance(stamp, dt.datetime):
        return (
            stamp.astimezone(dt.timezone.utc)
            if stamp.tzinfo
            else stamp.replace(tzinfo=dt.timezone.utc)
        )
    if isinstance(stamp, str):
        return _utc(dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")))
    raise TypeError(f"unexpected timestamp {stamp!r}")


def cloudwatch_client(
    region: str, *, profile: str | None = None, endpoint_url: str | None = None, **extra: Any
) -> Any:
    """A boto3 CloudWatch client with short timeouts (a badge must never hang a notebook)."""
    import boto3
    from botocore.config import Config

    session = boto3.Session(profile_name=profile, region_name=region, **extra)
    config = Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 2})
    return session.client("cloudwatch", endpoint_url=endpoint_url or None, config=config)


def describe_error(exc: BaseException) -> str:
    """A short, secret-free description of a source failure."""
    code: Mapping[str, Any] = getattr(exc, "response", {}).get("Error", {}) or {}
    if code.get("Code"):
        return f"CloudWatch unavailable: {code.get('Code')}"
    return f"CloudWatch unavailable: {type(exc).__name__}"
