"""A minimal TLS-terminating relay to PostgreSQL: the floor for any Python wire front.

The emulator benchmark runs it beside the emulator (``python bench/_tls_relay.py SOCKET CERT
KEY``): it answers SSLRequest, wraps the connection in TLS and copies bytes both ways to the
PostgreSQL unix socket, with no token check, no decoding and no rules. It prints its port.
It is a measuring stick, not a server: no limits, no shutdown beyond being killed.
"""

from __future__ import annotations

import asyncio
import ssl
import sys


class _Pipe(asyncio.Protocol):
    """One side of the relay: what arrives is written to the other side."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop: not a subclass

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class _Front(_Pipe):
    """The client side: SSLRequest, TLS, then a pipe to a new backend connection."""

    def __init__(self, socket_path: str, ctx: ssl.SSLContext) -> None:
        super().__init__()
        self.socket_path = socket_path
        self.ctx = ctx
        self.started = False

    def data_received(self, data: bytes) -> None:
        if self.started:
            super().data_received(data)
            return
        self.started = True  # the 8-byte SSLRequest
        asyncio.get_running_loop().create_task(self._upgrade())

    async def _upgrade(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.transport is not None
        self.transport.write(b"S")
        tls = await loop.start_tls(self.transport, self, self.ctx, server_side=True)
        assert tls is not None
        self.transport = tls
        _, back = await loop.create_unix_connection(_Pipe, self.socket_path)
        back.peer, self.peer = self, back
        for data in self.early:
            back.transport.write(data)  # type: ignore[union-attr]
        self.early.clear()


async def _main(socket_path: str, ctx: ssl.SSLContext) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Front(socket_path, ctx), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


def main() -> None:
    socket_path, cert, key = sys.argv[1:4]
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(socket_path, ctx))
    else:
        uvloop.run(_main(socket_path, ctx))


if __name__ == "__main__":
    main()
