"""``%dsql clusters``: list Aurora DSQL clusters with status and endpoint (boto3 control plane).

Read-only calls only (ListClusters, GetCluster); this module never creates, changes or deletes a
cluster, and needs AWS credentials only when the subcommand runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from dsql_magic.errors import DsqlMagicError, scrub
from dsql_magic.results import Message, table


def endpoint_for(identifier: str, region: str) -> str:
    """The public endpoint of a cluster (DSQL's documented host name form)."""
    return f"{identifier}.dsql.{region}.on.aws"


def list_clusters(session: Any, region: str) -> list[dict[str, Any]]:
    """Clusters in ``region`` with status and endpoint, newest first."""
    client = session.client("dsql", region_name=region)
    rows: list[dict[str, Any]] = []
    for page in client.get_paginator("list_clusters").paginate():
        for summary in page.get("clusters", []):
            ident = summary["identifier"]
            detail = client.get_cluster(identifier=ident)
            rows.append(
                {
                    "identifier": ident,
                    "status": detail.get("status", ""),
                    "endpoint": detail.get("endpoint") or endpoint_for(ident, region),
                    "created": detail.get("creationTime"),
                    "deletion_protection": detail.get("deletionProtectionEnabled"),
                }
            )
    rows.sort(key=lambda r: str(r["created"] or ""), reverse=True)
    return rows


def cmd_clusters(magic: Any, args: str, cell: str | None) -> object:
    """``%dsql clusters [--region R] [--profile P]``."""
    from dsql_magic.magics import make_parser, parse_args

    parser = make_parser("clusters", "List Aurora DSQL clusters with status and endpoint.")
    parser.add_argument("--region", help="AWS region (default: from the AWS configuration)")
    parser.add_argument("--profile", help="AWS profile (default: the default chain)")
    ns = parse_args(parser, args)
    if isinstance(ns, Message):
        return ns
    assert isinstance(ns, argparse.Namespace)
    session = magic.minter.session(ns.profile)
    region = ns.region or session.region_name
    if not region:
        raise DsqlMagicError("no region given", "pass --region or set AWS_REGION")
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        rows = list_clusters(session, region)
    except (BotoCoreError, ClientError) as exc:
        raise DsqlMagicError(
            f"could not list clusters in {region}: {scrub(str(exc))}",
            "the identity needs dsql:ListClusters and dsql:GetCluster; check the credentials",
        ) from None
    return table(rows, f"no clusters in {region}")
