"""The native transport against tiny raw servers on 127.0.0.1, under asyncio and uvloop.

Each test scripts the server side byte by byte (``Peer``), so the cases a normal server
never produces (stale keep-alive connections, bodies cut mid-way, garbage, slow heads)
are exact. Both event loops run every test: the gateway runs on uvloop, tests and tools
often on asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httptools
import pytest
import uvloop

from gateway.config.models import Timeouts, Upstream
from gateway.errors import (
    UpstreamBodyError,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from gateway.exchange import Response
from gateway.transport.base import Target, UpstreamRequest
from gateway.transport.native import NativeTransport
from gateway.transport.native_conn import Connection, websocket_accept
from gateway.transport.native_streams import HIGH_WATER, Incoming
from gateway.types import Headers
from tests.integration.harness import free_port

T = TypeVar("T")
Runner = Callable[[Coroutine[Any, Any, T]], T]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
FAST = Timeouts(connect=2.0, read=5.0)


# --- the scripted server --------------------------------------------------------------


class Captured:
    """One request as the server received it."""

    def __init__(self) -> None:
        self.method = ""
        self.url = b""
        self.headers: Headers = []
        self.body = b""
        self.raw = b""
        self.head_done = False


class Peer:
    """The server side of one connection, read request by request with httptools."""

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.index = index
        self.reader = reader
        self.writer = writer
        self.eof = False
        self.upgraded = False
        self.rest = b""  # bytes after an upgrade request
        self._parser = httptools.HttpRequestParser(self)
        self._raw = bytearray()
        self._current: Captured | None = None
        self._done: deque[Captured] = deque()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._current = Captured()

    def on_url(self, url: bytes) -> None:
        assert self._current is not None
        self._current.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._current is not None
        self._current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._current is not None
        self._current.method = self._parser.get_method().decode()
        self._current.head_done = True

    def on_body(self, body: bytes) -> None:
        assert self._current is not None
        self._current.body += body

    def on_message_complete(self) -> None:
        assert self._current is not None
        self._current.raw = bytes(self._raw)
        self._raw.clear()
        self._done.append(self._current)
        self._current = None

    async def _fill(self) -> bool:
        if self.eof:
            return False
        data = await self.reader.read(65536)
        if not data:
            self.eof = True
            return False
        if self.upgraded:
            self.rest += data
            return True
        self._raw += data
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = True
            self.rest = data[exc.args[0] :]
        return True

    async def request(self) -> Captured | None:
        """The next complete request; None at EOF."""
        while not self._done:
            if not await self._fill():
                return None
        return self._done.popleft()

    async def head(self) -> Captured:
        """The request being received, once its head is complete (its body may not be)."""
        while not self._done and (self._current is None or not self._current.head_done):
            assert await self._fill(), "EOF before a request head"
        return self._done[0] if self._done else self._current  # type: ignore[return-value]

    async def wait_eof(self) -> None:
        while await self._fill():
            pass

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def reset(self) -> None:
        """Close with RST (SO_LINGER 0)."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Handler = Callable[[Peer], Awaitable[None]]


class Server:
    """A raw server on 127.0.0.1 whose every connection is driven by ``handler``."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.peers: list[Peer] = []
        self.port = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for peer in self.peers:
            peer.writer.transport.abort()  # handlers end on the lost connection
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=2.0)
            assert not pending, "a server handler is still blocked"
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(len(self.peers), reader, writer)
        self.peers.append(peer)
        try:
            await self.handler(peer)
            await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            self._tasks.discard(task)


async def serve_ok(peer: Peer) -> None:
    """Keep-alive: answer every request with 200 ``ok`` and the connection's index."""
    while await peer.request() is not None:
        peer.write(b"HTTP/1.1 200 OK\r\nX-Conn: %d\r\nContent-Length: 2\r\n\r\nok" % peer.index)


# --- helpers --------------------------------------------------------------------------


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner[Any]:
    def runner(coro: Coroutine[Any, Any, T]) -> T:
        if request.param == "uvloop":
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop_runner:
                return loop_runner.run(coro)
        return asyncio.run(coro)

    return runner


def transport(url: str, **pool: Any) -> NativeTransport:
    verify = pool.pop("verify_tls", True)
    return NativeTransport(Upstream(url=url, pool=pool, verify_tls=verify))


def request(
    url: str,
    method: str = "GET",
    path: bytes = b"/",
    headers: Headers | None = None,
    body: Any = None,
    timeouts: Timeouts = FAST,
    upgrade: bool = False,
) -> UpstreamRequest:
    target = Target.parse(url)
    return UpstreamRequest(
        method=method,
        target=target,
        path=path,
        headers=headers if headers is not None else [(b"host", target.authority)],
        body=body,
        timeouts=timeouts,
        upgrade=upgrade,
    )


async def read_body(response: Response) -> bytes:
    if response.stream is None:
        return response.body
    return b"".join([chunk async for chunk in response.stream])


def header(response: Response, name: bytes) -> bytes | None:
    return response.header(name)


def pool_of(t: NativeTransport) -> Any:
    (pool,) = t._pools.values()
    return pool


class Body:
    """A streamed request body; records how far it was consumed."""

    def __init__(self, chunks: list[bytes], gate: asyncio.Event | None = None) -> None:
        self.chunks = chunks
        self.gate = gate
        self.pulled = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if i and self.gate is not None:
                await self.gate.wait()
            self.pulled += 1
            yield chunk

    async def aclose(self) -> None:
        pass


async def eventually(condition: Callable[[], bool]) -> None:
    for _ in range(300):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 3s")


# --- keep-alive and the pool ----------------------------------------------------------


def test_keep_alive_reuses_one_connection(run: Runner[None]) -> None:
    async def main() -> None:
        async with Server(serve_ok) as server:
            t = transport(server.url)
            for _ in range(3):
                response = await t.send(request(server.url))
                assert response.status == 200
                assert response.reason == b"OK"
                assert response.headers == [
                    (b"X-Conn", b"0"),
                    (b"Content-Length", b"2"),
                ]
                assert await read_body(response) == b"ok"
            assert len(server.peers) == 1
            await t.close()

    run(main())


def test_idle_connections_are_reused_lifo(run: Runner[None]) -> None:
    async def main() -> None:
        release = [asyncio.Event(), asyncio.Event()]

        async def handler(peer: Peer) -> None:
            while await peer.request() is not None:
                if peer.index < 2:
                    await release[peer.index].wait()
                peer.write(
                    b"HTTP/1.1 200 OK\r\nX-Conn: %d\r\nContent-Length: 0\r\n\r\n" % peer.index
                )

        async with Server(handler) as server:
            t = transport(server.url)
            first = asyncio.ensure_future(t.send(request(server.url)))
            second = asyncio.ensure_future(t.send(request(server.url)))
            await eventually(lambda: len(server.peers) == 2)
            release[0].set()
            assert header(await first, b"x-conn") == b"0"
            release[1].set()
            assert header(await second, b"x-conn") == b"1"
            # Connection 1 went back last, so it is reused first.
            response = await t.send(request(server.url))
            assert header(response, b"x-conn") == b"1"
            assert len(server.peers) == 2
            await t.close()

    run(main())


def test_pool_limit_waits_for_a_free_connection(run: Runner[None]) -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def handler(peer: Peer) -> None:
            first = True
            while await peer.request() is not None:
                if first:
                    await gate.wait()
                    first = False
                peer.write(OK)

        async with Server(handler) as server:
            t = transport(server.url, max_connections=1)
            first = asyncio.ensure_future(t.send(request(server.url)))
            await asyncio.sleep(0.05)
            second = asyncio.ensure_future(t.send(request(server.url)))
            await asyncio.sleep(0.05)
            assert not second.done()
            gate.set()
            assert (await first).status == 200
            assert (await second).status == 200
            assert len(server.peers) == 1
            await t.close()

    run(main())


def test_pool_limit_wait_is_bounded_by_the_connect_timeout(run: Runner[None]) -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def handler(peer: Peer) -> None:
            while await peer.request() is not None:
                await gate.wait()
                peer.write(OK)

        async with Server(handler) as server:
            t = transport(server.url, max_connections=1)
            timeouts = Timeouts(connect=0.1, read=5.0)
            first = asyncio.ensure_future(t.send(request(server.url, timeouts=timeouts)))
            await asyncio.sleep(0.05)
            with pytest.raises(UpstreamTimeout, match="connections busy"):
                await t.send(request(server.url, timeouts=timeouts))
            gate.set()
            assert (await first).status == 200
            assert pool_of(t).size == 1
            await t.close()

    run(main())


def test_max_requests_retires_a_connection(run: Runner[None]) -> None:
    async def main() -> None:
        async with Server(serve_ok) as server:
            t = transport(server.url, max_requests=2)
            seen = [header(await t.send(request(server.url)), b"x-conn") for _ in range(5)]
            assert seen == [b"0", b"0", b"1", b"1", b"2"]
            await asyncio.sleep(0.05)
            assert server.peers[0].eof and server.peers[1].eof
            await t.close()

    run(main())


def test_idle_timeout_closes_and_skips_old_connections(run: Runner[None]) -> None:
    async def main() -> None:
        async with Server(serve_ok) as server:
            t = transport(server.url, idle_timeout=0.1)
            await t.send(request(server.url))
            await asyncio.sleep(0.3)
            assert server.peers[0].eof  # closed by the idle sweep
            assert pool_of(t).size == 0
            assert header(await t.send(request(server.url)), b"x-conn") == b"1"
            await t.close()

    run(main())


def test_close_closes_idle_connections(run: Runner[None]) -> None:
    async def main() -> None:
        async with Server(serve_ok) as server:
            t = transport(server.url)
            await t.send(request(server.url))
            await t.close()
            await asyncio.sleep(0.05)
            assert server.peers[0].eof

    run(main())


# --- stale connections ----------------------------------------------------------------


def test_stale_connection_is_retried_once_on_a_fresh_one(run: Runner[None]) -> None:
    async def main() -> None:
        got: list[bytes] = []

        async def handler(peer: Peer) -> None:
            while (req := await peer.request()) is not None:
                got.append(req.raw)
                if peer.index == 0 and len(got) == 2:
                    return  # the upstream dropped the keep-alive connection: EOF, no answer
                peer.write(
                    b"HTTP/1.1 200 OK\r\nX-Conn: %d\r\nContent-Length: 0\r\n\r\n" % peer.index
                )

        async with Server(handler) as server:
            t = transport(server.url)
            await t.send(request(server.url))
            second = request(server.url, "POST", body=b"abc", headers=[(b"host", b"h")])
            response = await t.send(second)
            assert header(response, b"x-conn") == b"1"
            assert got[1] == got[2]  # the same bytes, sent again on the new connection
            await t.close()

    run(main())


def test_stale_connection_reset_on_write_is_retried(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            count = 0
            while await peer.request() is not None:
                count += 1
                if peer.index == 0 and count == 2:
                    peer.reset()
                    return
                peer.write(
                    b"HTTP/1.1 200 OK\r\nX-Conn: %d\r\nContent-Length: 0\r\n\r\n" % peer.index
                )

        async with Server(handler) as server:
            t = transport(server.url)
            await t.send(request(server.url))
            assert header(await t.send(request(server.url)), b"x-conn") == b"1"
            await t.close()

    run(main())


def test_connection_closed_while_idle_is_not_reused(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.request()
            peer.write(b"HTTP/1.1 200 OK\r\nX-Conn: %d\r\nContent-Length: 0\r\n\r\n" % peer.index)
            # then close: an upstream's own keep-alive timeout

        async with Server(handler) as server:
            t = transport(server.url)
            await t.send(request(server.url))
            await eventually(lambda: not pool_of(t).idle)
            assert header(await t.send(request(server.url)), b"x-conn") == b"1"
            await t.close()

    run(main())


def test_bytes_after_the_response_retire_the_connection(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            while await peer.request() is not None:
                peer.write(
                    b"HTTP/1.1 200 OK\r\nX-Conn: %d\r\nContent-Length: 2\r\n\r\nokEXTRA"
                    % peer.index
                )

        async with Server(handler) as server:
            t = transport(server.url)
            response = await t.send(request(server.url))
            assert await read_body(response) == b"ok"
            assert pool_of(t).size == 0
            assert header(await t.send(request(server.url)), b"x-conn") == b"1"
            await t.close()

    run(main())


def test_fresh_connection_closed_before_answer_is_not_retried(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.request()

        async with Server(handler) as server:
            t = transport(server.url)
            with pytest.raises(UpstreamConnectError, match="before any response"):
                await t.send(request(server.url))
            assert len(server.peers) == 1
            await t.close()

    run(main())


def test_stale_retry_happens_only_once(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            if peer.index == 0:
                await peer.request()
                peer.write(OK)
            await peer.request()  # every later request: EOF without an answer

        async with Server(handler) as server:
            t = transport(server.url)
            await t.send(request(server.url))
            with pytest.raises(UpstreamConnectError):
                await t.send(request(server.url))
            assert len(server.peers) == 2
            await t.close()

    run(main())


def test_no_retry_after_a_response_byte(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.request()
            peer.write(OK)
            await peer.request()
            peer.write(b"HTTP/1.1 200 O")

        async with Server(handler) as server:
            t = transport(server.url)
            await t.send(request(server.url))
            with pytest.raises(UpstreamProtocolError, match="inside the response head"):
                await t.send(request(server.url))
            assert len(server.peers) == 1
            await t.close()

    run(main())


def test_no_retry_when_a_streamed_body_was_consumed(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.request()
            peer.write(OK)
            await peer.head()
            return  # close while the streamed body is being sent

        async with Server(handler) as server:
            t = transport(server.url)
            await t.send(request(server.url))
            gate = asyncio.Event()
            body = Body([b"a", b"b"], gate)
            sending = asyncio.ensure_future(
                t.send(request(server.url, "POST", body=body, headers=[(b"host", b"h")]))
            )
            await eventually(lambda: pool_of(t).size == 0)  # the client saw the close
            gate.set()
            with pytest.raises(UpstreamConnectError):
                await sending
            assert body.pulled >= 1
            assert len(server.peers) == 1
            await t.close()

    run(main())


# --- response framing -----------------------------------------------------------------


def test_chunked_response_streams_in_pieces(run: Runner[None]) -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def handler(peer: Peer) -> None:
            while await peer.request() is not None:
                peer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
                await peer.writer.drain()
                await gate.wait()
                peer.write(b"6\r\n world\r\n0\r\n\r\n")

        async with Server(handler) as server:
            t = transport(server.url)
            response = await t.send(request(server.url))
            assert response.stream is not None
            iterator = response.stream.__aiter__()
            assert await iterator.__anext__() == b"hello"
            gate.set()
            assert await iterator.__anext__() == b" world"
            with pytest.raises(StopAsyncIteration):
                await iterator.__anext__()
            await response.stream.aclose()  # after the end: a no-op, the connection is pooled
            assert header(await t.send(request(server.url)), b"transfer-encoding") == b"chunked"
            assert len(server.peers) == 1
            await t.close()

    run(main())


def test_content_length_body_arriving_whole_is_returned_whole(run: Runner[None]) -> None:
    async def main() -> None:
        async with Server(serve_ok) as server:
            t = transport(server.url)
            response = await t.send(request(server.url))
            assert response.stream is None and response.body == b"ok"
            await t.close()

    run(main())


def test_close_delimited_body_is_read_until_eof(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.request()
            peer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil")
            await peer.writer.drain()
            await asyncio.sleep(0.05)
            peer.write(b" close")

        async with Server(handler) as server:
            t = transport(server.url)
            response = await t.send(request(server.url))
            assert await read_body(response) == b"until close"
            assert pool_of(t).size == 0
            await t.close()

    run(main())


@pytest.mark.parametrize(
    ("method", "status_line", "extra"),
    [
        ("HEAD", b"200 OK", b"Content-Length: 10\r\n"),
        ("HEAD", b"200 OK", b"Transfer-Encoding: chunked\r\n"),
        ("GET", b"204 No Content", b""),
        ("GET", b"304 Not Modified", b"Content-Length: 10\r\n"),
    ],
)
def test_responses_without_a_body(
    run: Runner[None], method: str, status_line: bytes, extra: bytes
) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            while (req := await peer.request()) is not None:
                if req.method == "GET" and req.url == b"/next":
                    peer.write(OK)
                else:
                    peer.write(b"HTTP/1.1 " + status_line + b"\r\n" + extra + b"\r\n")

        async with Server(handler) as server:
            t = transport(server.url)
            response = await t.send(request(server.url, method))
            assert response.status == int(status_line[:3])
            assert response.stream is None and response.body == b""
            # The connection is reused, and the next response parses cleanly.
            again = await t.send(request(server.url, path=b"/next"))
            assert await read_body(again) == b"ok"
            assert len(server.peers) == 1
            await t.close()

    run(main())


def test_interim_responses_are_skipped(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.head()
            peer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await peer.request()
            peer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK)

        async with Server(handler) as server:
            t = transport(server.url)
            headers = [(b"host", b"h"), (b"expect", b"100-continue"), (b"content-length", b"3")]
            response = await t.send(request(server.url, "POST", headers=headers, body=b"abc"))
            assert response.status == 200
            assert response.headers == [(b"Content-Length", b"2")]
            assert await read_body(response) == b"ok"
            await t.close()

    run(main())


@pytest.mark.parametrize(
    ("head", "reused"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", True),
    ],
)
def test_upstream_connection_close_is_honoured(
    run: Runner[None], head: bytes, reused: bool
) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            while await peer.request() is not None:
                peer.write(head)  # and keep the connection open: the client must close it

        async with Server(handler) as server:
            t = transport(server.url)
            assert await read_body(await t.send(request(server.url))) == b"ok"
            assert await read_body(await t.send(request(server.url))) == b"ok"
            assert len(server.peers) == (1 if reused else 2)
            if not reused:
                await asyncio.sleep(0.05)
                assert server.peers[0].eof
            await t.close()

    run(main())


def test_raw_headers_and_reason_are_kept_as_received(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.request()
            peer.write(
                b"HTTP/1.1 418 I'm a Teapot\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\n"
                b"X-Empty: \r\nContent-Length: 0\r\n\r\n"
            )

        async with Server(handler) as server:
            t = transport(server.url)
            response = await t.send(request(server.url))
            assert (response.status, response.reason) == (418, b"I'm a Teapot")
            assert response.headers == [
                (b"set-cookie", b"a=1"),
                (b"Set-Cookie", b"b=2"),
                (b"X-Empty", b""),
                (b"Content-Length", b"0"),
            ]
            await t.close()

    run(main())


# --- request bytes --------------------------------------------------------------------


def test_request_is_written_exactly_as_given(run: Runner[None]) -> None:
    async def main() -> None:
        got: list[Captured] = []

        async def handler(peer: Peer) -> None:
            while (req := await peer.request()) is not None:
                got.append(req)
                peer.write(OK)

        async with Server(handler) as server:
            t = transport(server.url)
            headers = [(b"Host", b"h"), (b"X-A", b"1"), (b"x-a", b"2"), (b"Content-Length", b"3")]
            await t.send(request(server.url, "PUT", b"/a%2Fb?q=%20", headers, b"abc"))
            assert got[0].raw == (
                b"PUT /a%2Fb?q=%20 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\n"
                b"Content-Length: 3\r\n\r\nabc"
            )
            await t.send(request(server.url, "POST", headers=[(b"host", b"h")], body=b"xy"))
            assert got[1].raw == b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 2\r\n\r\nxy"
            big = os.urandom(200_000)
            await t.send(request(server.url, "POST", headers=[(b"host", b"h")], body=big))
            assert got[2].body == big
            await t.close()

    run(main())


def test_streamed_request_bodies_chunked_or_with_length(run: Runner[None]) -> None:
    async def main() -> None:
        got: list[Captured] = []

        async def handler(peer: Peer) -> None:
            while (req := await peer.request()) is not None:
                got.append(req)
                peer.write(OK)

        async with Server(handler) as server:
            t = transport(server.url)
            body = Body([b"ab", b"", b"c" * 20])
            await t.send(request(server.url, "POST", headers=[(b"host", b"h")], body=body))
            assert got[0].raw == (
                b"POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n"
                b"2\r\nab\r\n14\r\n" + b"c" * 20 + b"\r\n0\r\n\r\n"
            )
            headers = [(b"host", b"h"), (b"content-length", b"4")]
            await t.send(request(server.url, "PUT", headers=headers, body=Body([b"ab", b"cd"])))
            assert got[1].raw == b"PUT / HTTP/1.1\r\nhost: h\r\ncontent-length: 4\r\n\r\nabcd"
            big = [os.urandom(100_000) for _ in range(30)]
            await t.send(request(server.url, "POST", headers=[(b"host", b"h")], body=Body(big)))
            assert got[2].body == b"".join(big)
            assert len(server.peers) == 1
            await t.close()

    run(main())


def test_early_answer_stops_the_upload_and_retires_the_connection(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.head()
            peer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
            await peer.wait_eof()

        async with Server(handler) as server:
            t = transport(server.url)
            gate = asyncio.Event()
            body = Body([b"a", b"b", b"c"], gate)
            sending = asyncio.ensure_future(
                t.send(request(server.url, "POST", headers=[(b"host", b"h")], body=body))
            )
            await asyncio.sleep(0.1)
            gate.set()
            response = await sending
            assert response.status == 413
            assert body.pulled < 3
            await asyncio.sleep(0.05)
            assert server.peers[0].eof  # not pooled: the request was never finished
            assert pool_of(t).size == 0
            await t.close()

    run(main())


# --- timeouts and failures ------------------------------------------------------------


def test_connect_refused(run: Runner[None]) -> None:
    async def main() -> None:
        url = f"http://127.0.0.1:{free_port()}"
        t = transport(url)
        with pytest.raises(UpstreamConnectError, match="connect failed"):
            await t.send(request(url))
        assert pool_of(t).size == 0
        await t.close()

    run(main())


def test_connect_timeout(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            while await peer.reader.read(65536):  # TCP accepted, the TLS handshake unanswered
                pass

        async with Server(handler) as server:
            url = f"https://127.0.0.1:{server.port}"
            t = transport(url)
            timeouts = Timeouts(connect=0.1, read=5.0)
            with pytest.raises(UpstreamTimeout, match="connect timed out"):
                await t.send(request(url, timeouts=timeouts))
            assert pool_of(t).size == 0
            await t.close()

    run(main())


def test_read_timeout_before_the_head(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.request()
            await peer.wait_eof()

        async with Server(handler) as server:
            t = transport(server.url)
            with pytest.raises(UpstreamTimeout, match="read timeout"):
                await t.send(request(server.url, timeouts=Timeouts(read=0.15)))
            assert pool_of(t).size == 0
            await t.close()

    run(main())


def test_read_timeout_mid_body(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.request()
            peer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
            await peer.wait_eof()

        async with Server(handler) as server:
            t = transport(server.url)
            response = await t.send(request(server.url, timeouts=Timeouts(read=0.15)))
            assert response.stream is not None
            with pytest.raises(UpstreamBodyError, match="read timeout"):
                await read_body(response)
            await response.stream.aclose()
            await t.close()

    run(main())


def test_total_timeout_covers_a_trickling_head(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.request()
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: yes-very-slow\r\n":
                if peer.writer.transport.is_closing() or peer.reader.at_eof():
                    return
                peer.write(bytes([byte]))
                await asyncio.sleep(0.02)

        async with Server(handler) as server:
            t = transport(server.url)
            timeouts = Timeouts(read=0.5, total=0.2)
            with pytest.raises(UpstreamTimeout, match="total timeout"):
                await t.send(request(server.url, timeouts=timeouts))
            await t.close()

    run(main())


def test_garbage_is_a_protocol_error(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.request()
            peer.write(b"SSH-2.0-OpenSSH_9.0\r\n\r\n")

        async with Server(handler) as server:
            t = transport(server.url)
            with pytest.raises(UpstreamProtocolError, match="invalid response"):
                await t.send(request(server.url))
            assert pool_of(t).size == 0
            await t.close()

    run(main())


@pytest.mark.parametrize(
    "partial",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n5\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_upstream_dying_mid_body_raises_from_the_stream(run: Runner[None], partial: bytes) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.request()
            head, _, rest = partial.partition(b"\r\n\r\n")
            peer.write(head + b"\r\n\r\n")
            await peer.writer.drain()
            await asyncio.sleep(0.05)
            peer.write(rest)

        async with Server(handler) as server:
            t = transport(server.url)
            response = await t.send(request(server.url))
            assert response.status == 200 and response.stream is not None
            with pytest.raises(UpstreamBodyError):
                await read_body(response)
            await response.stream.aclose()
            assert pool_of(t).size == 0
            await t.close()

    run(main())


def test_refused_upgrade_is_an_ordinary_response(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.request()
            peer.write(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope")
            await peer.wait_eof()

        async with Server(handler) as server:
            t = transport(server.url)
            response = await t.send(request(server.url, headers=WS_HEADERS, upgrade=True))
            assert (response.status, response.upgraded) == (426, None)
            assert await read_body(response) == b"nope"
            await t.close()

    run(main())


def test_unrequested_101_is_a_protocol_error(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.request()
            peer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"
            )

        async with Server(handler) as server:
            t = transport(server.url)
            with pytest.raises(UpstreamProtocolError, match="did not ask"):
                await t.send(request(server.url))
            await t.close()

    run(main())


def test_cancelled_send_drops_the_connection(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.request()
            await peer.wait_eof()

        async with Server(handler) as server:
            t = transport(server.url)
            sending = asyncio.ensure_future(t.send(request(server.url)))
            await asyncio.sleep(0.05)
            sending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sending
            await asyncio.sleep(0.05)
            assert server.peers[0].eof
            assert pool_of(t).size == 0
            await t.close()

    run(main())


# --- streaming and backpressure -------------------------------------------------------


def stream_of(response: Response) -> Incoming:
    assert isinstance(response.stream, Incoming)
    return response.stream


def conn_of(response: Response) -> Connection:
    conn = stream_of(response).conn
    assert conn is not None
    return conn


def test_backpressure_pauses_reading_until_the_consumer_drains(run: Runner[None]) -> None:
    size = 8 * 1024 * 1024

    async def main() -> None:
        async def handler(peer: Peer) -> None:
            while await peer.request() is not None:
                peer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                for _ in range(size // 65536):
                    peer.write(b"x" * 65536)
                    await peer.writer.drain()

        async with Server(handler) as server:
            t = transport(server.url)
            response = await t.send(request(server.url, timeouts=Timeouts(read=0.2)))
            conn = conn_of(response)
            await asyncio.sleep(
                0.5
            )  # longer than the read timeout: pausing is not upstream silence
            assert conn.paused
            assert stream_of(response).size < HIGH_WATER + 512 * 1024
            assert len(await read_body(response)) == size
            assert not conn.paused
            assert pool_of(t).idle == [conn]
            await t.close()

    run(main())


def test_aclose_before_the_end_closes_the_connection(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            while await peer.request() is not None:
                peer.write(
                    b"HTTP/1.1 200 OK\r\nX-Conn: %d\r\nContent-Length: 4\r\n\r\nab" % peer.index
                )
                await peer.writer.drain()
                await asyncio.sleep(0.05)
                peer.write(b"cd")

        async with Server(handler) as server:
            t = transport(server.url)
            response = await t.send(request(server.url))
            assert response.stream is not None
            await response.stream.aclose()
            await asyncio.sleep(0.1)
            assert server.peers[0].eof
            again = await t.send(request(server.url))
            assert header(again, b"x-conn") == b"1"
            assert await read_body(again) == b"abcd"
            await t.close()

    run(main())


# --- TLS ------------------------------------------------------------------------------


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:  # the openssl command line does the same
        openssl = shutil.which("openssl")
        assert openssl, "TLS tests need the cryptography package or the openssl command"
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_files() -> Iterator[tuple[Path, Path]]:
    with tempfile.TemporaryDirectory() as directory:
        yield make_cert(Path(directory))


def server_context(cert: Path, key: Path, names: list[str | None]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    def remember(sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        names.append(name)

    context.sni_callback = remember
    return context


def test_tls_without_verification(run: Runner[None], tls_files: tuple[Path, Path]) -> None:
    async def main() -> None:
        names: list[str | None] = []
        async with Server(serve_ok, server_context(*tls_files, names)) as server:
            t = transport(server.url, verify_tls=False)
            for _ in range(2):
                assert await read_body(await t.send(request(server.url))) == b"ok"
            assert len(server.peers) == 1
            await t.close()

    run(main())


def test_tls_verification_fails_for_an_unknown_issuer(
    run: Runner[None], tls_files: tuple[Path, Path]
) -> None:
    async def main() -> None:
        async with Server(serve_ok, server_context(*tls_files, [])) as server:
            t = transport(server.url)
            with pytest.raises(UpstreamConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await t.send(request(server.url))
            assert pool_of(t).size == 0
            await t.close()

    run(main())


def test_tls_verified_with_sni_from_the_target_host(
    run: Runner[None], tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files[0]))

    async def main() -> None:
        names: list[str | None] = []
        async with Server(serve_ok, server_context(*tls_files, names)) as server:
            url = f"https://localhost:{server.port}"
            t = transport(url)
            assert await read_body(await t.send(request(url))) == b"ok"
            assert names == ["localhost"]
            await t.close()

    run(main())


# --- upgrades -------------------------------------------------------------------------

# RFC 6455 1.3: the example key and the accept value that answers it.
WS_HEADERS = [
    (b"host", b"h"),
    (b"upgrade", b"websocket"),
    (b"connection", b"upgrade"),
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"sec-websocket-version", b"13"),
]
WS_101 = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
)


@pytest.mark.parametrize(
    ("answer", "headers", "reason"),
    [
        # an h2c switch: a tunnel to a protocol no policy understands
        (b"Upgrade: h2c\r\nConnection: Upgrade\r\n", WS_HEADERS, "other than websocket"),
        (
            b"Upgrade: h2c\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n",
            WS_HEADERS,
            "other than websocket",
        ),
        (b"Upgrade: websocket\r\nConnection: Upgrade\r\n", WS_HEADERS, "Sec-WebSocket-Accept"),
        (
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n",
            WS_HEADERS,
            "Sec-WebSocket-Accept",
        ),
        (
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n",
            WS_HEADERS,
            "Sec-WebSocket-Accept",
        ),
        (
            WS_101.split(b"\r\n", 1)[1],
            [h for h in WS_HEADERS if h[0] != b"sec-websocket-key"],
            "without a key",
        ),
    ],
)
def test_101_must_complete_the_websocket_handshake(
    run: Runner[None], answer: bytes, headers: Headers, reason: str
) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.request()
            peer.write(b"HTTP/1.1 101 Switching Protocols\r\n" + answer + b"\r\nbytes")
            await peer.wait_eof()

        async with Server(handler) as server:
            t = transport(server.url)
            with pytest.raises(UpstreamProtocolError, match=reason):
                await t.send(request(server.url, headers=headers, upgrade=True))
            assert pool_of(t).size == 0
            await t.close()

    run(main())


def test_websocket_accept_is_rfc_6455() -> None:
    assert websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_upgrade_relays_raw_bytes_and_leaves_the_pool(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            req = await peer.request()
            if req is None:
                return
            if not peer.upgraded:
                peer.write(OK)
                await peer.wait_eof()
                return
            peer.write(WS_101 + b"\r\nhello")
            while True:
                data = await peer.reader.read(65536)
                if not data:
                    return
                peer.write(data.upper())

        async with Server(handler) as server:
            t = transport(server.url, max_connections=1)
            response = await t.send(request(server.url, headers=WS_HEADERS, upgrade=True))
            assert response.status == 101
            assert response.reason == b"Switching Protocols"
            assert (b"Upgrade", b"websocket") in response.headers
            pipe = response.upgraded
            assert pipe is not None
            assert await pipe.read() == b"hello"
            pipe.write(b"abc")
            await pipe.drain()
            assert await pipe.read() == b"ABC"
            # The upgraded connection left the pool: a plain request still gets a slot.
            assert await read_body(await t.send(request(server.url))) == b"ok"
            pipe.close()
            assert await pipe.read() == b""
            await t.close()

    run(main())


# --- what is never relayed as received ---------------------------------------------------


def test_response_trailers_are_not_merged_into_the_head(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.request()
            peer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
                b"3\r\nabc\r\n0\r\nX-Checksum: 1234\r\nSet-Cookie: late=1\r\n\r\n"
            )
            await peer.wait_eof()

        async with Server(handler) as server:
            t = transport(server.url)
            response = await t.send(request(server.url))
            assert await read_body(response) == b"abc"
            assert header(response, b"x-checksum") is None
            assert header(response, b"set-cookie") is None  # RFC 9110 6.5.1
            assert header(response, b"trailer") == b"X-Checksum"
            await t.close()

    run(main())


@pytest.mark.parametrize(
    "coding",
    [b"gzip, chunked", b"gzip", b"chunked, gzip", b"x-custom,chunked"],
)
def test_transfer_codings_other_than_chunked_are_refused(run: Runner[None], coding: bytes) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.request()
            peer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %s\r\n\r\n3\r\nabc\r\n0\r\n\r\n" % coding
            )
            await peer.wait_eof()

        async with Server(handler) as server:
            t = transport(server.url)
            # De-chunked but still gzip, with Transfer-Encoding (hop-by-hop) removed: the
            # client could not tell. The gateway decodes none of them, so it refuses.
            with pytest.raises(UpstreamProtocolError, match="transfer coding"):
                await t.send(request(server.url))
            assert pool_of(t).size == 0
            await t.close()

    run(main())


@pytest.mark.parametrize(("status", "method"), [(204, "GET"), (304, "GET"), (200, "HEAD")])
def test_other_codings_on_a_response_without_body_pass(
    run: Runner[None], status: int, method: str
) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            while await peer.request() is not None:
                peer.write(
                    b'HTTP/1.1 %d X\r\nTransfer-Encoding: gzip\r\nETag: "e"\r\n\r\n' % status
                )

        async with Server(handler) as server:
            t = transport(server.url)
            # No body, so nothing is left undecoded: relayed as it came.
            for _ in range(2):
                response = await t.send(request(server.url, method=method))
                assert response.status == status
                assert await read_body(response) == b""
                assert header(response, b"etag") == b'"e"'
            await t.close()

    run(main())


def test_chunked_in_several_spellings_is_accepted(run: Runner[None]) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            while await peer.request() is not None:
                peer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked \r\n\r\n2\r\nok\r\n0\r\n\r\n"
                )

        async with Server(handler) as server:
            t = transport(server.url)
            response = await t.send(request(server.url))
            assert await read_body(response) == b"ok"
            await t.close()

    run(main())


@pytest.mark.parametrize("status", [b"999 Weird", b"600 Beyond", b"099 Early", b"000 Zero"])
def test_status_outside_100_to_599_is_a_protocol_error(run: Runner[None], status: bytes) -> None:
    async def main() -> None:
        async def handler(peer: Peer) -> None:
            await peer.request()
            peer.write(b"HTTP/1.1 %s\r\nContent-Length: 2\r\n\r\nok" % status)
            await peer.wait_eof()

        async with Server(handler) as server:
            t = transport(server.url)
            with pytest.raises(UpstreamProtocolError, match="outside 100-599"):
                await t.send(request(server.url))
            await t.close()

    run(main())
