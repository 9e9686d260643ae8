"""Malformed, truncated and oversized traffic against the wire front, while other clients work.

A raw TLS client (real socket, the emulator's CA, a real boto3 token) authenticates and then sends
what hypothesis draws: frames of any type with random bodies, truncated frames, garbage, and
messages over the 10 MiB limit. After each example a long-lived psycopg connection and a new one
must still answer, and the emulator must not have logged an unexpected error.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsql_magic.emulator import protocol as p
from dsql_magic.limits import MAX_PROTOCOL_MESSAGE_BYTES
from tests.fix_wire import WireServer

Start = Callable[..., WireServer]


def _read_frame(sock: ssl.SSLSocket | socket.socket) -> tuple[bytes, bytes]:
    header = _read_exact(sock, 5)
    (length,) = struct.unpack("!i", header[1:])
    return header[:1], _read_exact(sock, length - 4)


def _read_exact(sock: ssl.SSLSocket | socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def raw_session(server: WireServer) -> ssl.SSLSocket:
    """A TLS connection that has passed startup and authentication (ReadyForQuery read)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(p.encode_ssl_request())
    assert sock.recv(1) == b"S"
    ctx = ssl.create_default_context(cafile=str(server.env.ca_cert))
    tls = ctx.wrap_socket(sock, server_hostname="localhost")
    tls.sendall(p.encode_startup({"user": "admin", "database": "postgres"}))
    assert _read_frame(tls) == (b"R", struct.pack("!i", 3))
    tls.sendall(p.encode_password(server.token()))
    while True:
        type_, body = _read_frame(tls)
        assert type_ != b"E", body
        if type_ == b"Z":
            return tls


def _drain(sock: ssl.SSLSocket | socket.socket) -> bytes:
    """Everything the server sends until it closes or goes quiet."""
    sock.settimeout(2)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, OSError):
        pass
    return out


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def watched(wire_server: Start) -> Iterator[tuple[WireServer, psycopg.Connection[Any]]]:
    handler = _Errors()
    logging.getLogger("dsql_magic.emulator").addHandler(handler)
    server = wire_server()
    try:
        with psycopg.connect(**server.conninfo(), autocommit=True) as other:
            yield server, other
    finally:
        logging.getLogger("dsql_magic.emulator").removeHandler(handler)
    assert not handler.records, [r.getMessage() for r in handler.records]


def _still_working(server: WireServer, other: psycopg.Connection[Any]) -> None:
    assert other.execute("SELECT %s::int + 1", [1]).fetchone() == (2,)
    with psycopg.connect(**server.conninfo(), autocommit=True) as fresh:
        assert fresh.execute("SELECT 'fresh'").fetchone() == ("fresh",)


frame_types = st.sampled_from(list(b"QPBDECSHdcfFpz\x00\xff"))
frames = st.builds(lambda t, body: p.frame(bytes((t,)), body), frame_types, st.binary(max_size=200))
truncated = st.builds(lambda f, cut: f[: max(1, len(f) - cut)], frames, st.integers(1, 50))
garbage = st.binary(min_size=1, max_size=200)
traffic = st.lists(st.one_of(frames, frames, truncated, garbage), min_size=1, max_size=6)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(chunks=traffic)
def test_malformed_traffic_after_auth(watched: Any, chunks: list[bytes]) -> None:
    server, other = watched
    sock = raw_session(server)
    try:
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except OSError:
                break
    finally:
        sock.close()
    _still_working(server, other)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.binary(min_size=1, max_size=300), tls=st.booleans())
def test_garbage_before_startup(watched: Any, data: bytes, tls: bool) -> None:
    server, other = watched
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        if tls:
            sock.sendall(p.encode_ssl_request())
            assert sock.recv(1) == b"S"
            ctx = ssl.create_default_context(cafile=str(server.env.ca_cert))
            sock = ctx.wrap_socket(sock, server_hostname="localhost")
        sock.sendall(data)
        _drain(sock)
    except OSError:
        pass
    finally:
        sock.close()
    _still_working(server, other)


def test_oversized_message_closes_only_that_connection(watched: Any) -> None:
    server, other = watched
    sock = raw_session(server)
    try:
        size = MAX_PROTOCOL_MESSAGE_BYTES + 1024
        sock.sendall(b"Q" + struct.pack("!i", size) + b"SELECT " + b" " * 100_000)
        reply = _drain(sock)
    finally:
        sock.close()
    frames_back, _ = p.split_frames(reply)
    assert frames_back and frames_back[0].type == b"E"
    err = p.parse_error_fields(frames_back[0].body)
    assert err.severity == "FATAL" and err.sqlstate == "54000"
    _still_working(server, other)


def test_a_large_message_under_the_limit_is_fine(watched: Any) -> None:
    server, other = watched
    value = "x" * (4 * 1024 * 1024)
    assert other.execute("SELECT length(%s)", [value]).fetchone() == (len(value),)
    _still_working(server, other)


def test_truncated_message_then_silence_does_not_block_others(watched: Any) -> None:
    server, other = watched
    sock = raw_session(server)
    try:
        sock.sendall(b"Q" + struct.pack("!i", 1000) + b"SELECT 1")  # never completed
        _still_working(server, other)
    finally:
        sock.close()
    _still_working(server, other)


class _Hook:
    """Exercises the session's hook paths (refusal, synthetic, after) during the fuzzing."""

    async def before(self, stmt: Any, ctx: Any) -> Any:
        from dsql_magic.emulator.errors import DsqlError
        from dsql_magic.emulator.hooks import Synthetic

        if "refuse" in stmt.text:
            raise DsqlError("0A000", "unsupported statement: Refuse")
        if "synthetic" in stmt.text:
            return Synthetic(["a"], [["1"]], "SELECT 1")
        return None

    async def after(self, stmt: Any, result: Any, ctx: Any) -> None:
        return None

    async def before_commit(self, ctx: Any) -> None:
        return None


_SQL = st.sampled_from(
    [
        "SELECT 1",
        "SELECT $1::int",
        "SELECT 'synthetic'",
        "SELECT 'refuse'",
        "SELECT 1/0",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "INSERT INTO fuzz_t VALUES (1) ON CONFLICT DO NOTHING",
        "SELECT * FROM no_such_table",
        "",
    ]
)
_NAMES = st.sampled_from(["", "s1", "s2"])
_EXTENDED = st.one_of(
    st.builds(lambda n, q: p.encode_parse(n, q), _NAMES, _SQL),
    st.builds(lambda po, n: p.encode_bind(po, n, [b"7"]), _NAMES, _NAMES),
    st.builds(lambda po, n: p.encode_bind(po, n), _NAMES, _NAMES),
    st.builds(p.encode_describe, st.sampled_from("SP"), _NAMES),
    st.builds(p.encode_execute, _NAMES, st.sampled_from([0, 1])),
    st.builds(p.encode_close, st.sampled_from("SP"), _NAMES),
    st.just(p.SYNC),
    st.just(p.FLUSH),
    st.builds(p.encode_query, _SQL),
)


@pytest.fixture(params=["plain", "hooked"])
def sequenced(
    request: pytest.FixtureRequest, wire_server: Start
) -> tuple[WireServer, psycopg.Connection[Any]]:
    server = wire_server(hooks=[_Hook()] if request.param == "hooked" else [])
    other = psycopg.connect(**server.conninfo(), autocommit=True)
    other.execute("CREATE TABLE IF NOT EXISTS fuzz_t (id int PRIMARY KEY)")
    request.addfinalizer(other.close)
    return server, other


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(messages=st.lists(_EXTENDED, min_size=1, max_size=12))
def test_any_message_order_gets_an_answer(sequenced: Any, messages: list[bytes]) -> None:
    """Well-formed messages in any order: the session stays aligned, nothing hangs.

    After the drawn messages, a Sync and a ROLLBACK, a marker query must come back as the last
    answer (or the server ended the session with an error, which a protocol violation allows).
    """
    server, other = sequenced
    sock = raw_session(server)
    try:
        marker = p.encode_query("SELECT 'end-marker'")
        # ROLLBACK first: the drawn messages may leave a failed transaction block open
        sock.sendall(b"".join(messages) + p.SYNC + p.encode_query("ROLLBACK") + marker)
        sock.settimeout(5)
        buf = b""
        seen_marker = False
        done = False
        while not done:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
            frames_back, buf = p.split_frames(buf)
            for frame in frames_back:
                if frame.type == b"D" and b"end-marker" in frame.body:
                    seen_marker = True
                elif frame.type == b"Z" and seen_marker:
                    done = True
        if not done:
            assert not chunk
    finally:
        sock.close()
    _still_working(server, other)
