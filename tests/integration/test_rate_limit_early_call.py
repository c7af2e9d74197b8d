"""A Redis limiter sends its call as the request is routed, before the chain runs.

``decide_now`` (asked by the route's prelude, in the native front-end's read callback)
writes the limiter's ``EVALSHA`` and leaves the reply's future on the exchange; the
policy's coroutine awaits that one instead of sending another. Against a real
redis-server: one call per decision, the same verdicts as the late path, no early call
while the store is known to be down, and a call whose request never reaches the chain
is neither awaited twice nor reported as an exception never retrieved.
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.chain import Prelude, build_prelude, chain_levels
from gateway.config.models import StoreSpec
from gateway.errors import StoreError
from gateway.exchange import Exchange, Response
from gateway.observability.metrics import Metrics
from gateway.policies.base import BuildContext
from gateway.policies.rate_limit.config import RateLimitConfig
from gateway.policies.rate_limit.policy import RateLimitPolicy
from gateway.stores import Stores
from gateway.stores.redis import RedisStore
from tests.integration.conftest import GatewayFactory
from tests.integration.harness import Redis, Upstream, base_config

pytestmark = pytest.mark.integration


def evalsha_calls(server: Redis) -> int:
    client = redis.Redis.from_url(server.url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def routed(store: RedisStore, rule: dict[str, Any]) -> tuple[Prelude, list[int]]:
    """The route's prelude over one limiter and an upstream that counts its requests."""
    seen: list[int] = []

    async def upstream(exchange: Exchange) -> Response:
        seen.append(1)
        return Response(200, [], b"ok")

    ctx = BuildContext(
        "api", "app", Stores({"shared": store}), Metrics(), time.monotonic, Path("."), 1
    )
    policies = RateLimitPolicy.build(RateLimitConfig.model_validate([rule]), ctx)
    prelude = build_prelude(policies, chain_levels(policies, upstream))
    assert prelude is not None, "a Redis limiter with a plain key decides in the prelude"
    return prelude, seen


def run(body: Callable[[asyncio.AbstractEventLoop], Awaitable[None]]) -> list[dict[str, Any]]:
    """Run ``body`` on a fresh loop; what the loop's exception handler was given."""
    reported: list[dict[str, Any]] = []

    async def go() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        await body(loop)

    asyncio.run(go())
    return reported


def test_the_call_is_sent_as_the_request_is_routed_and_counted_once(
    redis_server: Redis,
) -> None:
    store = RedisStore("shared", StoreSpec(url=redis_server.url, prefix="t-early-once:"))
    prelude, upstream = routed(store, {"name": "g", "rate": "3/h", "store": "shared"})
    before = evalsha_calls(redis_server)
    early: list[bool] = []
    statuses: list[int] = []

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        try:
            for _ in range(5):
                exchange = Exchange("GET", b"/x", [], "198.51.100.7")
                forwarded = len(upstream)
                handler = prelude(exchange)
                assert not isinstance(handler, Response)
                sent = exchange.store_call
                early.append(sent is not None)
                if sent is not None:
                    # Redis answers, and nothing of the chain has run yet.
                    await asyncio.wait_for(asyncio.shield(sent[1]), 5)
                    assert sent[1].done() and len(upstream) == forwarded
                response = await handler(exchange)
                assert exchange.store_call is None  # taken by the policy
                statuses.append(response.status)
        finally:
            await store.close()

    assert run(body) == []
    # The first call connects and loads the script, so it goes the late way.
    assert early == [False, True, True, True, True]
    assert statuses == [200, 200, 200, 429, 429]
    assert len(upstream) == 3
    assert evalsha_calls(redis_server) - before == 5  # one per decision, early or not


def test_a_failed_early_call_is_retrieved_and_a_store_known_down_gets_none(
    redis_server: Redis,
) -> None:
    spec = StoreSpec(url=redis_server.url, prefix="t-early-fail:", timeout=0.05)
    store = RedisStore("shared", spec)
    rule = {"name": "g", "rate": "100/h", "store": "shared", "on_store_error": "allow"}
    prelude, upstream = routed(store, rule)
    pauser = redis.Redis.from_url(redis_server.url)

    async def body(loop: asyncio.AbstractEventLoop) -> None:
        try:
            first = Exchange("GET", b"/x", [], "198.51.100.8")
            handler = prelude(first)
            assert not isinstance(handler, Response)
            assert (await handler(first)).status == 200  # connected, script loaded

            # Redis stops answering; this request's call goes out early, then the
            # request is dropped before its chain runs (its client left).
            pauser.client_pause(400)
            dropped = Exchange("GET", b"/x", [], "198.51.100.8")
            assert not isinstance(prelude(dropped), Response)
            assert dropped.store_call is not None
            call = dropped.store_call[1]
            del dropped
            await asyncio.wait({call}, timeout=5)
            # Failed (timed out after 0.05s); repr reads it without retrieving it.
            assert call.done() and "StoreError" in repr(call)
            gone = weakref.ref(call)
            del call

            # A control: a failed future nobody retrieves is reported by this loop.
            control = loop.create_future()
            control.set_exception(StoreError("control"))
            del control
            gc.collect()
            assert gone() is None  # freed: had it not been retrieved, it would be reported

            # The next request finds no open connection: no early call, the late path
            # fails within the timeout and on_store_error decides.
            late = Exchange("GET", b"/x", [], "198.51.100.8")
            handler = prelude(late)
            assert late.store_call is None and not isinstance(handler, Response)
            assert (await handler(late)).status == 200
            assert late.decisions[-1].action == "fail_open"

            # Known down (within store_backoff, 1 s), on an open connection again: no
            # call at all, early or late.
            pauser.client_unpause()
            assert await store.ping()
            calls = evalsha_calls(redis_server)
            known = Exchange("GET", b"/x", [], "198.51.100.8")
            handler = prelude(known)
            assert known.store_call is None and not isinstance(handler, Response)
            assert (await handler(known)).status == 200
            assert known.decisions[-1].action == "fail_open"
            assert evalsha_calls(redis_server) == calls
        finally:
            await store.close()

    try:
        reported = run(body)
    finally:
        pauser.client_unpause()
        pauser.close()
    messages = [str(context.get("message")) for context in reported]
    assert len(messages) == 1 and "never retrieved" in messages[0], messages
    assert "control" in repr(reported[0].get("exception"))
    assert len(upstream) == 3


def test_through_the_gateway_still_one_call_per_request(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str, redis_server: Redis
) -> None:
    config = base_config(upstream.url, frontend)
    config["stores"] = {"shared": {"url": redis_server.url, "prefix": f"t-early-{frontend}:"}}
    config["routes"][1]["policies"] = {
        "rate_limit": [{"name": "g", "rate": "4/h", "store": "shared"}]
    }
    gw = start_gateway(config)
    # Whichever way each call goes (early once the script is loaded), none is doubled.
    before = evalsha_calls(redis_server)
    statuses = [gw.request("GET", "/echo")[0] for _ in range(6)]
    assert statuses == [200, 200, 200, 200, 429, 429]
    assert evalsha_calls(redis_server) - before == 6
    assert "never retrieved" not in gw.stderr()
