"""One upstream HTTP/1.1 connection: an asyncio protocol around httptools' response parser.

A :class:`Connection` carries one exchange at a time. ``begin`` writes the request head
(and a small body) in one write and returns a future that resolves with the response,
an :class:`Incoming`, as soon as its head has been parsed. The body keeps arriving into
that object, which is also the response's ``stream``. Once the upstream has sent the
whole response, the connection goes back to its pool (or is closed: ``Connection:
close``, HTTP/1.0 without keep-alive, ``max_requests``) even if the consumer has not read
the body yet, so a slow client never pins a keep-alive connection the upstream is done
with. Reading pauses while the consumer holds more than :data:`HIGH_WATER` unread bytes.

Timeouts use one lazy timer per connection rather than one per request: the timer fires
at the earliest possible expiry and re-arms itself from the time of the last byte, so a
busy keep-alive connection re-arms about once per read timeout, not once per request.
Time spent waiting on our side (a paused consumer, a slow request body) never counts
against the upstream's read timeout.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import TYPE_CHECKING, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from gateway.errors import (
    UpstreamBodyError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from gateway.transport.native_streams import HIGH_WATER, Incoming, Upgraded
from gateway.types import Headers

if TYPE_CHECKING:
    from gateway.transport.native_pool import Pool

#: Timers may fire up to a clock tick early; deadlines closer than this count as reached.
SLACK = 0.001
INF = float("inf")
#: RFC 6455 4.2.2: the GUID appended to Sec-WebSocket-Key before hashing.
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Stale(Exception):
    """A reused connection closed before any byte of the response arrived."""


class _Abort(Exception):
    """Raised inside a parser callback to stop parsing; the reason is in ``failure``."""


class Connection(asyncio.Protocol):
    """One connection to a target; carries one request/response exchange at a time."""

    __slots__ = (
        "busy",
        "coding",
        "current",
        "deadline",
        "drain_waiter",
        "ended",
        "failure",
        "fresh_parser",
        "got_bytes",
        "head",
        "headers",
        "idle",
        "idle_since",
        "in_head",
        "in_pool",
        "last_io",
        "loop",
        "made",
        "must_close",
        "parser",
        "paused",
        "pool",
        "read_timeout",
        "reason",
        "requests",
        "sending",
        "skip_body",
        "timer",
        "timer_at",
        "transport",
        "upgraded",
        "want_accept",
        "want_upgrade",
        "write_paused",
    )

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.parser = HttpResponseParser(self)
        self.transport: asyncio.Transport  # set by connection_made
        self.made = False
        self.ended = False  # closing, closed or EOF seen: never start another exchange
        self.in_pool = False  # holds one of the pool's slots
        self.idle = False  # sits in the pool's idle stack
        self.idle_since = 0.0
        self.requests = 0
        self.busy = False  # an exchange is in progress (until the response is complete)
        self.got_bytes = False
        self.skip_body = False
        self.want_upgrade = False
        self.want_accept: bytes | None = None
        self.must_close = False
        self.fresh_parser = False
        self.head: asyncio.Future[Incoming] | None = None
        self.current: Incoming | None = None
        self.reason = b""
        self.headers: Headers = []
        self.in_head = False  # between on_message_begin and on_headers_complete
        self.coding: bytes | None = None  # Transfer-Encoding, repeated fields joined
        self.failure: str | None = None
        self.paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.read_timeout = 0.0
        self.deadline = INF
        self.last_io = 0.0
        self.sending = False
        self.upgraded: Upgraded | None = None

    # --- the exchange -----------------------------------------------------------------

    def begin(
        self,
        data: bytes,
        skip_body: bool,
        upgrade: bool,
        read_timeout: float,
        deadline: float,
        now: float,
        accept: bytes | None = None,
    ) -> asyncio.Future[Incoming]:
        """Write the request head (and small body); the future resolves with the response.

        ``upgrade`` says the request is a WebSocket upgrade; ``accept`` is the
        ``Sec-WebSocket-Accept`` a ``101`` to it must carry (:func:`websocket_accept`)."""
        if self.fresh_parser:
            self.parser = HttpResponseParser(self)
            self.fresh_parser = False
        head: asyncio.Future[Incoming] = self.loop.create_future()
        self.head = head
        self.busy = True
        self.got_bytes = False
        self.skip_body = skip_body
        self.want_upgrade = upgrade
        self.want_accept = accept
        self.must_close = False
        self.failure = None
        self.requests += 1
        self.read_timeout = read_timeout
        self.deadline = deadline
        self.last_io = now
        at = now + read_timeout
        if deadline < at:
            at = deadline
        timer = self.timer
        if timer is None or self.timer_at > at:
            if timer is not None:
                timer.cancel()
            self.timer = self.loop.call_at(at, self._on_timer)
            self.timer_at = at
        self.transport.write(data)
        return head

    def abandon(self, incoming: Incoming) -> None:
        """The consumer stopped reading a body before its end: drop the connection."""
        if self.current is incoming:
            self.current = None
            self.busy = False
            self.abort()

    def cancel(self, head: asyncio.Future[Incoming]) -> None:
        """The exchange of ``head`` was given up (cancelled, or its request body failed).

        If its response had already fully arrived, the connection went back to the pool
        and may carry another exchange by now: it is left alone.
        """
        if head.done() and not head.cancelled():
            head.exception()  # retrieved: never logged as unhandled
        if self.head is head and self.busy:
            self.busy = False
            self.current = None
            self.abort()

    def close(self) -> None:
        """Close gracefully; the pool slot is freed at once."""
        self.pool.drop(self)
        if not self.ended:
            self.ended = True
            self.transport.close()

    def abort(self) -> None:
        self.pool.drop(self)
        if not self.ended:
            self.ended = True
            self.transport.abort()

    # --- flow control ---------------------------------------------------------------

    def pause(self) -> None:
        self.paused = True
        self.transport.pause_reading()

    def resume(self) -> None:
        self.paused = False
        self.last_io = self.loop.time()
        if not self.ended:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        if self.write_paused and not self.ended:
            waiter = self.loop.create_future()
            self.drain_waiter = waiter
            try:
                await waiter
            finally:
                self.drain_waiter = None

    # --- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.made = True
        if self.ended:  # the connect was given up (timed out, cancelled) before this ran
            self.transport.abort()

    def usable(self) -> bool:
        return not self.ended and not self.transport.is_closing()

    def eof_received(self) -> None:
        self.ended = True  # the transport closes itself; connection_lost follows

    def data_received(self, data: bytes) -> None:
        upgraded = self.upgraded
        if upgraded is not None:
            upgraded.feed(data)
            return
        if not self.busy:  # bytes nobody asked for: the connection is out of step
            self.close()
            return
        self.got_bytes = True
        self.last_io = self.loop.time()
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._upgrade(data[exc.args[0] :])
        except HttpParserError as exc:
            reason = self.failure or f"invalid response: {exc}"
            self._fail(UpstreamProtocolError, f"{self.pool.key}: {reason}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        timer = self.timer
        if timer is not None:
            timer.cancel()
            self.timer = None
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.pool.lost(self)
        if self.upgraded is not None:
            self.upgraded.lost()
            return
        if not self.busy:
            return
        self.busy = False
        incoming, self.current = self.current, None
        head = self.head
        key = self.pool.key
        if head is not None and not head.done():
            if self.got_bytes:
                head.set_exception(
                    UpstreamProtocolError(f"{key}: connection closed inside the response head")
                )
            elif self.requests > 1:
                head.set_exception(Stale())
            else:
                why = f": {exc}" if exc is not None else ""
                head.set_exception(
                    UpstreamConnectError(f"{key}: connection closed before any response{why}")
                )
        elif incoming is not None:
            if exc is None and _close_delimited(incoming.headers):
                incoming.conn = None
                incoming.complete = True
                incoming.wake()
            else:
                why = f": {exc}" if exc is not None else ""
                incoming.fail(UpstreamBodyError(f"{key}: connection closed mid-body{why}"))

    # --- httptools callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self.busy:
            self.failure = "bytes after the end of the response"
            raise _Abort
        self.reason = b""
        self.headers = []
        self.in_head = True
        self.coding = None

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            return  # a trailer field: dropped, never merged into the head (RFC 9110 6.5.1)
        self.headers.append((name, value))
        if len(name) == 17 and name.lower() == b"transfer-encoding":
            coding = self.coding
            self.coding = value if coding is None else coding + b"," + value

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        status: int = parser.get_status_code()
        if status < 100 or status > 599:
            self.failure = f"status {status} is outside 100-599"
            raise _Abort
        coding = self.coding
        if (
            coding is not None
            and coding.lower() != b"chunked"
            # A 1xx, 204 or 304 has no body, nor has an answer to HEAD: nothing to decode.
            and not (self.skip_body or status < 200 or status == 204 or status == 304)
        ):
            self._check_codings(coding)
        if status < 200:
            if status != 101:
                return  # interim (100 Continue, 102, 103): skipped
            if not self.want_upgrade:
                self.failure = "101 Switching Protocols to a request that did not ask to upgrade"
                raise _Abort
            if not parser.should_upgrade():
                self.failure = "101 Switching Protocols without Upgrade and Connection: upgrade"
                raise _Abort
            self._check_handshake()
            self.current = Incoming(self, 101, self.reason, self.headers)
            return
        incoming = Incoming(self, status, self.reason, self.headers)
        self.current = incoming
        self.deadline = INF  # the total timeout covers the exchange up to the head
        head = self.head
        if head is not None and not head.done():
            head.set_result(incoming)
        if self.skip_body:
            # A HEAD response has no body whatever its headers announce; llhttp cannot be
            # told, so the next exchange on this connection starts with a fresh parser.
            self.fresh_parser = True
            self._complete(incoming, parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        incoming = self.current
        if incoming is None or not body:
            return
        incoming.chunks.append(body)
        incoming.size += len(body)
        waiter = incoming.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if incoming.size > HIGH_WATER and not self.paused:
            self.pause()

    def on_message_complete(self) -> None:
        incoming = self.current
        if incoming is None or incoming.status == 101:
            return  # an interim response, a HEAD already complete, or an upgrade (raised next)
        self._complete(incoming, self.parser.should_keep_alive())

    # --- internals ------------------------------------------------------------------

    def _check_codings(self, coding: bytes) -> None:
        """Refuse a body in a transfer coding other than chunked.

        The gateway decodes none: relayed, the body would reach the client de-chunked
        but still in that coding, with nothing to say so (Transfer-Encoding is
        hop-by-hop and removed)."""
        if _codings(coding) != [b"chunked"]:
            self.failure = f"transfer coding {coding.decode('latin-1')!r} is not decoded"
            raise _Abort

    def _check_handshake(self) -> None:
        """Refuse a ``101`` that does not complete the WebSocket handshake asked for.

        RFC 6455 4.1: ``Upgrade: websocket`` and the ``Sec-WebSocket-Accept`` derived
        from the request's key. Only then has the upstream agreed to the protocol the
        route's policies saw; anything else (``h2c``, a replayed or missing accept) would
        open a tunnel nobody checked."""
        upgrade: bytes | None = None
        accept: bytes | None = None
        accepts = 0
        for name, value in self.headers:
            size = len(name)
            if size == 7 and name.lower() == b"upgrade":
                upgrade = value if upgrade is None else b""
            elif size == 20 and name.lower() == b"sec-websocket-accept":
                accept = value
                accepts += 1
        if upgrade is None or upgrade.strip(b" \t").lower() != b"websocket":
            self.failure = "101 Switching Protocols to something other than websocket"
            raise _Abort
        want = self.want_accept
        if want is None:
            self.failure = "101 Switching Protocols to a WebSocket request without a key"
            raise _Abort
        if accepts != 1 or accept is None or accept.strip(b" \t") != want:
            self.failure = "101 Switching Protocols with a wrong Sec-WebSocket-Accept"
            raise _Abort

    def _complete(self, incoming: Incoming, keep_alive: bool) -> None:
        self.current = None
        self.busy = False
        incoming.conn = None
        incoming.complete = True
        incoming.wake()
        if self.paused:
            self.resume()
        limit = self.pool.max_requests
        if keep_alive and not self.must_close and (not limit or self.requests < limit):
            self.pool.release(self)
        else:
            self.close()

    def _upgrade(self, leftover: bytes) -> None:
        incoming = self.current
        head = self.head
        if incoming is None or incoming.status != 101 or head is None or head.done():
            self._fail(UpstreamProtocolError, f"{self.pool.key}: unexpected protocol upgrade")
            return
        self.current = None
        self.busy = False
        upgraded = Upgraded(self, leftover)
        self.upgraded = upgraded
        incoming.upgraded = upgraded
        incoming.conn = None
        incoming.complete = True
        self.pool.drop(self)  # an upgraded connection leaves the pool for good
        head.set_result(incoming)

    def _fail(self, head_error: type[UpstreamError], message: str) -> None:
        """Fail the exchange in progress: before its head with ``head_error``, else mid-body."""
        if self.busy:
            self.busy = False
            incoming, self.current = self.current, None
            head = self.head
            if head is not None and not head.done():
                head.set_exception(head_error(message))
            elif incoming is not None:
                incoming.fail(UpstreamBodyError(message))
        self.abort()

    def _on_timer(self) -> None:
        self.timer = None
        if not self.busy:
            return
        now = self.loop.time()
        deadline = self.deadline
        key = self.pool.key
        if now + SLACK >= deadline:
            self._fail(UpstreamTimeout, f"{key}: no response within the total timeout")
            return
        if self.paused or self.sending:
            at = now + self.read_timeout  # waiting on our side, not on the upstream
        else:
            at = self.last_io + self.read_timeout
            if now + SLACK >= at:
                waited = f"{self.read_timeout:g}s"
                self._fail(UpstreamTimeout, f"{key}: nothing received for {waited} (read timeout)")
                return
        if deadline < at:
            at = deadline
        self.timer = self.loop.call_at(at, self._on_timer)
        self.timer_at = at


def websocket_accept(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` that answers ``Sec-WebSocket-Key`` ``key`` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.strip(b" \t") + WS_GUID).digest())


def _codings(value: bytes) -> list[bytes]:
    """The transfer codings a Transfer-Encoding value lists, lower-cased, empty ones left out."""
    return [c for c in (part.strip(b" \t").lower() for part in value.split(b",")) if c]


def _close_delimited(headers: Headers) -> bool:
    """Whether a response body ends at EOF (no Content-Length, not chunked)."""
    for name, value in headers:
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            return False
        if size == 17 and name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
            return False
    return True
