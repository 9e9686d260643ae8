"""End to end through the emulator's wire front (TLS, IAM token, real psycopg): EXPLAIN answered
in DSQL's shape, every statement metered, a session reading its own DPUs through ``sys``
functions, and the cluster's minute buckets read back with boto3 from the CloudWatch endpoint."""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import psycopg
import pytest

from dsql_magic.emulator import cloudwatch, metering
from dsql_magic.emulator.cluster import default_hooks
from dsql_magic.emulator.explain import ExplainHook
from dsql_magic.emulator.metering import MeteringHook, meter_of
from tests.fix_wire import WireServer


@pytest.fixture
def server(wire_server: Callable[..., WireServer]) -> WireServer:
    return wire_server(hooks=[ExplainHook(), MeteringHook()])


@pytest.fixture
def table(server: WireServer) -> str:
    name = f"acct_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, customer int, note text)")
        conn.execute(f"CREATE INDEX {name}_c ON {name} (customer) INCLUDE (note)")
        conn.execute(
            f"INSERT INTO {name} SELECT i, i % 10, 'note ' || i FROM generate_series(1, 500) i"
        )
        conn.execute(f"ANALYZE {name}")
    return name


def lines(
    conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] | None = None
) -> list[str]:
    return [str(r[0]) for r in conn.execute(sql, params).fetchall()]


def test_explain_shapes_over_the_wire(server: WireServer, table: str) -> None:
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        plan = lines(conn, f"EXPLAIN SELECT * FROM {table} WHERE note LIKE '%7%' AND id > 10")
        assert plan[0].startswith(f"Index Only Scan using {table}_pkey on {table} (cost=")
        assert "  Filter: (note ~~ '%7%'::text)" in plan
        assert "  Index Cond: (id > 10)" in plan  # the key navigates the range
        assert "          Index Cond: (id > 10)" in plan
        assert any(line.startswith("        -> B-Tree Scan on") for line in plan)

        analysed = lines(conn, f"EXPLAIN ANALYZE VERBOSE SELECT id FROM {table}")
        assert re.match(r"Query Identifier: [0-9a-z]{13}$", analysed[-8])
        assert analysed[-5:-4] == ["Statement DPU Estimate:"]
        figures = [float(re.findall(r"\d+\.\d{5}", line)[0]) for line in analysed[-4:]]
        assert figures[3] == pytest.approx(sum(figures[:3]), abs=1e-9)
        assert figures[2] == 0.0  # Write is 0 on a read

        doc = conn.execute(f"EXPLAIN (FORMAT JSON) SELECT * FROM {table} WHERE id = 3").fetchone()
        assert doc is not None
        root = doc[0][0]["Plan"]  # a json column: psycopg decodes it
        assert root["Node Type"] == "Index Only Scan"
        assert root["Plans"][0]["Node Type"] == "Storage Scan"


def test_session_reads_its_own_dpus(server: WireServer, table: str) -> None:
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        conn.execute(f"SELECT * FROM {table} WHERE id < 50").fetchall()
        last = conn.execute("SELECT * FROM sys.last_statement_dpu()").fetchone()
        assert last is not None and last[0] == "SELECT"
        assert float(last[4]) == pytest.approx(float(last[1]) + float(last[2]), abs=2e-5)
        with conn.transaction():
            conn.execute(f"INSERT INTO {table} VALUES (10001, 1, 'x')")
            conn.execute(f"UPDATE {table} SET note = 'y' WHERE id = 10001")
        conn.execute(f"DELETE FROM {table} WHERE id = 10001")
        row = conn.execute("SELECT * FROM sys.session_dpu()").fetchone()
        assert row is not None
        compute, read, write, total, statements, transactions = row
        assert statements == 4 and transactions == 3
        # two writing transactions, each at least the write minimum
        assert float(write) >= 2 * metering.TRANSACTION_MIN_WRITE_DPU
        assert float(total) == pytest.approx(float(compute) + float(read) + float(write))

    totals = server.call(lambda: meter_of(server.cluster).cluster_totals())
    assert totals.statements >= 4


def test_cluster_metrics_reach_boto3(server: WireServer, table: str) -> None:
    before = time.time()
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        for i in range(3):
            conn.execute(f"INSERT INTO {table} VALUES ({20000 + i}, 2, 'z')")
    meter = meter_of(server.cluster)
    with cloudwatch.CloudWatchEndpoint(lambda: meter, "testcluster") as ep:
        cwc = boto3.client(
            "cloudwatch",
            endpoint_url=ep.url,
            region_name="us-east-1",
            aws_access_key_id="AKIAEXAMPLEEXAMPLE12",
            aws_secret_access_key="throwaway/secret/for/tests/only/xxxxxxxxx",
        )
        start = dt.datetime.fromtimestamp(before // 60 * 60 - 60, dt.timezone.utc)
        out = cwc.get_metric_data(
            MetricDataQueries=[
                {
                    "Id": name.lower(),
                    "MetricStat": {
                        "Metric": {
                            "Namespace": "AWS/AuroraDSQL",
                            "MetricName": name,
                            "Dimensions": [{"Name": "ResourceId", "Value": "testcluster"}],
                        },
                        "Period": 60,
                        "Stat": "Sum",
                    },
                }
                for name in ("WriteDPU", "TotalTransactions")
            ],
            StartTime=start,
            EndTime=start + dt.timedelta(minutes=10),
        )
    results = {r["Id"]: r for r in out["MetricDataResults"]}
    assert sum(results["totaltransactions"]["Values"]) >= 3
    assert sum(results["writedpu"]["Values"]) >= 3 * metering.TRANSACTION_MIN_WRITE_DPU - 1e-9


def test_with_all_default_hooks_conflicts_and_commits_are_metered(
    wire_server: Callable[..., WireServer],
) -> None:
    """The emulator's real hook list: an OCC loser's refused COMMIT counts in OccConflicts."""
    server = wire_server(hooks=default_hooks())
    name = f"occ_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**server.conninfo(), autocommit=True) as a:
        a.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int)")
        a.execute(f"INSERT INTO {name} VALUES (1, 0)")
        plan = lines(a, f"EXPLAIN ANALYZE VERBOSE SELECT * FROM {name} WHERE id = 1")
        assert plan[0].startswith(f"Index Only Scan using {name}_pkey on public.{name}")
        assert "Statement DPU Estimate:" in plan
        with psycopg.connect(**server.conninfo(), autocommit=True) as b:
            a.execute("BEGIN")
            b.execute("BEGIN")
            a.execute(f"UPDATE {name} SET v = 1 WHERE id = 1")
            b.execute(f"UPDATE {name} SET v = 2 WHERE id = 1")
            a.execute("COMMIT")
            with pytest.raises(psycopg.errors.SerializationFailure):
                b.execute("COMMIT")
    meter = meter_of(server.cluster)
    now = time.time()
    occ = meter.datapoints("OccConflicts", now - 600, now + 60, 60, "Sum")
    assert sum(v for _, v in occ) == 1.0
    latency = meter.datapoints("CommitLatency", now - 600, now + 60, 60, "SampleCount")
    assert sum(v for _, v in latency) >= 3  # CREATE, INSERT, UPDATE committed


def test_explain_with_bound_parameters(server: WireServer, table: str) -> None:
    """psycopg sends parameters with the extended protocol: EXPLAIN plans them generically;
    EXPLAIN ANALYZE needs their values, which arrive later, so PostgreSQL answers it as is."""
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:
        plan = lines(conn, f"EXPLAIN SELECT * FROM {table} WHERE id = %s", (7,))
        assert plan[0].startswith(f"Index Only Scan using {table}_pkey on {table}")
        assert any("Index Cond: (id = $1)" in line for line in plan)
        analysed = lines(conn, f"EXPLAIN ANALYZE SELECT * FROM {table} WHERE id = %s", (7,))
        assert analysed[0].startswith(f"Index Scan using {table}_pkey")  # PostgreSQL's own
