"""A Redis limiter right above the upstream writes an admitted request from the reply.

The limiter arms the request (``Forwarder.arm``) while Redis answers, and the store's
read callback fires it on an admitting verdict, before the reply's future resolves and
so before the request's task wakes up. Against a real redis-server and a scripted
upstream: an admitted request is on the wire by the time the reply resolves; a refused
one never is, and leaves the pooled connection idle; a request whose client leaves
after the write gives its connection up; a store that times out fires nothing and the
request goes once, the usual way; under concurrency exactly the limit reaches the
upstream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.chain import build_prelude, chain_levels
from gateway.config.models import StoreSpec
from gateway.config.models import Upstream as UpstreamConfig
from gateway.exchange import Exchange, Response
from gateway.observability.metrics import Metrics
from gateway.policies.base import BuildContext
from gateway.policies.rate_limit.config import RateLimitConfig
from gateway.policies.rate_limit.policy import RateLimitPolicy
from gateway.stores import Stores
from gateway.stores.redis import RedisStore
from gateway.transport.forward import UpstreamPool, make_forwarder
from gateway.transport.native import NativeTransport
from tests.integration.harness import Redis
from tests.unit.test_native_transport import Peer, Server

pytestmark = pytest.mark.integration

Body = Callable[[Callable[[Exchange], Any], NativeTransport, list[bytes]], Awaitable[None]]


def run(
    redis_server: Redis,
    prefix: str,
    rule: dict[str, Any],
    body: Body,
    store_timeout: float = 0.2,
    upstream: dict[str, Any] | None = None,
) -> list[str]:
    """``body(route, transport, seen)`` on a fresh loop, with one limiter over the native
    forwarder to a scripted upstream that records each request's path in ``seen``.
    ``route(exchange)`` is what the front-end does: the prelude, then the handler.
    Returns what the loop's exception handler was given."""
    reported: list[str] = []
    seen: list[bytes] = []

    async def serve(peer: Peer) -> None:
        while (req := await peer.request()) is not None:
            seen.append(req.url)
            peer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async def go() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: reported.append(str(context)))
        spec = StoreSpec(url=redis_server.url, prefix=prefix, timeout=store_timeout)
        store = RedisStore("shared", spec)
        async with Server(serve) as server:
            config = UpstreamConfig(url=server.url, **(upstream or {}))
            transport = NativeTransport(config)
            forwarder = make_forwarder(UpstreamPool("app", config, transport), (), None)
            ctx = BuildContext(
                "api", "app", Stores({"shared": store}), Metrics(), time.monotonic, Path("."), 1
            )
            policies = RateLimitPolicy.build(RateLimitConfig.model_validate([rule]), ctx)
            levels = chain_levels(policies, forwarder)
            prelude = build_prelude(policies, levels)
            assert prelude is not None

            def route(exchange: Exchange) -> Any:
                handler = prelude(exchange)
                assert not isinstance(handler, Response)
                return handler

            try:
                await body(route, transport, seen)
            finally:
                await transport.close()
                await store.close()

    asyncio.run(go())
    return reported


def idle_connections(transport: NativeTransport) -> int:
    (pool,) = transport._pools.values()
    return len(pool.idle)


async def first_request(route: Callable[[Exchange], Any], path: bytes = b"/warm") -> None:
    """Connects to Redis, loads the script and opens the upstream connection."""
    exchange = Exchange("GET", path, [], "198.51.100.7")
    response = await route(exchange)(exchange)
    assert response.status == 200


async def at_reply(
    route: Callable[[Exchange], Any], transport: NativeTransport, path: bytes
) -> tuple[Response, int]:
    """One request whose store call went early; the idle upstream connections counted
    when the reply resolved, before the request's task resumed."""
    exchange = Exchange("GET", path, [], "198.51.100.7")
    handler = route(exchange)
    assert exchange.store_call is not None, "the call went out as the request was routed"
    idle: list[int] = []
    # Registered before the task awaits the call: runs before the task's wake-up.
    exchange.store_call[1].add_done_callback(lambda _: idle.append(idle_connections(transport)))
    response = await asyncio.create_task(handler(exchange))
    return response, idle[0]


def test_an_admitted_request_is_written_by_the_reply_a_refused_one_never(
    redis_server: Redis,
) -> None:
    rule = {"name": "g", "rate": "2/h", "store": "shared"}

    async def body(
        route: Callable[[Exchange], Any], transport: NativeTransport, seen: list[bytes]
    ) -> None:
        await first_request(route)
        assert idle_connections(transport) == 1
        response, idle = await at_reply(route, transport, b"/admitted")
        # The idle connection was taken and the request written from the reply's callback.
        assert idle == 0
        assert response.status == 200 and response.body == b"ok"
        assert response.header(b"via") == b"1.1 gateway"  # the forwarder's own finishing
        assert seen == [b"/warm", b"/admitted"]

        response, idle = await at_reply(route, transport, b"/refused")
        assert idle == 1 and response.status == 429
        await asyncio.sleep(0.05)
        assert seen == [b"/warm", b"/admitted"]  # never on the wire
        assert idle_connections(transport) == 1  # the connection is still the pool's

    assert run(redis_server, "t-armed-1:", rule, body) == []


def test_a_client_gone_after_the_write_gives_the_connection_up(redis_server: Redis) -> None:
    rule = {"name": "g", "rate": "100/h", "store": "shared"}

    async def body(
        route: Callable[[Exchange], Any], transport: NativeTransport, seen: list[bytes]
    ) -> None:
        await first_request(route)
        exchange = Exchange("GET", b"/left", [], "198.51.100.7")
        handler = route(exchange)
        assert exchange.store_call is not None
        task = asyncio.create_task(handler(exchange))
        # The client leaves as the reply arrives: after the write, before the task runs.
        exchange.store_call[1].add_done_callback(lambda _: task.cancel())
        with pytest.raises(asyncio.CancelledError):
            await task
        (pool,) = transport._pools.values()
        assert pool.size == 0 and not pool.idle  # its answer is not awaited: aborted
        await first_request(route, b"/after")  # a fresh connection serves the next one
        assert seen[-1] == b"/after"

    assert run(redis_server, "t-armed-2:", rule, body) == []


def test_a_store_that_times_out_fires_nothing_and_the_request_goes_once(
    redis_server: Redis,
) -> None:
    rule = {"name": "g", "rate": "100/h", "store": "shared", "on_store_error": "allow"}
    pauser = redis.Redis.from_url(redis_server.url)

    async def body(
        route: Callable[[Exchange], Any], transport: NativeTransport, seen: list[bytes]
    ) -> None:
        await first_request(route)
        pauser.client_pause(500)
        exchange = Exchange("GET", b"/slow-store", [], "198.51.100.7")
        response = await route(exchange)(exchange)
        assert response.status == 200
        assert exchange.decisions[-1].action == "fail_open"
        pauser.client_unpause()
        await asyncio.sleep(0.1)
        assert seen == [b"/warm", b"/slow-store"]

    try:
        assert run(redis_server, "t-armed-3:", rule, body) == []
    finally:
        pauser.client_unpause()
        pauser.close()


def test_concurrent_requests_exactly_the_limit_reaches_the_upstream(redis_server: Redis) -> None:
    rule = {"name": "g", "rate": "21/h", "store": "shared"}

    async def body(
        route: Callable[[Exchange], Any], transport: NativeTransport, seen: list[bytes]
    ) -> None:
        await first_request(route)
        exchanges = [Exchange("GET", b"/c%d" % i, [], "198.51.100.7") for i in range(60)]
        # Routed together, as one read of pipelined requests: one batch of calls, and
        # replies that arrive together call their hooks in order.
        handlers = [route(exchange) for exchange in exchanges]
        responses = await asyncio.gather(*(h(e) for h, e in zip(handlers, exchanges, strict=True)))
        statuses = [r.status for r in responses]
        assert statuses.count(200) == 20 and statuses.count(429) == 40
        await asyncio.sleep(0.05)
        admitted = {
            e.raw_target for e, r in zip(exchanges, responses, strict=True) if r.status == 200
        }
        assert len(seen) == 21 and set(seen[1:]) == admitted

    assert run(redis_server, "t-armed-4:", rule, body) == []


def test_a_slow_store_does_not_spend_the_upstreams_total_timeout(redis_server: Redis) -> None:
    # The request is prepared before Redis answers; timeouts.total counts from its write.
    rule = {"name": "g", "rate": "100/h", "store": "shared"}
    pauser = redis.Redis.from_url(redis_server.url)

    async def body(
        route: Callable[[Exchange], Any], transport: NativeTransport, seen: list[bytes]
    ) -> None:
        await first_request(route)
        pauser.client_pause(400)
        response, idle = await at_reply(route, transport, b"/after-a-slow-store")
        assert idle == 0  # fired from the reply, 0.4 s after it was prepared
        assert response.status == 200
        assert seen == [b"/warm", b"/after-a-slow-store"]

    upstream = {"timeouts": {"connect": "1s", "read": "1s", "total": "300ms"}}
    try:
        assert run(redis_server, "t-armed-5:", rule, body, 2.0, upstream) == []
    finally:
        pauser.client_unpause()
        pauser.close()
