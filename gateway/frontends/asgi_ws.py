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

from gateway.exchange import Exchange
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
    match = snapshot.router.match("GET", exchange.path, exchange.host, exchange.headers)
    if match.route is None:
        await send({"type": "websocket.close", "code": 1008})
        return
    pool = snapshot.pools[match.route.upstream]
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
            return
        await receive()  # websocket.connect
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
