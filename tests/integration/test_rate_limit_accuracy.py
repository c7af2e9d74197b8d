"""Accuracy: a burst at 5x the rate, for each algorithm, one process (memory and Redis)
and three processes sharing one Redis. Never more than an exact limiter would admit.

Short runs (2 s) to keep the suite fast; bench/ratelimit_accuracy.py runs the 10-second
measurement and prints the over-admission figures.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Gateway, Redis, Upstream, base_config
from tests.integration.load import LoadResult, allowance, offer

pytestmark = pytest.mark.integration

RATE = 10.0  # requests per second, per algorithm
BURST = 10
OVERLOAD = 5  # offered load: 5x the rate
SECONDS = 2.0
ALGORITHMS = ("token_bucket", "sliding_window", "fixed_window")
TOLERANCE = {"token_bucket": 0.0, "fixed_window": 0.0, "sliding_window": 0.01}


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Callable[[dict[str, Any], int], list[Gateway]]]:
    started: list[Gateway] = []

    def start(config: dict[str, Any], count: int) -> list[Gateway]:
        for _ in range(count):
            directory = tmp_path / f"gw{len(started)}"
            directory.mkdir()
            started.append(Gateway(config, directory))
        return started[-count:]

    yield start
    for gw in started:
        gw.stop()


def limited_config(upstream: Upstream, store: str, redis_url: str | None) -> dict[str, Any]:
    config = base_config(upstream.url, "native")
    config["logging"] = {"level": "info", "access_log": False}
    if redis_url is not None:
        config["stores"] = {"shared": redis_url}
    run = uuid.uuid4().hex[:8]  # fresh buckets in the session's Redis
    routes = []
    for alg in ALGORITHMS:
        rule: dict[str, Any] = {"key": "route", "algorithm": alg, "rate": f"{RATE:g}/s",
                                "store": store}  # fmt: skip
        if alg == "token_bucket":
            rule["burst"] = BURST
        routes.append({"name": f"{alg}-{run}", "match": {"prefix": f"/{alg}"},
                       "upstream": "app", "policies": {"rate_limit": [rule]}})  # fmt: skip
    config["routes"] = routes
    return config


def burst_all(ports: list[int]) -> dict[str, LoadResult]:
    results: dict[str, LoadResult] = {}

    def one(alg: str) -> None:
        results[alg] = offer(ports, f"/{alg}/x", RATE * OVERLOAD, SECONDS, threads=4)

    threads = [threading.Thread(target=one, args=(alg,)) for alg in ALGORITHMS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def check(results: dict[str, LoadResult]) -> None:
    for alg, result in results.items():
        assert result.errors == 0 and set(result.statuses) <= {200, 429}, (alg, result)
        bound = allowance(alg, RATE, 1.0, BURST, result.span) * (1 + TOLERANCE[alg])
        assert result.admitted <= bound, (alg, result.admitted, bound)
        assert result.admitted >= min(result.sent, BURST), (alg, result)
        assert result.rejected > 0, (alg, result)


def test_one_process_in_memory(gateways: Any, upstream: Upstream) -> None:
    (gw,) = gateways(limited_config(upstream, "memory", None), 1)
    check(burst_all([gw.port]))


def test_one_process_on_redis(gateways: Any, upstream: Upstream, redis_server: Redis) -> None:
    (gw,) = gateways(limited_config(upstream, "shared", redis_server.url), 1)
    check(burst_all([gw.port]))


def test_three_processes_share_one_limit_on_redis(
    gateways: Any, upstream: Upstream, redis_server: Redis
) -> None:
    trio = gateways(limited_config(upstream, "shared", redis_server.url), 3)
    check(burst_all([gw.port for gw in trio]))
