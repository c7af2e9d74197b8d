"""Every rate-limit algorithm against memory and a real redis-server (the same tests).

The memory twins also have clock-driven tests in tests/unit/test_rate_limit_algorithms.py;
here both backends run on real time, with periods long enough that no test depends on
how fast the machine is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from gateway.config.models import StoreSpec
from gateway.config.units import parse_rate
from gateway.policies.rate_limit.algorithms import ALGORITHMS, Algorithm, compile_algorithm
from gateway.stores import Scripts, build_store
from gateway.stores.redis import RedisStore
from tests.integration.harness import Redis

pytestmark = pytest.mark.integration


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest, redis_server: Redis) -> Iterator[str]:
    yield "memory://" if request.param == "memory" else redis_server.url


def run(url: str, body: Callable[[Any], Awaitable[None]], prefix: str) -> None:
    async def go() -> None:
        store = build_store("s", StoreSpec(url=url, prefix=prefix, timeout=2), time.monotonic)
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(go())


async def decide(store: Scripts, algorithm: Algorithm, key: str) -> list[int]:
    result = await store.run(algorithm.script, [key], algorithm.args)
    assert isinstance(result, list)
    return [int(v) for v in result]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_admits_the_limit_then_rejects_with_retry_after(store_url: str, algorithm: str) -> None:
    alg = compile_algorithm(algorithm, parse_rate("5/h"), None)

    async def body(store: Any) -> None:
        key = store.key(f"limit-{algorithm}")
        verdicts = [await decide(store, alg, key) for _ in range(7)]
        assert [v[0] for v in verdicts] == [1, 1, 1, 1, 1, 0, 0]
        assert [v[1] for v in verdicts[:5]] == [4, 3, 2, 1, 0]
        for _, _, reset_ms, retry_ms, _ in verdicts[5:]:
            assert 0 < retry_ms <= reset_ms <= 3_600_000 * 2

    run(store_url, body, f"t-limit-{algorithm}:")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_refund_gives_back_one_admitted_request(store_url: str, algorithm: str) -> None:
    alg = compile_algorithm(algorithm, parse_rate("3/h"), None)

    async def body(store: Any) -> None:
        key = store.key(f"refund-{algorithm}")
        verdicts = [await decide(store, alg, key) for _ in range(4)]
        assert [v[0] for v in verdicts] == [1, 1, 1, 0]
        assert await store.run(alg.refund_script, [key], (*alg.args, verdicts[2][4])) == 1
        assert (await decide(store, alg, key))[:2] == [1, 0]  # one more, the last
        assert (await decide(store, alg, key))[0] == 0
        other = store.key(f"refund-none-{algorithm}")
        assert await store.run(alg.refund_script, [other], (*alg.args, verdicts[2][4])) == 0

    run(store_url, body, f"t-refund-{algorithm}:")


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window"])
def test_a_late_refund_takes_nothing_from_a_window_that_started_later(
    store_url: str, algorithm: str
) -> None:
    alg = compile_algorithm(algorithm, parse_rate("2/s"), None)

    async def body(store: Any) -> None:
        key = store.key(f"late-{algorithm}")
        token = (await decide(store, alg, key))[4]
        await asyncio.sleep(2.2)  # two windows on: the key's window starts afresh
        assert (await decide(store, alg, key))[:2] == [1, 1]
        assert await store.run(alg.refund_script, [key], (*alg.args, token)) == 0
        assert [(await decide(store, alg, key))[0] for _ in range(2)] == [1, 0]

    run(store_url, body, f"t-late-{algorithm}:")


def test_a_fixed_window_refunded_to_zero_keeps_its_end(store_url: str) -> None:
    alg = compile_algorithm("fixed_window", parse_rate("2/h"), None)

    async def body(store: Any) -> None:
        key = store.key("zero")
        first = await decide(store, alg, key)
        assert await store.run(alg.refund_script, [key], (*alg.args, first[4])) == 1
        await asyncio.sleep(0.3)
        again = await decide(store, alg, key)
        assert again[:2] == [1, 1]
        assert again[2] < first[2] - 200  # the same window, 0.3 s nearer its end

    run(store_url, body, "t-zero:")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_concurrent_decisions_never_over_admit(store_url: str, algorithm: str) -> None:
    alg = compile_algorithm(algorithm, parse_rate("10/h"), None)

    async def body(store: Any) -> None:
        key = store.key(f"race-{algorithm}")
        verdicts = await asyncio.gather(*(decide(store, alg, key) for _ in range(60)))
        assert sum(v[0] for v in verdicts) == 10

    run(store_url, body, f"t-race-{algorithm}:")


def test_the_token_bucket_refills(store_url: str) -> None:
    alg = compile_algorithm("token_bucket", parse_rate("2/s"), 1)

    async def body(store: Any) -> None:
        key = store.key("refill")
        assert (await decide(store, alg, key))[0] == 1
        rejected = await decide(store, alg, key)
        if rejected[0] == 0:  # (unless this machine took 500 ms between two calls)
            assert 0 < rejected[3] <= 500
        await asyncio.sleep(0.6)
        assert (await decide(store, alg, key))[0] == 1

    run(store_url, body, "t-refill:")


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window"])
def test_windows_end(store_url: str, algorithm: str) -> None:
    alg = compile_algorithm(algorithm, parse_rate("2/0.3s"), None)

    async def body(store: Any) -> None:
        key = store.key(f"window-{algorithm}")
        for _ in range(4):
            await decide(store, alg, key)
        await asyncio.sleep(0.7)  # more than two windows: nothing is remembered
        assert [(await decide(store, alg, key))[0] for _ in range(2)] == [1, 1]

    run(store_url, body, f"t-window-{algorithm}:")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_redis_key_expires(redis_server: Redis, algorithm: str) -> None:
    alg = compile_algorithm(algorithm, parse_rate("100/m"), None)

    async def body(store: RedisStore) -> None:
        key = store.key(f"rl:route:name:{algorithm}", "192.0.2.1")
        assert key.startswith("t-exp:{rl:route:name:")  # prefixed and hash-tagged
        for _ in range(3):
            await decide(store, alg, key)
        ttl = await store.client.pttl(key)
        assert 0 < ttl <= 120_000
        assert await store.client.dbsize() >= 1

    run(redis_server.url, body, "t-exp:")


def test_redis_uses_its_own_clock_for_every_process(redis_server: Redis) -> None:
    """Two clients (as two gateway processes) share one bucket exactly."""
    alg = compile_algorithm("sliding_window", parse_rate("8/h"), None)

    async def go() -> None:
        spec = StoreSpec(url=redis_server.url, prefix="t-two:", timeout=2)
        first, second = RedisStore("a", spec), RedisStore("b", spec)
        try:
            key = first.key("shared")
            results = await asyncio.gather(
                *(decide(store, alg, key) for store in [first, second] * 10)
            )
            assert sum(r[0] for r in results) == 8
        finally:
            await first.close()
            await second.close()

    asyncio.run(go())
