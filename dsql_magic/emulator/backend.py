"""One raw wire connection to the embedded PostgreSQL, over its unix socket.

The session relays client bytes through it mostly undecoded; this module only opens the connection
(startup with trust authentication), reads and writes frames, runs internal SQL before the relay
starts (`execute`), and sends CancelRequests. It must not know DSQL's rules or the client side.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from . import errors, protocol
from .cluster import BackendAddress
from .environment import REPORTED_PARAMETERS
from .errors import DsqlError
from .hooks import QueryResult

# Startup parameters a client may pass on to PostgreSQL (others, like `options`, are dropped:
# they could change settings DSQL does not let clients change).
PASSTHROUGH_PARAMS = frozenset(
    {
        "application_name",
        "client_encoding",
        "DateStyle",
        "datestyle",
        "IntervalStyle",
        "intervalstyle",
        "TimeZone",
        "timezone",
        "extra_float_digits",
        "search_path",
    }
)

_READ_SIZE = 256 * 1024


class Backend:
    """A PostgreSQL connection as a pair of streams plus the data learnt at startup."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pid = 0
        self.secret = 0
        self.status = b"I"
        self.parameters: dict[str, str] = {}

    @classmethod
    async def connect(
        cls, address: BackendAddress, user: str, params: dict[str, str] | None = None
    ) -> tuple[Backend, list[bytes]]:
        """Open and authenticate; returns the backend and the frames to relay to the client.

        Those frames are PostgreSQL's ParameterStatus and notices sent during startup. A startup
        failure (for example an unknown role) is raised as PostgreSQL's `DsqlError`, FATAL.
        """
        try:
            reader, writer = await asyncio.open_unix_connection(
                str(address.socket_path), limit=_READ_SIZE
            )
        except OSError as exc:
            raise errors.backend_unavailable() from exc
        self = cls(reader, writer)
        startup = {"user": user, "database": address.database}
        for key, value in (params or {}).items():
            if key in PASSTHROUGH_PARAMS:
                startup[key] = value
        writer.write(protocol.encode_startup(startup))
        relay: list[bytes] = []
        try:
            while True:
                type_, body, raw = await self.read_frame()
                if type_ == b"R":
                    if protocol.parse_auth(body) != 0:
                        raise errors.internal_error("the storage engine asked for a password")
                elif type_ == b"S":
                    name, value = protocol.parse_parameter_status(body)
                    if name in REPORTED_PARAMETERS:  # DSQL reports its own version (observed)
                        value = REPORTED_PARAMETERS[name]
                        raw = protocol.encode_parameter_status(name, value)
                    self.parameters[name] = value
                    relay.append(raw)
                elif type_ == b"K":
                    self.pid, self.secret = protocol.parse_backend_key(body)
                elif type_ == b"N":
                    relay.append(raw)
                elif type_ == b"E":
                    err = protocol.parse_error_fields(body).to_error()
                    err.severity = "FATAL"
                    raise err
                elif type_ == b"Z":
                    self.status = body[:1]
                    return self, relay
        except BaseException:
            self.close()
            raise

    async def read_frame(self) -> tuple[bytes, bytes, bytes]:
        """(type, body, raw frame) of the next message; EOF raises `backend_unavailable`."""
        try:
            header = await self.reader.readexactly(5)
            length = int.from_bytes(header[1:5], "big")
            body = await self.reader.readexactly(length - 4)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise errors.backend_unavailable() from exc
        return header[:1], body, header + body

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def relay_to(self, on_data: Callable[[bytes], None], on_lost: Callable[[], None]) -> None:
        """From now on hand every chunk PostgreSQL sends straight to ``on_data``.

        The relay is the hot path: a protocol callback saves the StreamReader's copy and a task
        wake-up per chunk. ``on_lost`` is called once when the connection ends. `read_frame`
        and `execute` must not be used afterwards.
        """
        transport = self.writer.transport
        stream_protocol = transport.get_protocol()
        buffered: bytearray = self.reader._buffer  # type: ignore[attr-defined]
        leftover = bytes(buffered)
        buffered.clear()
        transport.set_protocol(_Relay(stream_protocol, on_data, on_lost))
        if leftover:
            asyncio.get_running_loop().call_soon(on_data, leftover)

    def pause_reading(self) -> None:
        """Stop reading PostgreSQL's output (the client is not keeping up)."""
        with contextlib.suppress(Exception):
            self.writer.transport.pause_reading()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.resume_reading()  # type: ignore[attr-defined]

    async def execute(self, sql: str, params: Sequence[object] = ()) -> list[QueryResult]:
        """Run internal SQL while no relay is active (simple protocol, or extended with params)."""
        if params:
            self.write(
                protocol.encode_parse("", sql)
                + protocol.encode_bind("", "", [protocol.encode_text_param(p) for p in params])
                + protocol.encode_describe("P", "")
                + protocol.encode_execute("")
                + protocol.SYNC
            )
        else:
            self.write(protocol.encode_query(sql))
        results: list[QueryResult] = []
        columns: tuple[str, ...] = ()
        rows: list[tuple[str | None, ...]] = []
        error: DsqlError | None = None
        while True:
            type_, body, _ = await self.read_frame()
            if type_ == b"T":
                columns = protocol.parse_row_description(body)
            elif type_ == b"D":
                rows.append(protocol.parse_data_row(body))
            elif type_ == b"C":
                results.append(
                    QueryResult(columns, tuple(rows), protocol.parse_command_complete(body))
                )
                columns, rows = (), []
            elif type_ == b"E":
                error = protocol.parse_error_fields(body).to_error()
            elif type_ == b"Z":
                self.status = body[:1]
                if error is not None:
                    raise error
                return results

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if not self.writer.is_closing():
                self.writer.write(protocol.TERMINATE)
            self.writer.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class _Relay(asyncio.Protocol):
    """The backend connection's protocol once the relay runs (see `Backend.relay_to`)."""

    def __init__(
        self,
        stream_protocol: asyncio.BaseProtocol,
        on_data: Callable[[bytes], None],
        on_lost: Callable[[], None],
    ) -> None:
        self._stream_protocol = stream_protocol
        self._on_data = on_data
        self._on_lost = on_lost

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def eof_received(self) -> bool:
        return False  # close the transport: PostgreSQL has gone

    def connection_lost(self, exc: Exception | None) -> None:
        # The stream protocol still owns `wait_closed()`: let it know as well.
        self._stream_protocol.connection_lost(exc)
        self._on_lost()

    def pause_writing(self) -> None:
        self._stream_protocol.pause_writing()

    def resume_writing(self) -> None:
        self._stream_protocol.resume_writing()


async def send_cancel(address: BackendAddress, pid: int, secret: int) -> None:
    """Ask PostgreSQL to cancel what backend ``pid`` is running (a new short connection)."""
    try:
        reader, writer = await asyncio.open_unix_connection(str(address.socket_path))
    except OSError:
        return
    try:
        writer.write(protocol.encode_cancel(pid, secret))
        await writer.drain()
        # PostgreSQL closes the connection once it has handled the request.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.read(1), timeout=5)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
