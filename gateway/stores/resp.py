"""A small RESP2 client for one Redis server: the Redis store's hot path.

redis-py's asyncio client costs 50-120 µs of CPU per command in this process; this one
(3-11 µs) does what the store needs and nothing else. One connection carries every
command, pipelined: a command is encoded into one buffer, its future waits in a FIFO
deque, and an incremental parser (:class:`RespParser`) answers the futures in the order
the replies arrive. On an idle connection a command is written at once, with one
``transport.write``; while others are in flight, the commands of one loop iteration are
joined and written together at its end (one system call per iteration under load).
One connection measured as fast as two or four at 64 concurrent callers.

Timeouts use one lazy timer per connection, not one per call. Every command gets the
client's ``timeout``, so deadlines grow along the deque and the oldest pending command
is always the next to expire: the timer is armed at its deadline, and when it fires with
that command answered it re-arms at the new oldest's (or, with nothing pending, stays
off until the next command). A command that times out aborts its connection: every
command still pending on it fails, since a late reply must never answer the next caller,
and the next call reconnects.

Errors: every failure raises :class:`gateway.errors.StoreError`. An error reply
(``-ERR ...``, ``-NOSCRIPT ...``) raises its subclass :class:`ReplyError`, and leaves the
connection in step; a timeout, a lost connection, a refused connect or AUTH, or bytes
that are not RESP fail every pending command and drop the connection. The connect
(with ``AUTH`` and ``SELECT`` when the address asks) is bounded by the same timeout, and
shared by the calls that arrive while it is in progress.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import cast

from gateway.errors import ReplyError, StoreError
from gateway.stores.resp_codec import Arg, ProtocolError, Reply, RespParser, bulks, encode

log = logging.getLogger("gateway.stores")

#: Timers may fire up to a clock tick early; deadlines closer than this count as reached.
SLACK = 0.001
#: Longest ``close`` waits for the transport to report closed.
CLOSE_WAIT = 1.0
#: Script argument lists kept encoded per client (started over when full).
ENCODED_KEPT = 256


@dataclass(frozen=True)
class Address:
    """Where one Redis server is and how to log in to it."""

    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


# --- the connection ---------------------------------------------------------------------


def _fail(future: asyncio.Future[Reply], exc: Exception) -> None:
    """Fail ``future`` with ``exc``, marked as retrieved: a caller that awaits it still
    gets ``exc`` raised, and a call nobody awaits (a rate limiter's call sent as its
    request was routed, whose client then left) is not logged as never retrieved."""
    future.set_exception(exc)
    future.exception()


def _call_hook(hook: Callable[[Reply], None], reply: Reply) -> None:
    """A reply's hook, from the read callback: its failure is logged, and the replies
    after it are still answered."""
    try:
        hook(reply)
    except Exception:
        log.exception("a store reply's hook failed")


class _Connection(asyncio.Protocol):
    """One connection; pending commands wait in ``waiters``, deadlines in ``deadlines``."""

    __slots__ = (
        "batch",
        "client",
        "closed",
        "deadlines",
        "fallbacks",
        "hooks",
        "loop",
        "lost",
        "made",
        "parser",
        "timeout",
        "timer",
        "transport",
        "waiters",
    )

    def __init__(self, client: RespClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.timeout = client.timeout
        self.parser = RespParser()
        self.waiters: deque[asyncio.Future[Reply]] = deque()
        self.deadlines: deque[float] = deque()
        # Per waiter: the command to send instead if the reply is NOSCRIPT (an EVAL for
        # an EVALSHA), so that a script call needs no coroutine around its future.
        self.fallbacks: deque[tuple[Arg, ...] | None] = deque()
        # Per waiter, when its caller asked (``RespClient.on_reply``): what to call with
        # the reply from this callback, before its future resolves.
        self.hooks: dict[asyncio.Future[Reply], Callable[[Reply], None]] = {}
        self.batch: list[bytes] = []  # commands to write at the end of this loop iteration
        self.timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport  # set by connection_made
        self.made = False
        self.closed = False  # failing, closing or closed: never send on it again
        self.lost: asyncio.Future[None] = loop.create_future()

    def send(self, data: bytes, fallback: tuple[Arg, ...] | None = None) -> asyncio.Future[Reply]:
        """Write one encoded command; the future resolves with its reply.

        On an idle connection the command is written at once. With commands already in
        flight it joins the others sent in this loop iteration, written together at its
        end: one system call per iteration under load instead of one per command.
        ``fallback``: the command sent in its place if Redis answers NOSCRIPT; the
        future then resolves with the fallback's reply.
        """
        future: asyncio.Future[Reply] = self.loop.create_future()
        self._queue(data, future, fallback)
        return future

    def _queue(
        self, data: bytes, future: asyncio.Future[Reply], fallback: tuple[Arg, ...] | None
    ) -> None:
        loop = self.loop
        deadline = loop.time() + self.timeout
        waiters = self.waiters
        if waiters:
            batch = self.batch
            if not batch:
                loop.call_soon(self._write_batch)
            batch.append(data)
        else:
            self.transport.write(data)
        waiters.append(future)
        self.deadlines.append(deadline)
        self.fallbacks.append(fallback)
        if self.timer is None:
            self.timer = loop.call_at(deadline, self._on_timer)

    def fail(self, message: str) -> None:
        """Drop the connection: fail every pending command with StoreError(message)."""
        if not self.closed:
            self.closed = True
            if self.made:
                self.transport.abort()
        self._fail_pending(message)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.made:
                self.transport.close()
        self._fail_pending(f"{self.client.where}: the store was closed")

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.made = True
        if self.closed:  # the connect was given up before this ran
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        try:
            replies = self.parser.feed(data)
        except ProtocolError as exc:
            self.fail(f"{self.client.where}: {exc}")
            return
        waiters = self.waiters
        deadlines = self.deadlines
        fallbacks = self.fallbacks
        for reply in replies:
            if not waiters:
                self.fail(f"{self.client.where}: a reply nobody asked for")
                return
            future = waiters.popleft()
            deadlines.popleft()
            fallback = fallbacks.popleft()
            if future.done():  # its caller was cancelled
                if self.hooks:
                    self.hooks.pop(future, None)
                continue
            if type(reply) is ReplyError:
                if fallback is not None and reply.code == "NOSCRIPT" and not self.closed:
                    self._queue(encode(fallback), future, None)  # replies keep their order
                    continue
                if self.hooks:
                    self.hooks.pop(future, None)
                _fail(future, reply)
            else:
                if self.hooks:
                    hook = self.hooks.pop(future, None)
                    if hook is not None:
                        _call_hook(hook, reply)
                future.set_result(reply)

    def eof_received(self) -> None:
        self.closed = True  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        timer = self.timer
        if timer is not None:
            timer.cancel()
            self.timer = None
        why = f": {exc}" if exc is not None else ""
        self._fail_pending(f"{self.client.where}: connection lost{why}")
        if not self.lost.done():
            self.lost.set_result(None)

    # --- internals ----------------------------------------------------------------------

    def _on_timer(self) -> None:
        self.timer = None
        deadlines = self.deadlines
        if not deadlines or self.closed:
            return
        at = deadlines[0]
        if self.loop.time() + SLACK >= at:
            self.fail(f"{self.client.where}: timed out after {self.timeout:g}s")
            return
        self.timer = self.loop.call_at(at, self._on_timer)

    def _write_batch(self) -> None:
        batch = self.batch
        if not self.closed and batch:
            self.transport.write(b"".join(batch))
        batch.clear()

    def _fail_pending(self, message: str) -> None:
        self.batch.clear()
        self.hooks.clear()
        waiters = self.waiters
        self.deadlines.clear()
        self.fallbacks.clear()
        while waiters:
            future = waiters.popleft()
            if not future.done():
                _fail(future, StoreError(message))


# --- the client -------------------------------------------------------------------------


class RespClient:
    """Commands to one Redis server over one pipelined connection, opened on first use."""

    def __init__(
        self, name: str, address: Address, timeout: float, ssl_context: ssl.SSLContext | None
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.where = f"store {name!r} (redis {address})"
        self._ssl = ssl_context if address.tls else None
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._encoded: dict[int, tuple[Sequence[Arg], bytes]] = {}  # see call_script

    def call(self, *args: Arg) -> Awaitable[Reply]:
        """Send one command; the awaitable gives its reply or raises StoreError.

        On an open connection this writes at once and returns the reply's future; else it
        returns a coroutine that connects first.
        """
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn.send(encode(args))
        return self._connect_and_call(encode(args), None)

    def call_script(
        self, sha: bytes, script: bytes, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> Awaitable[Reply]:
        """``EVALSHA sha``; if Redis no longer knows the script (restarted, flushed), the
        connection sends ``EVAL script`` in its place, which also caches it again."""
        data, fallback = self._script_command(sha, script, keys, args)
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn.send(data, fallback)
        return self._connect_and_call(data, fallback)

    def start_script(
        self, sha: bytes, script: bytes, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> asyncio.Future[Reply] | None:
        """:meth:`call_script` written now, on an open connection: the reply's future;
        None when there is no open connection (``call_script`` connects first)."""
        conn = self._conn
        if conn is None or conn.closed:
            return None
        data, fallback = self._script_command(sha, script, keys, args)
        return conn.send(data, fallback)

    def on_reply(self, future: asyncio.Future[Reply], hook: Callable[[Reply], None]) -> bool:
        """Have ``hook(reply)`` called from the read callback that parses ``future``'s
        reply, just before the future resolves with it: what the caller does next can
        start there, not once its task has woken up. Not called for an error reply, or
        when the call fails or times out; a NOSCRIPT answered by its ``EVAL`` calls it
        with the ``EVAL``'s reply. False when ``future`` is not a pending call on the
        open connection (it is done, or the connection is not open)."""
        conn = self._conn
        if conn is None or conn.closed or future.done():
            return False
        conn.hooks[future] = hook
        return True

    def _script_command(
        self, sha: bytes, script: bytes, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> tuple[bytes, tuple[Arg, ...]]:
        """``EVALSHA``, encoded, and the ``EVAL`` sent in its place on NOSCRIPT."""
        params = (len(keys), *keys, *args)
        fallback = (b"EVAL", script, *params)
        # A caller passes the same arguments object call after call (a limiter's rate and
        # burst): they are encoded once.
        memo = self._encoded.get(id(args))
        if memo is not None and memo[0] is args:
            encoded_args = memo[1]
        else:
            encoded_args = bulks(args)
            if len(self._encoded) >= ENCODED_KEPT:
                self._encoded.clear()
            self._encoded[id(args)] = (args, encoded_args)
        data = b"*%d\r\n$7\r\nEVALSHA\r\n%s%s%s" % (
            3 + len(keys) + len(args),
            bulks((sha, len(keys))),
            bulks(keys),
            encoded_args,
        )
        return data, fallback

    async def close(self) -> None:
        task, self._connecting = self._connecting, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=CLOSE_WAIT)
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            if conn.made:
                await asyncio.wait({conn.lost}, timeout=CLOSE_WAIT)

    # --- connecting ---------------------------------------------------------------------

    async def _connect_and_call(self, data: bytes, fallback: tuple[Arg, ...] | None) -> Reply:
        task = self._connecting
        if task is None:
            task = asyncio.get_running_loop().create_task(self._open())
            task.add_done_callback(self._connected)
            self._connecting = task
        try:
            conn = await asyncio.shield(task)  # a cancelled caller leaves the connect to others
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this caller was cancelled
            raise StoreError(f"{self.where}: the store was closed") from None  # close() did it
        if conn.closed:
            raise StoreError(f"{self.where}: connection lost right after connect")
        return await conn.send(data, fallback)

    def _connected(self, task: asyncio.Task[_Connection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved here: every caller may have gone
            # (the callers that are still waiting get it through the shield)

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        address = self.address
        conn = _Connection(self, loop)
        try:
            async with asyncio.timeout(self.timeout):
                await loop.create_connection(
                    lambda: conn,
                    address.host,
                    address.port,
                    ssl=self._ssl,
                    server_hostname=address.host if self._ssl is not None else None,
                )
                await _login(conn, address)
        except BaseException as exc:
            conn.fail(f"{self.where}: connect given up")
            if isinstance(exc, TimeoutError):
                raise StoreError(
                    f"{self.where}: connect timed out after {self.timeout:g}s"
                ) from exc
            if isinstance(exc, ReplyError):
                raise StoreError(f"{self.where}: login refused: {exc}") from exc
            if isinstance(exc, OSError):
                raise StoreError(f"{self.where}: connect failed: {exc}") from exc
            raise
        self._conn = conn
        return conn


async def _login(conn: _Connection, address: Address) -> None:
    """AUTH and SELECT, pipelined, when the address asks; ReplyError if refused."""
    commands: list[tuple[Arg, ...]] = []
    if address.password is not None:
        if address.username:
            commands.append((b"AUTH", address.username, address.password))
        else:
            commands.append((b"AUTH", address.password))
    if address.db:
        commands.append((b"SELECT", address.db))
    replies = [conn.send(encode(command)) for command in commands]
    try:
        for reply in replies:
            await reply
    finally:
        for reply in replies:  # after a failure: none left unretrieved
            if not reply.done():
                reply.cancel()
            elif not reply.cancelled():
                reply.exception()
