import asyncio

from gateway.config.models import StoreSpec
from gateway.stores import Counters, KeyValue, PubSub, Scripts, Stores
from gateway.stores.memory import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store(max_entries: int = 100) -> tuple[MemoryStore, Clock]:
    clock = Clock()
    return MemoryStore("memory", StoreSpec(url="memory://", max_entries=max_entries), clock), clock


def test_ttl_expiry() -> None:
    async def go() -> None:
        s, clock = store()
        await s.set("k", b"v", 10)
        assert await s.get("k") == b"v"
        clock.now += 10.5
        assert await s.get("k") is None

    asyncio.run(go())


def test_bounded_lru() -> None:
    async def go() -> None:
        s, _ = store(max_entries=3)
        for i in range(3):
            await s.set(f"k{i}", b"v", 60)
        await s.get("k0")  # k0 becomes most recent
        await s.set("k3", b"v", 60)
        assert await s.get("k1") is None
        assert await s.get("k0") == b"v"
        for i in range(10_000):
            await s.incr(f"ip{i}", 1, 60)
        assert len(s) == 3

    asyncio.run(go())


def test_counters_keep_their_expiry() -> None:
    async def go() -> None:
        s, clock = store()
        assert await s.incr("c", 1, 10) == 1
        clock.now += 5
        assert await s.incr("c", 2, 10) == 3
        clock.now += 6
        assert await s.incr("c", 1, 10) == 1

    asyncio.run(go())


def test_capabilities_checked_at_build() -> None:
    s, _ = store()
    stores = Stores({"memory": s})
    assert stores.require("memory", KeyValue, Counters, Scripts, PubSub) is s
    try:
        stores.get("shared")
    except KeyError as exc:
        assert "store 'shared' is not defined" in str(exc)
    else:
        raise AssertionError("expected KeyError")


def test_pubsub_delivers() -> None:
    async def go() -> None:
        s, _ = store()
        got: list[bytes] = []

        async def cb(msg: bytes) -> None:
            got.append(msg)

        await s.subscribe("purge", cb)
        await s.publish("purge", b"/x")
        assert got == [b"/x"]

    asyncio.run(go())


def test_redis_url_host_forms() -> None:
    import pytest

    from gateway.stores.redis import _host_port

    assert _host_port("h", 6379) == ("h", 6379)
    assert _host_port("h:7000", 6379) == ("h", 7000)
    assert _host_port("[::1]:7000", 6379) == ("::1", 7000)
    assert _host_port("[::1]", 26379) == ("::1", 26379)
    with pytest.raises(ValueError, match="port"):
        _host_port("h:x", 6379)
