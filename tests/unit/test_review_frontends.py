"""Review findings on the front-ends: client disconnects and broken bodies mid-request.

A client that goes away (or breaks its body's framing) while the chain reads its body is
the client's fault: it must never surface as a 500 with a traceback in the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from gateway.config.loader import LoadedConfig, load_text
from gateway.exchange import Response
from gateway.frontends.asgi import GatewayApp
from gateway.runtime import Runtime
from gateway.transport.base import UpstreamRequest
from tests.unit.test_native_frontend import CONFIG, FakeTransport, Scenario, echo, serving

Runner = Callable[[Scenario], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    def runner(scenario: Scenario) -> None:
        async def bounded() -> None:
            await asyncio.wait_for(scenario(), 15)

        if request.param == "uvloop":
            uvloop.run(bounded())
        else:
            asyncio.run(bounded())

    return runner


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_native_malformed_body_mid_chain_logs_no_error(
    run: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with serving() as gw:
            client = await gw.connect()
            client.send(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            client.send(b"2\r\nab\r\n")
            await asyncio.sleep(0.05)  # the chain is reading the body by now
            client.send(b"zz\r\n")
            reply = await client.reply()
            assert reply.status == 400
            assert await client.closed()

    with caplog.at_level(logging.WARNING, logger="gateway"):
        run(scenario)
    assert _errors(caplog) == []


# -- ASGI ------------------------------------------------------------------------------


def _runtime(transport: FakeTransport) -> Runtime:
    parsed, positions = load_text(CONFIG)
    loaded = LoadedConfig(parsed, positions, Path("test.yaml"), "test")
    return Runtime(loaded, transport_factory=lambda upstream: transport)


def _scope(method: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": "/x",
        "raw_path": b"/x",
        "query_string": b"",
        "headers": [(b"host", b"t"), *headers],
        "client": ("127.0.0.1", 1234),
        "scheme": "http",
        "http_version": "1.1",
    }


def _count(runtime: Runtime, status_class: str) -> float:
    value = runtime.metrics.registry.get_sample_value(
        "gateway_requests_total", {"route": "all", "method": "POST", "status_class": status_class}
    )
    return value or 0.0


def test_asgi_client_gone_mid_body_is_499_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        runtime = _runtime(FakeTransport(echo))
        app = GatewayApp(runtime)
        messages = [
            {"type": "http.request", "body": b"abc", "more_body": True},
            {"type": "http.disconnect"},
        ]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = _scope("POST", [(b"transfer-encoding", b"chunked")])
        await app(scope, receive, send)
        assert sent == []  # nobody to answer
        assert _count(runtime, "4xx") == 1
        assert _count(runtime, "5xx") == 0
        await runtime.close()

    with caplog.at_level(logging.WARNING, logger="gateway"):
        asyncio.run(scenario())
    assert _errors(caplog) == []


class EndlessStream:
    def __init__(self) -> None:
        self.closed = False
        self.chunks = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        while not self.closed:
            self.chunks += 1
            yield b"data: tick\n\n"
            await asyncio.sleep(0)

    async def aclose(self) -> None:
        self.closed = True


def test_asgi_streaming_response_stops_when_client_leaves() -> None:
    """uvicorn's ``send`` returns silently once the client is gone: the app must notice."""

    async def scenario() -> None:
        stream = EndlessStream()

        async def endless(request: UpstreamRequest) -> Response:
            return Response(200, [(b"content-type", b"text/event-stream")], stream=stream)

        runtime = _runtime(FakeTransport(endless))
        app = GatewayApp(runtime)
        gone = asyncio.Event()
        body_messages = 0

        async def receive() -> dict[str, Any]:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal body_messages
            if message["type"] == "http.response.body":
                body_messages += 1
                if body_messages == 3:
                    gone.set()  # the client disconnects; uvicorn's send ignores the rest
            await asyncio.sleep(0)

        scope = _scope("GET", [])
        await asyncio.wait_for(app(scope, receive, send), 5)
        assert stream.closed
        await runtime.close()

    asyncio.run(scenario())
