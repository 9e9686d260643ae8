"""The hooks' parameterised SQL, kept prepared on one session's backend.

Hooks run the same SQL with new parameters again and again: the size-limit query at every
COMMIT, catalog lookups. Parsed and planned from scratch each time, the size-limit query alone
costs PostgreSQL about 0.7 ms per write transaction. Kept as a named prepared statement, it is
parsed once per session.

A client can drop every prepared statement of its backend: ``DEALLOCATE ALL`` and ``DISCARD
ALL``. The session then forgets the kept ones. It does so both when such a statement is sent
(`drops_all`) and when PostgreSQL confirms it (`tag_drops_all`), so that no kept statement is
used in between. Names are never reused, so a statement forgotten while it still exists on the
backend cannot clash with a new one. A client's ``DEALLOCATE name`` or protocol-level Close
would have to name one of ours (``_dsql_emulator_k<n>``) to drop it.
"""

from __future__ import annotations

from .statements import Statement

_PREFIX = "_dsql_emulator_k"
_DROPS_ALL_TAGS = frozenset({"DEALLOCATE ALL", "DISCARD ALL"})


class KeptStatements:
    """SQL text → name of its prepared statement on one backend, up to ``limit`` texts."""

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._names: dict[str, str] = {}
        self._serial = 0

    def __len__(self) -> int:
        return len(self._names)

    def get(self, sql: str) -> str | None:
        """The name ``sql`` is kept under, if it is."""
        return self._names.get(sql)

    def add(self, sql: str) -> str | None:
        """A new name to prepare ``sql`` under, or None when no more texts are kept."""
        if len(self._names) >= self.limit:
            return None
        name = self._names[sql] = f"{_PREFIX}{self._serial}"
        self._serial += 1
        return name

    def forget(self, sql: str) -> None:
        """``sql`` is not (or may not be) prepared on the backend any more."""
        self._names.pop(sql, None)

    def forget_all(self) -> None:
        self._names.clear()


def drops_all(stmt: Statement | None) -> bool:
    """Whether ``stmt`` drops every prepared statement: ``DEALLOCATE ALL``, ``DISCARD ALL``."""
    if stmt is None:
        return False
    if stmt.node_name == "deallocate_stmt":
        inner = stmt.inner
        return bool(inner.isall) or not inner.name
    # DISCARD PLANS/SEQUENCES/TEMP keep them too, but forgetting only costs a parse.
    return stmt.node_name == "discard_stmt"


def tag_drops_all(tag: str) -> bool:
    """Whether a CommandComplete tag says every prepared statement was dropped."""
    return tag in _DROPS_ALL_TAGS
