"""The adaptive policy: AIMD limit from latency, shedding with 503, the limit gauge."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.chain import build_chain
from gateway.errors import UpstreamTimeout
from gateway.exchange import Exchange, Response
from gateway.observability.metrics import Metrics
from gateway.policies.adaptive.aimd import AimdLimit
from gateway.policies.adaptive.config import AdaptiveConfig
from gateway.policies.adaptive.policy import AdaptivePolicy
from gateway.policies.base import BuildContext
from gateway.stores import Stores
from gateway.types import Handler


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def call(chain: Handler, exchange: Exchange) -> Response:
    return await chain(exchange)


def test_slow_samples_shrink_the_limit_down_to_min() -> None:
    limit = AimdLimit(2, 50, 20, target=0.2, backoff=0.5)
    limit.sample(0.5, False, 10)
    assert limit.current == 10
    for _ in range(10):
        limit.sample(0.5, False, 10)
    assert limit.current == 2


def test_fast_samples_grow_the_limit_only_when_it_is_used() -> None:
    limit = AimdLimit(2, 22, 20, target=0.2, backoff=0.9)
    limit.sample(0.01, False, 3)  # 3 in flight of 20: the limit is not what holds us back
    assert limit.current == 20
    for _ in range(5):
        limit.sample(0.01, False, 15)
    assert limit.current == 22  # and never above max


def test_overload_statuses_and_errors_count_as_slow() -> None:
    limit = AimdLimit(1, 100, 10, target=10.0, backoff=0.5)
    limit.sample(0.001, True, 10)
    assert limit.current == 5


def test_config_bounds() -> None:
    assert AdaptiveConfig(target_latency=0.2).start == 20
    assert AdaptiveConfig(target_latency=0.2, min=50, max=60).start == 50
    assert AdaptiveConfig(target_latency=0.2, min=1, max=5).start == 5
    for bad in ({"min": 10, "max": 5}, {"initial": 1}, {"target_latency": 0}):
        with pytest.raises(ValidationError):
            AdaptiveConfig.model_validate({"target_latency": 0.2, **bad})


def test_the_policy_sheds_once_a_slow_upstream_brought_the_limit_down() -> None:
    clock = Clock()
    metrics = Metrics()
    ctx = BuildContext("api", "app", Stores({}), metrics, clock, Path("."))
    config = AdaptiveConfig(min=1, max=10, initial=4, target_latency=0.1, backoff=0.5)
    policy = AdaptivePolicy(config, ctx)
    gate = asyncio.Event()
    latency = {"value": 0.5}

    async def upstream(exchange: Exchange) -> Response:
        await gate.wait()
        clock.now += latency["value"]
        return Response(200, body=b"ok")

    chain = build_chain([policy], upstream)

    def gauge() -> float | None:
        return metrics.registry.get_sample_value("gateway_adaptive_limit", {"route": "api"})

    async def go() -> None:
        assert gauge() == 4
        exchanges = [Exchange("GET", b"/", [], "127.0.0.1") for _ in range(6)]
        tasks = [asyncio.create_task(call(chain, e)) for e in exchanges]
        await asyncio.sleep(0)
        gate.set()
        statuses = [(await t).status for t in tasks]
        assert statuses == [200, 200, 200, 200, 503, 503]  # 4 admitted, the rest shed at once
        shed = await tasks[-1]
        assert json.loads(shed.body)["type"].endswith("/temporary-reduced-capacity")
        assert gauge() == 1  # 4 slow samples: 4 -> 2 -> 1 -> 1 -> 1
        for exchange in exchanges:
            for callback in exchange.complete_callbacks:
                callback(exchange, 200)
        assert policy.state.in_flight == 0
        one = Exchange("GET", b"/", [], "127.0.0.1")
        two = Exchange("GET", b"/", [], "127.0.0.1")
        gate.clear()
        first = asyncio.create_task(call(chain, one))
        await asyncio.sleep(0)
        assert (await chain(two)).status == 503  # the limit is now 1
        latency["value"] = 0.01
        gate.set()
        assert (await first).status == 200
        assert gauge() == 2  # a fast sample at full use grows the limit again

    asyncio.run(go())


def test_an_upstream_error_is_an_overload_sample_and_frees_the_slot() -> None:
    ctx = BuildContext("api", "app", Stores({}), Metrics(), Clock(), Path("."))
    policy = AdaptivePolicy(AdaptiveConfig(min=1, max=10, initial=8, target_latency=1), ctx)

    async def timeout(exchange: Exchange) -> Response:
        raise UpstreamTimeout("read timed out")

    async def go() -> None:
        with pytest.raises(UpstreamTimeout):
            await build_chain([policy], timeout)(Exchange("GET", b"/", [], "127.0.0.1"))

    asyncio.run(go())
    assert policy.state.current == 7 and policy.state.in_flight == 0
    assert "AIMD limit 7 (between 1 and 10)" in policy.explain(Exchange("GET", b"/", [], "::1"))
