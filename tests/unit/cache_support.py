"""Fakes for the cache policy's unit tests: a clock, an upstream (the ``call_next`` seam),
and a shared store on the memory backend that passes for Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from gateway.config.models import StoreSpec
from gateway.exchange import Exchange, Response
from gateway.observability.metrics import Metrics
from gateway.policies.base import BuildContext
from gateway.policies.cache.config import CacheConfig
from gateway.policies.cache.policy import CachePolicy
from gateway.stores import Stores
from gateway.stores.memory import MemoryStore
from gateway.types import Headers

T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeShared(MemoryStore):
    """A memory store that the cache treats as a shared (Redis-like) tier."""

    kind = "redis"


def shared_store(clock: Callable[[], float]) -> FakeShared:
    return FakeShared("shared", StoreSpec(url="memory://"), clock)


def stores(shared: MemoryStore | None = None, clock: Callable[[], float] | None = None) -> Stores:
    clock = clock or Clock()
    named: dict[str, Any] = {"memory": MemoryStore("memory", StoreSpec(url="memory://"), clock)}
    if shared is not None:
        named["shared"] = shared
    return Stores(named)


def build(
    config: dict[str, Any] | None = None,
    *,
    clock: Clock | None = None,
    store_set: Stores | None = None,
    metrics: Metrics | None = None,
) -> CachePolicy:
    clock = clock or Clock()
    ctx = BuildContext(
        route="r",
        upstream="app",
        stores=store_set if store_set is not None else stores(clock=clock),
        metrics=metrics or Metrics(),
        clock=clock,
        base_dir=Path("."),
        extra={"wall_clock": clock},
    )
    return CachePolicy(CacheConfig.model_validate(config or {}), ctx)


class Chunks:
    """A streamed body that records being closed."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


Answer = Callable[[Exchange, int], Response]


class Upstream:
    """The handler below the cache: answers with ``answer(exchange, n)``, records requests.

    ``gate``: when set, every call waits for it first (to hold requests in flight).
    """

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[tuple[str, bytes, Headers]] = []
        self.gate: asyncio.Event | None = None

    @property
    def calls(self) -> int:
        return len(self.requests)

    def header(self, index: int, name: bytes) -> bytes | None:
        for key, value in self.requests[index][2]:
            if key.lower() == name:
                return value
        return None

    async def __call__(self, exchange: Exchange) -> Response:
        self.requests.append((exchange.method, exchange.raw_target, list(exchange.headers)))
        if self.gate is not None:
            await self.gate.wait()
        return self.answer(exchange, len(self.requests))


def ok(*headers: tuple[str, str], status: int = 200, body: bytes | None = None) -> Answer:
    """An answer with these headers and a body naming the call number."""

    def answer(exchange: Exchange, n: int) -> Response:
        data = body if body is not None else f"response {n}".encode()
        if exchange.method == "HEAD" or status in (204, 304):
            data = b""
        return Response(status, [(k.encode(), v.encode()) for k, v in headers], data)

    return answer


def request(method: str = "GET", target: str = "/a", *headers: tuple[str, str]) -> Exchange:
    raw: Headers = [(b"host", b"svc.local")]
    raw.extend((k.encode(), v.encode()) for k, v in headers)
    exchange = Exchange(method, target.encode(), raw, "10.0.0.1")
    exchange.trace_id = "t" * 32
    return exchange


def header(response: Response, name: str) -> str | None:
    value = response.header(name.lower().encode())
    return value.decode() if value is not None else None
