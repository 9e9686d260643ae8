"""DPU on the magic side: measure each cell, show a badge under it, and ``%dsql dpu``.

`begin_cell` wraps one cell's run (the magics call it around `execution.run_cell`): it reads the
emulator's meter before and after, runs the ``--dpu`` EXPLAIN ANALYZE VERBOSE estimate when asked,
and files a pending CloudWatch entry for real clusters. `cmd_dpu` is the ``%dsql dpu`` subcommand.
Measuring must never fail a cell: a source that cannot answer leaves a note instead. Nothing here
logs or shows a token.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg import pq

from dsql_magic.dpu.display import DpuBadge, DpuPlot, LedgerFrame
from dsql_magic.dpu.ledger import CLOUDWATCH, EMULATOR, EXPLAIN, DpuFigures, DpuLedger, LedgerEntry
from dsql_magic.dpu.sources import (
    CloudWatchSource,
    cloudwatch_client,
    describe_error,
    figures_from_plan,
    is_local,
    meter_delta,
    read_meter,
)

if TYPE_CHECKING:
    from dsql_magic.connections import DsqlConnection
    from dsql_magic.explain.model import Plan
    from dsql_magic.sqlsplit import SqlStatement

#: USD per DPU when not configured: the us-east-1 list price at the time of writing ($8 per
#: million DPU). Set ``%config DsqlMagic.dpu_price_usd`` for your region; 0 hides costs.
DEFAULT_PRICE_USD: Final = 0.000008
#: Poll CloudWatch for pending entries at most this often (it reports per minute, late).
POLL_INTERVAL_SECONDS: Final = 60.0
#: How long to wait, at most, for the emulator's meter to show a cell's statements.
SETTLE_TRIES: Final = 5
SETTLE_SECONDS: Final = 0.01
EXPLAINABLE: Final = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "VALUES", "WITH", "TABLE"})
ESTIMATE_READ_NOTE: Final = "estimate ran the statement a second time (EXPLAIN ANALYZE VERBOSE)"
ESTIMATE_WRITE_NOTE: Final = (
    "estimate ran the write a second time in a rolled-back transaction (no data changed)"
)


@dataclass
class DpuState:
    """Per-magics-instance DPU state: the ledger, sources, and badges not yet shown."""

    ledger: DpuLedger = field(default_factory=DpuLedger)
    metered: dict[int, bool] = field(default_factory=dict)  # id(psycopg conn) -> has a meter
    cloudwatch: dict[str, CloudWatchSource] = field(default_factory=dict)
    cloudwatch_error: str | None = None
    unshown: list[LedgerEntry] = field(default_factory=list)
    hooked: bool = False
    last_poll: float = 0.0


def state_of(magic: Any) -> DpuState:
    state = getattr(magic, "_dsql_dpu_state", None)
    if not isinstance(state, DpuState):
        state = DpuState()
        magic._dsql_dpu_state = state
    return state


def price_of(magic: Any) -> float:
    return float(getattr(magic, "dpu_price_usd", DEFAULT_PRICE_USD))


def _cell_number(magic: Any) -> int | None:
    shell = getattr(magic, "shell", None)
    count = getattr(shell, "execution_count", None)
    return count if isinstance(count, int) else None


def record(magic: Any, **kwargs: Any) -> LedgerEntry:
    """Record an entry for the current cell and queue its badge."""
    state = state_of(magic)
    entry = state.ledger.record(cell=_cell_number(magic), **kwargs)
    state.unshown.append(entry)
    _hook_badges(magic, state)
    return entry


def record_plan(magic: Any, plan: Plan, sql: str, connection: str | None, note: str = "") -> None:
    """File the DPU estimate of an EXPLAIN ANALYZE VERBOSE plan, when it has one."""
    figures = figures_from_plan(plan)
    if figures is not None:
        record(magic, source=EXPLAIN, figures=figures, sql=sql, connection=connection, note=note)


# ------------------------------------------------------------------------------------ per cell


class CellTracker:
    """Measures one cell: use as ``with begin_cell(...): run_cell(...)``."""

    def __init__(
        self,
        magic: Any,
        connection: DsqlConnection,
        statements: Sequence[SqlStatement],
        namespace: Mapping[str, Any],
        estimate: bool,
    ) -> None:
        self.magic = magic
        self.connection = connection
        self.statements = [s for s in statements if not s.is_transaction_control]
        self.namespace = namespace
        self.estimate = estimate
        self.state = state_of(magic)
        self.started = self.state.ledger.clock()
        self.before = None
        self._est_total: DpuFigures | None = None
        self._est_notes: set[str] = set()
        target = connection.target
        self.local = is_local(target.host, target.hostaddr) or target.label == "emulator"
        with contextlib.suppress(Exception):  # measuring must never fail the cell
            if estimate:  # writes first, rolled back, so the cell's own run is unaffected
                self._estimate(writes=True)
            if self.local:
                self.before = self._read()

    def _read(self) -> Any:
        conn = self.connection.raw
        if conn is None or conn.closed:
            return None
        known = self.state.metered.get(id(conn), False)
        if not known and id(conn) in self.state.metered:
            return None  # asked before: this server has no meter
        reading = read_meter(conn, known_meter=known)
        if reading is not None or conn.info.transaction_status == pq.TransactionStatus.IDLE:
            self.state.metered[id(conn)] = reading is not None
        return reading

    def _settled_read(self, expected: int) -> Any:
        """Read the meter once the cell's statements show in it.

        The emulator may file a statement's figures just after the client saw the statement end;
        wait a little (bounded) for the count to catch up rather than miss them.
        """
        reading = self._read()
        floor = self.before.statements + expected if self.before is not None else 0
        for _ in range(SETTLE_TRIES):
            if reading is None or reading.statements >= floor:
                break
            time.sleep(SETTLE_SECONDS)
            reading = self._read()
        return reading

    def __enter__(self) -> CellTracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Measuring must never fail the cell or mask its own outcome.
        with contextlib.suppress(Exception):
            self.finish(ok=exc_type is None)

    def finish(self, ok: bool) -> None:
        sql = self.statements[0].text if self.statements else ""
        name = self.connection.name
        ended = self.state.ledger.clock()
        if self.local and self.before is not None:
            after = self._settled_read(len(self.statements) if ok else 0)
            if after is not None:
                record(
                    self.magic,
                    source=EMULATOR,
                    figures=meter_delta(self.before, after),
                    statements=max(after.statements - self.before.statements, 0),
                    started=self.started,
                    ended=ended,
                    sql=sql,
                    connection=name,
                    note="exact for the emulator" if ok else "cell failed; work up to the error",
                )
        elif not self.local and self.connection.target.cluster_id and _cloudwatch_on(self.magic):
            record(
                self.magic,
                source=CLOUDWATCH,
                figures=None,
                statements=len(self.statements),
                started=self.started,
                ended=ended,
                sql=sql,
                connection=name,
                cluster_wide=True,
            )
        if self.estimate:
            if ok:
                self._estimate(writes=False)
            else:
                self._est_notes.add("the cell failed: only its writes were estimated")
            if self._est_total is not None or self._est_notes:
                record(
                    self.magic,
                    source=EXPLAIN,
                    figures=self._est_total if self._est_total is not None else DpuFigures(),
                    statements=len([s for s in self.statements if s.first_word in EXPLAINABLE]),
                    sql=sql,
                    connection=name,
                    note="; ".join(sorted(self._est_notes)),
                )

    def _estimate(self, *, writes: bool) -> None:
        """``--dpu``: EXPLAIN ANALYZE VERBOSE each explainable statement of one kind.

        Writes are estimated before the cell runs, in a transaction that is rolled back (after
        the cell they could fail on their own effects, e.g. a duplicate key); reads after it.
        Either way the estimate is a second execution, and the note says so.
        """
        from dsql_magic.execution import bind_parameters
        from dsql_magic.explain.command import ExplainError, explain, statement_writes

        conn = self.connection.ensure() if writes else self.connection.raw
        if conn is None or conn.closed:
            return
        statements = [
            s
            for s in self.statements
            if s.first_word in EXPLAINABLE and statement_writes(s.first_word, s.text) == writes
        ]
        params = bind_parameters(statements, self.namespace)
        for stmt, values in zip(statements, params, strict=True):
            try:
                result = explain(conn, stmt.text, analyze=True, verbose=True, params=values)
            except (ExplainError, psycopg.Error) as exc:
                first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
                self._est_notes.add(f"no estimate for a statement: {first}")
                continue
            figures = figures_from_plan(result.plan)
            if figures is None:
                self._est_notes.add("the server printed no DPU estimate (not Aurora DSQL?)")
                continue
            total = self._est_total
            self._est_total = figures if total is None else total + figures
            self._est_notes.add(ESTIMATE_WRITE_NOTE if writes else ESTIMATE_READ_NOTE)


def begin_cell(
    magic: Any,
    connection: DsqlConnection,
    statements: Sequence[SqlStatement],
    namespace: Mapping[str, Any],
    *,
    estimate: bool = False,
) -> CellTracker:
    """Start measuring a cell (never raises: a failure only means no figures)."""
    return CellTracker(magic, connection, statements, namespace, estimate)


def _cloudwatch_on(magic: Any) -> bool:
    return bool(getattr(magic, "dpu_cloudwatch", True))


# ------------------------------------------------------------------------------ badges & polling


def _hook_badges(magic: Any, state: DpuState) -> None:
    shell = getattr(magic, "shell", None)
    if state.hooked or shell is None:
        return
    state.hooked = True

    def post_run_cell(result: Any = None) -> None:
        # Only here is the cell's number certain: IPython 9 counts the cell before running it,
        # IPython 8 after, so the number read while it ran may be one ahead of its prompt.
        number = getattr(result, "execution_count", None)
        if isinstance(number, int) and state.unshown:
            ids = {entry.id for entry in state.unshown}
            state.unshown = state.ledger.renumber(ids, number)
        show_badges(magic)

    shell.events.register("post_run_cell", post_run_cell)


def show_badges(magic: Any) -> DpuBadge | None:
    """Display (and return) the badge for entries recorded since the last one, if enabled."""
    state = state_of(magic)
    entries, state.unshown = state.unshown, []
    if not entries or not getattr(magic, "dpu_badge", True):
        return None
    with contextlib.suppress(Exception):  # CloudWatch trouble becomes a note, not an error
        refresh(magic, force=False)
    badge = DpuBadge(entries, price_of(magic))
    from IPython.display import display

    display(badge)
    return badge


def refresh(magic: Any, *, force: bool) -> int:
    """Poll CloudWatch for pending entries (at most once a minute unless forced)."""
    state = state_of(magic)
    pending = [e for e in state.ledger.pending() if e.source == CLOUDWATCH]
    if not pending:
        return 0
    now = time.monotonic()
    if not force and now - state.last_poll < POLL_INTERVAL_SECONDS:
        return 0
    state.last_poll = now
    filled = 0
    for connection_name in {e.connection for e in pending}:
        source = _source_for(magic, state, connection_name)
        if source is None:
            continue
        try:
            filled += source.fill(state.ledger, dt.datetime.now(dt.timezone.utc))
            state.cloudwatch_error = None
        except Exception as exc:
            state.cloudwatch_error = describe_error(exc)
    return filled


def _source_for(
    magic: Any, state: DpuState, connection_name: str | None
) -> CloudWatchSource | None:
    registry = getattr(magic, "registry", None)
    if registry is None or connection_name is None or connection_name not in registry:
        return None
    target = registry.get(connection_name).target
    if not target.cluster_id:
        return None
    key = f"{target.region}/{target.cluster_id}"
    if key not in state.cloudwatch:
        extra: dict[str, Any] = {}
        if target.credentials is not None:
            extra = {
                "aws_access_key_id": target.credentials.access_key_id,
                "aws_secret_access_key": target.credentials.secret_access_key,
                "aws_session_token": target.credentials.session_token,
            }
        client = cloudwatch_client(
            target.region,
            profile=None if extra else target.profile,
            endpoint_url=getattr(magic, "cloudwatch_endpoint_url", "") or None,
            **extra,
        )
        state.cloudwatch[key] = CloudWatchSource(client, target.cluster_id)
    return state.cloudwatch[key]


# ------------------------------------------------------------------------------- %dsql dpu


def _parser() -> Any:
    from dsql_magic.magics import make_parser

    p = make_parser("dpu", "The DPU ledger: DPU per cell and session totals, by source.")
    p.add_argument("--plot", action="store_true", help="chart DPU per cell")
    p.add_argument("--clear", action="store_true", help="forget the ledger's entries")
    p.add_argument(
        "--no-refresh", action="store_true", help="do not poll CloudWatch for pending minutes"
    )
    return p


def cmd_dpu(magic: Any, args: str, cell: str | None) -> object:
    """``%dsql dpu [--plot] [--clear] [--no-refresh]``: the ledger as a DataFrame, or a chart."""
    from dsql_magic.magics import parse_args
    from dsql_magic.results import Message

    ns = parse_args(_parser(), args)
    if isinstance(ns, Message):
        return ns
    state = state_of(magic)
    if ns.clear:
        count = len(state.ledger.entries)
        state.ledger.clear()
        state.unshown.clear()
        return Message(f"cleared {count} DPU ledger entries")
    if not ns.no_refresh:
        refresh(magic, force=True)
    price = price_of(magic)
    frame = state.ledger.frame(price)
    if ns.plot:
        return DpuPlot(frame)
    result = LedgerFrame.build(frame, state.ledger.summary(price))
    if state.cloudwatch_error:
        print(state.cloudwatch_error)
    return result
