"""What ``SHOW`` answers on Aurora DSQL, where it differs from the embedded PostgreSQL.

DSQL reports ``server_version`` 16.15 (observed) whatever PostgreSQL 16 minor release the emulator
embeds, so ``SHOW server_version`` and ``SHOW server_version_num`` are answered here, and the
startup ParameterStatus is rewritten with `REPORTED_PARAMETERS`. Parameters
DSQL does not know (``lc_collate``) and parameters it refuses to ``SET`` are dialect rules
(rules.yaml); this module only holds the values DSQL reports.

It must not touch PostgreSQL's settings: everything here is a synthetic answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .hooks import Synthetic
from .statements import Statement

if TYPE_CHECKING:
    from .hooks import Reply, StatementContext

# Observed on the service (dsql-observed.md, "Environment").
SERVER_VERSION = "16.15"
SERVER_VERSION_NUM = "160015"

SHOW_VALUES: dict[str, str] = {
    "server_version": SERVER_VERSION,
    "server_version_num": SERVER_VERSION_NUM,
}
# ParameterStatus values the client is told at startup instead of PostgreSQL's (backend.py).
REPORTED_PARAMETERS: dict[str, str] = {"server_version": SERVER_VERSION}


def show_reply(stmt: Statement) -> Synthetic | None:
    """A synthetic answer for ``SHOW <parameter>`` when DSQL's value differs from PostgreSQL's."""
    if stmt.node_name != "variable_show_stmt":
        return None
    name = stmt.inner.name.lower()
    value = SHOW_VALUES.get(name)
    if value is None:
        return None
    return Synthetic(columns=[name], rows=[[value]], tag="SHOW")


class Environment:
    """Statement hook: answer ``SHOW`` for the parameters whose DSQL value is fixed."""

    async def before(self, stmt: Statement, ctx: StatementContext) -> Reply | None:
        """Answer ``SHOW server_version`` and friends as DSQL does."""
        return show_reply(stmt)
