"""What a native connection hands back: a response body stream, or an upgraded pipe.

Both are filled by :class:`gateway.transport.native_conn.Connection` from its protocol
callbacks and drained by the consumer; each pauses the connection's reading while more
than :data:`HIGH_WATER` bytes wait unread, and resumes it when the consumer catches up.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from gateway.errors import UpstreamError
from gateway.types import Headers

if TYPE_CHECKING:
    from gateway.transport.native_conn import Connection

#: Unread response (or upgraded) bytes held for a slow consumer before reading pauses.
HIGH_WATER = 256 * 1024


class Incoming:
    """A response as it arrives: its head, then its body as an async iterator of chunks.

    ``conn`` is None once no more body bytes will arrive: the body is ``complete``, or
    failed (``error``), or was abandoned by :meth:`aclose`.
    """

    __slots__ = (
        "chunks",
        "complete",
        "conn",
        "error",
        "headers",
        "reason",
        "size",
        "status",
        "upgraded",
        "waiter",
    )

    def __init__(self, conn: Connection, status: int, reason: bytes, headers: Headers) -> None:
        self.conn: Connection | None = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.upgraded: Upgraded | None = None

    def __aiter__(self) -> Incoming:
        return self

    async def __anext__(self) -> bytes:
        while True:
            chunks = self.chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self.size = 0
                conn = self.conn
                if conn is not None and conn.paused:
                    conn.resume()
                return data
            if self.error is not None:
                raise self.error
            conn = self.conn
            if conn is None:
                raise StopAsyncIteration
            waiter = conn.loop.create_future()
            self.waiter = waiter
            try:
                await waiter
            finally:
                self.waiter = None

    async def aclose(self) -> None:
        """Stop reading: a body not yet complete closes the connection (never pooled)."""
        self.chunks.clear()
        self.size = 0
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.abandon(self)

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: UpstreamError) -> None:
        self.conn = None
        self.error = error
        self.wake()


class Upgraded:
    """The raw byte pipe to the upstream after ``101 Switching Protocols``.

    Writes after the connection closed are dropped; :meth:`read` reports the close.
    """

    __slots__ = ("chunks", "conn", "eof", "size", "waiter")

    def __init__(self, conn: Connection, leftover: bytes) -> None:
        self.conn = conn
        self.chunks: list[bytes] = [leftover] if leftover else []
        self.size = len(leftover)
        self.eof = False
        self.waiter: asyncio.Future[None] | None = None

    async def read(self) -> bytes:
        while True:
            chunks = self.chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self.size = 0
                if self.conn.paused:
                    self.conn.resume()
                return data
            if self.eof:
                return b""
            waiter = self.conn.loop.create_future()
            self.waiter = waiter
            try:
                await waiter
            finally:
                self.waiter = None

    def write(self, data: bytes) -> None:
        if not self.conn.ended:
            self.conn.transport.write(data)

    async def drain(self) -> None:
        await self.conn.drain()

    def close(self) -> None:
        self.conn.close()

    def feed(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size > HIGH_WATER and not self.conn.paused:
            self.conn.pause()
        self._wake()

    def lost(self) -> None:
        self.eof = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
