"""PostgreSQL v3 framing (dsql_magic.emulator.protocol): pure, no sockets; hypothesis-tested."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsql_magic.emulator import protocol as p
from dsql_magic.emulator.errors import DsqlError

names = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40
)
bodies = st.binary(max_size=300)
types = st.sampled_from(list(b"QPBDECSHXdcfpF"))


@given(st.lists(st.tuples(types, bodies), max_size=20), st.data())
def test_frames_survive_any_chunking(frames: list[tuple[int, bytes]], data: st.DataObject) -> None:
    stream = b"".join(p.frame(bytes((t,)), b) for t, b in frames)
    fb = p.FrameBuffer(1 << 20)
    got: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(stream):
        size = data.draw(st.integers(1, max(1, len(stream) - pos)))
        fb.feed(stream[pos : pos + size])
        pos += size
        got.extend((f.type, f.body) for f in fb.frames())
    assert got == [(bytes((t,)), b) for t, b in frames]
    assert len(fb) == 0


def test_oversized_frame_is_refused_from_its_header() -> None:
    fb = p.FrameBuffer(1024)
    fb.feed(b"Q" + (5000).to_bytes(4, "big"))  # the body never needs to arrive
    with pytest.raises(p.TooLarge) as info:
        fb.next_frame()
    assert info.value.size == 5001 and info.value.limit == 1024


@pytest.mark.parametrize("length", [-1, 0, 3])
def test_impossible_lengths_are_protocol_errors(length: int) -> None:
    fb = p.FrameBuffer(1024)
    fb.feed(b"Q" + length.to_bytes(4, "big", signed=True))
    with pytest.raises(p.ProtocolError):
        fb.next_frame()


@given(st.dictionaries(names.filter(bool), names, max_size=8))
def test_startup_round_trip(params: dict[str, str]) -> None:
    msg = p.parse_startup(p.encode_startup(params))
    assert isinstance(msg, p.StartupMessage)
    assert (msg.major, msg.minor, msg.params) == (3, 0, params)


def test_special_startup_packets() -> None:
    assert isinstance(p.parse_startup(p.encode_ssl_request()), p.SSLRequest)
    assert p.parse_startup(p.encode_cancel(12, -5)) == p.CancelRequest(12, -5)
    gss = (8).to_bytes(4, "big") + p.GSSENC_REQUEST.to_bytes(4, "big")
    assert isinstance(p.parse_startup(gss), p.GSSENCRequest)


@given(names, names, st.lists(st.integers(0, 2**31 - 1), max_size=5))
def test_parse_round_trip(name: str, sql: str, oids: list[int]) -> None:
    frames, rest = p.split_frames(p.encode_parse(name, sql, oids))
    assert rest == b""
    assert p.parse_parse(frames[0].body) == p.Parse(name, sql, tuple(oids))


@given(names, names, st.lists(st.one_of(st.none(), st.binary(max_size=20)), max_size=5))
def test_bind_names_round_trip(portal: str, stmt: str, params: list[bytes | None]) -> None:
    frame = p.split_frames(p.encode_bind(portal, stmt, params))[0][0]
    assert p.parse_bind(frame.body) == p.Bind(portal, stmt)


@given(st.sampled_from("SP"), names, st.integers(0, 2**31 - 1))
def test_describe_close_execute_round_trip(kind: str, name: str, rows: int) -> None:
    assert p.parse_describe(p.split_frames(p.encode_describe(kind, name))[0][0].body) == (
        p.Describe(kind, name)
    )
    assert p.parse_close(p.split_frames(p.encode_close(kind, name))[0][0].body) == (
        p.Close(kind, name)
    )
    assert p.parse_execute(p.split_frames(p.encode_execute(name, rows))[0][0].body) == (
        p.Execute(name, rows)
    )


@given(
    st.text(alphabet="0123456789ABCDEFP", min_size=5, max_size=5),
    names,
    st.one_of(st.none(), names.filter(bool)),
    st.one_of(st.none(), names.filter(bool)),
    st.sampled_from(["ERROR", "FATAL"]),
)
def test_error_response_round_trip(
    code: str, message: str, detail: str | None, hint: str | None, severity: str
) -> None:
    err = DsqlError(code, message, detail=detail, hint=hint, severity=severity)  # type: ignore[arg-type]
    frame = p.split_frames(p.encode_error(err))[0][0]
    assert frame.type == b"E"
    back = p.parse_error_fields(frame.body).to_error()
    assert (back.sqlstate, back.message, back.detail, back.hint, back.severity) == (
        code,
        message,
        detail,
        hint,
        severity,
    )


def test_synthetic_rows_decode() -> None:
    frames, _ = p.split_frames(
        p.encode_row_description(["a", "b"], [25, 23])
        + p.encode_data_row(["x", None])
        + p.encode_data_row([True, 5])
        + p.encode_command_complete("SELECT 2")
    )
    assert p.parse_row_description(frames[0].body) == ("a", "b")
    assert p.parse_data_row(frames[1].body) == ("x", None)
    assert p.parse_data_row(frames[2].body) == ("t", "5")
    assert p.parse_command_complete(frames[3].body) == "SELECT 2"


_FRONTEND_PARSERS = [
    p.parse_query,
    p.parse_parse,
    p.parse_bind,
    p.parse_describe,
    p.parse_close,
    p.parse_execute,
    p.parse_password,
]


@settings(max_examples=300)
@given(st.sampled_from(_FRONTEND_PARSERS), st.binary(max_size=64))
def test_frontend_parsers_fail_only_with_protocol_error(parser: object, body: bytes) -> None:
    try:
        result = parser(body)  # type: ignore[operator]
    except p.ProtocolError:
        return
    assert isinstance(result, (p.Query, p.Parse, p.Bind, p.Describe, p.Close, p.Execute, str))


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_startup_parser_fails_only_with_protocol_error(body: bytes) -> None:
    packet = (len(body) + 4).to_bytes(4, "big") + body
    try:
        result = p.parse_startup(packet)
    except p.ProtocolError:
        return
    assert isinstance(result, (p.SSLRequest, p.GSSENCRequest, p.CancelRequest, p.StartupMessage))


@settings(max_examples=200, deadline=None)
@given(
    portal=st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=8),
    statement=st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=8),
    values=st.lists(st.one_of(st.none(), st.binary(max_size=40)), max_size=6),
)
def test_bind_values_round_trip(portal: str, statement: str, values: list[bytes | None]) -> None:
    """The values the session reads back from a Bind are the ones the client bound."""
    raw = p.encode_bind(portal, statement, values)
    assert p.bind_values(raw[5:]) == values


@given(st.binary(max_size=64))
def test_bind_values_rejects_garbage_with_protocol_error(body: bytes) -> None:
    """Malformed input may only ever raise ProtocolError (the session closes that connection)."""
    try:
        values = p.bind_values(body)
    except p.ProtocolError:
        return
    assert all(v is None or isinstance(v, bytes) for v in values)


@given(
    frames=st.lists(
        st.tuples(st.sampled_from(b"BDESPQ"), st.binary(max_size=40)), min_size=1, max_size=8
    ),
    cut=st.integers(min_value=0, max_value=400),
    count=st.integers(min_value=0, max_value=5),
)
@settings(max_examples=200)
def test_ahead_peeks_what_next_frame_would_yield(
    frames: list[tuple[int, bytes]], cut: int, count: int
) -> None:
    """`ahead` sees the complete frames after the current one; `skip_to` consumes them."""
    data = b"".join(p.frame(bytes((t,)), body) for t, body in frames)
    fb = p.FrameBuffer(1 << 20)
    fb.feed(data[: min(cut, len(data))])
    first = fb.next_frame()
    peeked = fb.ahead(count)
    consumed = []
    while len(consumed) < len(peeked) and (item := fb.next_frame()) is not None:
        consumed.append(item)
    assert consumed == peeked
    if first is not None and peeked:
        again = p.FrameBuffer(1 << 20)
        again.feed(data[: min(cut, len(data))])
        again.next_frame()
        again.skip_to(peeked[-1][2])
        assert again.next_frame() == fb.next_frame()
