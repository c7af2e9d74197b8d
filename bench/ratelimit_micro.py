"""In-process cost of one rate limiter per admitted request, without sockets.

Builds the route's chain as the gateway does (each policy's ``build`` on its validated
config, in the canonical order, ``build_chain`` around a terminal handler that returns
a fresh 200), then times ``--requests`` calls on fresh
:class:`~gateway.exchange.Exchange` objects with ``time.process_time``, minus the same
loop through a chain without policies. What is left is the policies' whole cost: the
chain hop, the key, the decision in the store, the Decision record and the response
fields. After each request the loop does what the front-end does once the response is
sent: it runs the ``on_complete`` callbacks (the concurrency policies free their slot
there). Each figure is the best of ``--repeat`` runs (the least disturbed by
neighbours)::

    .venv/bin/python bench/ratelimit_micro.py
    .venv/bin/python bench/ratelimit_micro.py --all
    .venv/bin/python bench/ratelimit_micro.py --policies '{"concurrency": {}}'

The default case is the limiter of the ``ratelimit-memory`` variant (bench/variants.py).
``--all`` also times the other algorithms, key kinds, and the concurrency and adaptive
policies. ``--finish`` adds what the gateway does with each decision after the response
(the metrics cell and the access-log entry), which is outside the policy but paid per
decision.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from gateway.chain import build_chain
from gateway.config.models import StoreSpec
from gateway.exchange import Exchange, Response
from gateway.observability.metrics import Metrics
from gateway.policies import REGISTRY, ordered
from gateway.policies.base import BuildContext, Policy
from gateway.stores import Stores
from gateway.stores.memory import MemoryStore
from gateway.types import Handler

#: The limiter of the ``ratelimit-memory`` variant in bench/variants.py.
BENCH_RULE: dict[str, Any] = {
    "name": "per-ip",
    "key": "ip",
    "algorithm": "token_bucket",
    "rate": "10000000/s",
    "burst": 10000000,
    "store": "memory",
}
_WINDOW = {k: v for k, v in BENCH_RULE.items() if k != "burst"}

#: Name -> the route's ``policies:``; the first is the default case.
CASES: dict[str, dict[str, Any]] = {
    "rate_limit token_bucket ip (ratelimit-memory)": {"rate_limit": [BENCH_RULE]},
    "rate_limit sliding_window ip": {"rate_limit": [{**_WINDOW, "algorithm": "sliding_window"}]},
    "rate_limit fixed_window ip": {"rate_limit": [{**_WINDOW, "algorithm": "fixed_window"}]},
    "rate_limit token_bucket route": {"rate_limit": [{**BENCH_RULE, "key": "route"}]},
    "rate_limit token_bucket header:X-Api-Key": {
        "rate_limit": [{**BENCH_RULE, "key": "header:X-Api-Key"}]
    },
    "rate_limit token_bucket {ip}:{header:X-Tenant}": {
        "rate_limit": [{**BENCH_RULE, "key": "{ip}:{header:X-Tenant}"}]
    },
    "rate_limit token_bucket ip, headers: none": {
        "rate_limit": [{**BENCH_RULE, "headers": "none"}]
    },
    "concurrency (defaults)": {"concurrency": {}},
    "adaptive target_latency 1s": {"adaptive": {"target_latency": "1s"}},
}

#: What wrk sends (plus two headers the header keys read).
REQUEST_HEADERS = [
    (b"Host", b"127.0.0.1:8080"),
    (b"X-Api-Key", b"k-0123456789abcdef"),
    (b"X-Tenant", b"acme"),
]


def chain_for(policies: dict[str, Any], metrics: Metrics) -> Handler:
    """The route's handler with ``policies`` (as in a route's ``policies:``) around a 200."""
    memory = MemoryStore("memory", StoreSpec(url="memory://"), time.monotonic)
    ctx = BuildContext(
        "bench", "app", Stores({"memory": memory}), metrics, time.monotonic, Path(".")
    )
    chain: list[Policy[Any]] = []
    for name in ordered(list(policies)):
        policy = REGISTRY[name]
        chain.extend(policy.build(policy.config_model.model_validate(policies[name]), ctx))

    async def terminal(exchange: Exchange) -> Response:
        return Response(200, [(b"content-type", b"text/plain")], b"hello, world!\n")

    return build_chain(chain, terminal)


async def _time(handler: Handler, n: int, finish: Metrics | None) -> float:
    """Seconds of CPU for ``n`` requests through ``handler``."""
    headers = REQUEST_HEADERS
    start = time.process_time()
    for _ in range(n):
        exchange = Exchange("GET", b"/", headers, "127.0.0.1")
        response = await handler(exchange)
        status = response.status
        if status != 200:
            raise SystemExit(f"unexpected status {status}")
        if finish is not None:
            for d in exchange.decisions:
                finish.decision("bench", d.policy, d.action, d.shadow)
            if exchange.decisions:
                _ = [
                    f"{d.policy}:{d.action}{':shadow' if d.shadow else ''}"
                    for d in exchange.decisions
                ]
        for callback in exchange.complete_callbacks:
            callback(exchange, status)
    return time.process_time() - start


async def measure(
    policies: dict[str, Any], n: int, repeat: int, finish: bool
) -> tuple[float, float]:
    """(µs per request of the baseline, µs per request added by ``policies``)."""
    metrics = Metrics()
    base, limited = chain_for({}, metrics), chain_for(policies, metrics)
    sink = metrics if finish else None
    await _time(limited, min(n, 10_000), sink)  # warm: the key exists, caches are filled
    best_base = best_limited = float("inf")
    for _ in range(repeat):  # interleaved, so drift hits both alike
        best_base = min(best_base, await _time(base, n, sink))
        best_limited = min(best_limited, await _time(limited, n, sink))
    return best_base / n * 1e6, (best_limited - best_base) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000, help="calls per timing")
    parser.add_argument("--repeat", type=int, default=5, help="timings; the best is kept")
    parser.add_argument("--all", action="store_true", help="every case, not only the first")
    parser.add_argument("--policies", help="time these route policies instead (JSON)")
    parser.add_argument(
        "--finish", action="store_true", help="add the metrics cell and access-log entry"
    )
    args = parser.parse_args()
    if args.policies:
        cases = {args.policies: json.loads(args.policies)}
    else:
        cases = CASES if args.all else dict([next(iter(CASES.items()))])
    width = max(len(name) for name in cases)
    print(f"{args.requests} requests, best of {args.repeat}, process CPU time")
    for name, policies in cases.items():
        base, added = asyncio.run(measure(policies, args.requests, args.repeat, args.finish))
        print(f"{name:<{width}}  baseline {base:5.2f} µs/req  policies +{added:5.2f} µs/req")


if __name__ == "__main__":
    main()
