"""Local IAM for the emulator: its account and identities, and SigV4 token verification.

A data directory holds one local AWS account (``account.json``, mode 0600): a 12-digit account id,
the cluster id, and an admin identity (access key id, secret) that signs tokens the way boto3 does.
`TokenVerifier.verify` checks a password token as Aurora DSQL would: the presigned-URL shape, the
credential scope (date, region, ``dsql``, ``aws4_request``), the signature (recomputed with
botocore's own SigV4 canonicalisation, compared in constant time), expiry, the action for the role
(``DbConnectAdmin`` for ``admin``, ``DbConnect`` otherwise), the host it was minted for and the
session token. Refusals are `errors.access_denied` with a hint saying why.

This module must never put a token, a secret or a signature in a message, log line or repr. It
does not check ``AWS IAM GRANT`` mappings: that needs the database, after verification.
"""

from __future__ import annotations

import datetime as dt
import functools
import hmac
import json
import os
import secrets
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .. import limits
from . import errors
from .config import AuthMode

ACCOUNT_FILE = "account.json"
ADMIN_ACTION = "DbConnectAdmin"
CONNECT_ACTION = "DbConnect"
SERVICE = "dsql"
ALGORITHM = "AWS4-HMAC-SHA256"
SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"
# AWS accepts requests signed up to 15 minutes in the future (clock skew).
MAX_CLOCK_SKEW = dt.timedelta(minutes=15)
_MAX_TOKEN_CHARS = 8192
_REQUIRED = (
    "Action",
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)

HINT_MALFORMED = (
    "The password is not an Aurora DSQL authentication token: generate one with "
    "generate_db_connect_admin_auth_token (admin) or generate_db_connect_auth_token."
)
HINT_INVALID_KEY = "The security token included in the request is invalid."
HINT_BAD_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method."
)


def utc_now() -> dt.datetime:
    """The clock tokens are checked against (injectable in `TokenVerifier`)."""
    return dt.datetime.now(dt.timezone.utc)


# --- the local account -------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """One local IAM principal: the credentials that sign tokens, and its ARN."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    arn: str
    session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class LocalAccount:
    """The local AWS account of one data directory: account id, cluster id, identities."""

    account_id: str
    cluster_id: str
    identities: tuple[Identity, ...]

    @property
    def admin(self) -> Identity:
        """The identity allowed ``dsql:DbConnectAdmin`` (the first one)."""
        return self.identities[0]

    def find(self, access_key_id: str) -> Identity | None:
        for identity in self.identities:
            if hmac.compare_digest(identity.access_key_id.encode(), access_key_id.encode()):
                return identity
        return None

    @classmethod
    def generate(cls, cluster_id: str | None = None) -> LocalAccount:
        """A fresh account with random ids and one admin identity."""
        account_id = "".join(secrets.choice(string.digits) for _ in range(12))
        admin = Identity(
            access_key_id=new_access_key_id(),
            secret_access_key=new_secret_access_key(),
            arn=f"arn:aws:iam::{account_id}:user/DsqlEmulatorAdmin",
        )
        return cls(account_id, cluster_id or new_cluster_id(), (admin,))

    @classmethod
    def load_or_create(cls, data_dir: Path, *, cluster_id: str | None = None) -> LocalAccount:
        """The data dir's account, created (and stored 0600) on first use.

        ``cluster_id`` overrides the stored one for this run only; a new account stores it.
        """
        path = Path(data_dir) / ACCOUNT_FILE
        if path.exists():
            account = cls.from_json(path.read_text())
            if cluster_id is not None and cluster_id != account.cluster_id:
                account = cls(account.account_id, cluster_id, account.identities)
            return account
        account = cls.generate(cluster_id)
        _write_private(path, account.to_json())
        return account

    def to_json(self) -> str:
        return json.dumps(
            {
                "account_id": self.account_id,
                "cluster_id": self.cluster_id,
                "identities": [
                    {
                        "access_key_id": i.access_key_id,
                        "secret_access_key": i.secret_access_key,
                        "arn": i.arn,
                        "session_token": i.session_token,
                    }
                    for i in self.identities
                ],
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> LocalAccount:
        try:
            raw = json.loads(text)
            identities = tuple(
                Identity(
                    access_key_id=str(i["access_key_id"]),
                    secret_access_key=str(i["secret_access_key"]),
                    arn=str(i["arn"]),
                    session_token=i.get("session_token"),
                )
                for i in raw["identities"]
            )
            if not identities:
                raise ValueError("no identities")
            return cls(str(raw["account_id"]), str(raw["cluster_id"]), identities)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{ACCOUNT_FILE} is damaged ({type(exc).__name__}): "
                "restore it or use a new data dir"
            ) from None


def new_access_key_id() -> str:
    """An ``AKIA…``-shaped access key id (20 characters, base32 alphabet like AWS's)."""
    alphabet = string.ascii_uppercase + "234567"
    return "AKIA" + "".join(secrets.choice(alphabet) for _ in range(16))


def new_secret_access_key() -> str:
    """A 40-character secret in AWS's alphabet."""
    alphabet = string.ascii_letters + string.digits + "+/"
    return "".join(secrets.choice(alphabet) for _ in range(40))


def new_cluster_id() -> str:
    """A 26-character cluster identifier like DSQL's (lowercase letters and digits)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(26))


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- minting (for the API, tests and magics) ---------------------------------------------------


def mint_token(
    identity: Identity,
    *,
    hostname: str,
    region: str,
    user: str = limits.DEFAULT_USER,
    expires_in: int = limits.DEFAULT_TOKEN_TTL_SECONDS,
) -> str:
    """A token minted by boto3 itself, exactly as a client would (admin action for ``admin``)."""
    client = _dsql_client(
        identity.access_key_id, identity.secret_access_key, identity.session_token, region
    )
    if user == limits.DEFAULT_USER:
        return client.generate_db_connect_admin_auth_token(hostname, region, expires_in)
    return client.generate_db_connect_auth_token(hostname, region, expires_in)


@functools.lru_cache(maxsize=16)
def _dsql_client(key: str, secret: str, session_token: str | None, region: str) -> Any:
    """A boto3 ``dsql`` client per identity and region (building one takes ~0.2 s)."""
    import boto3

    return boto3.session.Session(
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=session_token,
        region_name=region,
    ).client("dsql", region_name=region)


# --- verification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedIdentity:
    """Who a verified token speaks for.

    ``signature_checked`` is False only in permissive mode for an access key the emulator does
    not know; then ``arn`` is None (the real principal cannot be known).
    """

    access_key_id: str
    arn: str | None
    action: str
    user: str
    host: str
    expires_at: dt.datetime
    signature_checked: bool = True


@dataclass(frozen=True)
class _ParsedToken:
    host: str  # as signed (may include a port)
    params: dict[str, str]  # decoded values
    unsigned_query: str  # the raw query without X-Amz-Signature, as signed

    @property
    def hostname(self) -> str:
        host = self.host.lower()
        if host.startswith("["):
            return host[1:].split("]", 1)[0]
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _parse(token: str) -> _ParsedToken:
    if not token or len(token) > _MAX_TOKEN_CHARS or any(c.isspace() for c in token):
        raise errors.access_denied(HINT_MALFORMED)
    host, sep, query = token.partition("/?")
    if not sep or not host or "/" in host or "@" in host or not query:
        raise errors.access_denied(HINT_MALFORMED)
    params: dict[str, str] = {}
    kept: list[str] = []
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        if not eq or not key or key in params:
            raise errors.access_denied(HINT_MALFORMED)
        params[key] = unquote(value)
        if key != "X-Amz-Signature":
            kept.append(pair)
    if any(name not in params for name in _REQUIRED):
        raise errors.access_denied(HINT_MALFORMED)
    return _ParsedToken(host, params, "&".join(kept))


class TokenVerifier:
    """Checks IAM tokens against a `LocalAccount`, as Aurora DSQL checks them against IAM."""

    def __init__(
        self,
        account: LocalAccount,
        *,
        region: str,
        mode: AuthMode = AuthMode.STRICT,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.account = account
        self.region = region
        self.mode = AuthMode(mode)
        self.clock = clock

    def __repr__(self) -> str:
        return f"TokenVerifier(region={self.region!r}, mode={self.mode.value!r})"

    def verify(self, token: str, user: str, *, server_names: Iterable[str]) -> VerifiedIdentity:
        """Accept ``token`` for PostgreSQL role ``user`` or raise `DsqlError` (FATAL, 28000)."""
        parsed = _parse(token)
        p = parsed.params
        if p["X-Amz-Algorithm"] != ALGORITHM:
            raise errors.access_denied(HINT_MALFORMED)
        if p["X-Amz-SignedHeaders"].lower() != "host":
            raise errors.access_denied(HINT_MALFORMED)
        scope = p["X-Amz-Credential"].split("/")
        if len(scope) != 5:
            raise errors.access_denied(HINT_MALFORMED)
        access_key_id, scope_date, region, service, terminator = scope
        signed_at = _parse_time(p["X-Amz-Date"])
        if scope_date != p["X-Amz-Date"][:8]:
            raise errors.access_denied(
                f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of "
                f"date from HTTP: '{scope_date}' != '{p['X-Amz-Date'][:8]}'"
            )
        if service != SERVICE:
            raise errors.access_denied(
                f"Credential should be scoped to correct service: '{SERVICE}'."
            )
        if terminator != "aws4_request":
            raise errors.access_denied(
                "Credential should be scoped with a valid terminator: 'aws4_request'."
            )
        if region != self.region:
            raise errors.access_denied(
                f"Credential should be scoped to a valid region, not '{region}': this cluster is "
                f"in {self.region}."
            )
        try:
            expires = int(p["X-Amz-Expires"])
        except ValueError:
            raise errors.access_denied(HINT_MALFORMED) from None
        if not 0 < expires <= limits.MAX_TOKEN_TTL_SECONDS:
            raise errors.access_denied(
                "X-Amz-Expires must be less than a week (in seconds) that is "
                f"{limits.MAX_TOKEN_TTL_SECONDS}."
            )

        identity = self.account.find(access_key_id)
        if identity is None and self.mode is not AuthMode.PERMISSIVE:
            raise errors.access_denied(HINT_INVALID_KEY)
        if identity is not None:
            if (identity.session_token or None) != (p.get("X-Amz-Security-Token") or None):
                raise errors.access_denied(HINT_INVALID_KEY)
            try:
                expected = _signature(parsed, identity, region, p["X-Amz-Date"])
            except (ValueError, UnicodeError):  # e.g. an unparsable host: not a signed URL
                raise errors.access_denied(HINT_MALFORMED) from None
            given = p["X-Amz-Signature"].lower().encode()
            if not hmac.compare_digest(expected.encode(), given):
                raise errors.access_denied(HINT_BAD_SIGNATURE)

        now = self.clock()
        expires_at = signed_at + dt.timedelta(seconds=expires)
        if now > expires_at:
            raise errors.access_denied(
                f"Signature expired: {expires_at.strftime(SIGV4_TIMESTAMP)} is now earlier than "
                f"{now.strftime(SIGV4_TIMESTAMP)}. Generate a new token."
            )
        if signed_at > now + MAX_CLOCK_SKEW:
            raise errors.access_denied(
                f"Signature not yet current: {signed_at.strftime(SIGV4_TIMESTAMP)} is still later "
                f"than {(now + MAX_CLOCK_SKEW).strftime(SIGV4_TIMESTAMP)}. Check your clock."
            )

        action = p["Action"]
        wanted = ADMIN_ACTION if user == limits.DEFAULT_USER else CONNECT_ACTION
        if action not in (ADMIN_ACTION, CONNECT_ACTION):
            raise errors.access_denied(HINT_MALFORMED)
        if action != wanted:
            how = (
                "generate_db_connect_admin_auth_token"
                if wanted == ADMIN_ACTION
                else "generate_db_connect_auth_token"
            )
            raise errors.access_denied(
                f"The token allows {action}, but connecting as {user!r} needs {wanted}: "
                f"generate it with {how}."
            )

        names = {n.lower() for n in server_names}
        if parsed.hostname not in names:
            raise errors.access_denied(
                f"The token was generated for host {parsed.hostname!r}, not for this cluster: "
                "generate it for the cluster endpoint you connect to."
            )
        return VerifiedIdentity(
            access_key_id=access_key_id,
            arn=identity.arn if identity is not None else None,
            action=action,
            user=user,
            host=parsed.hostname,
            expires_at=expires_at,
            signature_checked=identity is not None,
        )


def _parse_time(value: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(value, SIGV4_TIMESTAMP).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise errors.access_denied(HINT_MALFORMED) from None


def _signature(parsed: _ParsedToken, identity: Identity, region: str, amz_date: str) -> str:
    """The signature AWS would compute for this presigned URL, with botocore's SigV4 code."""
    from botocore.auth import SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="GET", url=f"https://{parsed.host}/?{parsed.unsigned_query}")
    request.context["timestamp"] = amz_date
    signer = SigV4QueryAuth(
        Credentials(identity.access_key_id, identity.secret_access_key, identity.session_token),
        SERVICE,
        region,
    )
    canonical = signer.canonical_request(request)
    return str(signer.signature(signer.string_to_sign(request, canonical), request))
