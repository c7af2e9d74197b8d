"""The native HTTP/1.1 front-end, over raw sockets, with the transport faked at its seam.

Every test runs on both the default asyncio loop and uvloop (production runs uvloop).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop

from gateway.config.loader import LoadedConfig, load_text
from gateway.errors import UpstreamBodyError
from gateway.exchange import Response
from gateway.frontends.native import NativeFrontend
from gateway.runtime import Runtime
from gateway.transport.base import UpstreamRequest

CONFIG = """
version: 1
listen: 127.0.0.1:0
admin: 127.0.0.1:0
logging: {access_log: false}
reload: {watch: false}
limits:
  max_request_line: 256
  max_header_size: 1KiB
  max_headers: 10
  header_timeout: 300ms
  body_timeout: 300ms
  keepalive_timeout: 300ms
upstreams:
  app: {url: "http://127.0.0.1:9"}
routes:
  - name: all
    match: {prefix: /}
    upstream: app
"""

Handler = Callable[[UpstreamRequest], Awaitable[Response]]


async def read_body(request: UpstreamRequest) -> bytes:
    body = request.body
    if body is None or isinstance(body, bytes):
        return body or b""
    return b"".join([chunk async for chunk in body])


async def echo(request: UpstreamRequest) -> Response:
    if request.path == b"/noread":
        return Response(403, [], b"no")
    body = await read_body(request)
    text = b"%s %s %d" % (request.method.encode(), request.path, len(body))
    return Response(200, [(b"content-type", b"text/plain")], text)


class FakeTransport:
    name = "fake"

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[UpstreamRequest] = []

    async def send(self, request: UpstreamRequest) -> Response:
        self.requests.append(request)
        return await self.handler(request)

    async def close(self) -> None:
        return None


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    head: bytes

    def header(self, name: bytes) -> bytes | None:
        values = [v for k, v in self.headers if k == name]
        return values[0] if values else None

    def all(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


@dataclass
class Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def head(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = raw[:-4].split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        return status, headers, raw

    async def reply(self, no_body: bool = False) -> Reply:
        status, headers, raw = await self.head()
        found = dict(headers)
        if no_body or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif b"content-length" in found:
            body = await self.reader.readexactly(int(found[b"content-length"]))
        elif found.get(b"transfer-encoding") == b"chunked":
            parts = []
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                if not size:
                    await self.reader.readline()
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
            body = b"".join(parts)
        else:
            body = await self.rest()
        return Reply(status, headers, body, raw)

    async def rest(self, timeout: float = 5) -> bytes:
        """Everything until the server closes (a reset counts as closed)."""
        chunks = []
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(self.reader.read(65536), timeout):
                chunks.append(chunk)
        return b"".join(chunks)

    async def closed(self, timeout: float = 2) -> bool:
        return await self.rest(timeout) == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@dataclass
class Gateway:
    frontend: NativeFrontend
    runtime: Runtime
    transport: FakeTransport
    port: int
    clients: list[Client] = field(default_factory=list)

    async def connect(self) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        client = Client(reader, writer)
        self.clients.append(client)
        return client

    async def exchange(self, data: bytes, no_body: bool = False) -> Reply:
        client = await self.connect()
        client.send(data)
        return await client.reply(no_body)


@contextlib.asynccontextmanager
async def serving(handler: Handler = echo, config: str = CONFIG) -> AsyncIterator[Gateway]:
    parsed, positions = load_text(config)
    transport = FakeTransport(handler)
    loaded = LoadedConfig(parsed, positions, Path("test.yaml"), "test")
    runtime = Runtime(loaded, transport_factory=lambda upstream: transport)
    await runtime.start()
    frontend = NativeFrontend(runtime, parsed)
    gateway: Gateway | None = None
    try:
        await frontend.start()
        # Inside the try: a listener left open would hang uvloop's loop.close().
        gateway = Gateway(frontend, runtime, transport, frontend.addresses[0][1])
        yield gateway
    finally:
        for client in gateway.clients if gateway is not None else []:
            await client.close()
        await frontend.stop_accepting()
        await frontend.drain(1.0)
        await runtime.close()


Scenario = Callable[[], Coroutine[Any, Any, None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Scenario], None]:
    def runner(scenario: Scenario) -> None:
        async def bounded() -> None:
            await asyncio.wait_for(scenario(), 15)

        if request.param == "uvloop":
            uvloop.run(bounded())
        else:
            asyncio.run(bounded())

    return runner


def get(path: str = "/", extra: str = "", version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: test\r\n{extra}\r\n".encode()


# -- keep-alive, pipelining, HTTP/1.0 ----------------------------------------------------


def test_keep_alive_and_date(run: Callable[[Scenario], None]) -> None:
    async def upstream_date(request: UpstreamRequest) -> Response:
        if request.path == b"/dated":
            return Response(200, [(b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT")], b"x")
        return await echo(request)

    async def scenario() -> None:
        async with serving(upstream_date) as gw:
            client = await gw.connect()
            client.send(get("/a?x=1"))
            first = await client.reply()
            client.send(get("/dated"))
            second = await client.reply()
            assert (first.status, first.body) == (200, b"GET /a?x=1 0")
            assert first.header(b"date") is not None
            assert first.header(b"connection") is None
            assert second.all(b"date") == [b"Mon, 01 Jan 2024 00:00:00 GMT"]
            assert len(gw.transport.requests) == 2

    run(scenario)


def test_pipelined_responses_in_order(run: Callable[[Scenario], None]) -> None:
    active = 0
    peak = 0

    async def varied(request: UpstreamRequest) -> Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.05 if request.path == b"/1" else 0)
        active -= 1
        return await echo(request)

    async def scenario() -> None:
        async with serving(varied) as gw:
            client = await gw.connect()
            client.send(get("/1") + get("/2") + b"POST /3 HTTP/1.1\r\nHost: t\r\n"
                        b"Content-Length: 2\r\n\r\nhi" + get("/4"))  # fmt: skip
            bodies = [(await client.reply()).body for _ in range(4)]
            assert bodies == [b"GET /1 0", b"GET /2 0", b"POST /3 2", b"GET /4 0"]
            assert peak == 1

    run(scenario)


def test_deep_pipeline_pauses_and_resumes(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            client = await gw.connect()
            client.send(b"".join(get(f"/{i}") for i in range(60)))
            for i in range(60):
                assert (await client.reply()).body == f"GET /{i} 0".encode()

    run(scenario)


def test_http10_closes_by_default(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            client = await gw.connect()
            client.send(b"GET /old HTTP/1.0\r\n\r\n")
            reply = await client.reply()
            assert (reply.status, reply.body) == (200, b"GET /old 0")
            assert reply.header(b"connection") == b"close"
            assert await client.closed()

    run(scenario)


def test_http10_keep_alive_when_asked(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            client = await gw.connect()
            client.send(get("/a", "Connection: keep-alive\r\n", "1.0"))
            reply = await client.reply()
            assert reply.header(b"connection") == b"keep-alive"
            client.send(get("/b", "Connection: keep-alive\r\n", "1.0"))
            assert (await client.reply()).body == b"GET /b 0"

    run(scenario)


async def chunks(*parts: bytes) -> AsyncGenerator[bytes, None]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


def test_http10_unknown_length_is_close_delimited(run: Callable[[Scenario], None]) -> None:
    async def streamed(request: UpstreamRequest) -> Response:
        return Response(200, [], stream=chunks(b"ab", b"", b"cd"))

    async def scenario() -> None:
        async with serving(streamed) as gw:
            client = await gw.connect()
            client.send(get("/s", "Connection: keep-alive\r\n", "1.0"))
            reply = await client.reply()
            assert reply.header(b"transfer-encoding") is None
            assert reply.header(b"content-length") is None
            assert reply.header(b"connection") == b"close"
            assert reply.body == b"abcd"

    run(scenario)


# -- request bodies ------------------------------------------------------------------------


def test_chunked_request_body_streams(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            client = await gw.connect()
            client.send(b"POST /up HTTP/1.1\r\nHost: t\r\n")
            client.send(b"Transfer-Encoding: chunked\r\n\r\n5\r\nhel")
            await asyncio.sleep(0.02)
            client.send(b"lo\r\n6;ext=1\r\n world\r\n0\r\n\r\n")
            reply = await client.reply()
            assert reply.body == b"POST /up 11"
            request = gw.transport.requests[0]
            assert not any(k.lower() == b"content-length" for k, _ in request.headers)

    run(scenario)


def test_large_body_with_slow_reader(run: Callable[[Scenario], None]) -> None:
    size = 3 * 1024 * 1024
    seen: list[int] = []

    async def slow(request: UpstreamRequest) -> Response:
        assert request.body is not None and not isinstance(request.body, bytes)
        total = 0
        async for chunk in request.body:
            seen.append(len(chunk))
            total += len(chunk)
            await asyncio.sleep(0.001)
        return Response(200, [], b"%d" % total)

    async def scenario() -> None:
        async with serving(slow) as gw:
            client = await gw.connect()
            client.send(b"PUT /big HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
            client.send(b"x" * size)
            reply = await client.reply()
            assert reply.body == str(size).encode()
            assert max(seen) <= 1024 * 1024  # buffering stays bounded

    run(scenario)


def test_expect_continue_sent_when_body_is_read(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            client = await gw.connect()
            client.send(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                        b"Expect: 100-continue\r\n\r\n")  # fmt: skip
            status, _, _ = await client.head()
            assert status == 100
            client.send(b"hello")
            reply = await client.reply()
            assert reply.body == b"POST /e 5"
            client.send(get("/after"))
            assert (await client.reply()).body == b"GET /after 0"

    run(scenario)


def test_expect_continue_not_sent_when_answered_first(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            client = await gw.connect()
            client.send(b"POST /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                        b"Expect: 100-continue\r\n\r\n")  # fmt: skip
            reply = await client.reply()
            assert reply.status == 403
            assert reply.header(b"connection") == b"close"
            assert await client.closed()

    run(scenario)


def test_unread_body_is_discarded_and_connection_kept(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            client = await gw.connect()
            client.send(b"POST /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
            reply = await client.reply()
            assert reply.status == 403
            assert reply.header(b"connection") is None
            client.send(b"hello" + get("/next"))
            assert (await client.reply()).body == b"GET /next 0"

    run(scenario)


def test_body_timeout_closes(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            client = await gw.connect()
            client.send(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
            started = time.monotonic()
            assert await client.closed(3)
            assert time.monotonic() - started < 2
            await asyncio.sleep(0.05)
            assert gw.runtime.in_flight == 0

    run(scenario)


def test_malformed_chunked_body_is_400(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            client = await gw.connect()
            client.send(b"POST /c HTTP/1.1\r\nHost: t\r\n")
            client.send(b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n")
            await asyncio.sleep(0.02)
            client.send(b"zz\r\n")
            reply = await client.reply()
            assert reply.status == 400
            assert reply.header(b"content-type") == b"application/problem+json"
            assert await client.closed()

    run(scenario)


# -- limits --------------------------------------------------------------------------------


async def rejected(gw: Gateway, data: bytes, status: int) -> Reply:
    client = await gw.connect()
    client.send(data)
    reply = await client.reply()
    assert reply.status == status, reply
    assert reply.header(b"content-type") == b"application/problem+json"
    assert reply.header(b"connection") == b"close"
    assert await client.closed()
    assert gw.transport.requests == []
    return reply


def test_request_line_too_long_is_414(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            await rejected(gw, get("/" + "a" * 300), 414)

    run(scenario)


def test_too_many_headers_is_431(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            await rejected(gw, get("/", "".join(f"X-{i}: v\r\n" for i in range(11))), 431)

    run(scenario)


def test_headers_too_large_is_431(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            await rejected(gw, get("/", "X-Big: " + "b" * 1100 + "\r\n"), 431)

    run(scenario)


def test_endless_header_line_is_431(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            client = await gw.connect()
            client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Endless: ")
            for _ in range(4):
                await asyncio.sleep(0.02)
                client.send(b"e" * 600)
            reply = await client.reply()
            assert reply.status == 431
            assert await client.closed()

    run(scenario)


def test_slow_head_gets_408(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            client = await gw.connect()
            client.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
            started = time.monotonic()
            reply = await client.reply()
            assert reply.status == 408
            assert 0.2 < time.monotonic() - started < 2
            assert await client.closed()

    run(scenario)


def test_silent_connection_closed_without_a_word(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            client = await gw.connect()
            assert await client.closed(3)

    run(scenario)


def test_idle_keep_alive_closed(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            client = await gw.connect()
            client.send(get())
            await client.reply()
            started = time.monotonic()
            assert await client.closed(3)
            assert 0.2 < time.monotonic() - started < 2

    run(scenario)


# -- malformed and smuggling attempts --------------------------------------------------------

SMUGGLING = {
    "cl-and-te": (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "te-and-cl": (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Length: 5\r\n\r\n0\r\n\r\n", 400),
    "duplicate-cl": (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n"
                     b"Content-Length: 1\r\n\r\nx", 400),
    "cl-list": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 1\r\n\r\nx",
    "cl-sign": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +1\r\n\r\nx",
    "te-gzip": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nxx",
    "te-chunked-not-last": (b"POST / HTTP/1.1\r\nHost: t\r\n"
                            b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400),
    "te-gzip-chunked": (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                        b"0\r\n\r\n", 501),
    "te-twice": (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "te-http10": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: t\r\nX-A: b\r\n c\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: t\n\n",
    "bare-cr": b"GET / HTTP/1.1\r\nHost: t\rX: y\r\n\r\n",
    "ctl-in-value": b"GET / HTTP/1.1\r\nHost: t\x01x\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : t\r\n\r\n",
    "space-in-target": b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n",
    "no-host": b"GET / HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "bad-method": b"G(T / HTTP/1.1\r\nHost: t\r\n\r\n",  # not a token; `get` is 501
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "http2-version": (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    "upgrade-with-body": (b"POST / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n"
                          b"Upgrade: websocket\r\nContent-Length: 3\r\n\r\nabc", 400),
    "authority-form": b"GET example.com:80 HTTP/1.1\r\nHost: t\r\n\r\n",
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SMUGGLING))
def test_malformed_requests_are_refused(run: Callable[[Scenario], None], case: str) -> None:
    value = SMUGGLING[case]
    data, status = value if isinstance(value, tuple) else (value, 400)

    async def scenario() -> None:
        async with serving() as gw:
            reply = await rejected(gw, data, status)
            assert b'"status":%d' % status in reply.body

    run(scenario)


def test_error_waits_for_earlier_responses(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            client = await gw.connect()
            client.send(get("/fine") + b"BROKEN\r\n\r\n")
            first = await client.reply()
            assert (first.status, first.body) == (200, b"GET /fine 0")
            second = await client.reply()
            assert second.status == 400
            assert await client.closed()

    run(scenario)


def test_absolute_form_target(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            target = b"http://example.com/p?q=1"
            reply = await gw.exchange(b"GET %s HTTP/1.1\r\nHost: other\r\n\r\n" % target)
            assert reply.body == b"GET /p?q=1 0"
            headers = dict(gw.transport.requests[0].headers)
            assert headers[b"host"] == b"example.com"

    run(scenario)


# -- responses -------------------------------------------------------------------------------


def test_streamed_response_is_chunked(run: Callable[[Scenario], None]) -> None:
    async def streamed(request: UpstreamRequest) -> Response:
        if request.path != b"/s":
            return await echo(request)
        return Response(200, [(b"Transfer-Encoding", b"chunked")], stream=chunks(b"a", b"", b"bc"))

    async def scenario() -> None:
        async with serving(streamed) as gw:
            client = await gw.connect()
            client.send(get("/s"))
            _, headers, _ = await client.head()
            assert dict(headers)[b"transfer-encoding"] == b"chunked"
            assert await client.reader.readexactly(18) == b"1\r\na\r\n2\r\nbc\r\n0\r\n\r\n"
            client.send(get("/next"))
            assert (await client.reply()).body == b"GET /next 0"

    run(scenario)


def test_streamed_response_with_length(run: Callable[[Scenario], None]) -> None:
    async def streamed(request: UpstreamRequest) -> Response:
        return Response(200, [(b"Content-Length", b"5")], stream=chunks(b"he", b"llo"))

    async def scenario() -> None:
        async with serving(streamed) as gw:
            reply = await gw.exchange(get("/s"))
            assert reply.header(b"transfer-encoding") is None
            assert (reply.header(b"content-length"), reply.body) == (b"5", b"hello")

    run(scenario)


def test_head_has_no_body(run: Callable[[Scenario], None]) -> None:
    async def sized(request: UpstreamRequest) -> Response:
        if request.method == "HEAD":
            return Response(200, [(b"Content-Length", b"100")], stream=chunks())
        return await echo(request)

    async def scenario() -> None:
        async with serving(sized) as gw:
            client = await gw.connect()
            client.send(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n")
            reply = await client.reply(no_body=True)
            assert reply.header(b"content-length") == b"100"
            client.send(get("/next"))
            assert (await client.reply()).body == b"GET /next 0"

    run(scenario)


def test_upstream_body_error_cuts_the_connection(run: Callable[[Scenario], None]) -> None:
    async def broken(request: UpstreamRequest) -> Response:
        async def stream() -> AsyncGenerator[bytes, None]:
            yield b"abc"
            await asyncio.sleep(0.01)
            raise UpstreamBodyError("upstream reset")

        headers = [(b"Content-Length", b"10")] if request.path == b"/sized" else []
        return Response(200, headers, stream=stream())

    async def scenario() -> None:
        async with serving(broken) as gw:
            for path in ("/chunked", "/sized"):
                client = await gw.connect()
                client.send(get(path))
                await client.head()
                rest = await client.rest()
                assert rest in (b"3\r\nabc\r\n", b"abc", b"")  # truncated, never complete
                assert not rest.endswith(b"0\r\n\r\n")

    run(scenario)


def test_upstream_sending_too_much_is_cut(run: Callable[[Scenario], None]) -> None:
    async def liar(request: UpstreamRequest) -> Response:
        return Response(200, [(b"Content-Length", b"3")], stream=chunks(b"ab", b"cdHTTP/1.1 200"))

    async def scenario() -> None:
        async with serving(liar) as gw:
            client = await gw.connect()
            client.send(get())
            await client.head()
            assert await client.rest() in (b"abc", b"ab", b"")

    run(scenario)


def test_informational_status_from_chain_is_502(run: Callable[[Scenario], None]) -> None:
    async def early(request: UpstreamRequest) -> Response:
        return Response(103, [(b"link", b"</a>")])

    async def scenario() -> None:
        async with serving(early) as gw:
            reply = await gw.exchange(get())
            assert reply.status == 502

    run(scenario)


def test_client_gone_mid_response_closes_the_stream(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        done = asyncio.Event()

        async def endless(request: UpstreamRequest) -> Response:
            async def stream() -> AsyncGenerator[bytes, None]:
                try:
                    yield b"first"
                    await asyncio.Event().wait()
                    yield b"never"
                finally:
                    done.set()

            return Response(200, [], stream=stream())

        async with serving(endless) as gw:
            client = await gw.connect()
            client.send(get())
            await client.head()
            assert await client.reader.readexactly(10) == b"5\r\nfirst\r\n"
            await client.close()
            await asyncio.wait_for(done.wait(), 2)
            await asyncio.sleep(0.05)
            assert gw.runtime.in_flight == 0

    run(scenario)


def test_client_gone_before_response_cancels_the_handler(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        cancelled = asyncio.Event()
        entered = asyncio.Event()

        async def stuck(request: UpstreamRequest) -> Response:
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            raise AssertionError("unreachable")

        async with serving(stuck) as gw:
            client = await gw.connect()
            client.send(get())
            await asyncio.wait_for(entered.wait(), 2)
            await client.close()
            await asyncio.wait_for(cancelled.wait(), 2)
            await asyncio.sleep(0.05)
            assert gw.runtime.in_flight == 0

    run(scenario)


def test_client_half_close_counts_as_gone(run: Callable[[Scenario], None]) -> None:
    """Like nginx and uvicorn: EOF from the client ends its request (499), not just a read."""

    async def scenario() -> None:
        cancelled = asyncio.Event()

        async def slow(request: UpstreamRequest) -> Response:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return await echo(request)

        async with serving(slow) as gw:
            client = await gw.connect()
            client.send(get("/a"))
            client.writer.write_eof()
            await asyncio.wait_for(cancelled.wait(), 2)
            assert await client.closed()

    run(scenario)


# -- upgrades ---------------------------------------------------------------------------------


class FakeUpgraded:
    """Upper-cases what it gets and sends it back; ``b"bye"`` makes it close its side."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.received = b""

    async def read(self) -> bytes:
        return await self.queue.get()

    def write(self, data: bytes) -> None:
        self.received += data
        self.queue.put_nowait(b"" if data == b"bye" else data.upper())

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        self.closed.set()


UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")  # fmt: skip


def test_upgrade_relays_both_ways(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        upgraded = FakeUpgraded()

        async def switch(request: UpstreamRequest) -> Response:
            assert request.upgrade
            await asyncio.sleep(0.02)  # the client's early bytes arrive meanwhile
            headers = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")]
            return Response(101, headers, upgraded=upgraded)

        async with serving(switch) as gw:
            client = await gw.connect()
            client.send(UPGRADE + b"early")
            status, headers, _ = await client.head()
            assert status == 101
            assert dict(headers)[b"upgrade"] == b"websocket"
            assert await client.reader.readexactly(5) == b"EARLY"
            client.send(b"ping")
            assert await client.reader.readexactly(4) == b"PING"
            client.send(b"bye")  # the upstream side closes
            assert await client.closed()
            assert upgraded.closed.is_set()
            assert upgraded.received == b"earlypingbye"

    run(scenario)


def test_upgrade_ends_when_client_leaves(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        upgraded = FakeUpgraded()

        async def switch(request: UpstreamRequest) -> Response:
            return Response(101, [(b"Upgrade", b"websocket")], upgraded=upgraded)

        async with serving(switch) as gw:
            client = await gw.connect()
            client.send(UPGRADE)
            assert (await client.head())[0] == 101
            await client.close()
            await asyncio.wait_for(upgraded.closed.wait(), 2)

    run(scenario)


def test_refused_upgrade_closes(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            client = await gw.connect()
            client.send(UPGRADE + b"\x81\x05hello")
            reply = await client.reply()
            assert (reply.status, reply.header(b"connection")) == (200, b"close")
            assert await client.closed()

    run(scenario)


H2C = (b"GET /h2c HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
       b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")  # fmt: skip


def test_other_upgrades_are_plain_requests(run: Callable[[Scenario], None]) -> None:
    # h2c smuggling: were the h2c upgrade relayed, the bytes after it would reach the
    # upstream as requests no route or policy saw. It goes up as a plain request, and
    # what follows it on the connection is parsed and routed as the next request.
    async def scenario() -> None:
        async with serving() as gw:
            client = await gw.connect()
            client.send(H2C + get("/next"))
            first = await client.reply()
            assert (first.status, first.body) == (200, b"GET /h2c 0")
            second = await client.reply()
            assert (second.status, second.body) == (200, b"GET /next 0")
            h2c, _ = gw.transport.requests
            assert not h2c.upgrade
            sent = [k.lower() for k, _ in h2c.headers]
            assert b"upgrade" not in sent and b"http2-settings" not in sent
            assert b"connection" not in sent
            client.send(get("/third"))  # the connection stays a plain HTTP one
            assert (await client.reply()).body == b"GET /third 0"

    run(scenario)


H2C_POST = (b"POST /h2c HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n")  # fmt: skip


@pytest.mark.parametrize(
    ("framing", "body"),
    [
        (b"Content-Length: 5\r\n", b"hello"),
        (b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
    ],
    ids=["length", "chunked"],
)
@pytest.mark.parametrize("later", [False, True], ids=["same-packet", "later-packet"])
def test_other_upgrade_with_a_body_is_a_plain_request(
    run: Callable[[Scenario], None], framing: bytes, body: bytes, later: bool
) -> None:
    # curl --http2 sends a POST with Upgrade: h2c. httptools stops at the end of its
    # head; the body after it is this request's, and what follows is the next request.
    async def scenario() -> None:
        async with serving() as gw:
            client = await gw.connect()
            head = H2C_POST + framing + b"\r\n"
            if later:
                client.send(head)
                await client.writer.drain()
                await asyncio.sleep(0.05)
                client.send(body[:3])
                await client.writer.drain()
                await asyncio.sleep(0.05)
                client.send(body[3:] + get("/next"))
            else:
                client.send(head + body + get("/next"))
            first = await client.reply()
            assert (first.status, first.body) == (200, b"POST /h2c 5")
            second = await client.reply()
            assert (second.status, second.body) == (200, b"GET /next 0")
            h2c, _ = gw.transport.requests
            assert not h2c.upgrade
            client.send(H2C + get("/third"))  # and again, on the parser that took over
            assert (await client.reply()).body == b"GET /h2c 0"
            assert (await client.reply()).body == b"GET /third 0"

    run(scenario)


def test_101_to_a_plain_request_is_502(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        upgraded = FakeUpgraded()

        async def switch(request: UpstreamRequest) -> Response:
            headers = [(b"Upgrade", b"h2c"), (b"Connection", b"Upgrade")]
            return Response(101, headers, upgraded=upgraded)

        async with serving(switch) as gw:
            client = await gw.connect()
            client.send(H2C + b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            reply = await client.reply()
            assert reply.status == 502
            assert reply.header(b"content-type") == b"application/problem+json"
            assert upgraded.received == b""  # nothing was relayed

    run(scenario)


def test_connect_is_501(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            data = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01"
            reply = await rejected(gw, data, 501)
            assert b"/not-implemented" in reply.body

    run(scenario)


@pytest.mark.parametrize(
    ("line", "status", "detail"),
    [
        (b"BREW /pot HTTP/1.1", 501, b"method BREW is not implemented"),
        (b"\r\nget /x HTTP/1.1", 501, b"method get is not implemented"),
        (b"G(T /x HTTP/1.1", 400, b"Invalid method"),
        (b"X" * 33 + b" /x HTTP/1.1", 400, b"Invalid method"),
    ],
)
def test_an_unknown_method_is_501_a_malformed_one_400(
    run: Callable[[Scenario], None], line: bytes, status: int, detail: bytes
) -> None:
    # RFC 9110 9.1: a method the server does not recognise is 501; a first word that is
    # not a method token at all is a malformed request line.
    async def scenario() -> None:
        async with serving() as gw:
            reply = await rejected(gw, line + b"\r\nHost: t\r\n\r\n", status)
            assert detail in reply.body

    run(scenario)


@pytest.mark.parametrize("host", [b"a b", b"a/b@c", b"h:8080/x", b"exa\\mple"])
def test_a_host_that_is_not_host_port_is_400(run: Callable[[Scenario], None], host: bytes) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            reply = await rejected(gw, b"GET /x HTTP/1.1\r\nHost: %s\r\n\r\n" % host, 400)
            assert b"not a valid host" in reply.body

    run(scenario)


TRAILER_ROUTES = """
routes:
  - name: admins-denied
    match: {prefix: /, headers: {X-Role: admin}}
    upstream: app
    policies:
      noop: {respond: 403}
  - name: all
    match: {prefix: /}
    upstream: app
"""
WITH_TRAILERS = (b"POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3\r\nabc\r\n0\r\nX-Role: admin\r\nHost: evil\r\n\r\n")  # fmt: skip


@pytest.mark.parametrize("split", [0, 1, 7, 61, 70])
def test_request_trailers_are_dropped(run: Callable[[Scenario], None], split: int) -> None:
    # RFC 9110 6.5.1: trailers are never merged into the header section, so they reach
    # neither routing nor the upstream, however TCP cuts the request (``split``: the
    # size of the pieces it arrives in; 0: one piece).
    config = CONFIG.split("routes:")[0] + TRAILER_ROUTES

    async def scenario() -> None:
        async with serving(config=config) as gw:
            client = await gw.connect()
            size = split or len(WITH_TRAILERS)
            for start in range(0, len(WITH_TRAILERS), size):
                piece = WITH_TRAILERS[start : start + size]
                client.send(piece)
                await client.writer.drain()
                await asyncio.sleep(0)
            reply = await client.reply()
            assert (reply.status, reply.body) == (200, b"POST /t 3")
            (sent,) = gw.transport.requests
            names = [k.lower() for k, _ in sent.headers]
            assert b"x-role" not in names
            assert dict(sent.headers)[b"host"] == b"t"
            client.send(get("/after"))  # the connection is still in step
            assert (await client.reply()).body == b"GET /after 0"

    run(scenario)


def test_trailers_have_their_own_bound(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            # Eleven fields would be too many as headers (max_headers: 10), not as trailers.
            fine = "".join(f"X-T{i}: v\r\n" for i in range(11)).encode()
            head = b"POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n"
            reply = await gw.exchange(head + b"0\r\n" + fine + b"\r\n")
            assert (reply.status, reply.body) == (200, b"POST /t 1")
            # Beyond max_header_size (1 KiB) of them, the request is refused.
            huge = b"".join(b"X-Big%d: %s\r\n" % (i, b"v" * 200) for i in range(8))
            client = await gw.connect()
            client.send(head + b"0\r\n" + huge + b"\r\n")
            reply = await client.reply()
            assert reply.status == 431
            assert await client.closed()

    run(scenario)


# -- drain ------------------------------------------------------------------------------------


def test_drain(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async def timed(request: UpstreamRequest) -> Response:
            if request.path == b"/stuck":
                await asyncio.Event().wait()
            await asyncio.sleep(0.2)
            return await echo(request)

        async with serving(timed) as gw:
            idle = await gw.connect()
            idle.send(get("/warm"))
            await idle.reply()
            busy = await gw.connect()
            busy.send(get("/busy"))
            stuck = await gw.connect()
            stuck.send(get("/stuck"))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            drained = asyncio.ensure_future(gw.frontend.drain(0.6))
            assert await idle.closed(1)
            reply = await busy.reply()
            assert (reply.body, reply.header(b"connection")) == (b"GET /busy 0", b"close")
            assert await busy.closed()
            assert await stuck.closed(3)
            await drained
            assert 0.5 < time.monotonic() - started < 2.5
            assert gw.runtime.in_flight == 0
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", gw.port)

    run(scenario)


def test_plain_blocking_socket_client() -> None:
    """A plain blocking socket (no asyncio on the client side) sees the same framing."""

    async def scenario(ready: asyncio.Future[int], stop: asyncio.Event) -> None:
        async with serving() as gw:
            ready.set_result(gw.port)
            await stop.wait()

    import threading

    loop = asyncio.new_event_loop()
    ready: asyncio.Future[int] = loop.create_future()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(scenario(ready, stop),))
    thread.start()
    try:
        while not ready.done():
            assert thread.is_alive(), "the gateway did not start"
            time.sleep(0.01)
        with socket.create_connection(("127.0.0.1", ready.result()), timeout=5) as sock:
            sock.sendall(b"GET /x HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert data.endswith(b"\r\n\r\nGET /x 0")
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def test_client_that_stops_reading_is_cut(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        closed = asyncio.Event()

        async def firehose(request: UpstreamRequest) -> Response:
            async def stream() -> AsyncGenerator[bytes, None]:
                try:
                    while True:
                        yield b"x" * 65536
                        await asyncio.sleep(0)
                finally:
                    closed.set()

            return Response(200, [], stream=stream())

        async with serving(firehose) as gw:
            client = await gw.connect()
            client.send(get("/firehose"))
            await asyncio.wait_for(closed.wait(), 10)  # never read: the write stall aborts

    run(scenario)


def test_in_flight_gauge_reads_the_runtime(run: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        entered = asyncio.Event()

        async def held(request: UpstreamRequest) -> Response:
            entered.set()
            await release.wait()
            return await echo(request)

        async with serving(held) as gw:
            client = await gw.connect()
            client.send(get("/held"))
            await entered.wait()
            assert gw.runtime.in_flight == 1
            assert b"gateway_requests_in_flight 1.0" in gw.runtime.metrics.render()
            release.set()
            await client.reply()
            assert b"gateway_requests_in_flight 0.0" in gw.runtime.metrics.render()

    run(scenario)


# -- framing parity with the ASGI front-end ----------------------------------------------------

FRAMING_CASES = [
    ("GET", Response(200, [(b"Content-Type", b"text/plain")], b"hello")),
    ("GET", Response(200, [(b"Content-Length", b"99"), (b"Date", b"x")], b"hello")),
    ("GET", Response(200, [(b"content-length", b"5"), (b"CONTENT-LENGTH", b"5")], stream=chunks())),
    ("GET", Response(200, [(b"Content-Length", b"nope"), (b"X", b"y")], stream=chunks())),
    ("GET", Response(200, [(b"Transfer-Encoding", b"chunked")], stream=chunks())),
    ("HEAD", Response(200, [(b"Content-Length", b"100"), (b"Transfer-Encoding", b"x")])),
    ("GET", Response(204, [(b"Content-Length", b"0")])),
    ("GET", Response(304, [(b"ETag", b'"a"'), (b"date", b"y")])),
]


@pytest.mark.parametrize("index", range(len(FRAMING_CASES)))
def test_framing_matches_framed_headers(index: int) -> None:
    from gateway.exchange import Exchange
    from gateway.frontends.common import body_allowed, framed_headers
    from gateway.frontends.native_send import framed_head

    method, response = FRAMING_CASES[index]
    exchange = Exchange(method, b"/", [(b"host", b"t")], "127.0.0.1")
    expected_headers, expected_length = framed_headers(exchange, response)
    parts, length, dated = framed_head(response, body_allowed(method, response.status))
    lines = b"".join(parts).split(b"\r\n")[:-1]
    if not dated:  # framed_headers adds Date; the native front-end appends its own line
        assert expected_headers[-1][0] == b"date"
        expected_headers = expected_headers[:-1]
    assert [tuple(line.split(b": ", 1)) for line in lines] == expected_headers
    assert length == expected_length
    assert dated == any(k.lower() == b"date" for k, _ in response.headers)
