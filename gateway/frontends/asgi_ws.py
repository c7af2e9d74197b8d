"""WebSocket proxying in ASGI mode: frames relayed both ways until either side closes.

The ASGI server terminates the client's handshake, so the upstream leg is a WebSocket
client (aiohttp). The native front-end relays raw bytes after the upstream's 101 instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp

from gateway.config.snapshot import Snapshot
from gateway.exchange import Exchange, Response
from gateway.frontends.common import finish
from gateway.runtime import Runtime
from gateway.transport.forward import request_headers
from gateway.transport.headers import FRAMING

log = logging.getLogger("gateway")

Message = MutableMapping[str, Any]
_WS_DROP = frozenset({b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions",
                      b"upgrade", b"connection"}) | FRAMING  # fmt: skip


async def proxy_websocket(
    runtime: Runtime,
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    snapshot = runtime.snapshot
    raw = scope.get("raw_path") or scope["path"].encode()
    if scope["query_string"]:
        raw += b"?" + scope["query_string"]
    client = scope.get("client")
    exchange = Exchange("GET", raw, list(scope["headers"]), client[0] if client else "0.0.0.0")
    # The route's policies decide on the handshake (rate limits, ...), as they would
    # for any request; only a 101 from them lets the relay start.
    verdict = await snapshot.dispatch(exchange, upgrade_gate=True)
    await receive()  # websocket.connect
    if verdict.status != 101 or exchange.route is None:
        await _refuse(scope, send, verdict)
        finish(snapshot, exchange, verdict.status, len(verdict.body))
        return
    status = 101
    try:
        status = await _relay(
            snapshot, exchange, exchange.route.upstream, raw, scope, receive, send
        )
    finally:
        finish(snapshot, exchange, status, 0)


async def _refuse(
    scope: MutableMapping[str, Any], send: Callable[[Message], Awaitable[None]], verdict: Response
) -> None:
    """Answer the handshake with the policies' response where the server allows it."""
    if "websocket.http.response" in scope.get("extensions", {}):
        await verdict.read(1 << 20)
        headers = [(k, v) for k, v in verdict.headers if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(verdict.body)).encode()))
        await send(
            {"type": "websocket.http.response.start", "status": verdict.status, "headers": headers}
        )
        await send({"type": "websocket.http.response.body", "body": verdict.body})
    else:
        await verdict.aclose()
        await send({"type": "websocket.close", "code": 1008})


async def _relay(
    snapshot: Snapshot,
    exchange: Exchange,
    upstream_name: str,
    raw: bytes,
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> int:
    """Connect upstream and relay frames; the status for the access log."""
    pool = snapshot.pools[upstream_name]
    index, target = pool.pick()
    headers, _ = request_headers(exchange, target, pool.config.host_header, snapshot.trusted)
    fwd = [
        (k.decode("latin-1"), v.decode("latin-1")) for k, v in headers if k.lower() not in _WS_DROP
    ]
    scheme = "wss" if target.scheme == "https" else "ws"
    url = f"{scheme}://{target.authority.decode()}{(target.base_path + raw).decode('latin-1')}"
    protocols = [
        p.strip()
        for k, v in scope["headers"]
        if k == b"sec-websocket-protocol"
        for p in v.decode("latin-1").split(",")
    ]
    timeout = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0)
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        try:
            upstream = await session.ws_connect(
                url, headers=fwd, protocols=protocols, timeout=timeout, autoping=True
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("websocket upstream %s failed: %s", url, exc)
            pool.report(index, False)
            await send({"type": "websocket.close", "code": 1011})
            return 502
        await send({"type": "websocket.accept", "subprotocol": upstream.protocol})

        async def client_to_upstream() -> None:
            while True:
                msg = await receive()
                if msg["type"] == "websocket.disconnect":
                    await upstream.close(code=msg.get("code", 1000))
                    return
                if msg.get("bytes") is not None:
                    await upstream.send_bytes(msg["bytes"])
                elif msg.get("text") is not None:
                    await upstream.send_str(msg["text"])

        async def upstream_to_client() -> None:
            async for msg in upstream:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await send({"type": "websocket.send", "text": msg.data})
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await send({"type": "websocket.send", "bytes": msg.data})
            await send({"type": "websocket.close", "code": upstream.close_code or 1000})

        tasks = [
            asyncio.ensure_future(client_to_upstream()),
            asyncio.ensure_future(upstream_to_client()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await upstream.close()
    return 101
