"""``%dsql clusters`` against moto's DSQL control plane (no AWS access)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pandas as pd
import pytest
from moto import mock_aws

from dsql_magic.controlplane import endpoint_for
from dsql_magic.results import Message


@pytest.fixture
def aws(aws_env: None) -> Iterator[None]:
    with mock_aws():
        yield


def test_lists_clusters_with_status_and_endpoint(aws: None, magic: Any) -> None:
    client = boto3.client("dsql", region_name="us-east-2")
    made = [client.create_cluster(deletionProtectionEnabled=False)["identifier"] for _ in range(2)]
    boto3.client("dsql", region_name="us-east-1").create_cluster()
    df = magic(line="clusters --region us-east-2")
    assert isinstance(df, pd.DataFrame)
    assert sorted(df["identifier"]) == sorted(made)
    assert set(df["status"]) <= {"CREATING", "ACTIVE", "IDLE", "INACTIVE"} and len(df) == 2
    for ident, endpoint in zip(df["identifier"], df["endpoint"], strict=True):
        # GetCluster's own endpoint is shown (moto's differs from the real service's form).
        assert endpoint == client.get_cluster(identifier=ident)["endpoint"]


def test_endpoint_fallback_form() -> None:
    assert endpoint_for("abc", "us-east-2") == "abc.dsql.us-east-2.on.aws"


def test_default_region_and_empty(aws: None, magic: Any) -> None:
    out = magic(line="clusters")  # AWS_REGION=us-east-1 from aws_env
    assert isinstance(out, Message) and "no clusters in us-east-1" in out.text


def test_help(magic: Any) -> None:
    out = magic(line="clusters --help")
    assert isinstance(out, Message) and "--region" in out.text
