"""The emulator's listener: sockets, TLS, startup negotiation, per-connection tasks, shutdown.

`serve()` binds the configured host/port, and for each connection: peeks at the first byte to tell
libpq 17's direct TLS (ALPN ``postgresql``) from the classic SSLRequest, answers SSLRequest and
GSSENCRequest, routes CancelRequest to the named session's backend, refuses plaintext startups,
applies DSQL's connection quotas (count and rate), and hands the stream to a `Session`. On
``shutdown`` it stops accepting, tells each session the server is going away, and waits for them.

This module alone owns sockets and TLS; it must not decode anything after the StartupMessage
(that is the session's job) nor know DSQL's SQL rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable

from . import errors, protocol
from .cluster import Cluster
from .errors import DsqlError
from .session import Session, handle_cancel

log = logging.getLogger(__name__)

ALPN = "postgresql"
_GRACE_SECONDS = 5.0
_BACKLOG = 512


async def serve(
    cluster: Cluster,
    *,
    ready: Callable[[str, int], None] | None = None,
    shutdown: asyncio.Event,
) -> None:
    """Accept clients until ``shutdown`` is set, then close every session and return.

    Raises `OSError` if the address cannot be bound (port busy, bad host).
    """
    settings = cluster.settings
    if cluster.ssl_context is not None:
        cluster.ssl_context.set_alpn_protocols([ALPN])
    listener = _bind(settings.host, settings.port)
    host, port = listener.getsockname()[:2]
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    sessions: set[Session] = set()
    if ready is not None:
        ready(host, port)
    log.info("listening on %s:%s", host, port)

    async def accept_loop() -> None:
        while True:
            sock, _ = await loop.sock_accept(listener)
            task = asyncio.create_task(_connection(cluster, sock, sessions))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    acceptor = asyncio.create_task(accept_loop())
    stopper = asyncio.create_task(shutdown.wait())
    try:
        await asyncio.wait({acceptor, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if acceptor.done() and not acceptor.cancelled() and acceptor.exception() is not None:
            raise acceptor.exception()  # type: ignore[misc]
    finally:
        acceptor.cancel()
        stopper.cancel()
        with contextlib.suppress(BaseException):
            await acceptor
        listener.close()
        for session in list(sessions):
            with contextlib.suppress(Exception):
                await session.close_for_shutdown()
        if tasks:
            _, still = await asyncio.wait(set(tasks), timeout=_GRACE_SECONDS)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=_GRACE_SECONDS)
        await cluster.aclose()
        log.info("stopped")


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    last: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError(f"cannot bind {host}:{port}")


async def _connection(cluster: Cluster, sock: socket.socket, sessions: set[Session]) -> None:
    """One client connection from accept to close; never raises."""
    writer: asyncio.StreamWriter | None = None
    admitted = False
    owned: list[bool] = []  # non-empty once a transport owns the socket (and closes it)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        opened = await asyncio.wait_for(
            _negotiate(cluster, sock, owned), cluster.settings.startup_timeout
        )
        if opened is None:
            return
        reader, writer, startup = opened
        try:
            cluster.admit()
        except DsqlError as err:
            await _refuse(writer, err)
            return
        admitted = True
        session = Session(cluster, reader, writer, startup)
        sessions.add(session)
        try:
            await session.run()
        finally:
            sessions.discard(session)
    except DsqlError as err:
        if writer is not None:
            await _refuse(writer, err)
    except protocol.ProtocolError as exc:
        if writer is not None:
            await _refuse(writer, errors.protocol_violation(str(exc)))
    except (
        ConnectionError,
        asyncio.IncompleteReadError,
        asyncio.TimeoutError,
        TimeoutError,
        ssl.SSLError,
        OSError,
    ) as exc:
        log.debug("connection ended during startup: %s", type(exc).__name__)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected error in a client connection")
    finally:
        if admitted:
            cluster.release()
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        elif not owned:
            # Only a socket no transport owns: closing a transport's socket here would free
            # its fd number while the loop still maps it to that transport.
            sock.close()


async def _refuse(writer: asyncio.StreamWriter, err: DsqlError) -> None:
    with contextlib.suppress(Exception):
        writer.write(protocol.encode_error(err))
        await asyncio.wait_for(writer.drain(), 5)


async def _negotiate(
    cluster: Cluster, sock: socket.socket, owned: list[bool]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, protocol.StartupMessage] | None:
    """TLS and startup packets up to the StartupMessage; None when the connection is done."""
    loop = asyncio.get_running_loop()
    ctx = cluster.ssl_context
    first = await _peek(loop, sock)
    log.debug("new connection, first byte %r", first)
    if not first:
        return None
    tls = False
    if first[0] == protocol.TLS_HANDSHAKE_BYTE:
        if ctx is None:
            return None
        owned.append(True)
        reader, writer = await _open(loop, sock, ctx)
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != ALPN:
            # PostgreSQL requires ALPN for direct TLS, so that no other protocol is confused.
            await _refuse(writer, errors.protocol_violation("direct TLS needs ALPN postgresql"))
            writer.close()
            return None
        tls = True
    else:
        owned.append(True)
        reader, writer = await _open(loop, sock, None)
    returning = False
    try:
        while True:
            header = await reader.readexactly(4)
            length = protocol.startup_length(header)
            msg = protocol.parse_startup(header + await reader.readexactly(length - 4))
            if isinstance(msg, protocol.SSLRequest):
                if tls:
                    raise errors.protocol_violation("SSLRequest on an encrypted connection")
                if ctx is None:
                    writer.write(b"N")
                    continue
                if len(reader._buffer) > 0:  # type: ignore[attr-defined]
                    # Bytes after SSLRequest before the handshake could be injected plaintext.
                    raise errors.protocol_violation("received unencrypted data after SSLRequest")
                writer.write(b"S")
                await writer.drain()
                writer = await _start_tls(loop, reader, writer, ctx)
                tls = True
            elif isinstance(msg, protocol.GSSENCRequest):
                writer.write(b"N")
            elif isinstance(msg, protocol.CancelRequest):
                log.debug("cancel request for session %s", msg.pid)
                await handle_cancel(cluster, msg.pid, msg.secret)
                writer.close()
                return None
            else:
                if msg.major != 3:
                    raise errors.unsupported_protocol(msg.major, msg.minor)
                if cluster.settings.require_tls and not tls:
                    raise errors.tls_required()
                returning = True
                return reader, writer, msg
    except DsqlError as err:
        await _refuse(writer, err)
    except protocol.ProtocolError as exc:
        await _refuse(writer, errors.protocol_violation(str(exc)))
    finally:
        if not returning:
            writer.close()
    return None


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """The first byte the client sent, left in the socket."""
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def readable() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await fut
    finally:
        loop.remove_reader(fd)
    try:
        return sock.recv(1, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return await _peek(loop, sock)


async def _open(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, ctx: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader = asyncio.StreamReader(limit=2**16, loop=loop)
    got: asyncio.Future[asyncio.StreamWriter] = loop.create_future()

    def connected(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not got.done():
            got.set_result(writer)

    # A client_connected_cb makes the protocol server-side (StreamWriter.start_tls relies on it).
    proto = asyncio.StreamReaderProtocol(reader, connected, loop=loop)
    await loop.connect_accepted_socket(lambda: proto, sock, ssl=ctx)
    return reader, await got


async def _start_tls(
    loop: asyncio.AbstractEventLoop,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    ctx: ssl.SSLContext,
) -> asyncio.StreamWriter:
    """Upgrade the connection after answering SSLRequest with 'S'."""
    if hasattr(writer, "start_tls"):  # Python 3.11+
        await writer.start_tls(ctx)
        return writer
    # Python 3.10: the same steps by hand.  # pragma: no cover
    transport = writer.transport
    proto = transport.get_protocol()
    new_transport = await loop.start_tls(transport, proto, ctx, server_side=True)
    assert new_transport is not None
    new_writer = asyncio.StreamWriter(new_transport, proto, reader, loop)
    proto._stream_writer = new_writer  # type: ignore[attr-defined]
    proto._transport = new_transport  # type: ignore[attr-defined]
    return new_writer
