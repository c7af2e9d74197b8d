"""One client connection of the native front-end: parsing, limits, order and lifecycle.

The parser (httptools) runs ahead of the handler: every complete request head becomes a
:class:`Pending` in a queue, and the connection's one task serves the queue in order,
so pipelined responses never overtake each other. Reading pauses when the queue, a
request body or an upgrade's early bytes pile up. Anything malformed is answered 400
(or the limit's own status) with ``Connection: close`` after the responses already
owed, and parsing stops: the front-end never guesses at framing. A client that closes
its side (EOF) is gone, as nginx and uvicorn see it: its request is cancelled.

Timers are deadlines checked by the front-end's reaper (no timer object per request):
``IDLE`` (keep-alive, and a fresh connection's first byte), ``HEAD`` (slowloris: the
whole head within ``header_timeout``, then 408), ``BODY`` (a body reader waiting longer
than ``body_timeout`` for the next bytes: close) and a write stall (the client reading
nothing of a paused response for ``body_timeout``: abort).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from gateway.edge import problem_response
from gateway.exchange import Exchange, Response
from gateway.frontends.common import DRAIN_CUT, finish
from gateway.frontends.host_check import usable_host
from gateway.frontends.native_request import (
    BACKLOG,
    BODY_FULL,
    HIGH_WATER,
    RELAY,
    STOPPED,
    BadTarget,
    ClientGone,
    Pending,
    RequestBody,
    bad_request,
    connect_refusal,
    head_refusal,
    origin_form,
    too_large,
    transfer_coding_refusal,
    unknown_method_refusal,
)
from gateway.frontends.native_send import Relay, whole, write_response, write_whole
from gateway.frontends.trailers import TrailerBound
from gateway.frontends.upgrade_body import BodyAfterUpgrade, framing_head
from gateway.transport.headers import is_websocket

if TYPE_CHECKING:
    from gateway.exchange import Upgraded
    from gateway.frontends.native import NativeFrontend

log = logging.getLogger("gateway")

IDLE, HEAD, BODY = 1, 2, 3
#: Parsed requests queued behind the one being served before reading pauses.
MAX_PIPELINE = 16
#: Unread request body bytes the connection reads and drops to stay alive; closes beyond.
DISCARD_LIMIT = 1024 * 1024
#: Reads larger than this are fed to the parser in slices of this size (head bound).
FEED_SLICE = 16384
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Reject(Exception):
    """Raised from a parser callback; the connection's ``_rejection`` holds the answer."""


class HttpConnection(asyncio.Protocol):
    __slots__ = (
        "_begins", "_body_timeout", "_chunked", "_content_length", "_drain_waiter", "_expect",
        "_head_bytes", "_header_timeout", "_headers", "_host", "_hosts", "_hsize",
        "_keepalive_timeout", "_max_head", "_max_header_size", "_max_headers", "_max_line",
        "_parsing", "_paused", "_rejection", "_splice", "_trailers", "_tunnel", "_upgrade",
        "_url",
        "_wakeup", "closed", "current", "deadline",
        "deadline_kind", "frontend", "in_head", "loop", "owed", "parse_dead", "parser", "peer",
        "queue",
        "relay", "task", "transport", "upgrade_tail", "write_deadline", "write_paused"
    )  # fmt: skip

    def __init__(self, frontend: NativeFrontend) -> None:
        self.frontend = frontend
        self.loop = frontend.loop
        limits = frontend.limits
        self._max_line = limits.max_request_line
        self._max_header_size = limits.max_header_size
        self._max_headers = limits.max_headers
        self._max_head = limits.max_request_line + limits.max_header_size
        self._header_timeout = limits.header_timeout
        self._body_timeout = limits.body_timeout
        self._keepalive_timeout = limits.keepalive_timeout
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.peer = "0.0.0.0"
        self.queue: deque[Pending] = deque()
        self.task: asyncio.Task[None] | None = None
        self.current: Pending | None = None
        self.owed = 0  # answers made in the read callback, not yet handed to the transport
        self.closed = False
        self.deadline = 0.0
        self.deadline_kind = 0
        self.write_deadline = 0.0
        self.write_paused = False
        self.relay: Relay | None = None
        self.upgrade_tail: bytearray | None = None
        self.in_head = False
        self._wakeup: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused = 0
        self.parse_dead = False
        self._parsing: Pending | None = None  # the request whose body is being parsed
        self._begins = 0  # requests begun on this connection (on_message_begin)
        self._rejection: Response | None = None
        self._head_bytes = 0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._hsize = 0
        self._hosts = 0
        self._host = b""
        self._content_length: int | None = None
        self._chunked = False
        self._expect = False
        self._upgrade: bytes | None = None  # the Upgrade field; b"" when there are several
        self._tunnel = False  # the last head was a WebSocket upgrade: relay after its 101
        self._splice = False  # the last head was another upgrade with a body: read it on
        self._trailers = TrailerBound(self._max_header_size)

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = peer[0]
        self.frontend.connections.add(self)
        # A fresh connection has header_timeout to start talking; closed silently after.
        self.set_deadline(IDLE, self._header_timeout)
        self.task = self.loop.create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.frontend.connection_closed(self)
        gone = ClientGone("the client closed the connection")
        parsing = self._parsing
        if parsing is not None and parsing.body is not None:
            parsing.body.fail(gone)
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(gone)
        task = self.task
        if task is not None and not task.done():
            task.cancel()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_deadline = self.loop.time() + self._body_timeout

    def resume_writing(self) -> None:
        self.write_paused = False
        self.write_deadline = 0.0
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def writable(self) -> None:
        """Wait until the transport's write buffer drained below its low-water mark."""
        if self.closed:
            raise ClientGone("the client closed the connection")
        waiter = self._drain_waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self._drain_waiter = None

    def data_received(self, data: bytes) -> None:
        # Attributes that _feed can change are read into locals before a test, never
        # tested in place: the type checker (and the compiled build, which trusts it)
        # would otherwise take the tested value for granted after the call.
        relay = self.relay
        if relay is not None:
            relay.feed(data)
            return
        parse_dead, closed = self.parse_dead, self.closed
        if parse_dead:
            if self.upgrade_tail is not None:
                self.upgrade_tail += data
                if len(self.upgrade_tail) > HIGH_WATER:
                    self.pause(RELAY)
            return
        if len(data) > FEED_SLICE and not closed:
            # A big read may end in a new request's head: feed it in slices so the head
            # bound below sees all but at most one slice of that head.
            view = memoryview(data)
            for start in range(0, len(data), FEED_SLICE):
                if self.parse_dead or self.closed or self.relay is not None:
                    rest = bytes(view[start:])
                    if self.relay is not None:
                        self.relay.feed(rest)
                    elif self.upgrade_tail is not None:
                        self.upgrade_tail += rest
                    break
                self._feed(bytes(view[start : start + FEED_SLICE]))
        else:
            self._feed(data)
        wakeup = self._wakeup
        if wakeup is not None and self.queue:
            self._answer_now()
            if self.queue and not self.closed:
                self._wakeup = None
                wakeup.set_result(None)

    def _feed(self, data: bytes) -> None:
        began_in_head = self.in_head
        while True:
            # Whether this read starts a request: then a method the parser does not know,
            # met in the first request it begins, can be read from its first bytes.
            at_start = not began_in_head and self._parsing is None
            begins = self._begins
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                tunnel = self._tunnel  # a local: see data_received
                if tunnel:
                    self.parse_dead = True
                    self.upgrade_tail = bytearray(data[exc.args[0] :])
                    return
                # Not a WebSocket upgrade: the request goes upstream as a plain one (its
                # Upgrade dropped), so what follows it is its body, then the next request.
                data = data[exc.args[0] :]
                splice = self._splice  # a local: see data_received
                if splice:
                    self._splice = False
                    parser = httptools.HttpRequestParser(BodyAfterUpgrade(self))
                    parser.feed_data(framing_head(None if self._chunked else self._content_length))
                    self.parser = parser
                if data:
                    began_in_head = False
                    continue
                return
            except httptools.HttpParserError as exc:
                first = at_start and self._begins == begins + 1
                self._parse_error(exc, data if first else None)
                return
            if began_in_head and self.in_head:
                # httptools buffers a header line until it ends: bound it here.
                self._head_bytes += len(data)
                if self._head_bytes > self._max_head:
                    detail = f"the request head is larger than {self._max_head} bytes"
                    self._reject(too_large(detail))
            trailers = self._trailers
            if trailers.open and trailers.fed(data):
                self._reject(too_large(trailers.detail()))
            return

    def _parse_error(self, exc: httptools.HttpParserError, read: bytes | None) -> None:
        """``read``: the bytes read, when they begin with the refused request."""
        rejection, self._rejection = self._rejection, None
        if rejection is None:
            if isinstance(exc, httptools.HttpParserCallbackError):
                log.error("native front-end: parser callback failed", exc_info=exc)
            if isinstance(exc, httptools.HttpParserInvalidMethodError):
                rejection = unknown_method_refusal(read, str(exc) or "malformed request")
            else:
                rejection = bad_request(str(exc) or "malformed request")
        self._reject(rejection)

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_head = True
        self._begins += 1
        self._head_bytes = 0
        self._url = b""
        self._headers = []
        self._hsize = 0
        self._hosts = 0
        self._host = b""
        self._content_length = None
        self._chunked = False
        self._expect = False
        self._upgrade = None
        self.deadline_kind = HEAD
        self.deadline = self.loop.time() + self._header_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._max_line:
            detail = f"the request line is longer than {self._max_line} bytes"
            self._raise(problem_response(None, 414, "uri-too-long", "URI Too Long", detail))

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            # A trailer field of a chunked body: dropped, never merged into the header
            # section (RFC 9110 6.5.1), so it reaches neither routing nor the upstream.
            trailers = self._trailers
            if trailers.field(name, value):
                self._raise(too_large(trailers.detail()))
            return
        self._headers.append((name, value))
        size = len(name)
        self._hsize += size + len(value) + 4
        if self._hsize > self._max_header_size:
            self._raise(too_large(f"the header fields exceed {self._max_header_size} bytes"))
        if size == 4:
            if name.lower() == b"host":
                self._hosts += 1
                self._host = value
        elif size == 14:
            if name.lower() == b"content-length":
                self._content_length = int(value)  # httptools checked digits and duplicates
        elif size == 17:
            if name.lower() == b"transfer-encoding":
                refusal = transfer_coding_refusal(value)
                if refusal is not None:
                    self._raise(refusal)
                self._chunked = True
        elif size == 7:
            if name.lower() == b"upgrade":
                self._upgrade = value if self._upgrade is None else b""
        elif size == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self._expect = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.deadline_kind == HEAD:
            self.deadline_kind = 0
        headers = self._headers
        if len(headers) > self._max_headers:
            self._raise(too_large(f"more than {self._max_headers} header fields"))
        parser = self.parser
        version = parser.get_http_version()
        method_raw: bytes = parser.get_method()
        method = _METHODS.get(method_raw)
        if method is None:
            method = method_raw.decode("latin-1")
            if method == "CONNECT":
                self._raise(connect_refusal())
        http11 = version == "1.1"
        upgrade = bool(parser.should_upgrade())
        length = self._content_length
        chunked = self._chunked
        has_body = chunked or (length is not None and length > 0)
        if not http11 or self._hosts != 1 or chunked or (has_body and upgrade):
            websocket = upgrade and is_websocket(self._upgrade)
            refusal = head_refusal(version, self._hosts, chunked, has_body and websocket)
            if refusal is not None:
                self._raise(refusal)
            # Another upgrade is served as a plain request: its body follows the point
            # where httptools stops (see _feed).
            self._splice = has_body and upgrade and not websocket
        if upgrade:
            # Only WebSocket is tunnelled; the forwarding step drops any other Upgrade.
            upgrade = is_websocket(self._upgrade)
        self._tunnel = upgrade
        target = self._url
        host = self._host
        if target[:1] != b"/":
            try:
                target, authority = origin_form(target, method)
            except BadTarget as exc:
                self._raise(bad_request(str(exc)))
            if authority is not None:
                headers = [(k, v) for k, v in headers if k.lower() != b"host"]
                headers.insert(0, (b"host", authority))
                host = authority
        if host and not usable_host(host):
            self._raise(bad_request("the Host header is not a valid host"))
        if has_body:
            body = RequestBody(self, length, self._expect and http11)
            exchange = Exchange(method, target, headers, self.peer, http_version=version,
                                body_stream=body, content_length=length, host=host)  # fmt: skip
            body.exchange = exchange
        else:
            body = None
            exchange = Exchange(method, target, headers, self.peer, http_version=version,
                                host=host)  # fmt: skip
        pending = Pending(exchange, body, parser.should_keep_alive(), http11, upgrade)
        self._parsing = pending
        queue = self.queue
        queue.append(pending)
        if len(queue) > MAX_PIPELINE:
            self.pause(BACKLOG)

    def on_chunk_header(self) -> None:
        self._trailers.chunk_header()

    def on_chunk_complete(self) -> None:
        self._trailers.open = False

    def on_body(self, data: bytes) -> None:
        self._trailers.open = False
        parsing = self._parsing
        assert parsing is not None and parsing.body is not None
        body = parsing.body
        body.feed(data)
        if body.discarding:
            if body.received - body.discarded_from > DISCARD_LIMIT:
                self.close()
            elif self.deadline_kind == BODY:
                self.deadline = self.loop.time() + self._body_timeout
        elif body.buffered > HIGH_WATER:
            self.pause(BODY_FULL)

    def on_message_complete(self) -> None:
        self._trailers.open = False
        parsing = self._parsing
        if parsing is not None and parsing.body is not None:
            if self._splice:
                return  # llhttp ends an upgrade at its head: the body is still to come
            self._parsing = None
            body = parsing.body
            body.end()
            if body.discarding and self.current is None:
                self.idle()
        else:
            self._parsing = None

    # -- body hooks (RequestBody calls these) --------------------------------------------

    def send_continue(self) -> None:
        current = self.current
        body = current.body if current is not None else None
        if not self.closed and body is not None and body.received == 0:
            self.transport.write(_CONTINUE)

    def body_wait(self, waiting: bool) -> None:
        if waiting:
            self.set_deadline(BODY, self._body_timeout)
        elif self.deadline_kind == BODY:
            self.deadline_kind = 0

    def body_drained(self) -> None:
        self.resume(BODY_FULL)

    # -- serving ---------------------------------------------------------------------------

    async def _serve(self) -> None:
        """The connection's one task: answer queued requests in order, then wait."""
        queue = self.queue
        while not self.closed:
            if not queue:
                waiter = self._wakeup = self.loop.create_future()
                await waiter
                continue
            write_paused = self.write_paused  # a local: see data_received
            if write_paused:  # answers written by the read callback filled the buffer
                try:
                    await self.writable()
                except ClientGone:
                    return
                continue
            pending = self._next()
            self.current = pending
            # Inlined rather than a coroutine per request: dispatch, write, bookkeeping.
            runtime = self.frontend.runtime
            snapshot = runtime.snapshot
            runtime.in_flight += 1  # the in-flight gauge reads this at scrape time
            status = 499  # the client went away before an answer
            try:
                response = pending.error
                # pending.malformed is read afresh after each await: the read callback
                # sets it when the body's framing breaks while the chain runs.
                if response is None and not pending.broken():
                    # snapshot.dispatch, inlined: one coroutine frame less per resume.
                    exchange = pending.exchange
                    handler = pending.resolved
                    if handler is None:
                        handler = snapshot.resolve(exchange)
                    if isinstance(handler, Response):
                        response = exchange.answered(handler)
                    else:
                        try:
                            response = exchange.answered(await handler(exchange))
                        except ClientGone:
                            if not pending.broken():
                                raise
                        except Exception as exc:
                            response = exchange.answered(snapshot.failed(exchange, exc))
                if pending.malformed is not None:  # the body broke while the chain ran
                    if response is not None:
                        await response.aclose()
                    response = pending.malformed
                assert response is not None
                status = response.status
                if response.stream is None and status >= 200 and not self.closed:
                    keep_alive = write_whole(self, pending, response)
                else:
                    keep_alive = await write_response(self, pending, response)
            except ClientGone:
                self.abort()
                return
            except asyncio.CancelledError:
                if status == 499 and self.frontend.cutting:
                    status = DRAIN_CUT  # the drain deadline cut it, not the client
                raise
            except Exception:
                log.exception("native front-end: a response failed; connection aborted")
                self.abort()
                return
            finally:
                runtime.in_flight -= 1
                finish(snapshot, pending.exchange, status, pending.sent)
            self.current = None
            if not keep_alive or self.closed:
                self.close()
                return
            if self.write_paused:  # a pipelining client that does not read: wait for it
                try:
                    await self.writable()
                except ClientGone:
                    return
            body = pending.body
            if body is not None and not body.complete:
                body.discard()  # what the chain did not read is read and dropped
                self.resume(BODY_FULL)
                self.set_deadline(BODY, self._body_timeout)
            elif not queue:
                self.idle()

    def _answer_now(self) -> None:
        """Answer queued requests in the read callback while the task is idle and each
        answer is whole without awaiting (a cache hit in memory, a 429 from a limiter in
        memory, a 404): no task wake-up, no coroutine. Stops at the first request that
        has a body, an upgrade, or needs the chain's coroutines; the task takes over
        from there, with that request already routed (``Pending.resolved``)."""
        queue = self.queue
        runtime = self.frontend.runtime
        try:
            while queue and not self.closed and not self.write_paused:
                pending = queue[0]
                if (
                    pending.body is not None
                    or pending.error is not None
                    or pending.upgrade
                    or pending.resolved is not None
                ):
                    return
                exchange = pending.exchange
                snapshot = runtime.snapshot
                resolved = snapshot.resolve(exchange)
                if (
                    type(resolved) is not Response
                    or resolved.stream is not None
                    or resolved.status < 200
                ):
                    pending.resolved = resolved
                    return
                response = exchange.answered(resolved)
                self._next()
                status = response.status
                try:
                    data, body, keep_alive = whole(self, pending, response)
                    # Written with the other answers of this loop turn, after every read
                    # callback: one batch of sends, as when the connections' tasks write.
                    self.frontend.write_soon(self, data, body, keep_alive)
                finally:
                    finish(snapshot, exchange, status, pending.sent)
                if not keep_alive:
                    self.closed = True  # nothing more is read or answered; the flush closes
                    return
        except Exception:
            log.exception("native front-end: a response failed; connection aborted")
            self.abort()
            return
        if not queue:
            self.idle()

    def _next(self) -> Pending:
        """The next queued request, taken off the queue (reading resumes below the bound)."""
        queue = self.queue
        pending = queue.popleft()
        if self._paused & BACKLOG and len(queue) <= MAX_PIPELINE:
            self.resume(BACKLOG)
        return pending

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set_result(None)

    @property
    def busy(self) -> bool:
        """A request is being answered, queued, or arriving."""
        return self.current is not None or bool(self.queue) or self.in_head or self.owed > 0

    def idle(self) -> None:
        """Nothing is owed to the client: close, or wait for its next request."""
        if self.closed or self.queue:
            return
        if self.frontend.draining:
            if not self.owed:  # else the front-end closes it once the answers are written
                self.close()
        elif not self.in_head:
            self.set_deadline(IDLE, self._keepalive_timeout)

    def keep_alive_for(self, pending: Pending) -> bool:
        """Whether the connection may stay open after ``pending``'s response."""
        if not pending.keep_alive or self.frontend.draining:
            return False
        if self.parse_dead and not self.queue:
            return False  # the last response owed: nothing more will be read
        body = pending.body
        if body is not None and not body.complete:
            if body.expect_continue and not body.continue_sent and body.received == 0:
                return False  # the client may never send it: the stream position is unknown
            if body.declared is not None and body.declared - body.received > DISCARD_LIMIT:
                return False
        return True

    # -- rejections, pausing, timers -----------------------------------------------------

    def _raise(self, response: Response) -> None:
        self._rejection = response
        raise _Reject

    def _reject(self, response: Response) -> None:
        """Stop parsing; the answer goes out after the responses already owed, then close."""
        self.parse_dead = True
        self.pause(STOPPED)
        self.in_head = False
        if self.deadline_kind in (HEAD, IDLE):
            self.deadline_kind = 0
        parsing = self._parsing
        if parsing is not None and parsing.body is not None and not parsing.body.complete:
            # The body's framing broke after the head was queued.
            parsing.malformed = response
            parsing.body.fail(ClientGone("the request body is malformed"))
            return
        exchange = Exchange("-", b"-", [], self.peer)
        self.queue.append(Pending(exchange, None, False, True, False, error=response))
        self._wake()

    def on_timeout(self, kind: int) -> None:
        self.deadline_kind = 0
        if kind == HEAD:
            if self._paused:  # we are holding the client back, not the other way round
                self.set_deadline(HEAD, self._header_timeout)
                return
            detail = f"the request head did not arrive within {self._header_timeout}s"
            self._reject(problem_response(None, 408, "request-timeout", "Request Timeout", detail))
        elif kind == BODY:
            self.abort()
        else:
            self.close()

    def set_deadline(self, kind: int, seconds: float) -> None:
        self.deadline_kind = kind
        self.deadline = self.loop.time() + seconds

    def pause(self, reason: int) -> None:
        if not self._paused and not self.closed:
            self.transport.pause_reading()
        self._paused |= reason

    def resume(self, reasons: int) -> None:
        if self._paused & reasons:
            self._paused &= ~reasons
            if not self._paused and not self.closed:
                self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self.transport.abort()

    def drain_idle(self) -> None:
        """Graceful drain: close now unless a request is owed or on its way."""
        if not self.busy:
            self.close()

    # -- upgrades --------------------------------------------------------------------------

    def start_relay(self, upgraded: Upgraded) -> None:
        self.relay = relay = Relay(self, upgraded)
        tail, self.upgrade_tail = self.upgrade_tail, None
        if tail:
            relay.feed(bytes(tail))
        self.resume(STOPPED | RELAY)
