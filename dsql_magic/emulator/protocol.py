"""PostgreSQL v3 wire framing: bytes in, typed messages out, and encoders, both directions.

The emulator relays most traffic as opaque frames; only the messages the session must inspect are
decoded (startup, Query, Parse, Bind, Describe, Execute, Close, password; CommandComplete,
ReadyForQuery, ErrorResponse, RowDescription, DataRow, BackendKeyData). Everything here is pure:
no sockets, no asyncio, no session state. `FrameBuffer` cuts a byte stream into frames and rejects
malformed or oversized ones with `ProtocolError`; the transport then closes the connection.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from .errors import DsqlError, Severity

PROTOCOL_3_0 = 196608  # (3 << 16) | 0
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
TLS_HANDSHAKE_BYTE = 0x16  # first byte of a TLS ClientHello: libpq 17's direct TLS

_I32 = struct.Struct("!i")
_HEADER = struct.Struct("!ci")
_I16 = struct.Struct("!h")
_PIDKEY = struct.Struct("!ii")

MAX_STARTUP_BYTES = 10_000  # PostgreSQL's own limit for a startup packet


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid message; the connection must be closed."""


class TooLarge(ProtocolError):
    """A frame longer than the configured limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class SessionState(enum.Enum):
    """Where a client connection is in the protocol (the session drives the transitions)."""

    STARTUP = "startup"  # before the StartupMessage (SSLRequest, CancelRequest allowed)
    AUTHENTICATING = "authenticating"  # password requested
    READY = "ready"  # idle or running: queries and extended-protocol messages accepted
    DISCARD_UNTIL_SYNC = "discard"  # an extended-protocol error: ignore messages up to Sync
    COPY_IN = "copy_in"  # the backend asked for CopyData
    CLOSED = "closed"


# --- framing -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One typed message: its type byte and body (without the length word)."""

    type: bytes
    body: bytes

    def encode(self) -> bytes:
        return frame(self.type, self.body)


def frame(type_: bytes, body: bytes = b"") -> bytes:
    """A typed message on the wire: type byte, length (including itself), body."""
    return _HEADER.pack(type_, len(body) + 4) + body


class FrameBuffer:
    """Accumulates stream bytes and yields complete typed frames.

    ``limit`` bounds one frame's length; a longer or negative length raises at once (before the
    body arrives), so an oversized message never gets buffered.
    """

    __slots__ = ("_buf", "_pos", "limit")

    def __init__(self, limit: int) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.limit = limit

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf) - self._pos

    def next_frame(self) -> tuple[int, int, int] | None:
        """(type byte, start of frame, end of frame) of the next complete frame, or None.

        The frame's raw bytes are ``raw(start, end)``; its body starts at ``start + 5``.
        """
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 5:
            return None
        type_ = buf[pos]
        (length,) = _I32.unpack_from(buf, pos + 1)
        if length < 4:
            raise ProtocolError(f"invalid message length {length}")
        if length + 1 > self.limit:
            raise TooLarge(length + 1, self.limit)
        end = pos + 1 + length
        if len(buf) < end:
            return None
        self._pos = end
        return type_, pos, end

    def peek_type(self) -> int | None:
        """The type byte of the next frame if it is complete, without consuming it."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 5:
            return None
        (length,) = _I32.unpack_from(buf, pos + 1)
        if length < 4 or len(buf) < pos + 1 + length:
            return None
        return buf[pos]

    def ahead(self, count: int) -> list[tuple[int, int, int]]:
        """Up to ``count`` complete frames after the current one, without consuming them.

        Stops at the first incomplete or invalid frame (`next_frame` reports those).
        """
        buf, pos = self._buf, self._pos
        out: list[tuple[int, int, int]] = []
        size = len(buf)
        while len(out) < count and size - pos >= 5:
            (length,) = _I32.unpack_from(buf, pos + 1)
            end = pos + 1 + length
            if length < 4 or length + 1 > self.limit or end > size:
                break
            out.append((buf[pos], pos, end))
            pos = end
        return out

    def skip_to(self, end: int) -> None:
        """Consume the frames before ``end`` (an end returned by `ahead`)."""
        self._pos = end

    def raw(self, start: int, end: int) -> bytes:
        return bytes(self._buf[start:end])

    def body(self, start: int, end: int) -> bytes:
        return bytes(self._buf[start + 5 : end])

    def frames(self) -> Iterator[Frame]:
        """All complete frames buffered so far."""
        while (item := self.next_frame()) is not None:
            type_, start, end = item
            yield Frame(bytes((type_,)), self.body(start, end))


def split_frames(data: bytes, limit: int = 1 << 30) -> tuple[list[Frame], bytes]:
    """Complete frames in ``data`` and the incomplete rest (for tests and small tools)."""
    fb = FrameBuffer(limit)
    fb.feed(data)
    out = list(fb.frames())
    return out, bytes(fb._buf[fb._pos :])


# --- startup packets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SSLRequest:
    pass


@dataclass(frozen=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True)
class CancelRequest:
    pid: int
    secret: int


@dataclass(frozen=True)
class StartupMessage:
    major: int
    minor: int
    params: dict[str, str]


Startup = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def startup_length(header: bytes) -> int:
    """The total length announced by the first 4 bytes of an untyped startup packet."""
    (length,) = _I32.unpack(header)
    if length < 8 or length > MAX_STARTUP_BYTES:
        raise ProtocolError(f"invalid startup packet length {length}")
    return length


def parse_startup(packet: bytes) -> Startup:
    """Decode a whole untyped startup packet (length word included)."""
    if len(packet) < 8:
        raise ProtocolError("startup packet too short")
    (length,) = _I32.unpack_from(packet, 0)
    if length != len(packet):
        raise ProtocolError("startup packet length mismatch")
    (code,) = _I32.unpack_from(packet, 4)
    if code == SSL_REQUEST and length == 8:
        return SSLRequest()
    if code == GSSENC_REQUEST and length == 8:
        return GSSENCRequest()
    if code == CANCEL_REQUEST:
        if length != 16:
            raise ProtocolError("invalid cancel request length")
        pid, secret = _PIDKEY.unpack_from(packet, 8)
        return CancelRequest(pid, secret)
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        return StartupMessage(major, minor, {})
    parts = packet[8:].split(b"\0")
    # A well-formed list ends with an empty name and the packet's final NUL: [..., b"", b""].
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"" or len(parts) % 2 != 0:
        raise ProtocolError("malformed startup parameters")
    params: dict[str, str] = {}
    try:
        for i in range(0, len(parts) - 2, 2):
            params[parts[i].decode()] = parts[i + 1].decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError("startup parameters are not UTF-8") from exc
    return StartupMessage(major, minor, params)


def encode_startup(params: dict[str, str], version: int = PROTOCOL_3_0) -> bytes:
    body = _I32.pack(version) + b"".join(
        k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()
    )
    body += b"\0"
    return _I32.pack(len(body) + 4) + body


def encode_cancel(pid: int, secret: int) -> bytes:
    return _I32.pack(16) + _I32.pack(CANCEL_REQUEST) + _PIDKEY.pack(pid, secret)


def encode_ssl_request() -> bytes:
    return _I32.pack(8) + _I32.pack(SSL_REQUEST)


# --- body readers ----------------------------------------------------------------------------


class _Reader:
    """Sequential reads from one message body; any overrun is a ProtocolError."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def cstr(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolError("unterminated string in message")
        try:
            s = self.data[self.pos : end].decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError("string in message is not UTF-8") from exc
        self.pos = end + 1
        return s

    def i16(self) -> int:
        if self.pos + 2 > len(self.data):
            raise ProtocolError("message truncated")
        (v,) = _I16.unpack_from(self.data, self.pos)
        self.pos += 2
        return int(v)

    def i32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise ProtocolError("message truncated")
        (v,) = _I32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(v)

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError("message truncated")
        v = self.data[self.pos : self.pos + n]
        self.pos += n
        return v

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError("trailing bytes in message")


# --- frontend messages the session inspects --------------------------------------------------


@dataclass(frozen=True)
class Query:
    sql: str


@dataclass(frozen=True)
class Parse:
    name: str
    sql: str
    param_types: tuple[int, ...]


@dataclass(frozen=True)
class Bind:
    portal: str
    statement: str


@dataclass(frozen=True)
class Describe:
    kind: str  # "S" statement or "P" portal
    name: str


@dataclass(frozen=True)
class Execute:
    portal: str
    max_rows: int


@dataclass(frozen=True)
class Close:
    kind: str  # "S" or "P"
    name: str


def parse_query(body: bytes) -> Query:
    r = _Reader(body)
    sql = r.cstr()
    r.end()
    return Query(sql)


def parse_parse(body: bytes) -> Parse:
    r = _Reader(body)
    name = r.cstr()
    sql = r.cstr()
    n = r.i16()
    if n < 0:
        raise ProtocolError("negative parameter count")
    types = tuple(r.i32() for _ in range(n))
    r.end()
    return Parse(name, sql, types)


def parse_bind(body: bytes) -> Bind:
    """Only the portal and statement names: the parameters are relayed untouched."""
    r = _Reader(body)
    portal = r.cstr()
    statement = r.cstr()
    return Bind(portal, statement)


def bind_values(body: bytes) -> list[bytes | None]:
    """The parameter values of a Bind body, as sent (text or binary per the client's formats).

    Only for the few statements the emulator answers itself with bound values (a `Synthetic`
    with ``resolve``); everything else is relayed without decoding its parameters.
    """
    r = _Reader(body)
    r.cstr()
    r.cstr()
    formats = r.i16()
    if formats < 0:
        raise ProtocolError("Bind has a negative parameter format count")
    for _ in range(formats):
        r.i16()
    count = r.i16()
    if count < 0:
        raise ProtocolError("Bind has a negative parameter count")
    values: list[bytes | None] = []
    for _ in range(count):
        size = r.i32()
        values.append(None if size == -1 else r.take(size))
    return values


def parse_describe(body: bytes) -> Describe:
    r = _Reader(body)
    kind = r.take(1)
    if kind not in (b"S", b"P"):
        raise ProtocolError("Describe must name a statement (S) or portal (P)")
    name = r.cstr()
    r.end()
    return Describe(kind.decode(), name)


def parse_close(body: bytes) -> Close:
    r = _Reader(body)
    kind = r.take(1)
    if kind not in (b"S", b"P"):
        raise ProtocolError("Close must name a statement (S) or portal (P)")
    name = r.cstr()
    r.end()
    return Close(kind.decode(), name)


def parse_execute(body: bytes) -> Execute:
    r = _Reader(body)
    portal = r.cstr()
    max_rows = r.i32()
    r.end()
    return Execute(portal, max_rows)


def parse_password(body: bytes) -> str:
    r = _Reader(body)
    pw = r.cstr()
    r.end()
    return pw


# Frontend message types the relay accepts after startup (anything else closes the connection).
FRONTEND_TYPES = frozenset(b"QPBDECSHXdcfF")


def encode_query(sql: str) -> bytes:
    return frame(b"Q", sql.encode() + b"\0")


def encode_parse(name: str, sql: str, param_types: Sequence[int] = ()) -> bytes:
    body = name.encode() + b"\0" + sql.encode() + b"\0" + _I16.pack(len(param_types))
    body += b"".join(_I32.pack(t) for t in param_types)
    return frame(b"P", body)


def encode_bind(
    portal: str,
    statement: str,
    params: Sequence[bytes | None] = (),
    result_formats: Sequence[int] = (),
) -> bytes:
    body = portal.encode() + b"\0" + statement.encode() + b"\0"
    body += _I16.pack(0)  # all parameters in text format
    body += _I16.pack(len(params))
    for p in params:
        if p is None:
            body += _I32.pack(-1)
        else:
            body += _I32.pack(len(p)) + p
    body += _I16.pack(len(result_formats)) + b"".join(_I16.pack(f) for f in result_formats)
    return frame(b"B", body)


def encode_describe(kind: str, name: str) -> bytes:
    return frame(b"D", kind.encode() + name.encode() + b"\0")


def encode_execute(portal: str, max_rows: int = 0) -> bytes:
    return frame(b"E", portal.encode() + b"\0" + _I32.pack(max_rows))


def encode_close(kind: str, name: str) -> bytes:
    return frame(b"C", kind.encode() + name.encode() + b"\0")


SYNC = frame(b"S")
FLUSH = frame(b"H")
TERMINATE = frame(b"X")


def encode_password(password: str) -> bytes:
    return frame(b"p", password.encode() + b"\0")


# --- backend messages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorFields:
    """An ErrorResponse or NoticeResponse, by field code (S, V, C, M, D, H, P, ...)."""

    fields: dict[str, str]

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "XX000")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")

    @property
    def severity(self) -> str:
        return self.fields.get("V", self.fields.get("S", "ERROR"))

    def to_error(self) -> DsqlError:
        sev: Severity = "FATAL" if self.severity in ("FATAL", "PANIC") else "ERROR"
        return DsqlError(
            self.sqlstate,
            self.message,
            detail=self.fields.get("D"),
            hint=self.fields.get("H"),
            severity=sev,
        )


def parse_error_fields(body: bytes) -> ErrorFields:
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        code = chr(body[pos])
        end = body.find(b"\0", pos + 1)
        if end < 0:
            raise ProtocolError("unterminated error field")
        fields[code] = body[pos + 1 : end].decode(errors="replace")
        pos = end + 1
    return ErrorFields(fields)


def parse_command_complete(body: bytes) -> str:
    return body.rstrip(b"\0").decode(errors="replace")


def parse_row_description(body: bytes) -> tuple[str, ...]:
    """Column names only (the relay never needs more)."""
    r = _Reader(body)
    n = r.i16()
    names = []
    for _ in range(n):
        names.append(r.cstr())
        r.take(18)
    return tuple(names)


def parse_data_row(body: bytes) -> tuple[str | None, ...]:
    r = _Reader(body)
    n = r.i16()
    out: list[str | None] = []
    for _ in range(n):
        size = r.i32()
        out.append(None if size < 0 else r.take(size).decode(errors="replace"))
    return tuple(out)


def parse_backend_key(body: bytes) -> tuple[int, int]:
    pid, secret = _PIDKEY.unpack(body[:8])
    return int(pid), int(secret)


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    r = _Reader(body)
    return r.cstr(), r.cstr()


def parse_auth(body: bytes) -> int:
    (code,) = _I32.unpack_from(body, 0)
    return int(code)


def encode_error(err: DsqlError) -> bytes:
    """An ErrorResponse for a DsqlError (severity, SQLSTATE, message, detail, hint)."""
    return frame(b"E", _error_body(err.severity, err.sqlstate, err.message, err.detail, err.hint))


def encode_notice(sqlstate: str, message: str, severity: str = "NOTICE") -> bytes:
    return frame(b"N", _error_body(severity, sqlstate, message, None, None))


def _error_body(
    severity: str, sqlstate: str, message: str, detail: str | None, hint: str | None
) -> bytes:
    parts = [
        b"S" + severity.encode() + b"\0",
        b"V" + severity.encode() + b"\0",
        b"C" + sqlstate.encode() + b"\0",
        b"M" + message.encode() + b"\0",
    ]
    if detail:
        parts.append(b"D" + detail.encode() + b"\0")
    if hint:
        parts.append(b"H" + hint.encode() + b"\0")
    return b"".join(parts) + b"\0"


def encode_auth_ok() -> bytes:
    return frame(b"R", _I32.pack(0))


def encode_auth_cleartext() -> bytes:
    return frame(b"R", _I32.pack(3))


def encode_parameter_status(name: str, value: str) -> bytes:
    return frame(b"S", name.encode() + b"\0" + value.encode() + b"\0")


def encode_backend_key(pid: int, secret: int) -> bytes:
    return frame(b"K", _PIDKEY.pack(pid, secret))


def encode_ready(status: bytes) -> bytes:
    return frame(b"Z", status)


def encode_command_complete(tag: str) -> bytes:
    return frame(b"C", tag.encode() + b"\0")


def encode_negotiate_version(minor: int, unsupported: Iterable[str]) -> bytes:
    names = list(unsupported)
    body = _I32.pack((3 << 16) | minor) + _I32.pack(len(names))
    body += b"".join(n.encode() + b"\0" for n in names)
    return frame(b"v", body)


def encode_row_description(columns: Sequence[str], types: Sequence[int]) -> bytes:
    body = _I16.pack(len(columns))
    for name, oid in zip(columns, types, strict=True):
        # table oid 0, column 0, type oid, size -1, modifier -1, text format
        body += name.encode() + b"\0" + struct.pack("!ihihih", 0, 0, oid, -1, -1, 0)
    return frame(b"T", body)


def encode_data_row(values: Sequence[object]) -> bytes:
    body = _I16.pack(len(values))
    for v in values:
        if v is None:
            body += _I32.pack(-1)
        else:
            data = _text(v).encode()
            body += _I32.pack(len(data)) + data
    return frame(b"D", body)


def _text(v: object) -> str:
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, bytes):
        return "\\x" + v.hex()
    return str(v)


def encode_text_param(v: object) -> bytes | None:
    """A query parameter in PostgreSQL's text format (None is NULL)."""
    if v is None:
        return None
    return _text(v).encode()


PARSE_COMPLETE = frame(b"1")
BIND_COMPLETE = frame(b"2")
CLOSE_COMPLETE = frame(b"3")
NO_DATA = frame(b"n")
EMPTY_QUERY = frame(b"I")


def encode_parameter_description(types: Sequence[int]) -> bytes:
    return frame(b"t", _I16.pack(len(types)) + b"".join(_I32.pack(t) for t in types))
