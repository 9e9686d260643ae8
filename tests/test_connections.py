"""Endpoint / cluster-id / URL parsing (pure) and the connection registry's bookkeeping."""

from __future__ import annotations

import pytest

from dsql_magic.auth import TokenMinter
from dsql_magic.connections import (
    ConnectionRegistry,
    ConnectTarget,
    DsqlConnection,
    Endpoint,
    parse_target,
    region_from_host,
    resolve_sslrootcert,
)
from dsql_magic.errors import NotConnected, UsageProblem

ID = "abc0def1baz2quux3quuux4"


def test_endpoint_gives_region_and_cluster_id() -> None:
    ep = parse_target(f"{ID}.dsql.eu-west-2.on.aws")
    assert ep == Endpoint(host=f"{ID}.dsql.eu-west-2.on.aws", region="eu-west-2", cluster_id=ID)


def test_privatelink_host_gives_region() -> None:
    assert region_from_host(f"{ID}.dsql-fnh4.us-east-1.on.aws") == "us-east-1"


def test_explicit_region_wins_over_host() -> None:
    assert parse_target(f"{ID}.dsql.us-east-1.on.aws", region="us-west-2").region == "us-west-2"


def test_bare_cluster_id_needs_a_region() -> None:
    ep = parse_target(ID, region="ap-northeast-1")
    assert ep.host == f"{ID}.dsql.ap-northeast-1.on.aws" and ep.cluster_id == ID
    assert parse_target(ID, default_region="us-east-2").host == f"{ID}.dsql.us-east-2.on.aws"
    with pytest.raises(UsageProblem, match="region") as info:
        parse_target(ID)
    assert "--region" in (info.value.hint or "")


def test_url_form() -> None:
    ep = parse_target(f"postgresql://analyst@{ID}.dsql.us-east-1.on.aws:6543/postgres")
    assert (ep.user, ep.port, ep.region, ep.dbname) == ("analyst", 6543, "us-east-1", "postgres")
    ep = parse_target("postgres://localhost/postgres?region=eu-central-1&user=bob")
    assert (ep.host, ep.region, ep.user, ep.cluster_id) == (
        "localhost",
        "eu-central-1",
        "bob",
        None,
    )


def test_url_with_password_is_refused() -> None:
    with pytest.raises(UsageProblem, match="password") as info:
        parse_target("postgresql://admin:s3cret@localhost/postgres")
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("bad", ["", "   ", "mysql://x/y", "postgresql:///postgres"])
def test_bad_targets(bad: str) -> None:
    with pytest.raises(UsageProblem):
        parse_target(bad)


def test_bad_port() -> None:
    with pytest.raises(UsageProblem, match="port"):
        parse_target("postgresql://localhost:99999/postgres")


def test_defaults() -> None:
    ep = parse_target("localhost", region="us-east-1")
    assert (ep.user, ep.port, ep.dbname) == ("admin", 5432, "postgres")


def test_target_needs_region() -> None:
    with pytest.raises(UsageProblem, match="region"):
        ConnectTarget.from_endpoint(parse_target("localhost"))


def test_registry_current_use_close() -> None:
    reg = ConnectionRegistry()
    with pytest.raises(NotConnected, match="not connected"):
        reg.get()
    minter = TokenMinter()
    target = ConnectTarget(host="localhost", region="us-east-1")
    a, b = DsqlConnection("a", target, minter), DsqlConnection("b", target, minter)
    reg.add(a)
    reg.add(b)
    assert reg.current == "b" and reg.get() is b
    reg.use("a")
    assert reg.get() is a
    with pytest.raises(NotConnected, match="known connections: a, b"):
        reg.use("c")
    assert reg.close() == "a"
    assert reg.current == "b" and a.state == "closed"
    rows = reg.describe()
    assert rows == [
        {
            "name": "b",
            "endpoint": "localhost",
            "user": "admin",
            "region": "us-east-1",
            "age": "-",
            "state": "not connected",
            "current": "*",
        }
    ]
    reg.close_all()
    assert len(reg) == 0 and reg.current is None


def test_system_roots_resolve_to_a_real_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    resolved = resolve_sslrootcert("system")
    assert resolved is not None and resolved != "system"
    with open(resolved) as f:
        assert "BEGIN CERTIFICATE" in f.read()
    assert resolve_sslrootcert("/my/ca.pem") == "/my/ca.pem"
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/custom.pem")
    assert resolve_sslrootcert("system") == "system"  # OpenSSL honours the variable itself
