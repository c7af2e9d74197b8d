"""The native front-end's per-request pieces: the queued request, its body, its target.

A :class:`RequestBody` is the ByteStream the chain reads. The connection feeds it from
the parser (``feed``/``end``/``fail``); it buffers at most about ``HIGH_WATER`` bytes
before the connection pauses reading, and sends ``100 Continue`` the first time the
chain waits for a body the client is holding back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from gateway.edge import problem_response
from gateway.errors import ClientGone
from gateway.exchange import Exchange, Response

if TYPE_CHECKING:
    from gateway.frontends.native_conn import HttpConnection
    from gateway.types import Handler

#: Buffered request body bytes beyond which the connection stops reading the socket.
HIGH_WATER = 64 * 1024
# Why a connection stopped reading (a bit mask): it reads again when no reason is left.
BACKLOG, BODY_FULL, STOPPED, RELAY = 1, 2, 4, 8

__all__ = [
    "BACKLOG", "BODY_FULL", "HIGH_WATER", "RELAY", "STOPPED", "ClientGone", "Pending",
    "RequestBody", "bad_request", "connect_refusal", "head_refusal", "origin_form", "too_large",
    "transfer_coding_refusal",
]  # fmt: skip


class RequestBody:
    """The request body as a ByteStream, fed by the parser, read by the chain."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_error",
        "_waiter",
        "buffered",
        "complete",
        "continue_sent",
        "declared",
        "discarded_from",
        "discarding",
        "exchange",
        "expect_continue",
        "received",
    )

    def __init__(self, conn: HttpConnection, declared: int | None, expect_continue: bool) -> None:
        self._conn = conn
        self._chunks: list[bytes] = []
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.buffered = 0
        self.complete = False
        self.continue_sent = False
        self.declared = declared  # Content-Length, or None when chunked
        self.discarding = False  # the response is done: the rest is read and dropped
        self.discarded_from = 0
        self.exchange: Exchange | None = None
        self.expect_continue = expect_continue
        self.received = 0

    # -- the chain's side -------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.complete:
                raise StopAsyncIteration
            if self.discarding:
                raise ClientGone("the request body was abandoned after the response")
            conn = self._conn
            if self.expect_continue and not self.continue_sent:
                self.continue_sent = True
                conn.send_continue()
            waiter = self._waiter = conn.loop.create_future()
            conn.body_wait(True)
            try:
                await waiter
            finally:
                self._waiter = None
                conn.body_wait(False)
        chunks = self._chunks
        chunk = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if self.buffered > HIGH_WATER:
            self._conn.body_drained()
        self.buffered = 0
        if self.exchange is not None:
            self.exchange.bytes_in += len(chunk)
        return chunk

    async def aclose(self) -> None:
        self._chunks.clear()
        self.buffered = 0

    # -- the parser's side ------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.discarding:
            return
        self._chunks.append(data)
        self.buffered += len(data)
        self._wake()

    def end(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = exc
        self._wake()

    def discard(self) -> None:
        """The response went out without the whole body: drop what comes from now on."""
        self.discarding = True
        self.discarded_from = self.received
        self._chunks.clear()
        self.buffered = 0
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Pending:
    """One parsed request waiting in the connection's queue (responses go out in order)."""

    __slots__ = ("body", "error", "exchange", "http11", "keep_alive", "malformed", "resolved",
                 "sent", "upgrade")  # fmt: skip

    def __init__(
        self,
        exchange: Exchange,
        body: RequestBody | None,
        keep_alive: bool,
        http11: bool,
        upgrade: bool,
        error: Response | None = None,
    ) -> None:
        self.exchange = exchange
        self.body = body
        self.keep_alive = keep_alive
        self.http11 = http11
        self.upgrade = upgrade
        self.error = error  # the front-end's own answer (400, 408, 414, 431, ...)
        self.malformed: Response | None = None  # the body's framing broke after the head
        self.sent = 0
        # Snapshot.resolve's result when the read callback already routed the request
        # (and ran the route's prelude) but could not answer it there.
        self.resolved: Response | Handler | None = None

    def broken(self) -> bool:
        """Whether the body's framing broke after the head (``malformed`` is set).

        A method rather than a test in place: the read callback sets ``malformed``
        while the chain awaits, and a type checker keeps a tested attribute's value
        across an await."""
        return self.malformed is not None


class BadTarget(ValueError):
    """A request target in a form the gateway does not serve."""


def origin_form(target: bytes, method: str) -> tuple[bytes, bytes | None]:
    """``(target, authority)`` for a target that does not start with ``/``.

    Absolute-form becomes origin-form and its authority replaces Host (RFC 9112 3.2.2);
    ``*`` (OPTIONS) and authority-form (CONNECT) stay as they are; others are refused.
    """
    if target[:8].lower().startswith((b"http://", b"https://")):
        start = target.index(b"//") + 2
        ends = [i for i in (target.find(b"/", start), target.find(b"?", start)) if i >= 0]
        end = min(ends) if ends else len(target)
        authority, rest = target[start:end], target[end:]
        if not authority or b"@" in authority:
            raise BadTarget("invalid absolute request target")
        return (rest if rest[:1] == b"/" else b"/" + rest), authority
    if (target == b"*" and method == "OPTIONS") or method == "CONNECT":
        return target, None
    raise BadTarget("the request target must be a path or an absolute URL")


def bad_request(detail: str) -> Response:
    return problem_response(None, 400, "bad-request", "Bad Request", detail)


def too_large(detail: str) -> Response:
    return problem_response(
        None, 431, "request-header-fields-too-large", "Request Header Fields Too Large", detail
    )


def transfer_coding_refusal(value: bytes) -> Response | None:
    """Why a request's Transfer-Encoding is refused, or None (it is exactly chunked)."""
    codings = value.lower().split(b",")
    if codings[-1].strip() != b"chunked":
        # RFC 9112 6.3: the body's length cannot be known; refuse and close.
        return bad_request("the final transfer coding must be chunked")
    if len(codings) > 1:
        detail = "only the chunked transfer coding is accepted"
        return problem_response(None, 501, "unsupported-transfer-coding", "Not Implemented",
                                detail)  # fmt: skip
    return None


#: The characters of a token (RFC 9110 5.6.2), which a method is (RFC 9110 9.1).
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
#: The longest unknown method a 501 names; a longer first word is a malformed line.
MAX_METHOD = 32


def unknown_method_refusal(read: bytes | None, detail: str) -> Response:
    """The answer to a request line whose method the parser does not know.

    A well-formed method token the gateway does not implement is 501 (RFC 9110 9.1,
    15.6.2); anything else is a malformed request line, 400. ``read``: the bytes read
    that begin with the refused request (empty lines before it allowed, RFC 9112 2.2),
    when the front-end knows it does; None gives 400.
    """
    if read is not None:
        line = read.lstrip(b"\r\n")
        end = line.find(b" ")
        method = line[:end]
        if 0 < end <= MAX_METHOD and all(c in _TCHAR for c in method):
            detail = f"the method {method.decode('ascii')} is not implemented by the gateway"
            return problem_response(None, 501, "not-implemented", "Not Implemented", detail)
    return bad_request(detail)


def connect_refusal() -> Response:
    """The answer to ``CONNECT``: the gateway routes requests, it opens no tunnels."""
    detail = "CONNECT is not served: the gateway is a reverse proxy, not a tunnel"
    return problem_response(None, 501, "not-implemented", "Not Implemented", detail)


def head_refusal(version: str, hosts: int, chunked: bool, upgrade_body: bool) -> Response | None:
    """Why a complete request head is refused, or None."""
    http11 = version == "1.1"
    if not http11 and version != "1.0":
        detail = "only HTTP/1.0 and 1.1 are served"
        return problem_response(None, 505, "http-version-not-supported",
                                "HTTP Version Not Supported", detail)  # fmt: skip
    if hosts > 1 or (http11 and not hosts):
        return bad_request("a request needs exactly one Host header")
    if chunked and not http11:
        # RFC 9112 6.1: the framing of such a message is faulty.
        return bad_request("Transfer-Encoding is not allowed in an HTTP/1.0 request")
    if upgrade_body:
        return bad_request("an upgrade request cannot carry a body")
    return None
