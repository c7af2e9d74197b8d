"""The cache policy's own CPU per request, in process: no sockets, no front-end.

    .venv/bin/python bench/cache_hit_micro.py [-n 100000] [--repeat 5]

Builds a route chain with the ``cache`` policy the way ``build_snapshot`` does
(``build_chain`` over the policy and a terminal), with the real clocks
(``time.time`` for the wall, ``time.monotonic``), stores one ``/cacheable`` answer
(the bench upstream's: ``Cache-Control: public, max-age=3600``, 14-byte body), then
times ``n`` calls of the route handler on a fresh :class:`Exchange` each with
``time.process_time``. The cost of building the Exchange alone (the baseline, timed
the same way) is subtracted, so the figures are the handler and the policy alone:

* ``hit``: an L1 hit (lookup, freshness, Age and Cache-Status, decision);
* ``hit-304``: a conditional request (``If-None-Match`` matching) answered 304 from L1;
* ``miss+store``: a new URL each call, the terminal answering at once, stored in L1
  (a second policy whose L1 holds 2 MB, so it is full and evicts as it stores);
* ``l2-hit``: ``stores: [shared]`` (the bench's ``cache-shared``), every lookup read from a
  fake shared store that answers at once (:class:`InstantStore`, a dict behind the
  ``KeyValue`` seam), so the figure is the policy's L2 path without the Redis client;
* ``l2-hit+l1``: ``stores: [memory, shared]`` with ``memory.max_bytes: 256`` (the bench's
  ``cache-l2``): an L1 miss, the L2 read and a promotion that L1 refuses;
* ``noop-floor``, for scale: the ``noop`` policy in the same chain, one decision and the
  terminal's answer: about the least any policy that answers costs.

Each figure is the best of ``--repeat`` runs (the least disturbed by neighbours).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from gateway.chain import build_chain
from gateway.config.models import StoreSpec
from gateway.exchange import Exchange, Response
from gateway.observability.metrics import Metrics
from gateway.policies.base import BuildContext
from gateway.policies.cache.config import CacheConfig
from gateway.policies.cache.policy import CachePolicy
from gateway.policies.noop.config import NoopConfig
from gateway.policies.noop.policy import NoopPolicy
from gateway.stores import Stores
from gateway.stores.memory import MemoryStore
from gateway.types import Handler, Headers

_L2_ONLY = {"stores": ["shared"]}
#: As bench variant ``cache-l2``: L1 refuses the entry (see bench/README.md).
_L2_BEHIND_L1 = {"stores": ["memory", "shared"], "memory": {"max_bytes": 256, "max_object": 256}}

BODY = b"Hello, world!\n"
UPSTREAM_HEADERS: Headers = [
    (b"Content-Type", b"text/plain"),
    (b"Content-Length", str(len(BODY)).encode()),
    (b"Cache-Control", b"public, max-age=3600"),
]
#: What wrk sends.
REQUEST_HEADERS: Headers = [(b"Host", b"127.0.0.1:8080")]


class InstantStore:
    """A shared (Redis-like) store that answers at once: a dict, no TTLs, no I/O."""

    kind = "redis"

    def __init__(self, name: str = "shared", prefix: str = "gw:") -> None:
        self.name = name
        self.prefix = prefix
        self.data: dict[str, Any] = {}
        self.gets = 0

    def key(self, *parts: str) -> str:
        head, *rest = parts
        return self.prefix + "{" + head + "}" + "".join(":" + p for p in rest)

    async def get(self, key: str) -> bytes | None:
        self.gets += 1
        value = self.data.get(key)
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self.data[key] = value

    async def delete(self, *keys: str) -> int:
        return sum(self.data.pop(k, None) is not None for k in keys)

    async def incr(self, key: str, amount: int, ttl: float) -> int:
        self.data[key] = value = int(self.data.get(key, 0)) + amount
        return value

    async def publish(self, channel: str, message: bytes) -> None:
        return None

    async def subscribe(self, channel: str, callback: Any) -> None:
        return None

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


async def terminal(exchange: Exchange) -> Response:
    return Response(200, list(UPSTREAM_HEADERS), BODY, reason=b"OK")


def context(shared: InstantStore | None = None) -> BuildContext:
    memory = MemoryStore("memory", StoreSpec(url="memory://"), time.monotonic)
    named: dict[str, Any] = {"memory": memory}
    if shared is not None:
        named["shared"] = shared
    return BuildContext(
        route="bench",
        upstream="app",
        stores=Stores(named),
        metrics=Metrics(),
        clock=time.monotonic,
        base_dir=Path("."),
    )


def build(
    config: dict[str, Any], shared: InstantStore | None = None
) -> tuple[CachePolicy, Handler]:
    policy = CachePolicy(CacheConfig.model_validate(config), context(shared))
    return policy, build_chain([policy], terminal)


async def l2_hits(config: dict[str, Any]) -> tuple[CachePolicy, Handler, InstantStore]:
    """A policy reading ``/cacheable`` from the fake shared store, checked to hit in L2."""
    shared = InstantStore()
    policy, handler = build(config, shared)
    await policy.start()
    await handler(Exchange("GET", b"/cacheable", REQUEST_HEADERS, "127.0.0.1"))
    before = shared.gets
    hit = await handler(Exchange("GET", b"/cacheable", REQUEST_HEADERS, "127.0.0.1"))
    status = dict(hit.headers).get(b"cache-status", b"").decode()
    assert hit.status == 200 and status.endswith("; detail=l2"), status
    assert hit.body == BODY
    gets = shared.gets - before
    print(f"l2 hit ({', '.join(config['stores'])}): {status}; {gets} store read(s) per hit")
    return policy, handler, shared


async def timed_exchanges(n: int, target: bytes, headers: Headers) -> float:
    start = time.process_time()
    for _ in range(n):
        Exchange("GET", target, headers, "127.0.0.1")
    return time.process_time() - start


async def timed_calls(handler: Handler, n: int, target: bytes, headers: Headers) -> float:
    start = time.process_time()
    for _ in range(n):
        await handler(Exchange("GET", target, headers, "127.0.0.1"))
    return time.process_time() - start


async def timed_misses(handler: Handler, n: int, round_: int) -> float:
    targets = [b"/cacheable?r=%d&i=%d" % (round_, i) for i in range(n)]
    start = time.process_time()
    for target in targets:
        await handler(Exchange("GET", target, REQUEST_HEADERS, "127.0.0.1"))
    return time.process_time() - start


async def main(n: int, repeat: int) -> None:
    policy, handler = build({"stores": ["memory"]})
    filler, fill = build(
        {"stores": ["memory"], "memory": {"max_bytes": "2mb", "max_object": "1mb"}}
    )
    noop = build_chain([NoopPolicy(NoopConfig(), context())], terminal)
    await policy.start()
    await filler.start()
    first = await handler(Exchange("GET", b"/cacheable", REQUEST_HEADERS, "127.0.0.1"))
    hit = await handler(Exchange("GET", b"/cacheable", REQUEST_HEADERS, "127.0.0.1"))
    status = dict(hit.headers).get(b"cache-status", b"").decode()
    etag_headers: Headers = [*REQUEST_HEADERS, (b"If-None-Match", b"*")]
    assert first.status == 200 and status.startswith("gateway; hit; ttl="), status
    print(f"first: {dict(first.headers).get(b'cache-status', b'').decode()}")
    print(f"hit:   {status}; {len(hit.headers)} headers")
    l2_policy, l2_handler, _ = await l2_hits(_L2_ONLY)
    l2l1_policy, l2l1_handler, _ = await l2_hits(_L2_BEHIND_L1)
    best: dict[str, float] = {}
    for r in range(repeat):
        base = await timed_exchanges(n, b"/cacheable", REQUEST_HEADERS)
        base_inm = await timed_exchanges(n, b"/cacheable", etag_headers)
        runs = {
            "hit": await timed_calls(handler, n, b"/cacheable", REQUEST_HEADERS) - base,
            "hit-304": await timed_calls(handler, n, b"/cacheable", etag_headers) - base_inm,
            "miss+store": await timed_misses(fill, n // 5, r) * 5 - base,
            "l2-hit": await timed_calls(l2_handler, n, b"/cacheable", REQUEST_HEADERS) - base,
            "l2-hit+l1": await timed_calls(l2l1_handler, n, b"/cacheable", REQUEST_HEADERS) - base,
            "noop-floor": await timed_calls(noop, n, b"/cacheable", REQUEST_HEADERS) - base,
        }
        best["exchange"] = min(best.get("exchange", base), base)
        for name, seconds in runs.items():
            best[name] = min(best.get(name, seconds), seconds)
    await policy.stop()
    await filler.stop()
    await l2_policy.stop()
    await l2l1_policy.stop()
    print(f"{'path':<12} {'us/req':>8}   (best of {repeat}, n={n}, Exchange subtracted)")
    for name, seconds in best.items():
        print(f"{name:<12} {seconds / n * 1e6:8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100_000, help="calls per timed run")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs; the best is shown")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.repeat))
