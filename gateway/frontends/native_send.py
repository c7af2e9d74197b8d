"""The native front-end's response side: frame and write responses, relay upgrades.

The head (status line and headers) goes out in one write, with the body too when it is
whole. A body of unknown length is chunked for HTTP/1.1 and close-delimited for
HTTP/1.0. Writes wait when the transport asks (``pause_writing``). An upstream that
dies mid-body, or sends more or less than it declared, gets the client connection
aborted, so the client sees a truncated message rather than a complete wrong one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from gateway.edge import problem_response, status_phrase
from gateway.errors import GatewayError, UpstreamBodyError
from gateway.exchange import Response
from gateway.frontends.native_request import HIGH_WATER, RELAY, ClientGone, Pending
from gateway.types import Headers

if TYPE_CHECKING:
    from gateway.exchange import Upgraded
    from gateway.frontends.native_conn import HttpConnection

log = logging.getLogger("gateway")

_STATUS_LINES: dict[int, bytes] = {}
_CLOSE = b"connection: close\r\n"
# (keep_alive, http11) -> the Connection header line the response needs, if any.
_CONNECTION = {(True, True): b"", (True, False): b"connection: keep-alive\r\n",
               (False, True): _CLOSE, (False, False): _CLOSE}  # fmt: skip
# (keep_alive, http11, chunked) -> the last header lines and the blank line.
_TAILS = {
    (keep, http11, chunked): (
        (b"transfer-encoding: chunked\r\n" if chunked else b"")
        + _CONNECTION[keep, http11]
        + b"\r\n"
    )
    for keep in (True, False)
    for http11 in (True, False)
    for chunked in (True, False)
}


def status_line(status: int, reason: bytes = b"") -> bytes:
    if reason:
        return b"HTTP/1.1 %d %s\r\n" % (status, reason)
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, status_phrase(status))
        if 100 <= status < 600:
            _STATUS_LINES[status] = line
    return line


def build_head(
    status: int, reason: bytes, headers: Headers, tail: bytes, date: bytes | None
) -> bytes:
    """Status line, headers as they are, ``date`` unless one is there, then ``tail``."""
    parts = [status_line(status, reason)]
    for name, value in headers:
        if date is not None and len(name) == 4 and name.lower() == b"date":
            date = None
        parts += (name, b": ", value, b"\r\n")
    if date is not None:
        parts.append(date)
    parts.append(tail)
    return b"".join(parts)


def framed_head(
    response: Response, allowed: bool, first: bytes = b""
) -> tuple[list[bytes], int | None, bool]:
    """The header lines with framing decided, the declared length, and whether Date is set.

    The same rules as :func:`gateway.frontends.common.framed_headers` (a whole body gets
    its own Content-Length; a streamed one keeps the first valid upstream Content-Length
    or none; Transfer-Encoding is recomputed; a response without a body keeps its
    headers), in one pass that lower-cases only the names of framing length. ``first``
    (the status line) starts the list.
    """
    parts: list[bytes] = [first]
    dated = False
    length: int | None = None
    if not allowed:
        for name, value in response.headers:
            if len(name) == 4 and name.lower() == b"date":
                dated = True
            parts += (name, b": ", value, b"\r\n")
        return parts, 0, dated
    streamed = response.stream is not None
    for name, value in response.headers:
        size = len(name)
        if size == 14 or size == 17 or size == 4:
            lowered = name.lower()
            if lowered == b"content-length":
                if not streamed or length is not None or not value.strip().isdigit():
                    continue
                length = int(value)
            elif lowered == b"transfer-encoding":
                continue
            elif lowered == b"date":
                dated = True
        parts += (name, b": ", value, b"\r\n")
    if not streamed:
        length = len(response.body)
        parts.append(b"content-length: %d\r\n" % length)
    return parts, length, dated


def write_whole(conn: HttpConnection, pending: Pending, response: Response) -> bool:
    """Write a final response whose body is whole, in one write; True: keep alive."""
    data, body, keep_alive = whole(conn, pending, response)
    if body is None:
        conn.transport.write(data)
    else:
        conn.transport.writelines((data, body))
    return keep_alive


def whole(
    conn: HttpConnection, pending: Pending, response: Response
) -> tuple[bytes, bytes | None, bool]:
    """A final response whose body is whole, as bytes: (head, with the body when it is
    small; the body when it is not, else None; keep alive)."""
    status = response.status
    if pending.keep_alive and pending.body is None and not conn.parse_dead:
        keep_alive = not conn.frontend.draining  # keep_alive_for's common case
    else:
        keep_alive = conn.keep_alive_for(pending)
    allowed = pending.exchange.method != "HEAD" and status != 204 and status != 304
    parts, _, dated = framed_head(response, allowed, status_line(status, response.reason))
    if not dated:
        parts.append(conn.frontend.date_line())
    parts.append(_TAILS[keep_alive, pending.http11, False])
    if not allowed:
        return b"".join(parts), None, keep_alive
    body = response.body
    pending.sent = len(body)
    if len(body) <= 16384:
        parts.append(body)
        return b"".join(parts), None, keep_alive
    return b"".join(parts), body, keep_alive


async def write_response(conn: HttpConnection, pending: Pending, response: Response) -> bool:
    exchange = pending.exchange
    status = response.status
    if conn.closed:
        await response.aclose()
        raise ClientGone("the client closed the connection")
    if status < 200:
        if status == 101 and response.upgraded is not None and pending.upgrade:
            await relay(conn, pending, response)
            return False
        await response.aclose()
        detail = f"the upstream answered {status} to a request that did not ask for it"
        response = problem_response(exchange, 502, "unexpected-status", "Bad Gateway", detail)
        status = 502
    stream = response.stream
    if stream is None:
        return write_whole(conn, pending, response)
    keep_alive = conn.keep_alive_for(pending)
    allowed = exchange.method != "HEAD" and status != 204 and status != 304
    parts, length, dated = framed_head(response, allowed, status_line(status, response.reason))
    if not dated:
        parts.append(conn.frontend.date_line())
    transport = conn.transport
    if not allowed:
        await response.aclose()
        parts.append(_TAILS[keep_alive, pending.http11, False])
        transport.write(b"".join(parts))
        return keep_alive
    chunked = length is None and pending.http11
    if length is None and not pending.http11:
        keep_alive = False  # HTTP/1.0: the end of the body is the end of the connection
    parts.append(_TAILS[keep_alive, pending.http11, chunked])
    transport.write(b"".join(parts))
    sent = 0
    try:
        async for chunk in stream:
            size = len(chunk)
            if not size:
                continue
            if chunked:
                transport.writelines((b"%x\r\n" % size, chunk, b"\r\n"))
            elif length is not None and sent + size > length:
                log.warning("upstream sent more than its Content-Length (%d); cut", length)
                transport.write(chunk[: length - sent])
                pending.sent = length
                conn.abort()
                await stream.aclose()
                return False
            else:
                transport.write(chunk)
            sent += size
            pending.sent = sent
            if conn.write_paused:
                await conn.writable()
    except UpstreamBodyError as exc:
        # The head is out: the only honest signal left is to cut the connection.
        log.warning("upstream body cut after %d bytes: %s", sent, exc)
        conn.abort()
        await stream.aclose()
        return False
    except BaseException:
        await stream.aclose()
        raise
    if chunked:
        transport.write(b"0\r\n\r\n")
    elif length is not None and sent < length:
        log.warning("upstream body ended after %d of %d bytes; cut", sent, length)
        conn.abort()
        return False
    return keep_alive


async def relay(conn: HttpConnection, pending: Pending, response: Response) -> None:
    """After a 101: raw bytes both ways until either side closes."""
    upgraded = response.upgraded
    assert upgraded is not None
    transport = conn.transport
    transport.write(build_head(101, response.reason, response.headers, b"\r\n", None))
    conn.start_relay(upgraded)
    try:
        while not conn.closed:
            data = await upgraded.read()
            if not data:
                break
            pending.sent += len(data)
            transport.write(data)
            if conn.write_paused:
                await conn.writable()
    except (OSError, GatewayError) as exc:
        log.info("upgraded connection ended by the upstream side: %s", exc)
    finally:
        upgraded.close()
        conn.close()


class Relay:
    """The client-to-upstream half of an upgraded connection (:func:`relay` is the other)."""

    __slots__ = ("_conn", "_task", "_unacked", "upgraded")

    def __init__(self, conn: HttpConnection, upgraded: Upgraded) -> None:
        self._conn = conn
        self._task: asyncio.Task[None] | None = None
        self._unacked = 0
        self.upgraded = upgraded

    def feed(self, data: bytes) -> None:
        conn = self._conn
        if conn.closed:
            return
        self.upgraded.write(data)
        self._unacked += len(data)
        if self._unacked > HIGH_WATER and self._task is None:
            conn.pause(RELAY)
            self._task = conn.loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await self.upgraded.drain()
        except Exception:  # the upstream side failed: the relay loop notices and ends
            self._conn.abort()
            return
        self._unacked = 0
        self._task = None
        self._conn.resume(RELAY)
