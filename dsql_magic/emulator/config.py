"""`EmulatorConfig`: every knob of one emulator, as one immutable value.

Built by the CLI (`cli.py`) or the Python API (`api.py`) and read by the engine, the wire front and
the hooks. Defaults are Aurora DSQL's quotas (from `dsql_magic.limits`), so an emulator started with
no options behaves like a fresh cluster; tests lower them (connection age, rate) to observe limits.

This module holds data and validation only: it starts nothing, reads no files and imports nothing
from the rest of the emulator.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import limits

DEFAULT_REGION = "us-east-1"
DEFAULT_HOST = "127.0.0.1"
# PostgreSQL's own connection slots behind the front: one per client session. DSQL's quota
# (10,000) is enforced by the front; the embedded engine cannot hold that many backends here.
DEFAULT_BACKEND_MAX_CONNECTIONS = 200

_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
# Real cluster identifiers are 26 lowercase letters and digits; accept any DNS label so tests
# can pick readable ones.
_CLUSTER_ID_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says which and what to use instead."""


class AuthMode(str, enum.Enum):
    """How tokens are checked.

    ``strict`` (default): the SigV4 signature must verify against the emulator's local IAM
    identities. ``permissive``: tokens signed with access keys the emulator does not know are
    accepted if well formed and unexpired (the emulator cannot check real AWS credentials).
    """

    STRICT = "strict"
    PERMISSIVE = "permissive"


@dataclass(frozen=True)
class ConflictInjection:
    """Forced OCC conflicts, for testing retry logic deterministically (issue 5; off by default).

    ``tables``: names (optionally schema-qualified) whose writers get a conflict at COMMIT;
    ``rate``: probability (0..1) that any writing transaction conflicts; ``seed`` fixes the draws.
    """

    tables: tuple[str, ...] = ()
    rate: float = 0.0
    seed: int | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.tables) or self.rate > 0.0


@dataclass(frozen=True)
class EmulatorConfig:
    """One emulator's settings. ``cluster_id=None`` means "the one stored in the data dir"."""

    host: str = DEFAULT_HOST
    port: int = limits.DEFAULT_PORT  # 0: pick a free port (the ready line reports it)
    data_dir: Path | None = None
    ephemeral: bool = False
    region: str = DEFAULT_REGION
    cluster_id: str | None = None
    auth: AuthMode = AuthMode.STRICT
    max_connections: int = limits.MAX_CONNECTIONS
    connection_rate: float = limits.MAX_CONNECTION_RATE_PER_SECOND
    connection_burst: int = limits.MAX_CONNECTION_BURST
    max_connection_age: float = limits.MAX_CONNECTION_SECONDS
    max_message_bytes: int = limits.MAX_PROTOCOL_MESSAGE_BYTES
    idle_timeout: float | None = None
    startup_timeout: float = 30.0
    backend_max_connections: int = DEFAULT_BACKEND_MAX_CONNECTIONS
    conflicts: ConflictInjection = field(default_factory=ConflictInjection)
    # Hook modules to leave out (e.g. {"policy"}), so PostgreSQL's own behaviour can be compared.
    disabled_hooks: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` for values that cannot work."""
        if self.ephemeral and self.data_dir is not None:
            raise ConfigError("use either --data-dir or --ephemeral, not both")
        if not self.ephemeral and self.data_dir is None:
            raise ConfigError("a data directory is required: pass --data-dir DIR or --ephemeral")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range: use 0..65535 (0 picks one)")
        if not _REGION_RE.match(self.region):
            raise ConfigError(f"{self.region!r} is not an AWS region name, e.g. us-east-1")
        if self.cluster_id is not None and not _CLUSTER_ID_RE.match(self.cluster_id):
            raise ConfigError(
                f"{self.cluster_id!r} is not a valid cluster id: use lowercase letters, digits "
                "and '-' (one DNS label)"
            )
        for name in ("max_connections", "connection_burst", "backend_max_connections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        for name in ("connection_rate", "max_connection_age", "startup_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.max_message_bytes < 1024:
            raise ConfigError("max_message_bytes must be at least 1024")
        if not 0.0 <= self.conflicts.rate <= 1.0:
            raise ConfigError("conflict injection rate must be between 0 and 1")

    def replace(self, **changes: object) -> EmulatorConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def endpoint(self) -> str:
        """The cluster hostname clients use: ``<cluster-id>.dsql.<region>.on.aws``."""
        if self.cluster_id is None:
            raise ConfigError("cluster id not resolved yet (it comes from the data dir)")
        return endpoint_for(self.cluster_id, self.region)

    @property
    def server_names(self) -> frozenset[str]:
        """Host names a token may be minted for, and the server certificate covers."""
        names = {"localhost", "127.0.0.1", "::1"}
        if self.cluster_id is not None:
            names.add(self.endpoint)
        if self.host not in ("0.0.0.0", "::", ""):
            names.add(self.host)
        return frozenset(names)


def endpoint_for(cluster_id: str, region: str) -> str:
    """DSQL's public endpoint name for a cluster id and region."""
    return f"{cluster_id}.dsql.{region}.on.aws"
