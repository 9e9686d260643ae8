"""The emulator's CloudWatch endpoint through real boto3 clients: the json protocol botocore uses
today, and the query protocol of older botocore (forced through a model loader)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.loaders
import botocore.session
import pytest
from botocore.exceptions import ClientError

from dsql_magic.emulator import cloudwatch as cw
from dsql_magic.emulator import metering as m

CLUSTER = "abcdefghijklmnopqrstuvwxyz"
T0 = 1_800_000_000  # a whole minute
UTC = dt.timezone.utc


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def meter() -> m.Meter:
    """Transactions in minutes 0, 1 and 3 after T0: 2, 1 and 3 of them."""
    clock = Clock()
    meter = m.Meter(clock=clock)
    for minute, count in ((0, 2), (1, 1), (3, 3)):
        clock.now = T0 + minute * 60 + 10
        for _ in range(count):
            work = m.Work(execution_ms=1.0, storage_requests=1, rows_read=10, bytes_read=400)
            fig = m.StatementFigures("SELECT", m.estimate(work), work, reads=True, writes=False)
            meter.record_statement(1, fig)
            meter.end_transaction(1, committed=True)
    meter.record_occ_conflict()  # at minute 3
    return meter


@pytest.fixture
def endpoint(meter: m.Meter) -> Iterator[cw.CloudWatchEndpoint]:
    with cw.CloudWatchEndpoint(meter, CLUSTER) as ep:
        yield ep


def client(url: str, session: botocore.session.Session | None = None) -> Any:
    kwargs = {
        "endpoint_url": url,
        "region_name": "us-east-1",
        "aws_access_key_id": "AKIAEXAMPLEEXAMPLE12",
        "aws_secret_access_key": "throwaway/secret/for/tests/only/xxxxxxxxx",
    }
    if session is not None:
        return boto3.Session(botocore_session=session).client("cloudwatch", **kwargs)
    return boto3.client("cloudwatch", **kwargs)


def query(qid: str, metric: str, stat: str = "Sum", period: int = 60, rid: str = CLUSTER) -> Any:
    return {
        "Id": qid,
        "MetricStat": {
            "Metric": {
                "Namespace": "AWS/AuroraDSQL",
                "MetricName": metric,
                "Dimensions": [{"Name": "ResourceId", "Value": rid}],
            },
            "Period": period,
            "Stat": stat,
        },
    }


def window() -> dict[str, Any]:
    return {
        "StartTime": dt.datetime.fromtimestamp(T0, UTC),
        "EndTime": dt.datetime.fromtimestamp(T0 + 600, UTC),
    }


def stamps(*minutes: int) -> list[dt.datetime]:
    return [dt.datetime.fromtimestamp(T0 + 60 * n, UTC) for n in minutes]


def check_minute_buckets(cwc: Any, meter: m.Meter) -> None:
    out = cwc.get_metric_data(
        MetricDataQueries=[
            query("dpu", "TotalDPU"),
            query("txns", "TotalTransactions"),
            query("occ", "OccConflicts"),
            query("other", "TotalDPU", rid="some-other-cluster"),
        ],
        ScanBy="TimestampAscending",
        **window(),
    )
    results = {r["Id"]: r for r in out["MetricDataResults"]}
    assert results["txns"]["Timestamps"] == stamps(0, 1, 3)
    assert results["txns"]["Values"] == [2.0, 1.0, 3.0]
    assert results["dpu"]["Timestamps"] == stamps(0, 1, 3)
    expected = [v for _, v in meter.datapoints("TotalDPU", T0, T0 + 600, 60, "Sum")]
    assert results["dpu"]["Values"] == pytest.approx(expected)
    assert sum(results["dpu"]["Values"]) == pytest.approx(meter.cluster_totals().total)
    assert results["occ"]["Values"] == [1.0]
    assert results["other"]["Values"] == []
    assert all(r["StatusCode"] == "Complete" for r in results.values())


def test_get_metric_data_json_protocol(endpoint: cw.CloudWatchEndpoint, meter: m.Meter) -> None:
    cwc = client(endpoint.url)
    check_minute_buckets(cwc, meter)
    # default order: newest first; a 2-minute period merges minutes 0 and 1
    out = cwc.get_metric_data(
        MetricDataQueries=[query("t", "TotalTransactions", period=120)], **window()
    )
    r = out["MetricDataResults"][0]
    assert r["Timestamps"] == stamps(2, 0) and r["Values"] == [3.0, 3.0]
    avg = cwc.get_metric_data(MetricDataQueries=[query("a", "ReadDPU", "Average")], **window())
    assert len(avg["MetricDataResults"][0]["Values"]) == 3


def test_errors_are_client_errors(endpoint: cw.CloudWatchEndpoint) -> None:
    cwc = client(endpoint.url)
    with pytest.raises(ClientError) as err:
        cwc.get_metric_data(MetricDataQueries=[{"Id": "e", "Expression": "m1*2"}], **window())
    assert "metric math" in str(err.value)
    with pytest.raises(ClientError) as err:
        cwc.get_metric_data(MetricDataQueries=[query("p", "TotalDPU", period=90)], **window())
    assert "multiple of 60" in str(err.value)
    with pytest.raises(ClientError):
        cwc.get_metric_data(MetricDataQueries=[query("s", "TotalDPU", stat="Median")], **window())


def test_list_metrics(endpoint: cw.CloudWatchEndpoint) -> None:
    out = client(endpoint.url).list_metrics(Namespace="AWS/AuroraDSQL", MetricName="TotalDPU")
    assert out["Metrics"] == [
        {
            "Namespace": "AWS/AuroraDSQL",
            "MetricName": "TotalDPU",
            "Dimensions": [{"Name": "ResourceId", "Value": CLUSTER}],
        }
    ]


class _QueryProtocolLoader(botocore.loaders.Loader):
    """Loads CloudWatch's model as older botocore had it: ``query`` protocol only."""

    def load_service_model(self, service_name: str, type_name: str, api_version: Any = None) -> Any:
        model = super().load_service_model(service_name, type_name, api_version)
        if service_name == "cloudwatch" and type_name == "service-2":
            model = dict(model)
            model["metadata"] = dict(model["metadata"], protocol="query", protocols=["query"])
        return model


def test_get_metric_data_query_protocol(endpoint: cw.CloudWatchEndpoint, meter: m.Meter) -> None:
    session = botocore.session.Session()
    session.register_component("data_loader", _QueryProtocolLoader())
    cwc = client(endpoint.url, session)
    assert cwc.meta.service_model.protocol == "query"
    check_minute_buckets(cwc, meter)
    with pytest.raises(ClientError) as err:
        cwc.get_metric_data(MetricDataQueries=[query("p", "TotalDPU", period=30)], **window())
    assert err.value.response["Error"]["Code"] == "InvalidParameterValue"


def test_unflatten() -> None:
    flat = cw.unflatten(
        [
            ("Action", "GetMetricData"),
            ("Q.member.2.Id", "b"),
            ("Q.member.1.Id", "a"),
            ("Q.member.1.M.D.member.1.Name", "ResourceId"),
        ]
    )
    assert flat == {
        "Action": "GetMetricData",
        "Q": [{"Id": "a", "M": {"D": [{"Name": "ResourceId"}]}}, {"Id": "b"}],
    }


def test_endpoint_stops_cleanly(meter: m.Meter) -> None:
    ep = cw.CloudWatchEndpoint(lambda: meter, CLUSTER)
    with pytest.raises(RuntimeError):
        _ = ep.url
    url = ep.start()
    assert url.startswith("http://127.0.0.1:")
    ep.stop()
    ep.stop()  # idempotent
