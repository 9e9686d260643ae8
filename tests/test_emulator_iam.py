"""IAM token verification against real boto3-minted SigV4 tokens: accepted and every refusal."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsql_magic.emulator.config import AuthMode
from dsql_magic.emulator.errors import DsqlError
from dsql_magic.emulator.iam import (
    Identity,
    LocalAccount,
    TokenVerifier,
    mint_token,
    new_access_key_id,
    new_secret_access_key,
)

REGION = "us-east-1"
CLUSTER = "abcdefghijklmnopqrstuvwxyz"
ENDPOINT = f"{CLUSTER}.dsql.{REGION}.on.aws"
NAMES = {ENDPOINT, "localhost", "127.0.0.1", "::1"}

ACCOUNT = LocalAccount.generate(CLUSTER)


def boto_token(
    identity: Identity,
    *,
    admin: bool = True,
    host: str = ENDPOINT,
    region: str = REGION,
    expires_in: int = 900,
    session_token: str | None = None,
) -> str:
    """A token minted by boto3 exactly as a client would mint it."""
    client = boto3.session.Session(
        aws_access_key_id=identity.access_key_id,
        aws_secret_access_key=identity.secret_access_key,
        aws_session_token=session_token or identity.session_token,
        region_name=region,
    ).client("dsql", region_name=region)
    if admin:
        return client.generate_db_connect_admin_auth_token(host, region, expires_in)
    return client.generate_db_connect_auth_token(host, region, expires_in)


def refusal(
    verifier: TokenVerifier, token: str, user: str = "admin", names: set[str] = NAMES
) -> DsqlError:
    with pytest.raises(DsqlError) as info:
        verifier.verify(token, user, server_names=names)
    err = info.value
    assert err.sqlstate == "28000"
    assert err.severity == "FATAL"
    assert err.message == "unable to accept connection, access denied"
    # Nothing of the token is echoed: not the whole, not the signature, not the query.
    signature = token.rsplit("X-Amz-Signature=", 1)[-1]
    for text in (str(err), repr(err), err.hint or "", err.detail or ""):
        assert len(token) < 8 or token not in text
        assert len(signature) < 16 or signature not in text
        assert "X-Amz-Credential" not in text
    return err


@pytest.fixture
def verifier() -> TokenVerifier:
    return TokenVerifier(ACCOUNT, region=REGION)


def test_admin_token_from_boto3_is_accepted(verifier: TokenVerifier) -> None:
    identity = verifier.verify(boto_token(ACCOUNT.admin), "admin", server_names=NAMES)
    assert identity.arn == ACCOUNT.admin.arn
    assert identity.action == "DbConnectAdmin"
    assert identity.signature_checked


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", ENDPOINT.upper()])
def test_tokens_for_every_server_name_are_accepted(verifier: TokenVerifier, host: str) -> None:
    assert verifier.verify(boto_token(ACCOUNT.admin, host=host), "admin", server_names=NAMES)


def test_custom_role_token_is_accepted(verifier: TokenVerifier) -> None:
    identity = verifier.verify(
        boto_token(ACCOUNT.admin, admin=False), "analyst", server_names=NAMES
    )
    assert identity.action == "DbConnect"
    assert identity.user == "analyst"


def test_mint_token_matches_boto3(verifier: TokenVerifier) -> None:
    token = mint_token(ACCOUNT.admin, hostname=ENDPOINT, region=REGION, user="analyst")
    assert "Action=DbConnect&" in token
    assert verifier.verify(token, "analyst", server_names=NAMES).action == "DbConnect"


def test_wrong_secret_is_refused(verifier: TokenVerifier) -> None:
    forged = Identity(ACCOUNT.admin.access_key_id, new_secret_access_key(), "arn:x")
    err = refusal(verifier, boto_token(forged))
    assert err.hint is not None and "signature we calculated does not match" in err.hint


def test_unknown_access_key_is_refused(verifier: TokenVerifier) -> None:
    stranger = Identity(new_access_key_id(), new_secret_access_key(), "arn:x")
    err = refusal(verifier, boto_token(stranger))
    assert err.hint == "The security token included in the request is invalid."


def test_expired_token_is_refused() -> None:
    token = boto_token(ACCOUNT.admin, expires_in=60)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=120)
    verifier = TokenVerifier(ACCOUNT, region=REGION, clock=lambda: later)
    err = refusal(verifier, token)
    assert err.hint is not None and err.hint.startswith("Signature expired: ")


def test_token_from_the_future_is_refused() -> None:
    token = boto_token(ACCOUNT.admin)
    earlier = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    verifier = TokenVerifier(ACCOUNT, region=REGION, clock=lambda: earlier)
    err = refusal(verifier, token)
    assert err.hint is not None and err.hint.startswith("Signature not yet current")


def test_expiry_over_one_week_is_refused(verifier: TokenVerifier) -> None:
    err = refusal(verifier, boto_token(ACCOUNT.admin, expires_in=604_801))
    assert err.hint is not None and "604800" in err.hint


def test_wrong_action_for_admin_is_refused(verifier: TokenVerifier) -> None:
    err = refusal(verifier, boto_token(ACCOUNT.admin, admin=False), user="admin")
    assert err.hint is not None and "DbConnectAdmin" in err.hint


def test_admin_action_for_custom_role_is_refused(verifier: TokenVerifier) -> None:
    err = refusal(verifier, boto_token(ACCOUNT.admin, admin=True), user="analyst")
    assert err.hint is not None and "needs DbConnect" in err.hint


def test_wrong_region_is_refused(verifier: TokenVerifier) -> None:
    token = boto_token(ACCOUNT.admin, region="eu-west-1", host="x.dsql.eu-west-1.on.aws")
    err = refusal(verifier, token, names=NAMES | {"x.dsql.eu-west-1.on.aws"})
    assert err.hint is not None and "'eu-west-1'" in err.hint


def test_tampered_signature_is_refused(verifier: TokenVerifier) -> None:
    token = boto_token(ACCOUNT.admin)
    last = token[-1]
    tampered = token[:-1] + ("0" if last != "0" else "1")
    err = refusal(verifier, tampered)
    assert err.hint is not None and "signature" in err.hint


def test_tampered_expiry_is_refused(verifier: TokenVerifier) -> None:
    token = boto_token(ACCOUNT.admin, expires_in=900)
    refusal(verifier, token.replace("X-Amz-Expires=900", "X-Amz-Expires=9000"))


def test_tampered_host_is_refused(verifier: TokenVerifier) -> None:
    token = boto_token(ACCOUNT.admin, host="localhost")
    refusal(verifier, "127.0.0.1" + token[len("localhost") :])


def test_wrong_host_is_refused(verifier: TokenVerifier) -> None:
    err = refusal(verifier, boto_token(ACCOUNT.admin, host="other.dsql.us-east-1.on.aws"))
    assert err.hint is not None and "other.dsql.us-east-1.on.aws" in err.hint


def test_wrong_service_is_refused(verifier: TokenVerifier) -> None:
    token = boto_token(ACCOUNT.admin).replace("%2Fdsql%2F", "%2Frds%2F")
    err = refusal(verifier, token)
    assert err.hint is not None and "'dsql'" in err.hint


def test_session_tokens_must_match() -> None:
    temp = Identity(new_access_key_id(), new_secret_access_key(), "arn:temp", "SESSION-1")
    account = LocalAccount("123456789012", CLUSTER, (temp,))
    verifier = TokenVerifier(account, region=REGION)
    assert verifier.verify(boto_token(temp), "admin", server_names=NAMES)
    err = refusal(verifier, boto_token(temp, session_token="SESSION-2"))
    assert err.hint == "The security token included in the request is invalid."


def test_permissive_mode_accepts_unknown_keys_but_not_expired_tokens() -> None:
    verifier = TokenVerifier(ACCOUNT, region=REGION, mode=AuthMode.PERMISSIVE)
    stranger = Identity(new_access_key_id(), new_secret_access_key(), "arn:x")
    identity = verifier.verify(boto_token(stranger), "admin", server_names=NAMES)
    assert not identity.signature_checked and identity.arn is None
    # Known keys are still checked strictly.
    forged = Identity(ACCOUNT.admin.access_key_id, new_secret_access_key(), "arn:x")
    refusal(verifier, boto_token(forged))
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    late = TokenVerifier(ACCOUNT, region=REGION, mode=AuthMode.PERMISSIVE, clock=lambda: later)
    refusal(late, boto_token(stranger))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "hunter2",
        "https://" + ENDPOINT + "/?Action=DbConnectAdmin",
        ENDPOINT + "/?Action=DbConnectAdmin&X-Amz-Algorithm=AWS4-HMAC-SHA256",
        ENDPOINT + "/?a=1&a=2",
    ],
)
def test_malformed_tokens_are_refused(verifier: TokenVerifier, token: str) -> None:
    err = refusal(verifier, token)
    assert err.hint is not None and "authentication token" in err.hint


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_passwords_are_refused_without_echo(password: str) -> None:
    verifier = TokenVerifier(ACCOUNT, region=REGION)
    with pytest.raises(DsqlError) as info:
        verifier.verify(password, "admin", server_names=NAMES)
    err = info.value
    assert err.sqlstate == "28000"
    if len(password) >= 8:
        assert password not in (err.hint or "") and password not in repr(err)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.sampled_from("0123456789abcdefXYZ%&="))
def test_any_single_character_change_is_refused(position: int, char: str) -> None:
    token = TOKEN_FOR_MUTATION
    i = position % len(token)
    mutated = token[:i] + char + token[i + 1 :]
    if mutated == token:
        return
    verifier = TokenVerifier(ACCOUNT, region=REGION)
    with pytest.raises(DsqlError):
        verifier.verify(mutated, "admin", server_names=NAMES)


TOKEN_FOR_MUTATION = boto_token(ACCOUNT.admin, expires_in=3600)


def test_account_is_created_once_and_private(tmp_path: Path) -> None:
    first = LocalAccount.load_or_create(tmp_path)
    again = LocalAccount.load_or_create(tmp_path)
    assert first == again
    assert stat.S_IMODE((tmp_path / "account.json").stat().st_mode) == 0o600
    assert first.admin.access_key_id.startswith("AKIA") and len(first.admin.access_key_id) == 20
    assert len(first.admin.secret_access_key) == 40
    assert first.admin.arn.startswith(f"arn:aws:iam::{first.account_id}:")
    assert first.admin.secret_access_key not in repr(first)
    override = LocalAccount.load_or_create(tmp_path, cluster_id="mine")
    assert override.cluster_id == "mine" and override.admin == first.admin


def test_damaged_account_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "account.json").write_text("{not json")
    with pytest.raises(ValueError, match="damaged"):
        LocalAccount.load_or_create(tmp_path)


def test_non_ascii_escapes_are_refused_not_crashed(verifier: TokenVerifier) -> None:
    token = boto_token(ACCOUNT.admin)
    refusal(verifier, token.replace("X-Amz-Signature=", "X-Amz-Signature=%a5"))
    refusal(verifier, token.replace("X-Amz-Credential=AKIA", "X-Amz-Credential=%e9KIA"))


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=20), st.integers(min_value=0, max_value=10_000))
def test_arbitrary_insertions_are_refused(text: str, position: int) -> None:
    token = TOKEN_FOR_MUTATION
    i = position % len(token)
    verifier = TokenVerifier(ACCOUNT, region=REGION)
    with pytest.raises(DsqlError):
        verifier.verify(token[:i] + text + token[i:], "admin", server_names=NAMES)
