"""One client session: startup and token auth, then a relay to PostgreSQL that runs the hooks.

The transport (server.py) hands over a connected, TLS-wrapped stream pair and the client's
StartupMessage. The session authenticates (the password is an IAM token checked by
``cluster.verifier``), opens its own PostgreSQL backend and relays frames both ways:

* client → backend (`_client_loop`): frames are decoded only where a decision is needed (Query,
  Parse, Bind, Describe, Execute, Close, Sync); everything else is forwarded as bytes. The statement
  hooks of docs/internals.md run here, in order, and may refuse (`DsqlError`), rewrite (`Forward`)
  or answer (`Synthetic`) a statement.
* backend → client (`_on_backend_data`, a protocol callback): frames are matched against a queue
  of expected responses (`_Unit`s), so replies the session makes itself keep their place in a
  pipeline, and so CommandComplete / ReadyForQuery / ErrorResponse can be held, rewritten or
  swallowed.

Another session's hook may run SQL on this backend while the session waits for its client with
nothing in flight (``ctx.idle()``; OCC taking a losing transaction): what the client sends
meanwhile waits until that is done (`_lend`).

How refusals abort a transaction: the refused statement is replaced, on the backend, by a statement
that fails (`_FAIL_SQL`), and its error is replaced by the refusal. PostgreSQL then does the rest
exactly as DSQL: later statements in the block get 25P02, COMMIT answers ROLLBACK, the extended
protocol discards until Sync.

It must not open listening sockets or handle TLS (server.py), nor know DSQL's rules (hooks).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .. import limits
from . import errors, protocol
from .backend import Backend, send_cancel
from .cluster import Cluster, SessionHandle
from .errors import DsqlError
from .hooks import (
    BoundStatement,
    CommandResult,
    Forward,
    QueryResult,
    StatementContext,
    Synthetic,
    bound_methods,
)
from .kept_statements import KeptStatements, drops_all, tag_drops_all
from .statements import Statement, StatementKind, split_statements

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Fails during parse analysis (so at Parse in the extended protocol), with no side effect.
_FAIL_SQL = "SELECT 'dsql-emulator refusal'::pg_catalog.int4"
_BEGIN_SQL = "BEGIN ISOLATION LEVEL REPEATABLE READ"
_INTERNAL = "_dsql_emulator_internal"
_GUARD = "_dsql_emulator_guard"  # the internal savepoint around a guarded statement
_READ_SIZE = 256 * 1024
_HIGH_WATER = 1 << 20  # drain the client writer above this many buffered bytes
_CORK_LIMIT = 1 << 16  # hold at most this many relayed bytes for the session's reply


class UnitKind(enum.Enum):
    """A response the backend owes us (or one the session will send itself)."""

    QUERY = "query"  # simple Query or FunctionCall: ends at ReadyForQuery
    PARSE = "parse"
    BIND = "bind"
    DESCRIBE = "describe"
    EXECUTE = "execute"
    CLOSE = "close"
    SYNC = "sync"
    SYNTHETIC = "synthetic"  # bytes the session sends when this unit reaches the queue's head


_END_BY_TYPE: dict[bytes, frozenset[UnitKind]] = {
    b"1": frozenset({UnitKind.PARSE}),
    b"2": frozenset({UnitKind.BIND}),
    b"3": frozenset({UnitKind.CLOSE}),
    b"T": frozenset({UnitKind.DESCRIBE}),
    b"n": frozenset({UnitKind.DESCRIBE}),
    b"C": frozenset({UnitKind.EXECUTE}),
    b"I": frozenset({UnitKind.EXECUTE}),
    b"s": frozenset({UnitKind.EXECUTE}),
    b"Z": frozenset({UnitKind.QUERY, UnitKind.SYNC}),
}


@dataclass(eq=False)
class _Unit:
    kind: UnitKind
    relay: bool = True  # relay the backend's frames for this unit to the client
    errors_only: bool = False  # with relay=False: still relay an ErrorResponse
    hold_ready: bool = False  # keep ReadyForQuery back (the session sends its own)
    hold_complete: bool = False  # keep CommandComplete back (sent after the `after` hooks)
    replace_error: DsqlError | None = None  # send this instead of the backend's error
    collect: bool = False  # decode rows (internal SQL)
    buffer: bool = False  # a guarded statement: keep what would be relayed in `buffered`
    buffered: list[bytes] = field(default_factory=list)
    data: bytes = b""  # SYNTHETIC only
    # A read relayed as it comes (no hold): its `observe_read` hooks run at CommandComplete.
    observe: Statement | None = None
    sent: float = 0.0  # when it was queued (perf_counter), for the observers' elapsed time
    epoch: int = 0  # Syncs expected before this unit (see `Session._expect`)
    future: asyncio.Future[None] | None = None
    # What happened:
    tag: str | None = None
    error: DsqlError | None = None
    status: bytes | None = None
    skipped: bool = False
    results: list[QueryResult] = field(default_factory=list)
    columns: tuple[str, ...] = ()
    rows: list[tuple[str | None, ...]] = field(default_factory=list)


@dataclass
class _Prepared:
    """What the session knows about a prepared statement or portal."""

    stmt: Statement | None
    synthetic: Synthetic | None = None
    param_types: tuple[int, ...] = ()
    sql: str = ""  # what PostgreSQL was given (after a Forward)
    values: Sequence[bytes | None] = ()  # a portal's bound values, kept only for `resolve`
    # The `before` hooks ran at its Parse, for its next execution (see `Session._unchecked`).
    checked: bool = False


class Session:
    """A client connection after its StartupMessage; `run()` returns when it has ended."""

    def __init__(
        self,
        cluster: Cluster,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        startup: protocol.StartupMessage,
    ) -> None:
        self.cluster = cluster
        self.reader = reader
        self.writer = writer
        self.startup = startup
        self.user = startup.params.get("user", "")
        self.backend: Backend | None = None
        self.handle: SessionHandle | None = None
        self.ctx: StatementContext | None = None
        self.pending: deque[_Unit] = deque()
        self.prepared: dict[str, _Prepared] = {}
        self.portals: dict[str, _Prepared] = {}
        self._kept = KeptStatements()  # hooks' parameterised SQL, prepared once (`_internal_kept`)
        # Portals of a prepared statement executed again: its `before` hooks run at Execute.
        self._unchecked: set[str] = set()
        self.status = b"I"  # the client-visible transaction status
        self.explicit = False  # an explicit BEGIN block is open
        self.discard = False  # our refusal in the extended protocol: drop client frames to Sync
        self.ext_batch = False  # extended-protocol frames were sent since the last Sync
        self.ext_failed = False  # the backend reported an extended-protocol error, not yet synced
        self._epoch = 0  # Syncs sent so far
        self._failed_epoch = -1  # the epoch of the last extended-protocol error
        self.ext_implicit = False  # we opened an internal transaction around extended writes
        self.copy_in = asyncio.Event()
        self.closing = False
        self.expired = False
        self._backend_alive = False  # the relay from PostgreSQL runs (see `_start_relay`)
        self._backend_fb = protocol.FrameBuffer(1 << 30)
        self._drain_task: asyncio.Task[None] | None = None
        # What `_wait` sleeps on: resolved when its unit ends, COPY IN starts or all fails.
        self._wake: asyncio.Future[None] | None = None
        self._waiting_for: _Unit | None = None
        # Set while another session's hook runs SQL on this backend (see `_lend`).
        self._lent: asyncio.Future[None] | None = None
        self._wbuf: list[bytes] = []  # backend-bound bytes not yet written (see `_send`)
        self._cbuf: list[bytes] = []  # session-made replies not yet written to the client
        self._accepted = False  # AuthenticationOk sent: the client may hear from us (`_accept`)
        self._startup_relay: list[bytes] = []  # PostgreSQL's ParameterStatus etc. at startup
        self._age_timer: asyncio.TimerHandle | None = None
        hooks = cluster.hooks
        self.h_before = bound_methods(hooks, "before")
        self.h_after = bound_methods(hooks, "after")
        self.h_before_commit = bound_methods(hooks, "before_commit")
        self.h_after_end = bound_methods(hooks, "after_end")
        self.h_connect = bound_methods(hooks, "on_connect")
        self.h_disconnect = bound_methods(hooks, "on_disconnect")
        self.h_guard = bound_methods(hooks, "guard")
        self.h_on_error = bound_methods(hooks, "on_error")
        self.h_observe_read = bound_methods(hooks, "observe_read")
        self._observed_reads: list[tuple[_Unit, str, float]] = []  # (unit, tag, completed)
        # Reads skip `after` (and its hold) when every hook with an `after` observes them.
        self.observe_reads = bool(self.h_after) and all(
            hasattr(h, "observe_read") for h in hooks if hasattr(h, "after")
        )
        self.bind_tails: dict[str, bytes] = {}  # portal -> its Bind after the two names
        self.reading = False
        self.any_hooks = bool(
            self.h_before or self.h_after or self.h_before_commit or self.h_after_end
        )
        self.limit = cluster.settings.max_message_bytes

    @property
    def state(self) -> protocol.SessionState:
        """Where the session is in the protocol (derived from what it tracks)."""
        if self.closing:
            return protocol.SessionState.CLOSED
        if self.ctx is None:
            return protocol.SessionState.AUTHENTICATING
        if self.copy_in.is_set():
            return protocol.SessionState.COPY_IN
        if self.discard or self._failed_epoch == self._epoch:
            # our refusal, or PostgreSQL's error: both sides skip everything up to Sync
            return protocol.SessionState.DISCARD_UNTIL_SYNC
        return protocol.SessionState.READY

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Authenticate, relay until either side ends, then clean up."""
        try:
            await asyncio.wait_for(self._authenticate(), self.cluster.settings.startup_timeout)
        except DsqlError as err:
            await self._fatal(err)
            await self._cleanup()
            return
        except (asyncio.TimeoutError, TimeoutError):
            await self._fatal(errors.protocol_violation("timeout waiting for authentication"))
            await self._cleanup()
            return
        except (ConnectionError, asyncio.IncompleteReadError, protocol.ProtocolError):
            await self._cleanup()
            return
        assert self.backend is not None and self.handle is not None
        loop = asyncio.get_running_loop()
        self._age_timer = loop.call_later(self.cluster.settings.max_connection_age, self._expire)
        try:
            await self._hooks_connect()  # may still refuse the login (an unmapped custom role)
            await self._accept()
            await self._client_loop()
        except DsqlError as err:
            await self._fatal(err)
        except protocol.TooLarge as exc:
            await self._fatal(errors.message_too_large(exc.size, exc.limit))
        except protocol.ProtocolError as exc:
            await self._fatal(errors.protocol_violation(str(exc)))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception as exc:  # a bug: tell the client instead of leaving it hanging
            log.exception("session %s failed", self.handle.session_id)
            await self._fatal(errors.internal_error(type(exc).__name__))
        finally:
            await self._cleanup()

    async def close_for_shutdown(self) -> None:
        """Tell the client the server is stopping and end the session."""
        await self._fatal(errors.server_shutting_down())

    async def _cleanup(self) -> None:
        self.closing = True
        if self._age_timer is not None:
            self._age_timer.cancel()
        if self.ctx is not None and self.h_disconnect:
            for hook in self.h_disconnect:
                with contextlib.suppress(Exception):
                    await hook(self.ctx)
        if self._drain_task is not None:
            self._drain_task.cancel()
        self._fail_pending()
        if self.backend is not None:
            self.backend.close()
            await self.backend.wait_closed()
        if self.handle is not None:
            self.cluster.unregister(self.handle)
        self._close_client()

    def _close_client(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    async def _fatal(self, err: DsqlError) -> None:
        """Send a FATAL error if the client can still hear it, then close."""
        self.closing = True
        with contextlib.suppress(Exception):
            if not self.writer.is_closing():
                self._flush_client()
                self.writer.write(protocol.encode_error(err))
                await asyncio.wait_for(self.writer.drain(), 5)
        self._close_client()

    def _expire(self) -> None:
        """Max connection age reached: close now if idle, else after the current exchange."""
        self.expired = True
        if not self.pending:
            self._close_expired()

    def _close_expired(self) -> None:
        self.closing = True
        with contextlib.suppress(Exception):
            self._flush_client()
            self.writer.write(protocol.encode_error(errors.connection_age_exceeded()))
        self._close_client()
        if self.backend is not None:
            self.backend.close()

    # --- startup -----------------------------------------------------------------------------

    async def _authenticate(self) -> None:
        params = self.startup.params
        if not self.user:
            raise errors.access_denied("Connect with a user name (for example admin).")
        database = params.get("database") or limits.DEFAULT_DATABASE
        if database != limits.DEFAULT_DATABASE:
            raise errors.database_does_not_exist(database)
        unsupported = [k for k in params if k.startswith("_pq_.")]
        if self.startup.minor != 0 or unsupported:
            self.writer.write(protocol.encode_negotiate_version(0, unsupported))
        self.writer.write(protocol.encode_auth_cleartext())
        await self.writer.drain()
        header = await self.reader.readexactly(5)
        if header[:1] != b"p":
            raise errors.password_required()
        length = int.from_bytes(header[1:5], "big")
        if length < 5 or length > 64 * 1024:
            raise errors.protocol_violation("invalid password message length")
        token = protocol.parse_password(await self.reader.readexactly(length - 4))
        if not token:
            raise errors.password_required()
        server_names = set(self.cluster.settings.server_names)
        identity = self.cluster.verifier.verify(token, self.user, server_names=server_names)
        del token
        self.backend, self._startup_relay = await Backend.connect(
            self.cluster.backend, self.user, params
        )
        self.handle = self.cluster.register(self.user)
        self.handle.backend_pid = self.backend.pid
        self.handle.backend_secret = self.backend.secret
        self.status = self.backend.status
        self._start_relay()
        self.ctx = StatementContext(
            session_id=self.handle.session_id,
            user=self.user,
            cluster=self.cluster,
            executor=self._internal,
            bound_executor=self._internal_bound,
            idle=self._idle,
            session={"iam_identity": identity},  # for the roles hook's mapped-login check
        )

    async def _accept(self) -> None:
        """Tell the client it is in: only after the `on_connect` hooks, which may refuse the
        login as DSQL does during authentication (what they made PostgreSQL say comes after)."""
        assert self.handle is not None
        held, self._cbuf = self._cbuf, []
        self._accepted = True
        out = [protocol.encode_auth_ok(), *self._startup_relay, *held]
        out.append(protocol.encode_backend_key(self.handle.session_id, self.handle.secret))
        out.append(protocol.encode_ready(self.status))
        self.writer.write(b"".join(out))
        await self.writer.drain()

    async def _hooks_connect(self) -> None:
        assert self.ctx is not None
        for hook in self.h_connect:
            await hook(self.ctx)

    # --- backend → client --------------------------------------------------------------------

    def _start_relay(self) -> None:
        assert self.backend is not None
        self._backend_fb = protocol.FrameBuffer(1 << 30)
        self._backend_alive = True
        self.backend.relay_to(self._on_backend_data, self._backend_gone)

    def _on_backend_data(self, data: bytes) -> None:
        """A chunk from PostgreSQL: route its frames, relay what the client is owed."""
        if not self._backend_alive:
            return
        fb = self._backend_fb
        try:
            fb.feed(data)
            out: list[bytes] = []
            extra: list[bytes] = []
            run_start = run_end = -1
            pending = self.pending
            head = pending[0] if pending else None
            # A unit all of whose frames pass through but a few (and those `_route` handles).
            plain = head if head is not None and _passes_through(head) else None
            while (item := fb.next_frame()) is not None:
                type_, start, end = item
                if plain is not None and type_ in _PASS_THROUGH and pending and pending[0] is plain:
                    if run_start < 0:
                        run_start = start
                    run_end = end
                    continue
                relay = self._on_backend(bytes((type_,)), fb, start, end, extra)
                head = pending[0] if pending else None
                plain = head if head is not None and _passes_through(head) else None
                if relay:
                    if run_start < 0:
                        run_start = start
                    run_end = end
                if (extra or not relay) and run_start >= 0:
                    out.append(fb.raw(run_start, run_end))
                    run_start = -1
                if extra:
                    out.extend(extra)
                    extra.clear()
            if run_start >= 0:
                out.append(fb.raw(run_start, run_end))
            if out:
                joined = b"".join(out) if len(out) > 1 else out[0]
                if self._corked(len(joined)):
                    # The session resumes next and answers the rest: one write, one TLS
                    # record and one send for the whole reply instead of two.
                    self._cbuf.append(joined)
                else:
                    self._flush_client()
                    self.writer.write(joined)
                    if self.writer.transport.get_write_buffer_size() > _HIGH_WATER:
                        self._throttle_backend()
            if self._observed_reads:
                self._run_observers()  # after the write: the reply leaves first
            if self.expired and not self.pending:
                self._close_expired()
                self._backend_gone()
        except protocol.ProtocolError:
            self._backend_gone()
        except Exception:  # a bug: end the session rather than leave the client hanging
            log.exception("session relay failed")
            self._backend_gone()

    def _backend_gone(self) -> None:
        """PostgreSQL's side ended (or cannot be followed): fail what waits, tell the client."""
        if not self._backend_alive:
            return
        self._backend_alive = False
        self._fail_pending()
        if self.backend is not None:
            self.backend.close()
        if not self.closing:
            self.closing = True
            with contextlib.suppress(Exception):
                self._flush_client()
                self.writer.write(protocol.encode_error(errors.backend_unavailable()))
            self._close_client()

    def _throttle_backend(self) -> None:
        """The client reads slower than PostgreSQL writes: stop reading until it catches up."""
        if self._drain_task is not None:
            return
        assert self.backend is not None
        self.backend.pause_reading()
        self._drain_task = asyncio.create_task(self._drain_then_resume())

    async def _drain_then_resume(self) -> None:
        try:
            with contextlib.suppress(Exception):
                await self.writer.drain()
        finally:
            self._drain_task = None
            if self._backend_alive and self.backend is not None:
                self.backend.resume_reading()

    def _corked(self, size: int) -> bool:
        """Whether backend bytes for the client may wait for the session's own reply.

        True when the unit the session is waiting for has just been answered: the session runs
        next and writes its part (a held CommandComplete, ReadyForQuery) with these bytes. Large
        output is written at once, so results stream and memory stays bounded.
        """
        if not self._accepted:
            return True  # nothing reaches the client before AuthenticationOk (`_accept`)
        wake = self._wake
        return wake is not None and wake.done() and size + self._cbuf_size() < _CORK_LIMIT

    def _cbuf_size(self) -> int:
        return sum(len(b) for b in self._cbuf) if self._cbuf else 0

    def _on_backend(
        self, t: bytes, fb: protocol.FrameBuffer, start: int, end: int, out: list[bytes]
    ) -> bool:
        """Handle one backend frame: True to relay it as is; `out` gets what follows it."""
        head = self.pending[0] if self.pending else None
        relay = self._route(t, fb, start, end, out)
        if relay and head is not None and head.buffer and t not in (b"N", b"S", b"A"):
            head.buffered.append(fb.raw(start, end))  # a guarded statement: held back
            return False
        return relay

    def _route(
        self, t: bytes, fb: protocol.FrameBuffer, start: int, end: int, out: list[bytes]
    ) -> bool:
        if t in (b"N", b"S", b"A"):
            return True
        if not self.pending:
            return True
        head = self.pending[0]
        relay = head.relay
        ends = t in _END_BY_TYPE and head.kind in _END_BY_TYPE[t]
        verbatim = relay
        if t == b"D":
            if head.collect:
                head.rows.append(protocol.parse_data_row(fb.body(start, end)))
            return relay
        if t == b"E":
            body = fb.body(start, end)
            err = protocol.parse_error_fields(body).to_error()
            head.error = err
            if head.replace_error is not None:
                out.append(protocol.encode_error(head.replace_error))
                verbatim = False
            else:
                verbatim = relay or head.errors_only
            if head.kind is not UnitKind.QUERY:
                self.copy_in.clear()
                self._end(head)
                self._drop_until_sync(head.epoch)
                self._flush_synthetic(out)
                return verbatim
            self.copy_in.clear()
            return verbatim
        if t == b"C":
            tag = protocol.parse_command_complete(fb.body(start, end))
            head.tag = tag
            if tag_drops_all(tag):
                self._kept.forget_all()  # a client's DEALLOCATE ALL / DISCARD ALL ran
            if head.observe is not None:
                self._observed_reads.append((head, tag, time.perf_counter()))
            if head.collect:
                head.results.append(QueryResult(head.columns, tuple(head.rows), tag))
                head.columns, head.rows = (), []
            if head.hold_complete:
                verbatim = False
            self.copy_in.clear()
        elif t == b"Z":
            self.status = fb.body(start, end)[:1]
        elif t == b"T":
            if head.collect:
                head.columns = protocol.parse_row_description(fb.body(start, end))
        elif t == b"G":
            self.copy_in.set()
            self._wake_session()
        if t == b"Z":
            # After an extended-protocol error PostgreSQL ignores everything but Sync (a Query
            # too), so this ReadyForQuery answers the next Sync; otherwise the next Query/Sync.
            targets = (UnitKind.SYNC,) if self.ext_failed else (UnitKind.QUERY, UnitKind.SYNC)
            while head.kind not in targets and len(self.pending) > 1:
                head.skipped = True  # never answered: PostgreSQL skipped it
                self._end(head)
                head = self.pending[0]
            self.ext_failed = False
            head.status = self.status
            verbatim = head.relay and not head.hold_ready
            self._end(head)
            self._flush_synthetic(out)
        elif ends:
            self._end(head)
            self._flush_synthetic(out)
        return verbatim

    def _end(self, unit: _Unit) -> None:
        if self.pending and self.pending[0] is unit:
            self.pending.popleft()
        else:
            with contextlib.suppress(ValueError):
                self.pending.remove(unit)
        if unit.future is not None and not unit.future.done():
            unit.future.set_result(None)
        if unit is self._waiting_for:
            self._wake_session()

    def _wake_session(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _drop_until_sync(self, epoch: int) -> None:
        """After an extended-protocol error PostgreSQL ignores everything up to Sync."""
        self.ext_failed = True
        self._failed_epoch = max(self._failed_epoch, epoch)
        while self.pending and self.pending[0].kind is not UnitKind.SYNC:
            unit = self.pending[0]
            unit.skipped = True
            self._end(unit)

    def _flush_synthetic(self, out: list[bytes]) -> None:
        while self.pending and self.pending[0].kind is UnitKind.SYNTHETIC:
            unit = self.pending[0]
            out.append(unit.data)
            self._end(unit)

    def _fail_pending(self) -> None:
        self._wake_session()
        while self.pending:
            unit = self.pending.popleft()
            unit.skipped = True
            if unit.future is not None and not unit.future.done():
                unit.future.set_result(None)

    # --- queueing helpers (client side) ---------------------------------------------------------

    def _expect(self, unit: _Unit) -> _Unit:
        unit.epoch = self._epoch
        if unit.kind is UnitKind.SYNC:
            self._epoch += 1  # what follows a Sync is never skipped for errors before it
        self.pending.append(unit)
        return unit

    def _send_synthetic(self, data: bytes) -> None:
        """Send bytes to the client in their place among pending responses."""
        if not self.pending:
            self._cbuf.append(data)  # written with the next flush, before any backend bytes
        else:
            self.pending.append(_Unit(UnitKind.SYNTHETIC, data=data))

    def _send(self, data: bytes) -> None:
        """Queue bytes for the backend; written in one go before the session next waits."""
        self._wbuf.append(data)

    def _flush_client(self) -> None:
        if self._cbuf and self._accepted:
            self.writer.write(b"".join(self._cbuf) if len(self._cbuf) > 1 else self._cbuf[0])
            self._cbuf.clear()

    def _flush_backend(self) -> None:
        """Write what the client is owed, then what the backend is sent, each in one go."""
        self._flush_client()
        if self._wbuf:
            assert self.backend is not None
            self.backend.write(b"".join(self._wbuf) if len(self._wbuf) > 1 else self._wbuf[0])
            self._wbuf.clear()

    async def _wait(self, unit: _Unit, *, flush: bool = False) -> None:
        """Wait for a unit's response, pumping COPY data from the client meanwhile."""
        loop = asyncio.get_running_loop()
        if unit.future is None:
            unit.future = loop.create_future()
        if unit not in self.pending:
            if not unit.future.done():
                unit.future.set_result(None)
            return
        if flush:
            self._send(protocol.FLUSH)
        self._flush_backend()
        while not unit.future.done():
            if not self._backend_alive:
                raise errors.backend_unavailable()
            if self.copy_in.is_set():
                await self._pump_copy()
                continue
            # The backend loop resolves `wake` when the unit ends, or when COPY IN starts (the
            # client then has data to send first); a dead backend resolves it too. One future,
            # not asyncio.wait over two: this is every statement's path.
            self._flush_backend()
            self._wake = loop.create_future()
            self._waiting_for = unit
            try:
                await self._wake
            finally:
                self._wake = None
                self._waiting_for = None

    async def _pump_copy(self) -> None:
        """Forward the client's CopyData/CopyDone/CopyFail while the backend is in COPY IN."""
        while True:
            type_, _body, raw = await self._read_client_frame()
            if type_ in (b"d", b"c", b"f"):
                self._send(raw)
                if type_ != b"d":
                    self.copy_in.clear()
                    return
            elif type_ in (b"H", b"S"):
                self._send(raw)
            else:
                raise errors.protocol_violation("unexpected message during COPY")

    # --- client → backend --------------------------------------------------------------------

    _client_fb: protocol.FrameBuffer | None = None

    async def _read_client_frame(self) -> tuple[bytes, bytes, bytes]:
        fb = self._client_fb
        assert fb is not None
        while True:
            item = fb.next_frame()
            if item is not None:
                type_, start, end = item
                return bytes((type_,)), fb.body(start, end), fb.raw(start, end)
            self._flush_backend()
            data = await self._read_client()
            if not data:
                raise ConnectionResetError("client closed the connection")
            fb.feed(data)

    async def _read_client(self) -> bytes:
        idle = self.cluster.settings.idle_timeout
        if idle is None:
            return await self.reader.read(_READ_SIZE)
        try:
            return await asyncio.wait_for(self.reader.read(_READ_SIZE), idle)
        except (asyncio.TimeoutError, TimeoutError):
            raise errors.idle_timeout() from None

    async def _client_loop(self) -> None:
        fb = self._client_fb = protocol.FrameBuffer(self.limit)
        while not self.closing:
            batch: list[bytes] = []
            item = fb.next_frame()
            if item is None:
                self._flush_backend()
                self.reading = True  # idle between client messages (see `_idle`)
                try:
                    data = await self._read_client()
                finally:
                    self.reading = False
                await self._lent_back()
                if not data:
                    return
                fb.feed(data)
                continue
            type_, start, end = item
            if type_ == _BIND and await self._relay_read_group(fb, start, end):
                continue  # the common case, first: a prepared read (see `_relay_read_group`)
            t = bytes((type_,))
            if type_ not in protocol.FRONTEND_TYPES:
                raise errors.protocol_violation(f"invalid frontend message type {t!r}")
            if t == b"X":
                return
            raw = fb.raw(start, end)
            if t != b"S" and self.state is protocol.SessionState.DISCARD_UNTIL_SYNC:
                continue  # after our refusal in the extended protocol, as PostgreSQL does
            if t in (b"d", b"c", b"f", b"H"):
                batch.append(raw)
            elif t == b"Q":
                await self._on_query(protocol.parse_query(fb.body(start, end)).sql, raw)
            elif t == b"P":
                await self._on_parse(protocol.parse_parse(fb.body(start, end)), raw)
            elif t == b"B":
                self._on_bind(protocol.parse_bind(fb.body(start, end)), raw)
            elif t == b"D":
                self._on_describe(protocol.parse_describe(fb.body(start, end)), raw)
            elif t == b"E":
                await self._on_execute(protocol.parse_execute(fb.body(start, end)), raw)
            elif t == b"C":
                self._on_close(protocol.parse_close(fb.body(start, end)), raw)
            elif t == b"S":
                await self._on_sync(raw)
            elif t == b"F":
                self._expect(_Unit(UnitKind.QUERY))
                batch.append(raw)
            if batch:
                self._send(b"".join(batch))

    async def _relay_read_group(self, fb: protocol.FrameBuffer, start: int, end: int) -> bool:
        """Bind [Describe portal] Execute Sync of an observed read: relay it as one unit.

        The common shape of a prepared statement's execution (psycopg, asyncpg, JDBC): nothing
        in it needs deciding frame by frame, so it goes to PostgreSQL in one piece and its reply
        comes back as one unit that ends at ReadyForQuery. False leaves the Bind to `_on_bind`.
        """
        if self.ext_batch or self.discard or self.ext_failed or self.ext_implicit:
            return False
        if self.status == b"E" or self.ctx is None:
            return False
        bind = protocol.parse_bind(fb.body(start, end))
        info = self.prepared.get(bind.statement)
        if bind.portal or info is None or info.synthetic is not None or info.stmt is None:
            return False
        stmt = info.stmt
        if not self._observed(stmt) or (self.explicit and self._guarded(stmt)):
            return False
        frames = fb.ahead(3)
        types = bytes(f[0] for f in frames)
        if types.startswith(b"DES"):
            describe = protocol.parse_describe(fb.body(frames[0][1], frames[0][2]))
            if describe.kind != "P" or describe.name:
                return False
            frames = frames[1:]
        elif not types.startswith(b"ES"):
            return False
        execute = protocol.parse_execute(fb.body(frames[0][1], frames[0][2]))
        if execute.portal or execute.max_rows:
            return False
        group_end = frames[1][2]
        if not self._consume_check(info):
            if self.pending:
                return False  # the hooks must see earlier statements done: the slow path waits
            try:
                await self._run_before(stmt)
            except DsqlError as err:
                if err.fatal:
                    raise
                self._refuse_ext(err)  # the group's other frames are dropped up to its Sync
                return True
        self._expect(_Unit(UnitKind.QUERY, observe=stmt, sent=time.perf_counter()))
        self._send(fb.raw(start, group_end))
        fb.skip_to(group_end)
        self.portals.pop("", None)
        return True

    # --- simple query --------------------------------------------------------------------------

    async def _on_query(self, sql: str, raw: bytes) -> None:
        stmts = [s for s in split_statements(sql) if s.kind is not StatementKind.EMPTY]
        ends_block = any(s.transaction_kind is not None for s in stmts)
        if not stmts or (self.status == b"E" and not ends_block):
            # In a failed block PostgreSQL answers 25P02 itself; hooks have nothing to decide.
            self._expect(_Unit(UnitKind.QUERY))
            self._send(raw)
            return
        if not self.any_hooks and not any(_is_begin(s) for s in stmts):
            self._expect(_Unit(UnitKind.QUERY))
            self._send(raw)
            return
        await self._wait_idle()
        if self.state is protocol.SessionState.DISCARD_UNTIL_SYNC:
            return  # an earlier extended message failed: PostgreSQL ignores this Query too
        await self._run_simple(stmts)

    async def _wait_idle(self) -> None:
        """Let earlier pipelined responses finish, so hooks see a settled transaction state."""
        if self.pending and self.ext_batch:
            self._send(protocol.FLUSH)  # PostgreSQL holds extended answers until Flush/Sync
        while self.pending:
            await self._wait(self.pending[-1])

    async def _run_simple(self, stmts: Sequence[Statement]) -> None:
        ctx = self.ctx
        assert ctx is not None
        has_txn_stmt = any(s.kind is StatementKind.TRANSACTION for s in stmts)
        writes = any(_writes(s) for s in stmts)
        implicit = (
            not self.explicit
            and self.status == b"I"
            and not has_txn_stmt
            and (len(stmts) > 1 or (writes and bool(self.h_before_commit or self.h_after)))
        )
        if implicit:
            ctx.txn = {}
            await self._internal_simple(_BEGIN_SQL)
        failed = False
        alone = len(stmts) == 1 and not implicit
        for stmt in stmts:
            if not await self._simple_statement(
                stmt, in_block=implicit or self.explicit, alone=alone
            ):
                failed = True
                break
        if implicit:
            await self._finish_implicit(failed)
        if alone and self.pending and self.pending[-1].observe is stmts[0]:
            return  # relayed outright: PostgreSQL's own ReadyForQuery follows
        self._send_synthetic(protocol.encode_ready(self.status))

    async def _simple_statement(
        self, stmt: Statement, *, in_block: bool, alone: bool = False
    ) -> bool:
        """Run one statement of a simple Query; False if it failed (the error was sent).

        ``alone``: the Query holds only this statement, so a read may be relayed outright.
        """
        ctx = self.ctx
        assert ctx is not None
        failed_txn = self.status == b"E"
        txn_kind = stmt.transaction_kind
        sql = stmt.text
        if not failed_txn:
            if txn_kind in _COMMIT_KINDS and self.explicit:
                try:
                    await self._run_before_commit()
                except DsqlError as err:
                    await self._internal_simple("ROLLBACK")
                    self._send_synthetic(protocol.encode_error(err))
                    await self._end_transaction(committed=False)
                    return False
            try:
                reply = await self._run_before(stmt)
            except DsqlError as err:
                await self._refuse_simple(err, in_block=in_block)
                return False
            if isinstance(reply, Synthetic):
                self._send_synthetic(_synthetic_rows(reply) + _complete(reply.tag))
                return True
            if isinstance(reply, Forward):
                sql = reply.sql
            elif _is_begin(stmt):
                sql = _begin_text(stmt)
        guarded = in_block and not failed_txn and self._guarded(stmt)
        if alone and not failed_txn and not guarded and sql is stmt.text and self._observed(stmt):
            # A lone read: PostgreSQL's reply, ReadyForQuery included, goes straight through.
            self._expect(_Unit(UnitKind.QUERY, observe=stmt, sent=time.perf_counter()))
            self._send(protocol.encode_query(sql))
            return True
        if guarded:
            ctx.current = BoundStatement(sql)
            self._expect(_Unit(UnitKind.QUERY, relay=False))
            self._send(protocol.encode_query(f"SAVEPOINT {_GUARD}"))
        unit = self._expect(
            _Unit(UnitKind.QUERY, hold_ready=True, hold_complete=bool(self.h_after), buffer=guarded)
        )
        self._send(protocol.encode_query(sql))
        if _is_begin(stmt) and not failed_txn:
            self._expect(_Unit(UnitKind.QUERY, relay=False))
            self._send(protocol.encode_query("SELECT"))  # take the snapshot now, as DSQL does
        await self._wait(unit)
        if unit.skipped:
            return False
        if guarded:
            ctx.current = None
            if unit.error is not None:
                return await self._recover_simple(stmt, unit, BoundStatement(sql))
            self._expect(_Unit(UnitKind.QUERY, relay=False))
            self._send(protocol.encode_query(f"RELEASE SAVEPOINT {_GUARD}"))
            if unit.buffered:
                self._send_synthetic(b"".join(unit.buffered))
        if unit.error is not None:
            if txn_kind in _END_KINDS:
                await self._end_transaction(committed=False)
            return False
        tag = unit.tag or ""
        if self.h_after and unit.hold_complete and unit.tag is not None:
            try:
                await self._run_after(stmt, tag)
            except DsqlError as err:
                await self._refuse_simple(err, in_block=in_block or self.status != b"I")
                return False
            self._send_synthetic(_complete(tag))
        if txn_kind in _BEGIN_KINDS and self.status == b"T":
            self.explicit = True
            ctx.in_transaction = True
            ctx.txn = {}
        elif txn_kind in _END_KINDS:
            await self._end_transaction(committed=tag == "COMMIT")
        return True

    def _idle(self) -> bool:
        """Waiting for the client, with nothing in flight: another task may use the backend."""
        return (
            self.reading
            and not self.pending
            and not self.ext_batch
            and not self.closing
            and self._lent is None
        )

    async def _lend(self, work: Awaitable[_T]) -> _T:
        """Run another session's SQL here (`_idle` said yes): the client loop waits until done.

        The client may speak meanwhile. Were its message handled at once, both would queue units
        on one backend and sleep on one `_wake`: the borrower would never wake up, and the
        client's statement would run between the borrower's (after its ROLLBACK, outside the
        transaction).
        """
        lent = self._lent = asyncio.get_running_loop().create_future()
        try:
            return await work
        finally:
            self._lent = None
            if not lent.done():
                lent.set_result(None)

    async def _lent_back(self) -> None:
        """Before handling what the client sent: let SQL lent to another session finish."""
        while self._lent is not None:
            await asyncio.shield(self._lent)

    def _guarded(self, stmt: Statement) -> bool:
        return any(guard(stmt) for guard in self.h_guard)

    def _observed(self, stmt: Statement) -> bool:
        """A read whose hooks only observe it (`observe_read`): nothing to hold back."""
        return self.observe_reads and stmt.read_only

    def _run_observers(self) -> None:
        """Tell the `observe_read` hooks how relayed reads completed (they must not fail).

        Called once the chunk holding their CommandComplete has been written to the client, and
        before anything else can happen in the session (the same callback).
        """
        done, self._observed_reads = self._observed_reads, []
        for unit, tag, completed in done:
            assert unit.observe is not None
            result = CommandResult(tag, elapsed_ms=(completed - unit.sent) * 1000.0)
            for hook in self.h_observe_read:
                try:
                    hook(unit.observe, result, self.ctx)
                except Exception:  # an observer's bug must not break the relay
                    log.exception("observe_read hook failed")

    async def _on_error_hooks(
        self, stmt: Statement, err: DsqlError, bound: BoundStatement
    ) -> Forward | Synthetic | DsqlError | None:
        """After a guarded statement failed and was rolled back to its savepoint."""
        ctx = self.ctx
        assert ctx is not None
        ctx.current = bound
        try:
            for hook in self.h_on_error:
                outcome = await hook(stmt, err, ctx)
                if outcome is not None:
                    return outcome
        except DsqlError as replaced:
            return replaced
        finally:
            ctx.current = None
        return None

    async def _recover_simple(self, stmt: Statement, unit: _Unit, bound: BoundStatement) -> bool:
        """A guarded simple-protocol statement failed: undo it, let on_error decide."""
        assert unit.error is not None
        await self._internal_simple(f"ROLLBACK TO SAVEPOINT {_GUARD}; RELEASE SAVEPOINT {_GUARD}")
        outcome = await self._on_error_hooks(stmt, unit.error, bound)
        if isinstance(outcome, Synthetic):
            self._send_synthetic(_synthetic_rows(outcome) + _complete(outcome.tag))
            return True
        if isinstance(outcome, Forward):
            again = self._expect(_Unit(UnitKind.QUERY, hold_ready=True))
            self._send(protocol.encode_query(outcome.sql))
            await self._wait(again)
            return again.error is None and not again.skipped
        await self._refuse_simple(
            outcome if isinstance(outcome, DsqlError) else unit.error, in_block=True
        )
        return False

    async def _refuse_simple(self, err: DsqlError, *, in_block: bool) -> None:
        if err.fatal:
            raise err
        if in_block and self.status != b"E":
            unit = self._expect(_Unit(UnitKind.QUERY, hold_ready=True, replace_error=err))
            self._send(protocol.encode_query(_FAIL_SQL))
            await self._wait(unit)
        else:
            self._send_synthetic(protocol.encode_error(err))

    async def _finish_implicit(self, failed: bool) -> None:
        """End the internal transaction around autocommit statements (with before_commit)."""
        if failed or self.status == b"E":
            await self._internal_simple("ROLLBACK")
            await self._end_transaction(committed=False)
            return
        try:
            await self._run_before_commit()
        except DsqlError as err:
            await self._internal_simple("ROLLBACK")
            self._send_synthetic(protocol.encode_error(err))
            await self._end_transaction(committed=False)
            return
        unit = self._expect(_Unit(UnitKind.QUERY, relay=False, errors_only=True))
        self._send(protocol.encode_query("COMMIT"))
        await self._wait(unit)
        await self._end_transaction(committed=unit.error is None and unit.tag == "COMMIT")

    async def _end_transaction(self, *, committed: bool) -> None:
        ctx = self.ctx
        assert ctx is not None
        self.explicit = False
        ctx.in_transaction = False
        try:
            for hook in self.h_after_end:
                await hook(ctx, committed)
        finally:
            ctx.txn = {}

    async def _internal_simple(self, sql: str) -> _Unit:
        unit = self._expect(_Unit(UnitKind.QUERY, relay=False))
        self._send(protocol.encode_query(sql))
        await self._wait(unit)
        return unit

    # --- hooks -------------------------------------------------------------------------------

    async def _run_before(self, stmt: Statement) -> Forward | Synthetic | None:
        ctx = self.ctx
        assert ctx is not None
        if drops_all(stmt):
            self._kept.forget_all()  # before hooks could use a kept statement after it
        for hook in self.h_before:
            reply = await hook(stmt, ctx)
            if reply is not None:
                return reply
        return None

    async def _run_after(self, stmt: Statement, tag: str) -> None:
        result = CommandResult(tag)
        for hook in self.h_after:
            await hook(stmt, result, self.ctx)

    async def _run_before_commit(self) -> None:
        for hook in self.h_before_commit:
            await hook(self.ctx)

    # --- extended protocol ---------------------------------------------------------------------

    async def _on_parse(self, msg: protocol.Parse, raw: bytes) -> None:
        self.ext_batch = True
        stmts = [s for s in split_statements(msg.sql) if s.kind is not StatementKind.EMPTY]
        stmt = stmts[0] if len(stmts) == 1 else None
        info = _Prepared(stmt, param_types=msg.param_types)
        self.prepared[msg.name] = info
        if stmt is None or (not self.h_before and not _is_begin(stmt)):
            self._expect(_Unit(UnitKind.PARSE))
            self._send(raw)
            return
        if self.h_before:
            await self._wait_idle_ext()
            if self.state is protocol.SessionState.DISCARD_UNTIL_SYNC:
                return  # an earlier message failed: PostgreSQL ignores this Parse too
        try:
            reply = None if self.status == b"E" or self.ext_failed else await self._run_before(stmt)
        except DsqlError as err:
            if err.fatal:
                raise
            self._refuse_ext(err, msg.name)
            return
        if isinstance(reply, Synthetic):
            info.synthetic = reply
            self._send_synthetic(protocol.PARSE_COMPLETE)
            return
        sql = msg.sql
        if isinstance(reply, Forward):
            sql = reply.sql
        elif _is_begin(stmt):
            sql = _begin_text(stmt)
        info.sql = sql
        info.checked = True
        self._expect(_Unit(UnitKind.PARSE))
        self._send(raw if sql is msg.sql else protocol.encode_parse(msg.name, sql, msg.param_types))

    async def _wait_idle_ext(self) -> None:
        if self.pending:
            self._send(protocol.FLUSH)
            await self._wait_idle()

    def _refuse_ext(self, err: DsqlError, name: str = "") -> None:
        """Refuse in the extended protocol: fail the backend too, then discard until Sync."""
        self.discard = True
        if self.ext_failed or self.status == b"E":
            self._send_synthetic(protocol.encode_error(err))
            return
        self._expect(_Unit(UnitKind.PARSE, replace_error=err))
        self._send(protocol.encode_parse(name, _FAIL_SQL))

    def _on_bind(self, msg: protocol.Bind, raw: bytes) -> None:
        self.ext_batch = True
        info = self.prepared.get(msg.statement)
        if info is not None and info.synthetic is not None:
            if info.synthetic.resolve is not None:
                values = protocol.bind_values(raw[5:])
                info = _Prepared(info.stmt, info.synthetic, info.param_types, info.sql, values)
            self.portals[msg.portal] = info
            self._send_synthetic(protocol.BIND_COMPLETE)
            return
        self.portals[msg.portal] = info or _Prepared(None)
        if info is not None and info.stmt is not None and not self._consume_check(info):
            self._unchecked.add(msg.portal)
        else:
            self._unchecked.discard(msg.portal)
        if self.h_guard:
            names = len(msg.portal.encode()) + len(msg.statement.encode()) + 2
            self.bind_tails[msg.portal] = raw[5 + names :]
        self._expect(_Unit(UnitKind.BIND))
        self._send(raw)

    def _on_describe(self, msg: protocol.Describe, raw: bytes) -> None:
        self.ext_batch = True
        table = self.prepared if msg.kind == "S" else self.portals
        info = table.get(msg.name)
        if info is not None and info.synthetic is not None:
            syn = info.synthetic
            out = b""
            if msg.kind == "S":
                out += protocol.encode_parameter_description(info.param_types)
            if syn.columns:
                out += protocol.encode_row_description(list(syn.columns), syn.column_types())
            else:
                out += protocol.NO_DATA
            self._send_synthetic(out)
            return
        self._expect(_Unit(UnitKind.DESCRIBE))
        self._send(raw)

    async def _on_execute(self, msg: protocol.Execute, raw: bytes) -> None:
        self.ext_batch = True
        info = self.portals.get(msg.portal)
        stmt = info.stmt if info is not None else None
        if drops_all(stmt):
            self._kept.forget_all()  # run now, perhaps long after its Parse
        if info is not None and info.synthetic is not None:
            syn = info.synthetic
            if syn.resolve is not None:
                try:
                    syn = await syn.resolve(info.values)
                except DsqlError as err:
                    if err.fatal:
                        raise
                    self._refuse_ext(err)
                    return
            data = b"".join(protocol.encode_data_row(list(r)) for r in syn.rows)
            self._send_synthetic(data + _complete(syn.tag))
            return
        live = stmt is not None and self.status != b"E" and not self.ext_failed
        if msg.portal in self._unchecked:
            self._unchecked.discard(msg.portal)  # a suspended portal's next Execute is not new
            if live and stmt is not None and not await self._recheck(stmt):
                return
        if live and stmt is not None and _writes(stmt) and self.h_before_commit:
            self._open_ext_implicit()
        if (
            live
            and stmt is not None
            and stmt.transaction_kind in _COMMIT_KINDS
            and self.explicit
            and self.h_before_commit
            and not await self._ext_commit_allowed()
        ):
            return
        hold = live and bool(self.h_after)
        guarded = (
            live
            and stmt is not None
            and (self.explicit or self.ext_implicit)
            and self._guarded(stmt)
            and info is not None
            and bool(info.sql)
        )
        bound = None
        if guarded and info is not None:
            bound = BoundStatement(info.sql, info.param_types, self.bind_tails.get(msg.portal))
            self._internal_ext_nowait(f"SAVEPOINT {_GUARD}")
        if hold and not guarded and stmt is not None and not self.ext_implicit:
            if self._observed(stmt):
                # Relayed as it comes; the observers see its CommandComplete go by.
                self._expect(_Unit(UnitKind.EXECUTE, observe=stmt, sent=time.perf_counter()))
                self._send(raw)
                return
            if stmt.read_only and self.pending_sync_next():
                await self._execute_read_and_sync(stmt, raw)
                return
        unit = self._expect(_Unit(UnitKind.EXECUTE, hold_complete=hold, buffer=guarded))
        self._send(raw)
        if live and stmt is not None and _is_begin(stmt):
            self._internal_ext_nowait("SELECT")  # snapshot at BEGIN
        if (not hold and not guarded) or stmt is None:
            if stmt is not None and stmt.transaction_kind is not None:
                await self._track_ext_transaction(stmt, unit)
            return
        await self._wait(unit, flush=True)
        if bound is not None and not unit.skipped:
            if unit.error is not None:
                await self._recover_ext(stmt, unit, bound)
                return
            self._internal_ext_nowait(f"RELEASE SAVEPOINT {_GUARD}")
            if unit.buffered:
                self._send_synthetic(b"".join(unit.buffered))
        if not hold:
            return
        if unit.skipped or unit.error is not None or unit.tag is None:
            return  # failed, or suspended (row limit) / empty: no CommandComplete to follow
        tag = unit.tag
        try:
            await self._run_after(stmt, tag)
        except DsqlError as err:
            if err.fatal:
                raise
            self._refuse_ext(err)
            return
        self._send_synthetic(_complete(tag))
        if stmt.transaction_kind is not None:
            await self._track_ext_transaction(stmt, unit)

    def _consume_check(self, info: _Prepared) -> bool:
        """Whether this execution of ``info`` was checked by the `before` hooks at its Parse.

        True once per Parse: a prepared statement executed again (psycopg prepares a query
        after five runs; JDBC, asyncpg) gets its hooks run again at Execute, since DSQL's
        transaction rules, OCC's bookkeeping and OC001 depend on the moment, not the text.
        """
        if info.checked or not self.h_before:
            info.checked = False
            return True
        return False

    async def _recheck(self, stmt: Statement) -> bool:
        """Run the `before` hooks for a prepared statement's new execution; False if refused.

        Their rewrite (`Forward`) or answer (`Synthetic`) was settled at its Parse, which
        PostgreSQL already has; only a refusal counts here.
        """
        await self._wait_idle_ext()
        if self.status == b"E" or self.ext_failed:
            return True  # PostgreSQL refuses it itself (25P02)
        try:
            await self._run_before(stmt)
        except DsqlError as err:
            if err.fatal:
                raise
            self._refuse_ext(err)
            return False
        return True

    async def _ext_commit_allowed(self) -> bool:
        """An explicit block's COMMIT in the extended protocol (JDBC, psycopg pipelines): run the
        `before_commit` hooks first, as for a simple Query; False if one refused it.

        A refusal rolls the block back and fails the Execute, so the client hears the error and
        then, at its Sync, that no transaction is open: as DSQL failing a COMMIT.
        """
        await self._wait_idle_ext()  # the hooks see every earlier statement done
        if self.status == b"E" or self.ext_failed:
            return True  # PostgreSQL answers this COMMIT with ROLLBACK itself
        try:
            await self._run_before_commit()
        except DsqlError as err:
            if err.fatal:
                raise
            await self._internal("ROLLBACK")
            await self._end_transaction(committed=False)
            self._refuse_ext(err)
            return False
        return True

    def pending_sync_next(self) -> bool:
        """True when the client's next message, already received, is Sync (psycopg, asyncpg)."""
        fb = self._client_fb
        return fb is not None and fb.peek_type() == ord("S")

    async def _execute_read_and_sync(self, stmt: Statement, raw: bytes) -> None:
        """A read-only Execute followed by Sync: one round trip, then `after`.

        A read needs no savepoint, so Execute and Sync go together and the CommandComplete and
        ReadyForQuery are held until the `after` hooks have run. Should one refuse it inside a
        transaction block, the block is failed afterwards, as any refusal there does.
        """
        fb = self._client_fb
        assert fb is not None
        item = fb.next_frame()  # the Sync seen by `pending_sync_next`
        assert item is not None
        sync_raw = fb.raw(item[1], item[2])
        unit = self._expect(_Unit(UnitKind.EXECUTE, hold_complete=True))
        sync = self._expect(_Unit(UnitKind.SYNC, hold_ready=True))
        self._send(raw + sync_raw)
        self.discard = False
        self.ext_batch = False
        await self._wait(sync)
        self.portals.pop("", None)
        if not unit.skipped and unit.error is None and unit.tag is not None:
            try:
                await self._run_after(stmt, unit.tag)
            except DsqlError as err:
                if err.fatal:
                    raise
                if self.status == b"T":
                    await self._refuse_simple(err, in_block=True)
                else:
                    self._send_synthetic(protocol.encode_error(err))
            else:
                self._send_synthetic(_complete(unit.tag))
        self._send_synthetic(protocol.encode_ready(self.status))

    async def _recover_ext(self, stmt: Statement, unit: _Unit, bound: BoundStatement) -> None:
        """A guarded Execute failed: PostgreSQL now skips to Sync; sync, undo, ask on_error."""
        assert unit.error is not None
        if self.pending:  # more was pipelined after it and is lost: keep the error
            self._send_synthetic(b"".join(unit.buffered))
            return
        sync = self._expect(_Unit(UnitKind.SYNC, relay=False))
        self._send(protocol.SYNC)
        await self._wait(sync)
        await self._internal_simple(f"ROLLBACK TO SAVEPOINT {_GUARD}; RELEASE SAVEPOINT {_GUARD}")
        outcome = await self._on_error_hooks(stmt, unit.error, bound)
        if isinstance(outcome, Synthetic):
            self._send_synthetic(_complete(outcome.tag))
            return
        if isinstance(outcome, Forward):
            self._expect(_Unit(UnitKind.PARSE, relay=False))
            self._expect(_Unit(UnitKind.BIND, relay=False))
            again = self._expect(_Unit(UnitKind.EXECUTE))
            self._expect(_Unit(UnitKind.CLOSE, relay=False))
            self._expect(_Unit(UnitKind.CLOSE, relay=False))
            self._send(
                protocol.encode_parse(_INTERNAL, outcome.sql, bound.param_types)
                + _bind(_INTERNAL, bound.bind)
                + protocol.encode_execute(_INTERNAL)
                + protocol.encode_close("P", _INTERNAL)
                + protocol.encode_close("S", _INTERNAL)
            )
            await self._wait(again, flush=True)
            return
        self._refuse_ext(outcome if isinstance(outcome, DsqlError) else unit.error)

    async def _track_ext_transaction(self, stmt: Statement, unit: _Unit) -> None:
        """Follow BEGIN/COMMIT/ROLLBACK sent through the extended protocol."""
        ctx = self.ctx
        assert ctx is not None
        kind = stmt.transaction_kind
        if kind not in _BEGIN_KINDS and kind not in _END_KINDS:
            return
        if not (self.h_after_end or self.h_before_commit):
            # Nobody needs the details; keep the flag roughly right without waiting.
            self.explicit = kind in _BEGIN_KINDS
            ctx.in_transaction = self.explicit
            return
        await self._wait(unit, flush=True)
        if kind in _BEGIN_KINDS:
            if unit.error is None and not unit.skipped:
                self.explicit = True
                ctx.in_transaction = True
                ctx.txn = {}
        else:
            await self._end_transaction(committed=unit.tag == "COMMIT")

    def _open_ext_implicit(self) -> None:
        if self.explicit or self.ext_implicit:
            return
        self.ext_implicit = True
        assert self.ctx is not None
        self.ctx.txn = {}
        self._internal_ext_nowait(_BEGIN_SQL)

    def _internal_ext_nowait(self, sql: str, *, errors_only: bool = False) -> _Unit:
        """Queue an internal statement in the extended protocol (named, then closed)."""
        self._expect(_Unit(UnitKind.PARSE, relay=False, errors_only=errors_only))
        self._expect(_Unit(UnitKind.BIND, relay=False))
        unit = self._expect(_Unit(UnitKind.EXECUTE, relay=False, errors_only=errors_only))
        self._expect(_Unit(UnitKind.CLOSE, relay=False))
        self._expect(_Unit(UnitKind.CLOSE, relay=False))
        self._send(
            protocol.encode_parse(_INTERNAL, sql)
            + protocol.encode_bind(_INTERNAL, _INTERNAL)
            + protocol.encode_execute(_INTERNAL)
            + protocol.encode_close("P", _INTERNAL)
            + protocol.encode_close("S", _INTERNAL)
        )
        return unit

    def _on_close(self, msg: protocol.Close, raw: bytes) -> None:
        self.ext_batch = True
        table = self.prepared if msg.kind == "S" else self.portals
        info = table.pop(msg.name, None)
        if info is not None and info.synthetic is not None:
            self._send_synthetic(protocol.CLOSE_COMPLETE)
            return
        self._expect(_Unit(UnitKind.CLOSE))
        self._send(raw)

    async def _on_sync(self, raw: bytes) -> None:
        self.discard = False
        if not self.ext_implicit:
            self._expect(_Unit(UnitKind.SYNC))
            self._send(raw)
            self.ext_batch = False
            self.portals.pop("", None)
            return
        # End the internal transaction opened around autocommit writes (for before_commit).
        self.ext_implicit = False
        await self._wait_idle_ext()
        refusal: DsqlError | None = None
        commit: _Unit | None = None
        committed = False
        if self.status != b"E" and not self.ext_failed:
            try:
                await self._run_before_commit()
            except DsqlError as err:
                refusal = err
            if refusal is None:
                commit = self._internal_ext_nowait("COMMIT", errors_only=True)
        sync = self._expect(_Unit(UnitKind.SYNC, relay=False))
        self._send(raw)
        self.ext_batch = False
        self.portals.pop("", None)
        await self._wait(sync)
        if commit is not None and self.status == b"I" and not self.ext_failed:
            committed = commit.error is None and not commit.skipped
        if self.status != b"I":
            await self._internal_simple("ROLLBACK")
        if refusal is not None:
            self._send_synthetic(protocol.encode_error(refusal))
        self._send_synthetic(protocol.encode_ready(self.status))
        await self._end_transaction(committed=committed)

    # --- internal SQL for hooks ------------------------------------------------------------------

    async def _resync(self, *, synced: bool = False) -> None:
        """After an internal statement failed: end PostgreSQL's skip-to-Sync, close it."""
        out = b""
        if not synced:
            self._expect(_Unit(UnitKind.SYNC, relay=False))
            out += protocol.SYNC
        self._expect(_Unit(UnitKind.CLOSE, relay=False))
        self._expect(_Unit(UnitKind.CLOSE, relay=False))
        unit = self._expect(_Unit(UnitKind.SYNC, relay=False))
        self._send(  # the failed statement's Close was skipped too: close it now
            out
            + protocol.encode_close("P", _INTERNAL)
            + protocol.encode_close("S", _INTERNAL)
            + protocol.SYNC
        )
        await self._wait(unit)

    async def _internal_bound(
        self, bound: BoundStatement, sql: str | None = None
    ) -> list[QueryResult]:
        """`StatementContext.execute_bound`: a statement with a client's own parameters."""
        if self.reading and self._lent is None:
            return await self._lend(self._internal_bound(bound, sql))  # another session's hook
        if bound.bind is None:
            return await self._internal(sql or bound.sql)
        if self.ext_failed or self.status == b"E":
            raise errors.in_failed_transaction()
        parse_bind = protocol.encode_parse(_INTERNAL, sql or bound.sql, bound.param_types) + _bind(
            _INTERNAL, bound.bind, text_results=True
        )
        return [await self._internal_one(parse_bind)]

    async def _internal(self, sql: str, params: Sequence[object] = ()) -> list[QueryResult]:
        """`StatementContext.execute`: run SQL on this session's backend, results as text."""
        if self.reading and self._lent is None:
            return await self._lend(self._internal(sql, params))  # another session's hook
        texts = [sql] if params else [s.pg_text for s in split_statements(sql) if s.text]
        recovering = self.ext_failed or self.status == b"E"
        if recovering:
            # Only a rollback (to a hook's savepoint) may run in a failed transaction; it is
            # followed by a Sync, so that the transaction status is known again at once.
            if not texts or not all(_is_rollback(t) for t in texts):
                raise errors.in_failed_transaction()
            if self.ext_failed:
                await self._resync()
        encoded = [protocol.encode_text_param(p) for p in params]
        if params and not recovering:  # one statement, run again with new values: keep it
            kept = await self._internal_kept(sql, encoded)
            if kept is not None:
                return [kept]
        results: list[QueryResult] = []
        for text in texts:
            parse_bind = protocol.encode_parse(_INTERNAL, text) + protocol.encode_bind(
                _INTERNAL, _INTERNAL, encoded
            )
            results.append(await self._internal_one(parse_bind, sync=recovering))
        return results

    async def _internal_kept(self, sql: str, encoded: list[bytes | None]) -> QueryResult | None:
        """Parameterised internal SQL, parsed once per backend and kept (`KeptStatements`).

        None when as many texts are kept as allowed: the caller runs it unkept.
        """
        name = self._kept.get(sql)
        parse = b""
        if name is None:
            name = self._kept.add(sql)
            if name is None:
                return None
            parse = protocol.encode_parse(name, sql)
        try:
            bind = protocol.encode_bind(_INTERNAL, name, encoded)
            return await self._internal_one(parse + bind, parsed=bool(parse), keep=True)
        except BaseException:
            self._kept.forget(sql)  # it may not exist on the backend: prepare it anew next time
            raise

    async def _internal_one(
        self, parse_bind: bytes, *, sync: bool = False, parsed: bool = True, keep: bool = False
    ) -> QueryResult:
        """One internal statement (its Parse and Bind given): describe, run, close, collect.

        Inside a client's unsynced extended batch it ends with Flush, so the batch's own Sync
        still ends the transaction step; otherwise (or when ``sync``) with its own Sync.
        ``parsed``: ``parse_bind`` starts with a Parse (not so for a kept statement's reuse);
        ``keep``: leave the statement prepared, only its portal is closed.
        """
        units = [self._expect(_Unit(UnitKind.PARSE, relay=False))] if parsed else []
        units.append(self._expect(_Unit(UnitKind.BIND, relay=False)))
        describe = self._expect(_Unit(UnitKind.DESCRIBE, relay=False, collect=True))
        execute = self._expect(_Unit(UnitKind.EXECUTE, relay=False, collect=True))
        units += [describe, execute, self._expect(_Unit(UnitKind.CLOSE, relay=False))]
        if not keep:
            units.append(self._expect(_Unit(UnitKind.CLOSE, relay=False)))
        self._send(
            parse_bind
            + protocol.encode_describe("P", _INTERNAL)
            + protocol.encode_execute(_INTERNAL)
            + protocol.encode_close("P", _INTERNAL)
            + (b"" if keep else protocol.encode_close("S", _INTERNAL))
        )
        synced = None
        if not self.ext_batch or sync:
            synced = self._expect(_Unit(UnitKind.SYNC, relay=False))
            self._send(protocol.SYNC)
        await self._wait(synced or units[-1], flush=synced is None)
        for unit in units:
            if unit.error is not None:
                await self._resync(synced=synced is not None)
                raise unit.error
        if any(u.skipped for u in units):
            raise errors.in_failed_transaction()
        # the rows moved to `results` at CommandComplete (see _route)
        rows = execute.results[-1].rows if execute.results else tuple(execute.rows)
        return QueryResult(describe.columns, rows, execute.tag or "")


# --- helpers ---------------------------------------------------------------------------------


def _bind(name: str, tail: bytes | None, *, text_results: bool = False) -> bytes:
    """A Bind of statement ``name`` to portal ``name`` with a client's parameters (``tail``)."""
    if tail is None:
        return protocol.encode_bind(name, name)
    if text_results:
        tail = _text_result_formats(tail)
    return protocol.frame(b"B", name.encode() + b"\0" + name.encode() + b"\0" + tail)


def _text_result_formats(tail: bytes) -> bytes:
    """The same parameters, with results asked for in text format (for internal decoding)."""
    pos = 0
    nfmt = int.from_bytes(tail[pos : pos + 2], "big")
    pos += 2 + 2 * nfmt
    nparams = int.from_bytes(tail[pos : pos + 2], "big")
    pos += 2
    for _ in range(nparams):
        size = int.from_bytes(tail[pos : pos + 4], "big", signed=True)
        pos += 4 + max(size, 0)
    return tail[:pos] + b"\0\0"


_BIND = ord("B")
# Backend frames that a relay-everything QUERY unit passes on untouched (see `_route`).
_PASS_THROUGH = frozenset(b"DT2n13tIs")


def _passes_through(unit: _Unit) -> bool:
    """A unit that relays every frame as is (a plain Query, or a read relayed as one group)."""
    return (
        unit.kind is UnitKind.QUERY
        and unit.relay
        and not (unit.hold_ready or unit.hold_complete or unit.buffer or unit.collect)
        and unit.replace_error is None
    )


_BEGIN_KINDS = frozenset({"TRANS_STMT_BEGIN", "TRANS_STMT_START"})
_COMMIT_KINDS = frozenset({"TRANS_STMT_COMMIT"})
_END_KINDS = frozenset({"TRANS_STMT_COMMIT", "TRANS_STMT_ROLLBACK"})


def _is_rollback(sql: str) -> bool:
    stmts = split_statements(sql)
    return len(stmts) == 1 and stmts[0].transaction_kind in (
        "TRANS_STMT_ROLLBACK",
        "TRANS_STMT_ROLLBACK_TO",
    )


def _is_begin(stmt: Statement) -> bool:
    return stmt.transaction_kind in _BEGIN_KINDS


def _begin_text(stmt: Statement) -> str:
    """BEGIN as DSQL runs it: REPEATABLE READ unless the client chose something itself."""
    inner: Any = stmt.inner
    if inner is not None and len(inner.options) == 0:
        return _BEGIN_SQL
    return stmt.text


def _writes(stmt: Statement) -> bool:
    return stmt.kind in (StatementKind.DML, StatementKind.DDL) or (
        stmt.kind is StatementKind.QUERY and not stmt.read_only
    )


def _complete(tag: str) -> bytes:
    return protocol.encode_command_complete(tag)


def _synthetic_rows(reply: Synthetic) -> bytes:
    if not reply.columns:
        return b""
    out = [protocol.encode_row_description(list(reply.columns), reply.column_types())]
    out.extend(protocol.encode_data_row(list(r)) for r in reply.rows)
    return b"".join(out)


async def handle_cancel(cluster: Cluster, pid: int, secret: int) -> None:
    """A CancelRequest from a client: cancel the named session's backend query, if it matches."""
    handle = cluster.find(pid, secret)
    if handle is None or not handle.backend_pid:
        return
    await send_cancel(cluster.backend, handle.backend_pid, handle.backend_secret)
