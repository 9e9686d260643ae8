"""The DPU ledger, its display, and the sources that need no database: EXPLAIN estimates and
CloudWatch (moto-served metrics, and the emulator's own CloudWatch endpoint through boto3)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from dsql_magic.dpu.display import DpuBadge, DpuPlot, LedgerFrame
from dsql_magic.dpu.ledger import CLOUDWATCH, EMULATOR, EXPLAIN, DpuFigures, DpuLedger
from dsql_magic.dpu.sources import (
    CloudWatchSource,
    MeterReading,
    figures_from_plan,
    is_local,
    meter_delta,
)
from dsql_magic.explain import parse_plan

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
CLUSTER = "kzw9thuiur9llpo3oktms6tw9r"
PLANS = Path(__file__).parent / "fixtures" / "plans"


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


# ------------------------------------------------------------------------------------ the ledger


def test_figures_total_defaults_to_the_sum() -> None:
    f = DpuFigures(0.01607, 0.04312, 0.0)
    assert math.isclose(f.sum, 0.05919)
    assert DpuFigures(1, 2, 3, total=7).sum == 7  # a reported total is kept as reported
    both = f + DpuFigures(0.1, 0.2, 0.3)
    assert math.isclose(both.sum, 0.05919 + 0.6)


def test_ledger_records_frames_and_summarises_per_source() -> None:
    ledger = DpuLedger(clock=Clock(T0))
    ledger.record(source=EMULATOR, figures=DpuFigures(0.01, 0.02, 0.0), cell=1, sql="SELECT 1")
    ledger.record(source=EMULATOR, figures=DpuFigures(0.02, 0.0, 0.05), cell=2, statements=3)
    ledger.record(source=EXPLAIN, figures=DpuFigures(0.5, 0.5, 0.0), cell=2)
    pending = ledger.record(source=CLOUDWATCH, figures=None, cell=3, cluster_wide=True)
    df = ledger.frame(price_per_dpu=8e-6)
    assert list(df.columns[:6]) == ["cell", "statements", "compute", "read", "write", "total"]
    assert list(df["cell"]) == [1, 2, 2, 3]
    assert df["total"].iloc[:3].tolist() == pytest.approx([0.03, 0.07, 1.0])
    assert math.isnan(df["total"].iloc[3]) and math.isnan(df["cost_usd"].iloc[3])
    assert df["cost_usd"].iloc[2] == pytest.approx(8e-6)
    summary = ledger.summary(8e-6)
    assert summary["source"].tolist() == [EMULATOR, EXPLAIN]  # pending CloudWatch not counted
    assert summary["total"].tolist() == pytest.approx([0.1, 1.0])
    assert summary["entries"].tolist() == [2, 1]
    ledger.fill(pending.id, DpuFigures(1, 1, 1))
    assert ledger.pending() == [] and ledger.totals()[CLOUDWATCH].sum == 3
    with pytest.raises(KeyError):
        ledger.fill(999, DpuFigures())
    ledger.clear()
    assert ledger.frame(1.0).empty and ledger.summary(1.0).empty


def test_long_sql_is_shortened() -> None:
    entry = DpuLedger().record(source=EMULATOR, figures=DpuFigures(), sql="SELECT " + "x, " * 50)
    assert len(entry.sql) == 60 and entry.sql.endswith("…")


# ------------------------------------------------------------------------------------- display


def test_badge_text_and_html() -> None:
    ledger = DpuLedger(clock=Clock(T0))
    e1 = ledger.record(source=EMULATOR, figures=DpuFigures(0.01607, 0.04312, 0.0), note="exact")
    e2 = ledger.record(source=CLOUDWATCH, figures=None, cluster_wide=True)
    badge = DpuBadge([e1, e2], price_per_dpu=8e-6)
    lines = repr(badge).splitlines()
    assert lines[0] == (
        "DPU 0.05919 (compute 0.01607 · read 0.04312 · write 0.00000) ≈ $0.000000 "
        "· emulator meter · exact"
    )
    assert lines[1].startswith("DPU: pending from CloudWatch (cluster-wide)")
    html = badge._repr_html_()
    assert html.count('class="dsql-dpu-badge"') == 2
    assert "≈ $" not in repr(DpuBadge([e1], price_per_dpu=0.0))


def test_ledger_frame_shows_summary() -> None:
    ledger = DpuLedger(clock=Clock(T0))
    ledger.record(source=EMULATOR, figures=DpuFigures(0.01, 0.02, 0.0), cell=1)
    frame = LedgerFrame.build(ledger.frame(1.0), ledger.summary(1.0))
    assert list(frame["total"]) == pytest.approx([0.03])
    assert "Session summary" in (frame._repr_html_() or "")
    assert "session summary (per source)" in repr(frame)
    empty = LedgerFrame.build(DpuLedger().frame(1.0), DpuLedger().summary(1.0))
    assert "No DPU recorded yet" in (empty._repr_html_() or "")


def test_plot_is_svg_with_a_bar_per_cell() -> None:
    ledger = DpuLedger(clock=Clock(T0))
    for cell in (1, 2, 3):
        ledger.record(source=EMULATOR, figures=DpuFigures(0.01 * cell, 0.02, 0.0), cell=cell)
    ledger.record(source=EXPLAIN, figures=DpuFigures(0.05, 0.0, 0.0), cell=3)
    ledger.record(source=CLOUDWATCH, figures=None, cell=4)
    plot = DpuPlot(ledger.frame(1.0))
    svg = plot._repr_html_()
    assert svg.count("<svg") == 2  # one panel per source; the pending entry has no bar
    assert svg.count("<rect") == 3 * 2 + 1  # compute+read per emulator cell, compute for EXPLAIN
    assert "cell 3: compute 0.03000 DPU" in svg
    text = repr(plot)
    assert text.splitlines()[0] == "DPU per cell (compute/read/write):"
    assert len(text.splitlines()) == 5
    assert "No DPU recorded" in DpuPlot(DpuLedger().frame(1.0))._repr_html_()


# ------------------------------------------------------------------------------------- sources


def test_explain_estimate_source() -> None:
    plan = parse_plan((PLANS / "manual_dpu_insert.txt").read_text())
    figures = figures_from_plan(plan)
    assert figures == DpuFigures(0.0155, 0.00307, 0.01875, 0.03732)
    assert figures_from_plan(parse_plan((PLANS / "manual_full_scan.txt").read_text())) is None


def test_meter_delta() -> None:
    before = MeterReading(DpuFigures(0.1, 0.2, 0.3), 3, 2)
    after = MeterReading(DpuFigures(0.15, 0.2, 0.35), 5, 3)
    assert meter_delta(before, after) == DpuFigures(0.05, 0.0, 0.05, 0.1)
    reset = MeterReading(DpuFigures(0.01, 0.0, 0.0), 1, 1)  # a reconnect started a new session
    assert meter_delta(before, reset) == reset.figures


def test_is_local() -> None:
    assert is_local("abc.dsql.us-east-1.on.aws", "127.0.0.1")
    assert is_local("localhost", None)
    assert not is_local("abc.dsql.us-east-1.on.aws", None)


@pytest.fixture
def moto_cloudwatch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for var, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(var, value)
    with mock_aws():
        yield boto3.client("cloudwatch", region_name="us-east-1")


def put_minute(client: Any, minute: dt.datetime, compute: float, read: float, write: float) -> None:
    client.put_metric_data(
        Namespace="AWS/AuroraDSQL",
        MetricData=[
            {
                "MetricName": name,
                "Dimensions": [{"Name": "ResourceId", "Value": CLUSTER}],
                "Timestamp": minute + dt.timedelta(seconds=20),
                "Value": value,
                "Unit": "None",
            }
            for name, value in (
                ("ComputeDPU", compute),
                ("ReadDPU", read),
                ("WriteDPU", write),
                ("TotalDPU", compute + read + write),
            )
        ],
    )


def test_cloudwatch_minutes_from_moto(moto_cloudwatch: Any) -> None:
    put_minute(moto_cloudwatch, T0, 0.1, 0.2, 0.3)
    put_minute(moto_cloudwatch, T0 + dt.timedelta(minutes=2), 1.0, 0.0, 0.5)
    source = CloudWatchSource(moto_cloudwatch, CLUSTER)
    minutes = source.minutes(T0, T0 + dt.timedelta(minutes=5))
    assert sorted(minutes) == [T0, T0 + dt.timedelta(minutes=2)]
    assert minutes[T0].compute == pytest.approx(0.1) and minutes[T0].sum == pytest.approx(0.6)
    other = CloudWatchSource(moto_cloudwatch, "someotherclusterid00000000")
    assert other.minutes(T0, T0 + dt.timedelta(minutes=5)) == {}


def test_cloudwatch_fills_pending_entries_once_per_minute(moto_cloudwatch: Any) -> None:
    ledger = DpuLedger(clock=Clock(T0))
    second = dt.timedelta(seconds=1)
    a = ledger.record(
        source=CLOUDWATCH, figures=None, started=T0 + 5 * second, ended=T0 + 9 * second
    )
    b = ledger.record(
        source=CLOUDWATCH, figures=None, started=T0 + 30 * second, ended=T0 + 70 * second
    )
    late = T0 + dt.timedelta(minutes=5)
    c = ledger.record(source=CLOUDWATCH, figures=None, started=late, ended=late)
    source = CloudWatchSource(moto_cloudwatch, CLUSTER)
    assert source.fill(ledger, now=T0 + dt.timedelta(minutes=2)) == 0  # nothing arrived yet
    put_minute(moto_cloudwatch, T0, 0.1, 0.2, 0.3)
    put_minute(moto_cloudwatch, T0 + dt.timedelta(minutes=1), 1.0, 0.0, 0.0)
    assert source.fill(ledger, now=T0 + dt.timedelta(minutes=3)) == 2
    by_id = {e.id: e for e in ledger.entries}
    fa, fb = by_id[a.id].figures, by_id[b.id].figures
    assert fa is not None and fa.sum == pytest.approx(0.6)
    assert fb is not None and fb.sum == pytest.approx(1.0)  # minute 0 was counted for `a`
    assert "shared with an earlier cell" in by_id[b.id].note
    assert "cluster-wide, minute 03:00 UTC" in by_id[a.id].note
    assert by_id[c.id].pending  # its minute has no data yet and it is recent
    assert source.fill(ledger, now=late + dt.timedelta(minutes=20)) == 1
    filled = next(e for e in ledger.entries if e.id == c.id)
    assert filled.figures == DpuFigures(0.0, 0.0, 0.0, 0.0) and "no datapoints" in filled.note


def test_cloudwatch_against_the_emulator_endpoint() -> None:
    from dsql_magic.emulator import cloudwatch as cw
    from dsql_magic.emulator import metering as m

    now = {"t": T0.timestamp() + 10}
    meter = m.Meter(clock=lambda: now["t"])
    work = m.Work(execution_ms=1.0, storage_requests=1, rows_read=10, bytes_read=400)
    for _ in range(2):
        meter.record_statement(1, m.StatementFigures("SELECT", m.estimate(work), work, True, False))
        meter.end_transaction(1, committed=True)
    expected = meter.session_totals(1)
    with cw.CloudWatchEndpoint(meter, CLUSTER) as endpoint:
        client = boto3.client(
            "cloudwatch",
            endpoint_url=endpoint.url,
            region_name="us-east-1",
            aws_access_key_id="AKIAEXAMPLEEXAMPLE12",
            aws_secret_access_key="throwaway/secret/for/tests/only/xxxxxxxxx",
        )
        source = CloudWatchSource(client, CLUSTER)
        minutes = source.minutes(T0 - dt.timedelta(minutes=1), T0 + dt.timedelta(minutes=2))
        assert list(minutes) == [T0]
        assert minutes[T0].sum == pytest.approx(expected.total, abs=1e-6)
        assert minutes[T0].read == pytest.approx(expected.read, abs=1e-6)
        ledger = DpuLedger(clock=Clock(T0))
        entry = ledger.record(source=CLOUDWATCH, figures=None, started=T0, ended=T0)
        assert source.fill(ledger, now=T0 + dt.timedelta(minutes=1)) == 1
        filled = ledger.entries[0].figures
        assert entry.pending and filled is not None
        assert filled.sum == pytest.approx(expected.total, abs=1e-6)
