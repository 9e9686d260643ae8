"""The whole emulator (``dsql-emulator serve`` in a child process, every default hook): its ready
line names the CloudWatch endpoint, and boto3 reads the minute buckets of what a client did."""

from __future__ import annotations

import datetime as dt
import time

import boto3
import psycopg
import pytest

from dsql_magic.emulator.api import Emulator


def test_ready_line_cloudwatch_url_serves_the_clusters_metrics() -> None:
    started = time.time()
    with Emulator() as emu:
        info = emu.info
        assert info.cloudwatch_url is not None
        assert info.cloudwatch_url.startswith("http://127.0.0.1:")
        with psycopg.connect(**emu.connect_kwargs(), autocommit=True) as conn:
            conn.execute("CREATE TABLE cw_t (id int PRIMARY KEY, v text)")
            for i in range(3):
                conn.execute("INSERT INTO cw_t VALUES (%s, 'x')", (i,))
            conn.execute("SELECT * FROM cw_t").fetchall()
            session = conn.execute("SELECT * FROM sys.session_dpu()").fetchone()
        assert session is not None
        cwc = boto3.client(
            "cloudwatch",
            endpoint_url=info.cloudwatch_url,
            region_name=info.region,
            aws_access_key_id=info.aws_access_key_id,
            aws_secret_access_key=info.aws_secret_access_key,
        )
        start = dt.datetime.fromtimestamp(started // 60 * 60, dt.timezone.utc)

        def metric(name: str) -> dict[str, object]:
            return {
                "Namespace": "AWS/AuroraDSQL",
                "MetricName": name,
                "Dimensions": [{"Name": "ResourceId", "Value": info.cluster_id}],
            }

        out = cwc.get_metric_data(
            MetricDataQueries=[
                {"Id": "total", "MetricStat": {"Metric": metric("TotalDPU"), "Period": 60,
                                               "Stat": "Sum"}},
                {"Id": "txns", "MetricStat": {"Metric": metric("TotalTransactions"),
                                              "Period": 60, "Stat": "Sum"}},
            ],
            StartTime=start,
            EndTime=start + dt.timedelta(minutes=15),
        )  # fmt: skip
    results = {r["Id"]: r for r in out["MetricDataResults"]}
    assert results["txns"]["Timestamps"], "no minute bucket"
    assert all(ts.second == 0 for ts in results["txns"]["Timestamps"])
    # CREATE, 3 INSERTs, the SELECT: five transactions (the sys call is not metered)
    assert sum(results["txns"]["Values"]) == 5.0
    *_, total, statements, transactions = session
    assert (statements, transactions) == (5, 5)
    # the same five transactions, summed by the meter per minute and per session
    assert sum(results["total"]["Values"]) == pytest.approx(float(total), abs=1e-5)
