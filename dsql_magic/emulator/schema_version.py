"""OC001: a catalog change by one session fails the next statement of every other session, once.

DSQL sessions cache the schema catalog; after another transaction changes it (DDL, GRANT,
REVOKE, an asynchronous index becoming valid), a session still on the older catalog version
gets SQLSTATE 40001 ``schema has been updated by another transaction (OC001)`` at its next
statement that reads storage, and the retry succeeds (manual "Troubleshooting OCC errors").

Here the version is `Cluster.catalog_version`: a committed catalog change bumps it, each session
remembers the version it last worked with, and a statement that touches a relation from a
session on an older version fails once and brings the session up to date. Statements that read
no relation (``SELECT 1``, ``SET``, ``SHOW``, transaction control) never fail this way.

This module is a hook and the OC001 error constructor only; it must not touch PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from .errors import DsqlError
from .hooks import CommandResult, Reply, StatementContext
from .statements import Statement, StatementKind

SERIALIZATION_FAILURE = "40001"
_KEY = "catalog_version"
_CHANGED = "catalog_changed"


def schema_conflict() -> DsqlError:
    """OC001 as DSQL words it (observed)."""
    return DsqlError(
        SERIALIZATION_FAILURE, "schema has been updated by another transaction (OC001)"
    )


def changes_catalog(stmt: Statement) -> bool:
    """DDL, GRANT/REVOKE and DSQL's AWS IAM GRANT/REVOKE change the catalog."""
    return stmt.kind in (StatementKind.DDL, StatementKind.IAM)


def reads_relations(stmt: Statement) -> bool:
    """True if the statement names any table, view or index (so it reads the catalog)."""
    return stmt.reads_relations


class SchemaVersionHook:
    """Raises OC001 once per session after another session's committed catalog change."""

    async def on_connect(self, ctx: StatementContext) -> None:
        ctx.session[_KEY] = ctx.cluster.catalog_version

    async def before(self, stmt: Statement, ctx: StatementContext) -> Reply | None:
        if stmt.is_async or not reads_relations(stmt):
            return None  # no catalog read: the session keeps its (possibly old) version
        seen = ctx.session.get(_KEY, 0)
        current = ctx.cluster.catalog_version
        ctx.session[_KEY] = current
        if seen < current:
            raise schema_conflict()
        return None

    def observe_read(self, stmt: Statement, result: CommandResult, ctx: StatementContext) -> None:
        """A read changes no catalog: nothing to note."""

    async def after(self, stmt: Statement, result: CommandResult, ctx: StatementContext) -> None:
        if changes_catalog(stmt):
            ctx.txn[_CHANGED] = True

    async def after_end(self, ctx: StatementContext, committed: bool) -> None:
        if committed and ctx.txn.get(_CHANGED):
            ctx.session[_KEY] = ctx.cluster.bump_catalog_version()


def make_hook(config: Any = None) -> SchemaVersionHook:
    return SchemaVersionHook()
