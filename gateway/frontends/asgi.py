"""The ASGI front-end: ``GatewayApp`` is a pure ASGI callable (no Starlette per request).

It turns the scope into an Exchange, runs the snapshot's chain, and sends the response.
Nothing below this module knows about ASGI.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.edge import problem_response
from gateway.errors import ClientGone, UpstreamBodyError
from gateway.exchange import Exchange, Response
from gateway.frontends.common import DRAIN_CUT, body_allowed, finish, framed_headers
from gateway.runtime import Runtime

log = logging.getLogger("gateway")

__all__ = ["ClientGone", "GatewayApp", "create_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _RequestBody:
    """The request body as a ByteStream over ASGI ``http.request`` messages."""

    def __init__(self, receive: Receive, exchange: Exchange) -> None:
        self._receive = receive
        self._exchange = exchange
        self.done = False  # no more http.request messages will be read by this body

    def __aiter__(self) -> _RequestBody:
        return self

    async def __anext__(self) -> bytes:
        # An iterator class, not an async generator: the compiled build has no async
        # generators.
        while not self.done:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.done = True
                raise ClientGone("client disconnected while sending the body")
            body = message.get("body", b"")
            # Some servers hand over a bytearray; the compiled build checks for bytes.
            chunk = body if type(body) is bytes else bytes(body)
            if not message.get("more_body", False):
                self.done = True
            if chunk:
                self._exchange.bytes_in += len(chunk)
                return chunk
        raise StopAsyncIteration

    async def aclose(self) -> None:
        return None


class GatewayApp:
    def __init__(self, runtime: Runtime | None = None, config_path: str | None = None) -> None:
        self.runtime = runtime
        self._config_path = config_path
        if runtime is not None:
            _count_in_flight(runtime)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.other(scope, receive, send)
            return
        runtime = self.runtime
        assert runtime is not None, "the runtime starts in the ASGI lifespan"
        snapshot = runtime.snapshot
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        raw_target: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope["query_string"]
        if query:
            raw_target = b"%b?%b" % (raw_target, query)
        client = scope.get("client")
        content_length: int | None = None
        has_body = False
        for key, value in headers:  # names are lower-case in an ASGI scope
            size = len(key)
            if size == 14 and key == b"content-length":
                content_length = int(value)
                has_body = content_length > 0
            elif size == 17 and key == b"transfer-encoding":
                has_body = True
        exchange = Exchange(
            scope["method"],
            raw_target,
            headers,
            client[0] if client else "0.0.0.0",
            scheme=scope.get("scheme", "http"),
            http_version=scope.get("http_version", "1.1"),
        )
        body: _RequestBody | None = None
        if has_body:
            exchange.body = None
            exchange.body_stream = body = _RequestBody(receive, exchange)
            exchange.content_length = content_length
        runtime.in_flight += 1  # the in-flight gauge reads this at scrape time
        status, sent = 500, 0
        try:
            # snapshot.dispatch, inlined: one coroutine frame less on every resume.
            handler = snapshot.resolve(exchange)
            if isinstance(handler, Response):
                response = exchange.answered(handler)
            else:
                try:
                    response = exchange.answered(await handler(exchange))
                except ClientGone:
                    status = 499
                    return
                except asyncio.CancelledError:
                    if runtime.draining:  # the drain deadline cut it before any answer
                        status = DRAIN_CUT
                    raise
                except Exception as exc:
                    response = exchange.answered(snapshot.failed(exchange, exc))
            status = response.status
            if response.stream is None and status != 101:  # a whole body: two sends
                framed, _ = framed_headers(exchange, response)
                await send({"type": "http.response.start", "status": status, "headers": framed})
                if body_allowed(exchange.method, status):
                    await send({"type": "http.response.body", "body": response.body})
                    sent = len(response.body)
                else:
                    await send({"type": "http.response.body", "body": b""})
                return
            # Watch for a disconnect only when no one else may still call ``receive``.
            watch = receive if body is None or body.done else None
            sent = await self._send(exchange, response, send, watch)
        finally:
            runtime.in_flight -= 1
            finish(snapshot, exchange, status, sent)

    async def other(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The scopes other than ``http``: WebSocket relay and the lifespan."""
        kind = scope["type"]
        if kind == "websocket":
            from gateway.frontends.asgi_ws import proxy_websocket

            assert self.runtime is not None
            await proxy_websocket(self.runtime, scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.runtime is None:
                        assert self._config_path is not None
                        self.runtime = Runtime.from_file(self._config_path)
                        _count_in_flight(self.runtime)
                    await self.runtime.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.runtime is not None and self._config_path is not None:
                    await self.runtime.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _send(
        self, exchange: Exchange, response: Response, send: Send, receive: Receive | None
    ) -> int:
        """Send a streamed response (or refuse an unexpected 101); the body bytes sent."""
        status = response.status
        if status == 101:  # upgrades arrive on the websocket scope, not here
            await response.aclose()
            response = problem_response(
                exchange, 502, "upgrade-failed", "Bad Gateway", "unexpected 101 from upstream"
            )
            status = 502
        headers, _ = framed_headers(exchange, response)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        stream = response.stream
        if not body_allowed(exchange.method, status):
            await response.aclose()
            await send({"type": "http.response.body", "body": b""})
            return 0
        if stream is None:
            body = response.body
            await send({"type": "http.response.body", "body": body})
            return len(body)
        sent = 0
        # ASGI servers drop what is sent after a disconnect without a word: without this
        # watcher an endless upstream stream (SSE) would be read forever for nobody.
        gone = asyncio.ensure_future(_disconnect(receive)) if receive is not None else None
        try:
            async for chunk in stream:
                if gone is not None and gone.done():
                    await stream.aclose()
                    return sent
                if chunk:
                    sent += len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamBodyError as exc:
            # The response has started: the only honest signal left is to cut the
            # connection, so the client sees a truncated message, not a complete one.
            log.warning("upstream body cut after %d bytes: %s", sent, exc)
            raise
        except (OSError, asyncio.CancelledError):
            await stream.aclose()
            raise
        finally:
            if gone is not None and not gone.cancel() and not gone.cancelled():
                gone.exception()  # retrieved: a failing receive means the client is gone
        await send({"type": "http.response.body", "body": b""})
        return sent


def _count_in_flight(runtime: Runtime) -> None:
    """No per-request gauge update: the gauge reads the runtime's count when scraped."""
    runtime.metrics.in_flight.set_function(lambda: runtime.in_flight)


async def _disconnect(receive: Receive) -> None:
    """Return when the client is gone (request body messages left unread are dropped)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def create_app() -> GatewayApp:
    """``gateway.asgi:app`` factory: the config file comes from ``GATEWAY_CONFIG``."""
    import os

    return GatewayApp(config_path=os.environ.get("GATEWAY_CONFIG", "policies/gateway.yaml"))
