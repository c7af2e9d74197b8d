"""The concurrency policy and its slots: in-flight limit, FIFO queue, timeouts, 503."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

from gateway.chain import build_chain
from gateway.exchange import Exchange, Response
from gateway.observability.metrics import Metrics
from gateway.policies.base import BuildContext
from gateway.policies.concurrency.config import ConcurrencyConfig
from gateway.policies.concurrency.policy import ConcurrencyPolicy
from gateway.policies.concurrency.slots import Slots
from gateway.stores import Stores
from gateway.types import Handler


def ctx(metrics: Metrics | None = None) -> BuildContext:
    return BuildContext("api", "app", Stores({}), metrics or Metrics(), lambda: 0.0, Path("."))


def test_slots_hand_a_released_slot_to_the_oldest_waiter() -> None:
    async def go() -> list[str]:
        slots = Slots(1, 2)
        order: list[str] = []
        assert slots.try_acquire()

        async def wait(name: str) -> None:
            assert await slots.acquire(5)
            order.append(name)

        first = asyncio.create_task(wait("first"))
        await asyncio.sleep(0)
        second = asyncio.create_task(wait("second"))
        await asyncio.sleep(0)
        assert len(slots.waiters) == 2
        assert not slots.try_acquire()  # a newcomer never overtakes the queue
        assert not await slots.acquire(5)  # the queue is full
        slots.release()
        await first
        slots.release()
        await second
        slots.release()
        assert slots.in_flight == 0 and not slots.waiters
        return order

    assert asyncio.run(go()) == ["first", "second"]


def test_a_queued_request_gives_up_after_its_timeout() -> None:
    async def go() -> None:
        slots = Slots(1, 1)
        assert slots.try_acquire()
        assert not await slots.acquire(0.01)
        assert not slots.waiters and slots.in_flight == 1
        slots.release()
        assert slots.in_flight == 0

    asyncio.run(go())


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    async def go() -> None:
        slots = Slots(1, 1)
        assert slots.try_acquire()
        task = asyncio.create_task(slots.acquire(5))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert not slots.waiters
        slots.release()
        assert slots.in_flight == 0

    asyncio.run(go())


def test_a_slot_handed_over_as_the_wait_ends_is_passed_on() -> None:
    async def go() -> None:
        slots = Slots(1, 2)
        assert slots.try_acquire()
        loser = asyncio.create_task(slots.acquire(5))
        winner = asyncio.create_task(slots.acquire(5))
        await asyncio.sleep(0)
        slots.release()  # the slot goes to `loser`'s future ...
        loser.cancel()  # ... but it is cancelled before it runs
        await asyncio.gather(loser, return_exceptions=True)
        assert await winner
        assert slots.in_flight == 1 and not slots.waiters

    asyncio.run(go())


async def call(chain: Handler, exchange: Exchange) -> Response:
    return await chain(exchange)


class Upstream:
    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls = 0

    async def __call__(self, exchange: Exchange) -> Response:
        self.calls += 1
        await self.gate.wait()
        return Response(200, body=b"ok")


def finish(exchange: Exchange, status: int) -> None:
    for callback in exchange.complete_callbacks:
        callback(exchange, status)


def test_requests_beyond_the_limit_get_503_and_slots_return_after_completion() -> None:
    async def go() -> None:
        metrics = Metrics()
        policy = ConcurrencyPolicy(ConcurrencyConfig(max_in_flight=2), ctx(metrics))
        upstream = Upstream()
        chain: Handler = build_chain([policy], upstream)
        exchanges = [Exchange("GET", b"/", [], "127.0.0.1") for _ in range(3)]
        tasks = [asyncio.create_task(call(chain, e)) for e in exchanges[:2]]
        await asyncio.sleep(0)
        shed = await chain(exchanges[2])
        assert shed.status == 503 and upstream.calls == 2
        assert json.loads(shed.body)["type"].endswith("/temporary-reduced-capacity")
        assert shed.header(b"retry-after") == b"1"
        assert shed.header(b"ratelimit-policy") == b'"concurrency";q=2;qu="concurrent-requests"'
        gauge = metrics.registry.get_sample_value("gateway_concurrency_in_flight", {"route": "api"})
        assert gauge == 2
        upstream.gate.set()
        for task, exchange in zip(tasks, exchanges, strict=False):
            assert (await task).status == 200
            assert policy.slots.in_flight >= 1  # held until the last byte is sent
            finish(exchange, 200)
        assert policy.slots.in_flight == 0
        assert [e.decisions[0].action for e in exchanges] == ["allow", "allow", "reject"]

    asyncio.run(go())


def test_a_queued_request_runs_when_a_slot_frees() -> None:
    async def go() -> None:
        policy = ConcurrencyPolicy(
            ConcurrencyConfig(max_in_flight=1, queue=1, queue_timeout=5), ctx()
        )
        upstream = Upstream()
        chain = build_chain([policy], upstream)
        first, second = (Exchange("GET", b"/", [], "127.0.0.1") for _ in range(2))
        running = asyncio.create_task(call(chain, first))
        await asyncio.sleep(0)
        queued = asyncio.create_task(call(chain, second))
        await asyncio.sleep(0)
        assert upstream.calls == 1 and len(policy.slots.waiters) == 1
        upstream.gate.set()
        await running
        finish(first, 200)
        assert (await queued).status == 200
        assert second.decisions[0].action == "queued"

    asyncio.run(go())


def test_a_failing_chain_gives_its_slot_back() -> None:
    async def failing(exchange: Exchange) -> Response:
        raise RuntimeError("boom")

    async def go() -> None:
        policy = ConcurrencyPolicy(ConcurrencyConfig(max_in_flight=1), ctx())
        chain = build_chain([policy], failing)
        for _ in range(2):
            with contextlib.suppress(RuntimeError):
                await chain(Exchange("GET", b"/", [], "127.0.0.1"))
        assert policy.slots.in_flight == 0

    asyncio.run(go())


def test_explain() -> None:
    policy = ConcurrencyPolicy(ConcurrencyConfig(max_in_flight=8, queue=4), ctx())
    assert policy.explain(Exchange("GET", b"/", [], "::1")) == (
        "at most 8 in flight, queue 4 for 1s; 503 beyond"
    )
