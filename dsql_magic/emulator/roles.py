"""DSQL's role model: ``AWS IAM GRANT/REVOKE``, ``sys.iam_pg_role_mappings``, mapped logins.

On DSQL a custom database role logs in only with a ``DbConnect`` token whose IAM identity was
mapped to it by ``AWS IAM GRANT role TO 'arn:…'`` (run by ``admin``). The mappings are visible in
the ``sys.iam_pg_role_mappings`` view (manual L1117-1133: ``iam_oid, arn, pg_role_oid,
pg_role_name, grantor_pg_role_oid, grantor_pg_role_name``). A mapped role cannot be dropped until
the mapping is revoked, and ``admin`` itself cannot be changed. The rest of the manual's model
(admin owns ``public``, is not a superuser; other roles cannot create schemas) is PostgreSQL's own
privilege system, set up by the engine.

Here the mappings live in a real table, ``sys.iam_role_mapping_store``, installed once per
cluster through a superuser connection; ``AWS IAM GRANT/REVOKE`` write it inside the client's
transaction, so they commit or roll back with it. The IAM commands are read from scanner tokens,
never with regular expressions over SQL. This module never logs or echoes a token.
"""

from __future__ import annotations

import asyncio
import importlib
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import postgast

from .. import limits
from .dialect import RuleSet, load_rules
from .errors import DsqlError
from .hooks import Synthetic
from .statements import Statement, StatementKind

if TYPE_CHECKING:
    from .cluster import Cluster
    from .hooks import Reply, StatementContext

pb: Any = importlib.import_module("postgast.pg_query_pb2")

ADMIN = limits.DEFAULT_USER
# Where the session may leave the verified token identity (iam.VerifiedIdentity) for on_connect.
IDENTITY_KEY = "iam_identity"

MAPPING_COLUMNS = (
    "iam_oid",
    "arn",
    "pg_role_oid",
    "pg_role_name",
    "grantor_pg_role_oid",
    "grantor_pg_role_name",
)

INSTALL_SQL = f"""
SELECT pg_advisory_xact_lock(hashtext('dsql-emulator sys schema'));
CREATE SCHEMA IF NOT EXISTS sys;
GRANT USAGE ON SCHEMA sys TO PUBLIC;
CREATE SEQUENCE IF NOT EXISTS sys.iam_oid_seq START 26000;
CREATE TABLE IF NOT EXISTS sys.iam_role_mapping_store (
    iam_oid             oid NOT NULL DEFAULT nextval('sys.iam_oid_seq')::oid,
    arn                 text NOT NULL,
    pg_role_oid         oid NOT NULL,
    grantor_pg_role_oid oid NOT NULL,
    PRIMARY KEY (arn, pg_role_oid)
);
REVOKE ALL ON sys.iam_role_mapping_store FROM PUBLIC;
GRANT SELECT, INSERT, DELETE ON sys.iam_role_mapping_store TO {ADMIN};
GRANT USAGE ON SEQUENCE sys.iam_oid_seq TO {ADMIN};
CREATE OR REPLACE VIEW sys.iam_pg_role_mappings AS
    SELECT m.iam_oid, m.arn, m.pg_role_oid, r.rolname::text AS pg_role_name,
           m.grantor_pg_role_oid, g.rolname::text AS grantor_pg_role_name
    FROM sys.iam_role_mapping_store m
    JOIN pg_roles r ON r.oid = m.pg_role_oid
    LEFT JOIN pg_roles g ON g.oid = m.grantor_pg_role_oid;
GRANT SELECT ON sys.iam_pg_role_mappings TO PUBLIC;
"""


@dataclass(frozen=True)
class IamCommand:
    """A parsed ``AWS IAM GRANT role TO 'arn'`` or ``AWS IAM REVOKE role FROM 'arn'``."""

    action: str  # "GRANT" or "REVOKE"
    role: str
    arn: str

    @property
    def tag(self) -> str:
        """The command tag the client sees."""
        return f"AWS IAM {self.action}"


def _error(rule_id: str, rules: RuleSet | None = None, **params: str) -> DsqlError:
    return (rules or load_rules()).by_id(rule_id).error(**params)


def _identifier(text: str) -> str:
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        return text[1:-1].replace('""', '"')
    return text.lower()


def _token_name(value: int) -> str:
    """The scanner token's name; single characters the enum does not name are ``ASCII_<n>``."""
    try:
        return str(pb.Token.Name(value))
    except ValueError:
        return f"ASCII_{value}"


def parse_iam_command(text: str) -> IamCommand:
    """Read an IAM command from its scanner tokens; a malformed one raises a syntax error."""
    try:
        scanned = postgast.scan(text)
    except postgast.PgQueryError as exc:
        raise _error("iam-syntax", token=text[:20]) from exc
    data = text.encode("utf-8")
    tokens = [
        (_token_name(t.token), data[t.start : t.end].decode("utf-8", "replace"))
        for t in scanned.tokens
        if _token_name(t.token) not in ("SQL_COMMENT", "C_COMMENT")
    ]
    while tokens and tokens[-1][0] == "ASCII_59":
        tokens.pop()
    words = [w.upper() for _, w in tokens]
    if len(tokens) < 4 or words[:2] != ["AWS", "IAM"] or words[2] not in ("GRANT", "REVOKE"):
        raise _error("iam-syntax", token=tokens[0][1] if tokens else "")
    action = words[2]
    expected = "TO" if action == "GRANT" else "FROM"
    if len(tokens) != 6:
        bad = tokens[6][1] if len(tokens) > 6 else "end of input"
        raise _error("iam-syntax", token=bad)
    kind, role_text = tokens[3]
    if kind in ("SCONST", "ICONST", "FCONST") or (not role_text[:1].isalpha() and kind != "IDENT"):
        raise _error("iam-syntax", token=role_text)
    if words[4] != expected:
        raise _error("iam-syntax", token=tokens[4][1])
    arn_kind, arn_text = tokens[5]
    if arn_kind != "SCONST" or not arn_text.startswith("'"):
        raise _error("iam-syntax", token=arn_text)
    return IamCommand(action, _identifier(role_text), arn_text[1:-1].replace("''", "'"))


def is_iam_arn(arn: str) -> bool:
    """True for ``arn:<partition>:iam::<12 digits>:role/<name>`` (or ``user/``)."""
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or not parts[1].startswith("aws"):
        return False
    _, _, service, region, account, resource = parts
    if service != "iam" or region or len(account) != 12 or not account.isdigit():
        return False
    kind, _, name = resource.partition("/")
    return kind in ("role", "user") and bool(name) and not name.endswith("/")


def principal_arns(arn: str) -> set[str]:
    """The IAM ARNs a token identity may be mapped under (an STS assumed role is its role)."""
    out = {arn}
    parts = arn.split(":", 5)
    if len(parts) == 6 and parts[2] == "sts" and parts[5].startswith("assumed-role/"):
        role = parts[5].split("/")[1]
        out.add(f"arn:{parts[1]}:iam::{parts[4]}:role/{role}")
    return out


def _same_principal(granted: str, identities: set[str]) -> bool:
    if granted in identities:
        return True
    # A role ARN with a path (role/path/Name) is the assumed role "Name".
    prefix, sep, resource = granted.partition(":role/")
    return bool(sep) and f"{prefix}:role/{resource.rsplit('/', 1)[-1]}" in identities


def _grants_create_on_public(stmt: Statement) -> bool:
    """``GRANT CREATE`` (or ``ALL``) ``ON SCHEMA public``: DSQL keeps public to admin (L1929)."""
    if stmt.node_name != "grant_stmt" or not stmt.inner.is_grant:
        return False
    inner = stmt.inner
    if inner.objtype != pb.OBJECT_SCHEMA:
        return False
    if not any(obj.string.sval == "public" for obj in inner.objects):
        return False
    privileges = [p.access_priv.priv_name for p in inner.privileges]
    return not privileges or "create" in privileges  # no privilege list means ALL


_installed: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
_install_lock = asyncio.Lock()


async def ensure_installed(cluster: Cluster) -> None:
    """Create the mapping store and ``sys.iam_pg_role_mappings`` once per cluster (superuser)."""
    if _installed.get(cluster):
        return
    async with _install_lock:
        if _installed.get(cluster):
            return
        import psycopg

        addr = cluster.backend
        for attempt in range(3):
            try:
                async with await psycopg.AsyncConnection.connect(
                    host=str(addr.socket_dir),
                    port=addr.port,
                    user=addr.user,
                    dbname=addr.database,
                    connect_timeout=10,
                ) as conn:
                    await conn.execute(INSTALL_SQL.encode())
                    await conn.commit()
                break
            except psycopg.errors.UniqueViolation:
                # Another installer of the sys schema (the jobs hook) raced us; try again.
                if attempt == 2:
                    raise
        _installed[cluster] = True


class Roles:
    """Statement hook: the IAM commands, the admin role's protections, mapped logins."""

    def __init__(self, rules: RuleSet | None = None) -> None:
        self._rules = rules

    def _error(self, rule_id: str, **params: str) -> DsqlError:
        return _error(rule_id, self._rules, **params)

    async def on_connect(self, ctx: StatementContext) -> None:
        """Install the store; refuse a custom role whose token identity has no mapping."""
        await ensure_installed(ctx.cluster)
        if ctx.user == ADMIN:
            return
        identity = ctx.session.get(IDENTITY_KEY)
        arn = getattr(identity, "arn", None)
        if identity is None or arn is None:
            return  # no verified identity to check (permissive auth, or an older session)
        results = await ctx.execute(
            "SELECT arn FROM sys.iam_pg_role_mappings WHERE pg_role_name = $1", (ctx.user,)
        )
        granted = [row[0] for row in results[-1].rows if row[0]] if results else []
        identities = principal_arns(arn)
        if not any(_same_principal(g, identities) for g in granted):
            err = self._error("unmapped-role-connect")
            err.severity = "FATAL"
            err.hint = f"Map the IAM identity first: AWS IAM GRANT {ctx.user} TO '<IAM role ARN>'"
            raise err

    async def before(self, stmt: Statement, ctx: StatementContext) -> Reply | None:
        """Run ``AWS IAM GRANT/REVOKE``; guard ``admin`` and mapped roles."""
        if stmt.kind is StatementKind.IAM:
            return await self._iam(stmt, ctx)
        if stmt.node_name in ("alter_role_stmt", "alter_role_set_stmt"):
            if stmt.inner.role.rolename == ADMIN:
                raise self._error("alter-admin")
        elif stmt.node_name == "rename_stmt" and stmt.inner.rename_type == pb.OBJECT_ROLE:
            if stmt.inner.subname == ADMIN:
                raise self._error("alter-admin")
        elif stmt.node_name == "drop_role_stmt":
            await self._check_drop_roles(stmt, ctx)
        elif _grants_create_on_public(stmt):
            raise self._error("grant-create-on-public")
        return None

    async def _check_drop_roles(self, stmt: Statement, ctx: StatementContext) -> None:
        names = [r.role_spec.rolename for r in stmt.inner.roles]
        if ADMIN in names:
            raise self._error("alter-admin")
        await ensure_installed(ctx.cluster)
        for name in names:
            results = await ctx.execute(
                "SELECT arn FROM sys.iam_pg_role_mappings WHERE pg_role_name = $1 "
                "ORDER BY arn LIMIT 1",
                (name,),
            )
            if results and results[-1].rows:
                raise self._error("drop-mapped-role", role=name, arn=str(results[-1].rows[0][0]))

    async def _iam(self, stmt: Statement, ctx: StatementContext) -> Synthetic:
        cmd = parse_iam_command(stmt.text)
        if ctx.user != ADMIN:
            raise self._error("iam-grant-not-admin", role=cmd.role)
        await ensure_installed(ctx.cluster)
        found = await ctx.execute(
            "SELECT oid::text, rolcanlogin::text FROM pg_roles WHERE rolname = $1", (cmd.role,)
        )
        rows = found[-1].rows if found else ()
        if not rows:
            raise self._error("iam-role-missing", role=cmd.role)
        role_oid, can_login = rows[0]
        if can_login != "true":
            raise self._error("iam-role-needs-login", role=cmd.role)
        if not is_iam_arn(cmd.arn):
            raise self._error("iam-bad-arn")
        if cmd.action == "GRANT":
            await ctx.execute(
                "INSERT INTO sys.iam_role_mapping_store (arn, pg_role_oid, grantor_pg_role_oid) "
                "SELECT $1, $2::oid, oid FROM pg_roles WHERE rolname = current_user "
                "ON CONFLICT DO NOTHING",
                (cmd.arn, role_oid),
            )
        else:
            deleted = await ctx.execute(
                "DELETE FROM sys.iam_role_mapping_store WHERE arn = $1 AND pg_role_oid = $2::oid",
                (cmd.arn, role_oid),
            )
            if deleted and deleted[-1].tag == "DELETE 0":
                raise self._error("iam-mapping-missing", arn=cmd.arn, role=cmd.role)
        return Synthetic(columns=[], rows=[], tag=cmd.tag)
