"""Every store behaviour, run against memory and a real redis-server (same tests)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from gateway.config.models import StoreSpec
from gateway.errors import StoreError
from gateway.observability.metrics import Metrics
from gateway.stores import Counters, KeyValue, PubSub, Scripts, Store, build_store
from gateway.stores.guard import StoreGuard
from gateway.stores.redis import RedisStore
from tests.integration.harness import Redis, free_port

pytestmark = pytest.mark.integration


#: A single-server URL with a query option: served by redis-py, the path that Sentinel and
#: Cluster URLs take, instead of the RESP client.
REDIS_PY_QUERY = "?health_check_interval=0"


@pytest.fixture(params=["memory", "redis", "redis-py"])
def store_url(request: pytest.FixtureRequest, redis_server: Redis) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://"
    elif request.param == "redis":
        yield redis_server.url
    else:
        yield redis_server.url + REDIS_PY_QUERY


def apart(key: str, url: str) -> str:
    """Keys apart for the two Redis variants, which share one server."""
    return key + ("-py" if url.endswith(REDIS_PY_QUERY) else "")


def run(url: str, body: Callable[[Any], Awaitable[None]], **spec: Any) -> None:
    async def go() -> None:
        store = build_store("s", StoreSpec(url=url, **spec), __import__("time").monotonic)
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(go())


def test_capabilities(store_url: str) -> None:
    async def body(store: Store) -> None:
        for cap in (KeyValue, Counters, Scripts, PubSub):
            assert isinstance(store, cap)
        assert await store.ping()

    run(store_url, body)


def test_key_value_with_ttl(store_url: str) -> None:
    async def body(store: KeyValue) -> None:
        key = apart(f"kv-{store_url[:5]}", store_url)
        await store.set(key, b"value", 0.3)
        assert await store.get(key) == b"value"
        await asyncio.sleep(0.45)
        assert await store.get(key) is None
        await store.set(key, b"v2", 10)
        assert await store.delete(key, "absent") == 1

    run(store_url, body, prefix="t1:")


def test_counters_expire(store_url: str) -> None:
    key = apart("c", store_url)

    async def body(store: Counters) -> None:
        assert await store.incr(key, 2, 0.3) == 2
        assert await store.incr(key, 3, 0.3) == 5
        await asyncio.sleep(0.45)
        assert await store.incr(key, 1, 0.3) == 1

    run(store_url, body, prefix="t2:")


def test_pubsub_between_two_clients(store_url: str) -> None:
    async def body(store: Any) -> None:
        other = build_store("o", StoreSpec(url=store_url), __import__("time").monotonic)
        got: list[bytes] = []
        event = asyncio.Event()

        async def on_message(msg: bytes) -> None:
            got.append(msg)
            event.set()

        listener = store if store_url.startswith("memory") else other
        await listener.subscribe("purge", on_message)
        await asyncio.sleep(0.2)  # the subscription is live
        await store.publish("purge", b"/users/1")
        await asyncio.wait_for(event.wait(), 5)
        assert got == [b"/users/1"]
        if other is not store:
            await other.close()

    run(store_url, body)


def test_hash_tagged_keys() -> None:
    spec = StoreSpec(url="redis://127.0.0.1:1/0", prefix="gw:")
    store = RedisStore("r", spec)
    assert store.key("rl:per-ip", "1.2.3.4") == "gw:{rl:per-ip}:1.2.3.4"
    asyncio.run(store.close())


def test_redis_down_is_a_store_error_within_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    async def body(store: Any) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StoreError):
            await store.get("k")
        with pytest.raises(StoreError):
            await store.run("incr_expire", ["k"], [1, 1000])
        assert loop.time() - started < 1.0
        assert not await store.ping()
        metrics = Metrics()
        guard = StoreGuard(metrics, "s", "test-policy")
        with caplog.at_level(logging.WARNING, "gateway.stores"):
            for _ in range(2):
                with pytest.raises(StoreError) as failure:
                    await store.incr("k", 1, 1)
                guard.failed(failure.value)
        assert metrics.store_errors.labels("s", "test-policy")._value.get() == 2
        assert len([r for r in caplog.records if "test-policy" in r.message]) == 1

    run(f"redis://127.0.0.1:{free_port()}/0", body, timeout=0.2)


def test_redis_that_hangs_times_out() -> None:
    """A server that accepts but never answers must not hang a store call."""

    async def go() -> None:
        writers: list[asyncio.StreamWriter] = []

        def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        store = build_store("s", StoreSpec(url=f"redis://127.0.0.1:{port}/0", timeout=0.1),
                            __import__("time").monotonic)  # fmt: skip
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StoreError, match="timed out"):
            await store.get("k")  # type: ignore[attr-defined]
        assert loop.time() - started < 0.5
        await store.close()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(go())


@pytest.mark.parametrize("query", ["", REDIS_PY_QUERY])
def test_script_survives_script_flush(redis_server: Redis, query: str) -> None:
    key = apart("sf", query)

    async def body(store: Any) -> None:
        assert (store.resp is None) == bool(query)
        assert await store.run("incr_expire", [key], [1, 10000]) == 1
        await store.client.script_flush()
        assert await store.run("incr_expire", [key], [1, 10000]) == 2

    run(redis_server.url + query, body, prefix="t3:")
