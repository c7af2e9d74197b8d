"""The connections to one target: a bounded pool with a LIFO stack of idle keep-alive ones.

``size`` counts slots: connections being opened, busy, or idle. At ``max_connections``
a request waits (bounded by its connect timeout) for a slot or a connection to be handed
over directly by :meth:`Pool.release`. The most recently used idle connection is reused
first (it is the most likely to be alive and warm); the oldest are closed by one sweep
timer once they sit idle longer than ``idle_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque

from gateway.config.models import Upstream
from gateway.errors import UpstreamConnectError, UpstreamConnectTimeout, UpstreamTimeout
from gateway.transport.base import Target
from gateway.transport.native_conn import SLACK, Connection

#: How long closing the transport waits for its connections to report closed.
CLOSE_WAIT = 1.0


class Pool:
    __slots__ = (
        "closed",
        "closing",
        "conns",
        "idle",
        "idle_timeout",
        "key",
        "limit",
        "loop",
        "max_requests",
        "size",
        "ssl",
        "sweeper",
        "target",
        "waiters",
    )

    def __init__(
        self,
        target: Target,
        config: Upstream,
        ssl_context: ssl.SSLContext | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.target = target
        self.key = target.key
        self.loop = loop
        self.ssl = ssl_context
        self.limit = config.pool.max_connections
        self.idle_timeout = config.pool.idle_timeout
        self.max_requests = config.pool.max_requests
        self.idle: list[Connection] = []  # oldest first; reuse pops the newest
        self.size = 0
        self.waiters: deque[asyncio.Future[Connection | None]] = deque()
        self.conns: set[Connection] = set()  # every open connection, upgraded ones included
        self.sweeper: asyncio.TimerHandle | None = None
        self.closing: asyncio.Future[None] | None = None
        self.closed = False

    def take_idle(self, now: float) -> Connection | None:
        """The most recently used idle connection still fit for reuse, if any."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            conn.idle = False
            if now - conn.idle_since < self.idle_timeout and conn.usable():
                return conn
            conn.close()
        return None

    async def acquire(self, deadline: float, connect_timeout: float, fresh: bool) -> Connection:
        """A connection to send on: an idle one (unless ``fresh``), a new one, or a wait."""
        loop = self.loop
        while True:
            now = loop.time()
            if not fresh:
                conn = self.take_idle(now)
                if conn is not None:
                    return conn
            if self.closed:
                raise UpstreamConnectError(f"{self.key}: the transport is closed")
            if self.size >= self.limit and self.idle:
                self.idle[0].close()  # a fresh connection wanted: make room by the oldest idle
            if self.size < self.limit:
                self.size += 1
                return await self.connect(deadline, connect_timeout)
            got = await self._wait(now, deadline, connect_timeout)
            if got is None:
                return await self.connect(deadline, connect_timeout)
            if got.usable():
                return got
            got.abort()  # handed over, but closed before we ran: its slot is freed

    async def connect(self, deadline: float, connect_timeout: float) -> Connection:
        """Open a connection in a slot already counted in ``size``."""
        loop = self.loop
        target = self.target
        budget = deadline - loop.time()
        timeout = connect_timeout if connect_timeout < budget else budget
        conn = Connection(self, loop)
        try:
            if timeout <= 0:
                raise TimeoutError
            async with asyncio.timeout(timeout):
                transport, _ = await loop.create_connection(
                    lambda: conn,
                    target.host,
                    target.port,
                    ssl=self.ssl,
                    server_hostname=target.host if self.ssl is not None else None,
                )
        except BaseException as exc:
            self._free_slot()
            conn.ended = True  # connection_made, if it still comes, closes the transport
            if conn.made:
                conn.transport.abort()
            if isinstance(exc, TimeoutError):
                raise UpstreamConnectTimeout(
                    f"{self.key}: connect timed out after {max(timeout, 0):g}s"
                ) from exc
            if isinstance(exc, OSError):
                why = str(exc) or type(exc).__name__
                raise UpstreamConnectError(f"{self.key}: connect failed: {why}") from exc
            raise
        if conn.ended:  # closed by the upstream before we got to use it
            self._free_slot()
            raise UpstreamConnectError(f"{self.key}: connection closed right after connect")
        conn.transport = transport
        conn.in_pool = True
        self.conns.add(conn)
        return conn

    def release(self, conn: Connection) -> None:
        """A keep-alive connection is free: hand it to a waiter, or push it on the stack."""
        if self.closed:
            conn.close()
            return
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle = True
        conn.idle_since = conn.last_io
        self.idle.append(conn)
        if self.sweeper is None:
            self.sweeper = self.loop.call_at(conn.idle_since + self.idle_timeout, self._sweep)

    def drop(self, conn: Connection) -> None:
        """``conn`` will not be reused: take it off the stack and free its slot (idempotent)."""
        if conn.idle:
            conn.idle = False
            self.idle.remove(conn)
        if conn.in_pool:
            conn.in_pool = False
            self._free_slot()

    def lost(self, conn: Connection) -> None:
        self.drop(conn)
        self.conns.discard(conn)
        closing = self.closing
        if closing is not None and not self.conns and not closing.done():
            closing.set_result(None)

    async def close(self) -> None:
        """Fail the waiters, close every connection, and wait (briefly) until they are."""
        self.closed = True
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamConnectError(f"{self.key}: the transport is closed"))
        for conn in list(self.conns):
            conn.abort()
        if self.conns:
            self.closing = self.loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing, CLOSE_WAIT)

    def _free_slot(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter, who connects
                return
        self.size -= 1

    async def _wait(self, now: float, deadline: float, connect_timeout: float) -> Connection | None:
        budget = deadline - now
        timeout = connect_timeout if connect_timeout < budget else budget
        if timeout <= 0:
            raise UpstreamTimeout(f"{self.key}: no response within the total timeout")
        waiter: asyncio.Future[Connection | None] = self.loop.create_future()
        self.waiters.append(waiter)
        timer = self.loop.call_at(now + timeout, self._expire, waiter, timeout)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                got = waiter.result()  # handed something just as we were cancelled
                if got is None:
                    self._free_slot()
                else:
                    self.release(got)
            raise
        finally:
            timer.cancel()

    def _expire(self, waiter: asyncio.Future[Connection | None], timeout: float) -> None:
        if not waiter.done():
            waiter.set_exception(
                UpstreamTimeout(
                    f"{self.key}: all {self.limit} connections busy for {timeout:g}s "
                    "(pool.max_connections)"
                )
            )

    def _sweep(self) -> None:
        self.sweeper = None
        idle = self.idle
        limit = self.loop.time() - self.idle_timeout + SLACK
        expired = 0
        while expired < len(idle) and idle[expired].idle_since <= limit:
            expired += 1
        if expired:
            old = idle[:expired]
            del idle[:expired]
            for conn in old:
                conn.idle = False
                conn.close()
        if idle:
            self.sweeper = self.loop.call_at(idle[0].idle_since + self.idle_timeout, self._sweep)
