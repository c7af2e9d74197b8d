"""The purpose-built upstream transport: HTTP/1.1 on asyncio protocols and httptools.

Per target, a bounded pool of keep-alive connections reused LIFO
(:mod:`gateway.transport.native_pool`); per connection, an ``asyncio.Protocol`` with
httptools' response parser (:mod:`gateway.transport.native_conn`). A request goes out as
one buffer: the head, with a body of up to :data:`SMALL_BODY` bytes appended.

What goes on the wire is exactly the headers given (the forwarding step prepares them).
The only header this transport adds is framing: ``transfer-encoding: chunked`` for a
streamed body without ``content-length``, and ``content-length`` for a non-empty
``bytes`` body that lacks one.

A response whose body has fully arrived by the time its head is handed back (the common
case for small bodies) is returned whole (``Response.body``); otherwise its body streams
(``Response.stream``), with reading paused while the consumer lags.

A reused keep-alive connection that closes before any byte of the response arrived (the
upstream closed it while idle, and the request either failed to write or met EOF) is
retried once on a freshly opened connection, unless a streamed request body had already
been partly consumed.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable

from gateway.config.models import Upstream
from gateway.errors import UpstreamConnectError
from gateway.exchange import ByteStream, Response, find_all, find_header
from gateway.transport.base import Target, UpstreamRequest
from gateway.transport.native_conn import INF, Connection, Stale, websocket_accept
from gateway.transport.native_pool import Pool
from gateway.transport.native_streams import Incoming
from gateway.types import Headers

#: A bytes body up to this size is sent in the same write as the request head.
SMALL_BODY = 64 * 1024
_CHUNKED_HEADER = b"transfer-encoding: chunked\r\n"
_METHOD_LINES = {m: m.encode() + b" " for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")}


class NativeTransport:
    """HTTP/1.1 to the targets of one upstream; one :class:`Pool` per target."""

    name = "native"

    def __init__(self, config: Upstream) -> None:
        self.config = config
        self._pools: dict[tuple[str, str, int], Pool] = {}
        self._last: Pool | None = None
        self._ssl: ssl.SSLContext | None = None

    def send(self, request: UpstreamRequest) -> Awaitable[Response]:
        return self.prepare(request).response()

    def prepare(self, request: UpstreamRequest) -> Outgoing:
        """``request`` encoded for the wire, to send now or once a decision admits it."""
        target = request.target
        pool = self._last
        if pool is None or pool.target is not target:
            pool = self._pool(target)
        body = request.body
        headers = request.headers
        method = request.method
        lines = [
            _METHOD_LINES.get(method) or method.encode() + b" ",
            request.path,
            b" HTTP/1.1\r\n",
        ]
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
        stream: ByteStream | None = None
        chunked = False
        tail: bytes | None = None
        if isinstance(body, bytes):
            if body and _unframed(headers):
                lines.append(b"content-length: %d\r\n" % len(body))
            lines.append(b"\r\n")
            if len(body) <= SMALL_BODY:
                lines.append(body)
            else:
                tail = body
        elif body is None:
            lines.append(b"\r\n")
        else:
            stream = body
            if find_header(headers, b"content-length") is None:
                chunked = True
                encoding = find_header(headers, b"transfer-encoding")
                if encoding is None or b"chunked" not in encoding.lower():
                    lines.append(_CHUNKED_HEADER)
            lines.append(b"\r\n")
        accept: bytes | None = None
        if request.upgrade:
            keys = find_all(headers, b"sec-websocket-key")
            if len(keys) == 1:  # else no 101 can answer it (RFC 6455 4.2.1)
                accept = websocket_accept(keys[0])
        return Outgoing(pool, request, b"".join(lines), tail, stream, chunked, accept)

    async def close(self) -> None:
        pools = list(self._pools.values())
        self._pools.clear()
        self._last = None
        for pool in pools:
            await pool.close()

    def _pool(self, target: Target) -> Pool:
        key = (target.scheme, target.host, target.port)
        pool = self._pools.get(key)
        if pool is None:
            context = None
            if target.scheme == "https":
                if self._ssl is None:
                    self._ssl = _ssl_context(self.config.verify_tls)
                context = self._ssl
            pool = Pool(target, self.config, context, asyncio.get_running_loop())
            self._pools[key] = pool
        self._last = pool
        return pool


class Outgoing:
    """One request encoded for the wire: written by :meth:`fire` or by :meth:`response`.

    ``NativeTransport.send`` is ``prepare(request).response()``. A policy that waits for
    a decision before the request may go (a rate limiter's Redis call) prepares it first
    and fires it from the callback that reads an admitting reply: the request goes
    upstream the moment it is admitted, not after the request's task has woken up and
    come down the chain. ``response`` then awaits the answer, and writes the request
    itself if it was not fired.
    """

    __slots__ = (
        "accept", "chunked", "conn", "data", "deadline", "dropped", "fired_at", "head",
        "pool", "skip_body", "stream", "tail", "timeouts", "upgrade",
    )  # fmt: skip

    def __init__(
        self,
        pool: Pool,
        request: UpstreamRequest,
        data: bytes,
        tail: bytes | None,
        stream: ByteStream | None,
        chunked: bool,
        accept: bytes | None,
    ) -> None:
        self.pool = pool
        self.data = data
        self.tail = tail
        self.stream = stream
        self.chunked = chunked
        self.deadline = INF  # timeouts.total from the first write (fire or response)
        self.accept = accept
        self.timeouts = request.timeouts
        self.skip_body = request.method == "HEAD"
        self.upgrade = request.upgrade
        self.conn: Connection | None = None
        self.head: asyncio.Future[Incoming] | None = None
        self.fired_at = 0.0  # perf_counter() when written by fire
        self.dropped = False

    def fire(self) -> bool:
        """Write the request now, on an idle keep-alive connection. False when none is
        idle (``response`` connects or waits), when it was already written, and once
        it was dropped. Only for a request without a streamed body: a stream is sent
        by ``response``."""
        if self.dropped or self.head is not None or self.stream is not None:
            return False
        pool = self.pool
        now = pool.loop.time()
        conn = pool.take_idle(now)
        if conn is None:
            return False
        self._start(now)
        try:
            self._begin(conn, now)
        except Exception:
            # Not written after all: the connection is given up, ``response`` starts over.
            self.conn = self.head = None
            conn.abort()
            raise
        self.fired_at = time.perf_counter()
        return True

    def _start(self, now: float) -> None:
        """The exchange starts now: ``timeouts.total`` counts from here, not from the
        request's preparation (a limiter's wait for its store is not the upstream's)."""
        total = self.timeouts.total
        if total is not None:
            self.deadline = now + total

    def drop(self) -> None:
        """The request will not be awaited (refused, or its client went away): it is
        never written from now on, and if it was, its connection is given up."""
        self.dropped = True
        conn, head = self.conn, self.head
        if conn is not None and head is not None:
            conn.cancel(head)

    def _begin(self, conn: Connection, now: float) -> asyncio.Future[Incoming]:
        self.conn = conn
        head = self.head = conn.begin(
            self.data, self.skip_body, self.upgrade, self.timeouts.read, self.deadline, now,
            self.accept,
        )  # fmt: skip
        if self.tail is not None:
            conn.transport.write(self.tail)
        return head

    async def response(self) -> Response:
        """The response's head (its body streaming when it has not all arrived). A
        reused connection that closes before any byte of the answer is retried once on
        a fresh one, unless a streamed body was partly consumed."""
        pool = self.pool
        conn, head = self.conn, self.head
        if conn is None or head is None:
            now = pool.loop.time()
            self._start(now)
            conn = pool.take_idle(now)
            if conn is None:
                conn = await pool.acquire(self.deadline, self.timeouts.connect, False)
                now = pool.loop.time()
            head = self._begin(conn, now)
        retried = False
        while True:
            consumed = False
            try:
                if self.stream is not None:
                    consumed = await _upload(conn, self.stream, self.chunked)
                incoming = await head
            except Stale:
                if retried or consumed:
                    raise UpstreamConnectError(
                        f"{pool.key}: keep-alive connection closed before any response"
                    ) from None
                retried = True
                conn = await pool.acquire(self.deadline, self.timeouts.connect, True)
                head = self._begin(conn, pool.loop.time())
                continue
            except BaseException:
                conn.cancel(head)
                raise
            break
        return _response(incoming)


def _response(incoming: Incoming) -> Response:
    if not incoming.complete:
        return Response(incoming.status, incoming.headers, stream=incoming, reason=incoming.reason)
    if incoming.upgraded is not None:
        return Response(101, incoming.headers, reason=incoming.reason, upgraded=incoming.upgraded)
    chunks = incoming.chunks
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return Response(incoming.status, incoming.headers, body, reason=incoming.reason)


async def _upload(conn: Connection, stream: ByteStream, chunked: bool) -> bool:
    """Send a streamed request body; returns whether any of it was consumed.

    Stops early when the upstream answers (or goes away) before the body is complete;
    the connection is then not reused, since the upstream's view of it is unknown.
    """
    head = conn.head
    assert head is not None
    conn.must_close = True  # until the whole body is out, the connection is not reusable
    conn.sending = True
    consumed = False
    iterator = stream.__aiter__()
    try:
        while not (conn.ended or head.done()):
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                if chunked:
                    conn.transport.write(b"0\r\n\r\n")
                conn.must_close = False
                break
            consumed = True
            if conn.ended or head.done():
                break
            if not chunk:
                continue
            conn.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            if conn.write_paused:
                conn.sending = False
                conn.last_io = conn.loop.time()
                await conn.drain()
                conn.sending = True
    finally:
        conn.sending = False
        conn.last_io = conn.loop.time()
    return consumed


def _unframed(headers: Headers) -> bool:
    return (
        find_header(headers, b"content-length") is None
        and find_header(headers, b"transfer-encoding") is None
    )


def _ssl_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context
