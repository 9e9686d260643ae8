"""Statement hooks: how DSQL's rules plug into the session without the session knowing them.

A hook is any object with some of the async methods below (docs/internals.md, "Statement hooks");
the session calls the ones it has, in the cluster's hook order, and skips the others::

    async def before(self, stmt: Statement, ctx: StatementContext) -> Reply | None
    async def after(self, stmt: Statement, result: CommandResult, ctx: StatementContext) -> None
    def observe_read(self, stmt: Statement, result: CommandResult, ctx: StatementContext) -> None
    async def before_commit(self, ctx: StatementContext) -> None
    async def after_end(self, ctx: StatementContext, committed: bool) -> None
    async def on_connect(self, ctx: StatementContext) -> None
    async def on_disconnect(self, ctx: StatementContext) -> None
    def guard(self, stmt: Statement) -> bool
    async def on_error(self, stmt: Statement, error: DsqlError, ctx: StatementContext)
        -> Reply | DsqlError | None

A statement some hook *guards* runs (inside a transaction) behind an internal savepoint, with its
response held back: if PostgreSQL fails it, the session rolls back to the savepoint and asks
``on_error``; a `Reply` then answers the statement instead of the error (`Forward`: run that SQL
with the statement's own parameters; `Synthetic`: a made-up answer) and the transaction goes on;
a `DsqlError` replaces the error; None keeps it. OCC uses this to turn a lock wait into a
conflict decided at COMMIT (``ctx.current`` lets it replay the statement later).

A hook with ``observe_read`` declares that its ``after`` neither refuses nor waits for a
read-only statement (`Statement.read_only`). When every hook that has an ``after`` has one, the
session relays reads without holding their CommandComplete and ReadyForQuery back, and calls
``observe_read`` (synchronously, exceptions logged) as the CommandComplete goes by, instead of
``after``. A read costs no extra wake-up of the session then: the common case stays fast.

Refusals are raised as `DsqlError`. This module holds only the types hooks and the session share:
no I/O, no rules, no import of the session or server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .cluster import Cluster

HOOK_METHODS = (
    "before",
    "after",
    "observe_read",
    "before_commit",
    "after_end",
    "on_connect",
    "on_disconnect",
    "guard",
    "on_error",
)

TEXT_OID = 25  # PostgreSQL's `text` type: the default column type of a Synthetic reply


class Hook(Protocol):
    """Marker for a statement hook: any object; it defines whichever of HOOK_METHODS it needs."""


@dataclass(frozen=True)
class QueryResult:
    """One result of internal SQL run through `StatementContext.execute`, in text form.

    ``columns`` are the column names (empty for a command without rows), ``rows`` the values as
    PostgreSQL's text output (``None`` for NULL), ``tag`` the command tag, e.g. ``"SELECT 2"``.
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[str | None, ...], ...]
    tag: str


@dataclass(frozen=True)
class CommandResult:
    """How PostgreSQL completed a client statement: its command tag (``"UPDATE 3"``).

    ``elapsed_ms``: from sending the statement to its CommandComplete, when the session timed it.
    """

    tag: str
    elapsed_ms: float | None = None

    @property
    def command(self) -> str:
        """The tag's command words, e.g. ``"UPDATE"`` or ``"CREATE INDEX"``."""
        words = self.tag.split()
        while words and words[-1].isdigit():
            words.pop()
        return " ".join(words)

    @property
    def rows_affected(self) -> int | None:
        """The row count the tag reports (``INSERT 0 5`` → 5), or None if it has none."""
        last = self.tag.rsplit(" ", 1)[-1]
        if last.isdigit() and " " in self.tag:
            return int(last)
        return None


@dataclass(frozen=True)
class Forward:
    """Run ``sql`` on PostgreSQL instead of the client's statement (one statement)."""

    sql: str


@dataclass(frozen=True)
class Synthetic:
    """Answer the statement without PostgreSQL: a row set (possibly empty) and a command tag.

    Values are sent in text form (``str(value)``, ``None`` as NULL). ``types`` are PostgreSQL type
    OIDs per column, ``text`` by default. With no columns, only the tag is sent (e.g. ``"SET"``).
    """

    columns: Sequence[str]
    rows: Sequence[Sequence[object]]
    tag: str
    types: Sequence[int] | None = None
    # For a statement with parameters ($1…), answered in the extended protocol: called at Execute
    # with the bound values (bytes as the client sent them, None for NULL) and returns the answer
    # (same columns). ``rows``/``tag`` above only serve Describe. May raise DsqlError.
    resolve: Callable[[Sequence[bytes | None]], Awaitable[Synthetic]] | None = field(
        default=None, compare=False, repr=False
    )

    def column_types(self) -> tuple[int, ...]:
        """One type OID per column."""
        if self.types is None:
            return tuple(TEXT_OID for _ in self.columns)
        if len(self.types) != len(self.columns):
            raise ValueError("Synthetic: types must have one OID per column")
        return tuple(self.types)


Reply = Forward | Synthetic

Executor = Callable[[str, Sequence[object]], Awaitable[list[QueryResult]]]


@dataclass(frozen=True)
class BoundStatement:
    """A guarded statement as PostgreSQL ran it: SQL and, in the extended protocol, its binding.

    ``bind`` is the client's Bind message after the portal and statement names (parameter
    formats, values, result formats), so the statement can be run again exactly (`execute_bound`).
    """

    sql: str
    param_types: tuple[int, ...] = ()
    bind: bytes | None = None


BoundExecutor = Callable[[BoundStatement, "str | None"], Awaitable[list[QueryResult]]]


@dataclass(eq=False)
class StatementContext:
    """What a hook may know and do about the session running the statement.

    The session owns it and keeps ``in_transaction`` current; ``txn`` is replaced by a fresh dict
    at each transaction start, ``session`` lives as long as the connection.
    """

    session_id: int
    user: str
    cluster: Cluster
    executor: Executor = field(repr=False)
    in_transaction: bool = False
    txn: dict[str, Any] = field(default_factory=dict)
    session: dict[str, Any] = field(default_factory=dict)
    current: BoundStatement | None = None  # the guarded statement being run (for on_error)
    bound_executor: BoundExecutor | None = field(default=None, repr=False)
    # True while the session waits for its client with nothing in flight: only then may
    # another session's hook run SQL here (OCC rolling back a transaction that lost).
    idle: Callable[[], bool] = field(default=lambda: False, repr=False)

    async def execute(self, sql: str, params: Sequence[object] = ()) -> list[QueryResult]:
        """Run internal SQL on this session's backend, inside its current transaction.

        ``params`` bind to ``$1``, ``$2``… in text form. Returns one `QueryResult` per statement.
        A PostgreSQL error is raised as `DsqlError` with PostgreSQL's SQLSTATE and message.
        """
        return await self.executor(sql, params)

    async def execute_bound(
        self, bound: BoundStatement, sql: str | None = None
    ) -> list[QueryResult]:
        """Run ``bound`` again (or ``sql`` with its parameters) inside the current transaction.

        Results come back in text form, whatever formats the client asked for.
        """
        if self.bound_executor is None:
            if bound.bind is not None:
                raise RuntimeError("this session cannot run bound statements")
            return await self.executor(sql or bound.sql, ())
        return await self.bound_executor(bound, sql)


def bound_methods(hooks: Sequence[object], name: str) -> tuple[Callable[..., Any], ...]:
    """The hooks' methods called ``name``, in hook order (hooks without it are skipped)."""
    out = []
    for hook in hooks:
        method = getattr(hook, name, None)
        if method is not None:
            out.append(method)
    return tuple(out)
