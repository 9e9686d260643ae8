"""Token minting with real boto3 SigV4 (throwaway credentials): shape, action, expiry, secrecy."""

from __future__ import annotations

import pickle
from urllib.parse import parse_qs, urlparse

import pytest

from dsql_magic.auth import AwsCredentials, Token, TokenMinter, action_for, check_ttl
from dsql_magic.errors import ConnectionFailed, UsageProblem

HOST = "abc0def1baz2quux3quuux4.dsql.eu-west-1.on.aws"


def _query(token: Token) -> dict[str, str]:
    url = urlparse("https://" + token.reveal())
    assert url.hostname == HOST
    return {k: v[0] for k, v in parse_qs(url.query).items()}


@pytest.mark.parametrize(
    ("user", "action"), [("admin", "DbConnectAdmin"), ("analyst", "DbConnect")]
)
def test_token_shape(aws_env: None, user: str, action: str) -> None:
    token = TokenMinter(clock=lambda: 1000.0).mint(
        host=HOST, region="eu-west-1", user=user, ttl=600
    )
    q = _query(token)
    assert q["Action"] == action == token.action == action_for(user)
    key, _date, region, service, term = q["X-Amz-Credential"].split("/")
    assert (key, region, service, term) == (
        "AKIAIOSFODNN7EXAMPLE",
        "eu-west-1",
        "dsql",
        "aws4_request",
    )
    assert q["X-Amz-Expires"] == "600"
    assert q["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert len(q["X-Amz-Signature"]) == 64
    assert (token.minted_at, token.expires_at) == (1000.0, 1600.0)
    assert token.expired(1600.0) and not token.expired(1599.0)


def test_each_mint_is_fresh_and_explicit_credentials_sign(aws_env: None) -> None:
    minter = TokenMinter()
    creds = AwsCredentials("AKIDEXPLICIT00000000", "secret-value")
    token = minter.mint(host=HOST, region="eu-west-1", user="admin", credentials=creds)
    assert _query(token)["X-Amz-Credential"].startswith("AKIDEXPLICIT00000000/")
    assert "secret-value" not in repr(creds)


def test_token_never_shows(aws_env: None) -> None:
    token = TokenMinter().mint(host=HOST, region="eu-west-1", user="admin")
    secret = token.reveal()
    for shown in (repr(token), str(token), f"{token}", repr([token])):
        assert secret not in shown and "X-Amz" not in shown
    with pytest.raises(TypeError):
        pickle.dumps(token)


def test_ttl_limits() -> None:
    assert check_ttl(604_800) == 604_800
    for bad in (0, 604_801):
        with pytest.raises(UsageProblem, match="TTL"):
            check_ttl(bad)


def test_no_credentials_is_a_clear_error(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConnectionFailed, match="no AWS credentials") as info:
        TokenMinter().mint(host=HOST, region="eu-west-1", user="admin")
    assert "aws sso login" in (info.value.hint or "")


def test_unknown_profile_is_a_usage_error(aws_env: None) -> None:
    with pytest.raises(UsageProblem, match="nosuchprofile"):
        TokenMinter().mint(host=HOST, region="eu-west-1", user="admin", profile="nosuchprofile")
