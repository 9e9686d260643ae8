"""IAM authentication tokens for Aurora DSQL, minted with boto3 for each new physical connection.

A token is a SigV4-presigned ``DbConnectAdmin`` (user ``admin``) or ``DbConnect`` (any other role)
request, made offline from whatever credentials the boto3 session finds: a profile, the
environment, SSO, or an instance/execution role (as on SageMaker). Sessions and clients are
created lazily and cached, so ``%load_ext`` stays offline and cheap.

This module must never expose a token: `Token` hides its value from ``repr``/``str``/pickling and
hands it out only through `Token.reveal`, which the connection code calls to pass it to psycopg as
the ``password`` keyword. Error messages never include it. Time comes from an injectable clock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dsql_magic.errors import ConnectionFailed, UsageProblem, scrub
from dsql_magic.limits import DEFAULT_TOKEN_TTL_SECONDS, MAX_TOKEN_TTL_SECONDS

ADMIN_USER = "admin"


class Token:
    """A DSQL authentication token; its value never appears in repr, str or pickles."""

    __slots__ = ("_value", "action", "expires_at", "minted_at")

    def __init__(self, value: str, *, action: str, minted_at: float, expires_at: float) -> None:
        self._value = value
        self.action = action
        self.minted_at = minted_at
        self.expires_at = expires_at

    def reveal(self) -> str:
        """The token itself: only for handing to the driver as a password."""
        return self._value

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def __repr__(self) -> str:
        return f"<Token {self.action} redacted, expires_at={self.expires_at:.0f}>"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a DSQL token cannot be pickled")


@dataclass(frozen=True)
class AwsCredentials:
    """Explicit credentials (the emulator's, or a caller's); the secret never shows in repr."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def action_for(user: str) -> str:
    """The IAM action a user's token is signed for (``admin`` is special in DSQL)."""
    return "DbConnectAdmin" if user == ADMIN_USER else "DbConnect"


def check_ttl(ttl: int) -> int:
    """Validate a token lifetime in seconds (DSQL accepts 1 s to one week)."""
    if not 1 <= int(ttl) <= MAX_TOKEN_TTL_SECONDS:
        raise UsageProblem(
            f"token TTL {ttl} s is out of range",
            f"use 1 to {MAX_TOKEN_TTL_SECONDS} seconds (default {DEFAULT_TOKEN_TTL_SECONDS})",
        )
    return int(ttl)


class _QuietWhileSigning(logging.Filter):
    """Drops botocore's DEBUG records (canonical request, signature) while we sign a token.

    At DEBUG, ``botocore.auth`` logs the signature it computes; for a presigned token that is
    the secret itself, so those records must never reach a handler.
    """

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.local, "signing", False)


_QUIET = _QuietWhileSigning()
_SIGNING_LOGGERS = ("botocore.auth", "botocore.signers", "botocore.hooks", "botocore.endpoint")
for _name in _SIGNING_LOGGERS:
    logging.getLogger(_name).addFilter(_QUIET)


@contextlib.contextmanager
def _quiet_signing() -> Iterator[None]:
    _QUIET.local.signing = True
    try:
        yield
    finally:
        _QUIET.local.signing = False


SessionFactory = Callable[[str | None, AwsCredentials | None], Any]


def _default_session(profile: str | None, credentials: AwsCredentials | None) -> Any:
    import boto3

    if credentials is not None:
        return boto3.Session(
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            aws_session_token=credentials.session_token,
        )
    return boto3.Session(profile_name=profile) if profile else boto3.Session()


class TokenMinter:
    """Mints tokens; caches one boto3 session per profile/credentials and one client per region."""

    def __init__(
        self,
        session_factory: SessionFactory = _default_session,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session_factory = session_factory
        self._clock = clock
        self._sessions: dict[tuple[str | None, AwsCredentials | None], Any] = {}
        self._clients: dict[tuple[str | None, AwsCredentials | None, str], Any] = {}
        self._lock = threading.Lock()

    def session(self, profile: str | None = None, credentials: AwsCredentials | None = None) -> Any:
        """The boto3 session for a profile (or explicit credentials), created on first use."""
        key = (profile, credentials)
        with self._lock:
            sess = self._sessions.get(key)
            if sess is None:
                try:
                    sess = self._session_factory(profile, credentials)
                except Exception as exc:  # botocore.exceptions.ProfileNotFound and friends
                    raise UsageProblem(
                        f"cannot load AWS profile {profile!r}: {scrub(str(exc))}",
                        "check ~/.aws/config or pass --profile NAME",
                    ) from None
                self._sessions[key] = sess
            return sess

    def default_region(self, profile: str | None = None) -> str | None:
        """The region the AWS configuration names (env or profile), if any."""
        try:
            return self.session(profile).region_name
        except UsageProblem:
            return None

    def _client(self, profile: str | None, credentials: AwsCredentials | None, region: str) -> Any:
        key = (profile, credentials, region)
        client = self._clients.get(key)
        if client is None:
            client = self.session(profile, credentials).client("dsql", region_name=region)
            self._clients[key] = client
        return client

    def mint(
        self,
        *,
        host: str,
        region: str,
        user: str,
        ttl: int = DEFAULT_TOKEN_TTL_SECONDS,
        profile: str | None = None,
        credentials: AwsCredentials | None = None,
    ) -> Token:
        """A fresh token for one connection attempt to ``host`` as ``user``."""
        from botocore.exceptions import BotoCoreError, NoCredentialsError

        ttl = check_ttl(ttl)
        action = action_for(user)
        now = self._clock()
        try:
            client = self._client(profile, credentials, region)
        except BotoCoreError as exc:
            raise ConnectionFailed(
                f"could not create the DSQL client: {scrub(str(exc))}",
                "check the region and the AWS configuration",
            ) from None
        try:
            with _quiet_signing():
                value = self._sign(client, action, host, region, ttl)
        except NoCredentialsError:
            raise ConnectionFailed(
                "no AWS credentials found to sign the DSQL token",
                "run `aws configure` or `aws sso login`, set AWS_PROFILE or pass --profile; on "
                "SageMaker the execution role is used automatically",
            ) from None
        except BotoCoreError as exc:
            raise ConnectionFailed(
                f"could not sign the DSQL token: {scrub(str(exc))}",
                "refresh the AWS credentials (expired SSO session? run `aws sso login`)",
            ) from None
        except (AttributeError, TypeError, ValueError):  # botocore cannot sign for this host
            raise ConnectionFailed(
                f"cannot sign a DSQL token for host {host!r}",
                "connect by host name (the cluster endpoint); use --hostaddr for the address",
            ) from None
        return Token(value, action=action, minted_at=now, expires_at=now + ttl)

    @staticmethod
    def _sign(client: Any, action: str, host: str, region: str, ttl: int) -> str:
        if action == "DbConnectAdmin":
            return str(client.generate_db_connect_admin_auth_token(host, region, ttl))
        return str(client.generate_db_connect_auth_token(host, region, ttl))
