"""Coalescing: concurrent misses for one key make one upstream request (fake call_next)."""

from __future__ import annotations

import asyncio

from gateway.exchange import Exchange, Response
from gateway.policies.cache.coalesce import BackgroundTasks, Coalescer
from tests.unit.cache_support import Clock, Upstream, build, header, ok, request

MAX_AGE = ("Cache-Control", "max-age=60")


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_concurrent_misses_make_one_upstream_request() -> None:
    async def go() -> None:
        policy = build()
        await policy.start()
        up = Upstream(ok(MAX_AGE))
        up.gate = asyncio.Event()
        tasks = [asyncio.create_task(policy(request(), up)) for _ in range(10)]
        await settle()
        assert up.calls == 1  # the leader; nine wait for it
        up.gate.set()
        answers = await asyncio.gather(*tasks)
        assert up.calls == 1 and {a.body for a in answers} == {b"response 1"}
        statuses = [header(a, "cache-status") for a in answers]
        assert statuses.count("gateway; fwd=uri-miss; ttl=60; stored") == 1
        assert statuses.count("gateway; fwd=uri-miss; ttl=60; collapsed") == 9
        assert len(policy.coalescer) == 0

    asyncio.run(go())


def test_the_wait_is_bounded() -> None:
    async def go() -> None:
        policy = build({"coalesce_wait": "10ms"})
        await policy.start()
        hang = asyncio.Event()

        async def slow_first(exchange: Exchange) -> Response:
            n = len(calls) + 1
            calls.append(n)
            if n == 1:
                await hang.wait()
            return ok(MAX_AGE)(exchange, n)

        calls: list[int] = []
        leader = asyncio.create_task(policy(request(), slow_first))
        await settle()
        follower = await policy(request(), slow_first)  # gives up waiting, goes itself
        assert follower.body == b"response 2" and calls == [1, 2]
        hang.set()
        assert (await leader).body == b"response 1"

    asyncio.run(go())


def test_an_uncacheable_answer_releases_followers_and_stops_coalescing() -> None:
    async def go() -> None:
        clock = Clock()
        policy = build(clock=clock)
        await policy.start()
        up = Upstream(ok(("Cache-Control", "private")))
        up.gate = asyncio.Event()
        tasks = [asyncio.create_task(policy(request(), up)) for _ in range(3)]
        await settle()
        assert up.calls == 1
        up.gate.set()
        await asyncio.gather(*tasks)
        assert up.calls == 3  # the followers went upstream themselves
        # Remembered as uncacheable: the next concurrent requests are not held back.
        up.gate = asyncio.Event()
        tasks = [asyncio.create_task(policy(request(), up)) for _ in range(3)]
        await settle()
        assert up.calls == 6
        up.gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(go())


def test_a_failed_leader_lets_followers_try() -> None:
    async def go() -> None:
        from gateway.errors import UpstreamConnectError

        policy = build()
        await policy.start()
        gate = asyncio.Event()
        calls: list[int] = []

        async def flaky(exchange: Exchange) -> Response:
            calls.append(1)
            if len(calls) == 1:
                await gate.wait()
                raise UpstreamConnectError("refused")
            return ok(MAX_AGE)(exchange, len(calls))

        leader = asyncio.create_task(policy(request(), flaky))
        await settle()
        follower = asyncio.create_task(policy(request(), flaky))
        await settle()
        gate.set()
        results = await asyncio.gather(leader, follower, return_exceptions=True)
        assert isinstance(results[0], UpstreamConnectError)
        assert isinstance(results[1], Response) and results[1].body == b"response 2"

    asyncio.run(go())


def test_coalescing_off() -> None:
    async def go() -> None:
        policy = build({"coalesce": False})
        await policy.start()
        up = Upstream(ok(MAX_AGE))
        up.gate = asyncio.Event()
        tasks = [asyncio.create_task(policy(request(), up)) for _ in range(4)]
        await settle()
        assert up.calls == 4
        up.gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(go())


def test_coalescer_and_background_bounds() -> None:
    async def go() -> None:
        c = Coalescer(pass_for=10, max_pass_keys=2)
        lead = c.lead("k")
        assert lead is not None and c.lead("k") is None and c.flight("k") is lead
        c.land("k", lead, failed=True)
        assert lead.done.is_set() and lead.failed and c.flight("k") is None
        for i in range(3):
            c.mark_pass(f"k{i}", 0.0)
        assert not c.passing("k0", 1.0) and c.passing("k2", 1.0) and not c.passing("k2", 11.0)

        tasks = BackgroundTasks(limit=2)
        gate = asyncio.Event()

        async def work() -> None:
            await gate.wait()

        assert tasks.spawn(work()) and tasks.spawn(work())
        assert not tasks.spawn(work())  # full: dropped, not queued
        gate.set()
        await tasks.join()
        assert len(tasks) == 0

    asyncio.run(go())


def test_during_an_outage_one_request_tries_and_the_others_get_the_stale_copy() -> None:
    async def go() -> None:
        from gateway.errors import UpstreamTimeout

        clock = Clock()
        policy = build({"stale_if_error": "5m"}, clock=clock)
        await policy.start()
        up = Upstream(ok(("Cache-Control", "max-age=10")))
        await policy(request(), up)
        clock.advance(20)
        gate = asyncio.Event()
        calls: list[int] = []

        async def failing(exchange: Exchange) -> Response:
            calls.append(1)
            await gate.wait()
            raise UpstreamTimeout("upstream is down")

        tasks = [asyncio.create_task(policy(request(), failing)) for _ in range(5)]
        await settle()
        gate.set()
        answers = await asyncio.gather(*tasks)
        assert len(calls) == 1  # one request found the upstream down; nobody else tried
        assert {a.body for a in answers} == {b"response 1"}
        statuses = [header(a, "cache-status") or "" for a in answers]
        assert sum("collapsed" in s for s in statuses) == 4
        assert all("detail=stale-if-error" in s for s in statuses)

    asyncio.run(go())
