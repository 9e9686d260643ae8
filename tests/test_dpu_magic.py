"""EXPLAIN and DPU through a real IPython shell: against the emulator (DSQL-shaped plans, exact
meter figures, estimates) and against plain PostgreSQL 16 (plans, no meter)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from moto import mock_aws

from dsql_magic.connections import ConnectionRegistry, ConnectTarget, DsqlConnection
from dsql_magic.dpu.command import refresh, state_of
from dsql_magic.dpu.display import DpuPlot, LedgerFrame
from dsql_magic.dpu.ledger import CLOUDWATCH, EMULATOR, EXPLAIN, DpuFigures
from dsql_magic.emulator.api import Emulator
from dsql_magic.errors import NotConnected, UsageProblem
from dsql_magic.explain.command import ExplainResult
from dsql_magic.explain.compare import PlanComparison
from dsql_magic.magics import DsqlMagic
from dsql_magic.results import Message
from tests.fix_pg import PgServer


def session_dpu(dsql: DsqlMagic) -> Decimal:
    raw = dsql.registry.get().raw
    assert raw is not None
    row = raw.execute("SELECT * FROM sys.session_dpu()").fetchone()
    assert row is not None
    return Decimal(row[3])


def entries(dsql: DsqlMagic, source: str) -> list[Any]:
    return [e for e in state_of(dsql).ledger.entries if e.source == source]


@pytest.fixture
def emu_table(emu_connected: Emulator, magic: Any, request: pytest.FixtureRequest) -> Any:
    name = "dpu_" + "".join(c if c.isalnum() else "_" for c in request.node.name).lower()[:40]
    magic(f"DROP TABLE IF EXISTS {name}")
    magic(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    yield name
    magic(f"DROP TABLE IF EXISTS {name}")


# ------------------------------------------------------------------------------- the emulator


def test_cells_record_exact_meter_figures(emu_table: str, magic: Any, dsql: DsqlMagic) -> None:
    state_of(dsql).ledger.clear()
    start = session_dpu(dsql)
    magic(f"INSERT INTO {emu_table} SELECT g, 'x' FROM generate_series(1, 20) g")
    magic(f"SELECT count(*) FROM {emu_table}")
    magic(f"UPDATE {emu_table} SET v = 'y' WHERE id = 3")
    end = session_dpu(dsql)
    rows = entries(dsql, EMULATOR)
    assert len(rows) == 3 and all(e.figures is not None for e in rows)
    insert, select, update = (e.figures for e in rows)
    assert insert.write > 0 and update.write > 0 and select.write == 0
    assert select.compute > 0 and select.read > 0
    total = sum(Decimal(str(e.figures.sum)) for e in rows)
    assert total == pytest.approx(end - start, abs=Decimal("0.00002"))
    frame = magic(line="dpu --no-refresh")
    assert isinstance(frame, LedgerFrame)
    assert {"compute", "read", "write", "total"} <= set(frame.columns)
    assert frame["total"].sum() == pytest.approx(float(end - start), abs=1e-4)
    assert frame["source"].tolist() == [EMULATOR] * 3
    assert frame.summary["entries"].tolist() == [3]


def test_badge_under_each_cell(emu_table: str, ip: InteractiveShell, dsql: DsqlMagic) -> None:
    with capture_output() as captured:
        ip.run_cell(f"%dsql SELECT * FROM {emu_table}")
    badges = [o for o in captured.outputs if "dsql-dpu-badge" in o.data.get("text/html", "")]
    assert len(badges) == 1
    assert "emulator meter" in badges[0].data["text/plain"]
    dsql.dpu_badge = False
    with capture_output() as captured:
        ip.run_cell(f"%dsql SELECT * FROM {emu_table}")
    assert not [o for o in captured.outputs if "dsql-dpu-badge" in o.data.get("text/html", "")]


def test_ledger_cells_carry_their_prompt_numbers(
    emu_table: str, ip: InteractiveShell, dsql: DsqlMagic
) -> None:
    state_of(dsql).ledger.clear()
    numbers = []
    for _ in range(2):
        result = ip.run_cell(f"%dsql SELECT * FROM {emu_table}", store_history=True)
        numbers.append(result.execution_count)  # the cell's In [n]
    assert [e.cell for e in entries(dsql, EMULATOR)] == numbers


def test_dpu_option_estimates_reads_and_rolls_back_writes(
    emu_table: str, magic: Any, dsql: DsqlMagic
) -> None:
    state_of(dsql).ledger.clear()
    magic(f"INSERT INTO {emu_table} VALUES (1, 'a'), (2, 'b')", line="--dpu")
    assert magic(f"SELECT count(*) AS n FROM {emu_table}")["n"].tolist() == [2]  # inserted once
    magic(f"SELECT * FROM {emu_table} WHERE v = 'a'", line="--dpu")
    estimates = entries(dsql, EXPLAIN)
    assert len(estimates) == 2
    write, read = estimates
    assert "rolled-back transaction" in write.note and write.figures.write > 0
    assert "second time" in read.note and read.figures.write == 0 and read.figures.sum > 0
    assert len(entries(dsql, EMULATOR)) == 3  # the meter still records every cell


def test_explain_analyze_cell_on_the_emulator(
    emu_table: str, magic: Any, dsql: DsqlMagic, ip: InteractiveShell
) -> None:
    magic(f"INSERT INTO {emu_table} SELECT g, 'x' FROM generate_series(1, 10) g")
    state_of(dsql).ledger.clear()
    result = magic(f"DELETE FROM {emu_table} WHERE id <= 5", line="--explain analyze")
    assert isinstance(result, ExplainResult) and result.rolled_back
    assert result.plan.dsql and result.plan.dpu is not None and result.plan.dpu["write"]
    assert magic(f"SELECT count(*) AS n FROM {emu_table}")["n"].tolist() == [10]
    [estimate] = entries(dsql, EXPLAIN)
    assert estimate.note == "rolled back: no data changed"
    assert estimate.figures.sum == pytest.approx(result.plan.dpu["total"])
    widget = result.widget()
    assert widget.dpu == dict(result.plan.dpu)
    types = [n["node_type"] for n in widget.nodes]
    assert types[0] == "Delete" and "Storage Scan" in types
    magic(f"SELECT * FROM {emu_table} WHERE v = 'x'", line="plan --explain")
    assert isinstance(ip.user_ns["plan"], ExplainResult)
    assert not ip.user_ns["plan"].analyze


def test_explain_compare_on_the_emulator(emu_table: str, magic: Any) -> None:
    cmp = magic(
        f"SELECT * FROM {emu_table} WHERE id = 3; SELECT * FROM {emu_table} WHERE v = 'x'",
        line="explain --compare --analyze",
    )
    assert isinstance(cmp, PlanComparison)
    by_name = {d.name: d for d in cmp.differences}
    assert by_name["total DPU"].a is not None and by_name["total DPU"].b is not None


def test_dpu_plot_and_clear(emu_table: str, magic: Any, dsql: DsqlMagic) -> None:
    magic(f"SELECT * FROM {emu_table}")
    plot = magic(line="dpu --plot")
    assert isinstance(plot, DpuPlot) and "<svg" in plot._repr_html_()
    cleared = magic(line="dpu --clear")
    assert isinstance(cleared, Message) and cleared.text.startswith("cleared ")
    assert state_of(dsql).ledger.entries == []
    assert "No DPU recorded yet" in (magic(line="dpu")._repr_html_() or "")


# --------------------------------------------------------------------------- plain PostgreSQL


def test_explain_subcommand_on_postgres(connected: PgServer, magic: Any, table: str) -> None:
    magic(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    magic(f"INSERT INTO {table} SELECT g, 'v' FROM generate_series(1, 30) g")
    result = magic(line=f"explain --analyze DELETE FROM {table} WHERE id > 10")
    assert isinstance(result, ExplainResult) and result.rolled_back and not result.plan.dsql
    assert magic(f"SELECT count(*) AS n FROM {table}")["n"].tolist() == [30]
    kept = magic(line=f"explain --analyze --keep DELETE FROM {table} WHERE id > 10")
    assert not kept.rolled_back
    assert magic(f"SELECT count(*) AS n FROM {table}")["n"].tolist() == [10]
    text = magic(line=f"explain --text SELECT * FROM {table} WHERE id = 1")
    assert isinstance(text, Message) and "Index Scan" in text.text
    data, _metadata = result._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data and "text/html" in data


def test_explain_with_parameters(
    connected: PgServer, magic: Any, table: str, ip: InteractiveShell
) -> None:
    magic(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    ip.user_ns["wanted"] = 3
    result = magic(line=f"explain --analyze SELECT * FROM {table} WHERE id = :wanted")
    assert result.plan.root.actual_rows == 0


def test_explain_compare_variables(connected: PgServer, magic: Any, ip: InteractiveShell) -> None:
    ip.user_ns["a"] = magic(line="explain SELECT 1")
    ip.user_ns["b"] = "Seq Scan on t  (cost=0.00..35.50 rows=2550 width=4)"
    cmp = magic(line="explain --compare a b")
    assert isinstance(cmp, PlanComparison) and cmp.labels == ("a", "b")
    with pytest.raises(UsageProblem, match="not a defined Python variable"):
        magic(line="explain --compare a nothere")
    ip.user_ns["c"] = 42
    with pytest.raises(UsageProblem, match="does not hold a plan"):
        magic(line="explain --compare a c")


def test_explain_usage_errors(connected: PgServer, magic: Any) -> None:
    with pytest.raises(UsageProblem, match="exactly one statement"):
        magic(line="explain SELECT 1; SELECT 2")
    with pytest.raises(UsageProblem, match="no statement"):
        magic(line="explain --analyze")
    with pytest.raises(UsageProblem, match="two statements"):
        magic("SELECT 1", line="explain --compare")
    assert "--analyze runs the statement" in magic(line="explain --help").text


def test_explain_needs_a_connection(magic: Any) -> None:
    with pytest.raises(NotConnected):
        magic(line="explain SELECT 1")


def test_postgres_cells_are_not_metered(connected: PgServer, magic: Any, dsql: DsqlMagic) -> None:
    magic("SELECT 1")
    assert state_of(dsql).ledger.entries == []  # plain PostgreSQL has no meter and no CloudWatch
    est = magic("SELECT 1", line="--dpu")
    assert est["?column?"].tolist() == [1]
    [entry] = entries(dsql, EXPLAIN)
    assert "no DPU estimate" in entry.note


# ------------------------------------------------------------------------- CloudWatch refresh


def test_refresh_fills_cloudwatch_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = "kzw9thuiur9llpo3oktms6tw9r"
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(var, value)
    target = ConnectTarget(
        host=f"{cluster}.dsql.us-east-1.on.aws", region="us-east-1", cluster_id=cluster
    )
    registry = ConnectionRegistry()
    registry.add(DsqlConnection("prod", target, minter=None))  # type: ignore[arg-type]
    magic = SimpleNamespace(registry=registry, dpu_price_usd=1.0, cloudwatch_endpoint_url="")
    minute = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
    with mock_aws():
        state = state_of(magic)
        entry = state.ledger.record(
            source=CLOUDWATCH, figures=None, connection="prod", started=minute, ended=minute
        )
        boto3.client("cloudwatch", region_name="us-east-1").put_metric_data(
            Namespace="AWS/AuroraDSQL",
            MetricData=[
                {
                    "MetricName": name,
                    "Dimensions": [{"Name": "ResourceId", "Value": cluster}],
                    "Timestamp": minute + dt.timedelta(seconds=5),
                    "Value": value,
                }
                for name, value in (
                    ("ComputeDPU", 0.5),
                    ("ReadDPU", 0.25),
                    ("WriteDPU", 0.25),
                    ("TotalDPU", 1.0),
                )
            ],
        )
        assert refresh(magic, force=True) == 1
    [filled] = state.ledger.entries
    assert filled.id == entry.id and filled.figures == DpuFigures(0.5, 0.25, 0.25, 1.0)
    assert "cluster-wide" in filled.note


def test_price_is_configurable_and_line_form_dpu(
    emu_table: str, magic: Any, dsql: DsqlMagic, ip: InteractiveShell
) -> None:
    state_of(dsql).ledger.clear()
    ip.run_line_magic("config", "DsqlMagic.dpu_price_usd = 2.5")
    assert dsql.dpu_price_usd == 2.5
    frame = magic(line=f"--dpu SELECT * FROM {emu_table}")
    assert frame is not None
    ledger = magic(line="dpu --no-refresh")
    assert ledger["source"].tolist() == [EMULATOR, EXPLAIN]
    assert ledger["cost_usd"].tolist() == pytest.approx((ledger["total"] * 2.5).tolist())
    assert ledger.summary["cost_usd"].sum() == pytest.approx(ledger["total"].sum() * 2.5)
