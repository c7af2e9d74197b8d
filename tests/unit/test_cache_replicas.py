"""Replicas sharing one store (the memory backend standing in for Redis): L2 hits and
what they cost in store reads, purges through pub/sub, the ban log for late starters,
unsafe-method invalidation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.config.models import StoreSpec
from gateway.observability.metrics import Metrics
from gateway.policies.cache.hub import CacheHub
from gateway.policies.cache.invalidation import Invalidation
from gateway.policies.cache.policy import CachePolicy
from gateway.stores import Stores
from tests.unit.cache_support import (
    Clock,
    FakeShared,
    Upstream,
    build,
    header,
    ok,
    request,
    shared_store,
    stores,
)

CONFIG = {"stores": ["memory", "shared"]}
TAGGED = (("Cache-Control", "max-age=60"), ("Surrogate-Key", "catalog"))
#: As bench variant cache-l2: the in-process tier refuses every entry.
L1_REFUSES = {"stores": ["memory", "shared"], "memory": {"max_bytes": 256, "max_object": 256}}


class CountingShared(FakeShared):
    """Counts the reads of the shared tier."""

    gets = 0

    async def get(self, key: str) -> bytes | None:
        self.gets += 1
        return await super().get(key)


async def replica(shared: FakeShared, clock: Clock) -> CachePolicy:
    policy = build(CONFIG, clock=clock, store_set=stores(shared, clock))
    await policy.start()
    return policy


def test_a_store_by_one_replica_is_an_l2_hit_in_another() -> None:
    async def go() -> None:
        clock = Clock()
        shared = shared_store(clock)
        a, b = await replica(shared, clock), await replica(shared, clock)
        assert a.hub is not b.hub  # one hub per runtime
        up = Upstream(ok(*TAGGED))
        await a(request(), up)
        ex = request()
        from_l2 = await b(ex, up)
        assert up.calls == 1 and from_l2.body == b"response 1"
        assert header(from_l2, "cache-status") == "gateway; hit; ttl=60; detail=l2"
        assert [(d.action, d.detail) for d in ex.decisions] == [("hit", "l2")]
        assert header(await b(request(), up), "cache-status") == "gateway; hit; ttl=60"

    asyncio.run(go())


@pytest.mark.parametrize("config", [{"stores": ["shared"]}, L1_REFUSES])
def test_an_l2_hit_is_one_read_and_answers_as_the_full_lookup_does(
    config: dict[str, Any],
) -> None:
    """Every variant of a URL is one value: a hit, a Vary miss and a stale entry each read
    the shared store once; the hot path and the full lookup answer alike."""

    async def go() -> None:
        clock = Clock()
        shared = CountingShared("shared", StoreSpec(url="memory://"), clock)
        policy = build(config, clock=clock, store_set=stores(shared, clock))
        await policy.start()
        up = Upstream(ok(("Cache-Control", "max-age=60"), ("ETag", '"v1"'), ("Vary", "Accept")))
        await policy(request("GET", "/v", ("Accept", "a")), up)
        await policy(request("GET", "/v", ("Accept", "b")), up)  # a second variant
        clock.advance(12.5)
        before = shared.gets
        fast = request("GET", "/v", ("Accept", "a"))
        full = request("GET", "/v", ("Accept", "a"), ("Pragma", "x"))  # takes the full lookup
        fast_answer, full_answer = await policy(fast, up), await policy(full, up)
        assert shared.gets - before == 2 and up.calls == 2
        assert fast_answer.body == full_answer.body == b"response 1"
        assert fast_answer.headers == full_answer.headers
        assert header(fast_answer, "cache-status") == "gateway; hit; ttl=47; detail=l2"
        assert header(fast_answer, "age") == "12"
        assert [(d.action, d.detail) for d in fast.decisions] == [("hit", "l2")]
        assert [(d.action, d.detail) for d in full.decisions] == [("hit", "l2")]
        second = await policy(request("GET", "/v", ("Accept", "b")), up)
        assert second.body == b"response 2" and shared.gets - before == 3
        assert policy.tiers.l1 is None or len(policy.tiers.l1) == 0  # never promoted
        # A variant not stored: one read, then upstream (storing the new variant reads
        # once more, to keep the variants other replicas stored meanwhile).
        before = shared.gets
        await policy(request("GET", "/v", ("Accept", "c")), up)
        assert up.calls == 3 and shared.gets - before == 2
        # A stale entry: one read, then revalidated with its validator (answered in full).
        clock.advance(60)
        before = shared.gets
        stale = request("GET", "/v", ("Accept", "a"))
        await policy(stale, up)
        assert up.calls == 4 and up.header(3, b"if-none-match") == b'"v1"'
        assert shared.gets - before == 2  # the lookup, and the merge when storing
        assert [(d.action, d.detail) for d in stale.decisions] == [("miss", "stored")]
        await policy.stop()

    asyncio.run(go())


def test_purges_reach_every_replica_and_late_starters() -> None:
    async def go() -> None:
        clock = Clock()
        shared = shared_store(clock)
        a, b = await replica(shared, clock), await replica(shared, clock)
        up = Upstream(ok(*TAGGED))
        await a(request("GET", "/p1"), up)
        await b(request("GET", "/p1"), up)  # now in B's L1 too
        clock.advance(1.5)
        result = await a.hub.invalidate(
            Invalidation.new("tag", "catalog", None, clock.now), source="admin", ban=True
        )
        assert result.replicated and result.stores == ["shared"]
        assert b.tiers.l1 is not None and "/p1" not in b.tiers.l1
        # A replica started after the purge reads the ban log: the L2 copy is refused.
        clock.advance(1.5)
        c = await replica(shared, clock)
        assert len(c.hub.bans) == 1
        fresh = await c(request("GET", "/p1"), up)
        assert fresh.body == b"response 2" and up.calls == 2
        # URL purges delete the shared key itself.
        await c.hub.invalidate(
            Invalidation.new("url", "/p1", None, clock.now), source="admin", ban=True
        )
        assert (await b(request("GET", "/p1"), up)).body == b"response 3"

    asyncio.run(go())


def test_an_unsafe_method_on_one_replica_invalidates_the_others() -> None:
    async def go() -> None:
        clock = Clock()
        shared = shared_store(clock)
        a, b = await replica(shared, clock), await replica(shared, clock)
        up = Upstream(ok(("Cache-Control", "max-age=60")))
        await a(request("GET", "/item"), up)
        await b(request("GET", "/item"), up)
        await b(request("PUT", "/item"), Upstream(ok(status=204)))
        assert a.tiers.l1 is not None and "/item" not in a.tiers.l1
        assert (await a(request("GET", "/item"), up)).body == b"response 2"
        assert len(a.hub.bans) == 0  # exact deletes, no bans

    asyncio.run(go())


def test_a_failing_shared_store_degrades_to_memory() -> None:
    async def go() -> None:
        from gateway.errors import StoreError

        class Down(FakeShared):
            async def get(self, key: str) -> bytes | None:
                raise StoreError("down")

            async def set(self, key: str, value: bytes, ttl: float) -> None:
                raise StoreError("down")

            async def publish(self, channel: str, message: bytes) -> None:
                raise StoreError("down")

            async def incr(self, key: str, amount: int, ttl: float) -> int:
                raise StoreError("down")

        clock = Clock()
        down = Down("shared", StoreSpec(url="memory://"), clock)
        policy = await replica(down, clock)
        up = Upstream(ok(("Cache-Control", "max-age=60")))
        first = await policy(request(), up)
        assert "stored" in (header(first, "cache-status") or "")  # in L1
        assert (await policy(request(), up)).body == b"response 1" and up.calls == 1
        result = await policy.hub.invalidate(
            Invalidation.new("all", "", None, clock.now), source="admin", ban=True
        )
        assert result.removed == 1 and not result.replicated

    asyncio.run(go())


def test_hubs_are_per_runtime() -> None:
    clock = Clock()
    one, two = stores(clock=clock), stores(clock=clock)
    metrics = Metrics()
    assert CacheHub.of(one, metrics, clock) is CacheHub.of(one, metrics, clock)
    assert CacheHub.of(one, metrics, clock) is not CacheHub.of(two, metrics, clock)
    # A reload builds a new Stores view over the same store objects: same hub.
    reloaded = Stores({name: store for name, store in one.items()})
    assert CacheHub.of(reloaded, metrics, clock) is CacheHub.of(one, metrics, clock)
