"""Rate-limit accuracy: a burst at 5x the rate, per algorithm, 1 and 3 gateway processes.

    .venv/bin/python bench/ratelimit_accuracy.py [--seconds 10] [--rate 50] [--overload 5]
                                                 [--processes 1,3] [--json]

Starts a redis-server, the test upstream and gateway processes on loopback (the
integration-test harness), and for each algorithm (``token_bucket`` with burst = rate
count, ``sliding_window``, ``fixed_window``) offers ``rate x overload`` requests/s for
``seconds`` to one route keyed by ``route`` (one global bucket), round-robin over the
processes. Configurations: one process with the memory store, one process on Redis,
and N processes sharing Redis (N from ``--processes``).

For each run it prints the admitted count, the allowance of an exact limiter over the
measured span (initial allowance + rate x span; the span is measured by the client, so
it is never shorter than what the gateways saw), and the over-admission
``max(0, admitted - allowance) / allowance``. Goal: 0 for the token bucket and the fixed
window, <= 1% for the sliding window (counter approximation).

It then measures the in-process cost of one decision (no HTTP): the chain with one
limiter vs the same chain without it, memory and Redis (``--decisions`` calls each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.chain import build_chain  # noqa: E402
from gateway.config.models import StoreSpec  # noqa: E402
from gateway.exchange import Exchange, Response  # noqa: E402
from gateway.observability.metrics import Metrics  # noqa: E402
from gateway.policies.base import BuildContext  # noqa: E402
from gateway.policies.rate_limit.config import RateLimitConfig  # noqa: E402
from gateway.policies.rate_limit.policy import RateLimitPolicy  # noqa: E402
from gateway.stores import Stores, build_store  # noqa: E402
from tests.integration.harness import Gateway, Redis, Upstream, base_config  # noqa: E402
from tests.integration.load import allowance, offer  # noqa: E402

ALGORITHMS = ("token_bucket", "sliding_window", "fixed_window")


def gateway_config(upstream: Upstream, store: str, redis_url: str, rate: float,
                   tag: str) -> dict[str, Any]:  # fmt: skip
    config = base_config(upstream.url, "native")
    config["logging"] = {"level": "warning", "access_log": False}
    config["stores"] = {"shared": redis_url}
    config["routes"] = [
        {"name": f"{alg}-{tag}", "match": {"prefix": f"/{alg}"}, "upstream": "app",
         "policies": {"rate_limit": [{"key": "route", "algorithm": alg, "rate": f"{rate:g}/s",
                                      "store": store}]}}
        for alg in ALGORITHMS
    ]  # fmt: skip
    return config


def accuracy(args: argparse.Namespace, upstream: Upstream, redis: Redis,
             workdir: Path) -> list[dict[str, Any]]:  # fmt: skip
    setups = [("memory", 1)] + [("redis", n) for n in args.processes]
    rows = []
    for n_setup, (store, processes) in enumerate(setups):
        tag = f"{int(time.time())}-{n_setup}"
        config = gateway_config(upstream, "memory" if store == "memory" else "shared",
                                redis.url, args.rate, tag)  # fmt: skip
        gateways = []
        try:
            for i in range(processes):
                directory = workdir / f"{tag}-{i}"
                directory.mkdir()
                gateways.append(Gateway(config, directory))
            ports = [gw.port for gw in gateways]
            for alg in ALGORITHMS:
                result = offer(ports, f"/{alg}/x", args.rate * args.overload, args.seconds,
                               threads=args.threads)  # fmt: skip
                allowed = allowance(alg, args.rate, 1.0, args.rate, result.span)
                over = max(0.0, result.admitted - allowed) / allowed
                row = {
                    "algorithm": alg, "store": store, "processes": processes,
                    "offered": result.sent, "offered_per_s": result.sent / result.span,
                    "span_s": result.span, "admitted": result.admitted,
                    "rejected": result.rejected, "errors": result.errors,
                    "other": {k: v for k, v in result.statuses.items() if k not in (200, 429)},
                    "allowance": allowed, "over_admission": over,
                    "admitted_vs_allowance": result.admitted / allowed,
                }  # fmt: skip
                rows.append(row)
                print(
                    f"{alg:15} {store:6} x{processes}: offered {result.sent} "
                    f"({row['offered_per_s']:.0f}/s over {result.span:.2f}s), "
                    f"admitted {result.admitted}, exact allowance {allowed:.1f}, "
                    f"over-admission {over:.2%} (admitted/allowance "
                    f"{row['admitted_vs_allowance']:.3f})",
                    flush=True,
                )
        finally:
            for gw in gateways:
                gw.stop()
    return rows


async def _decision_cost(store_url: str | None, calls: int) -> dict[str, float]:
    stores = {"memory": build_store("memory", StoreSpec(url="memory://"), time.monotonic)}
    if store_url is not None:
        stores["shared"] = build_store("shared", StoreSpec(url=store_url, timeout=1),
                                       time.monotonic)  # fmt: skip
    ctx = BuildContext("bench", "app", Stores(stores), Metrics(), time.monotonic, ROOT)
    store = "shared" if store_url is not None else "memory"
    rule = RateLimitConfig.model_validate([{"rate": "1000000000/s", "store": store}])

    async def upstream(exchange: Exchange) -> Response:
        return Response(200, [], b"ok")

    bare = build_chain([], upstream)
    limited = build_chain(RateLimitPolicy.build(rule, ctx), upstream)
    timings = {}
    for name, chain in (("pass_through", bare), ("one_limiter", limited)):
        await chain(Exchange("GET", b"/", [], "127.0.0.1"))  # warm up (script load)
        started = time.perf_counter()
        for i in range(calls):
            await chain(Exchange("GET", b"/", [], f"10.0.{i % 250}.1"))
        timings[name] = (time.perf_counter() - started) / calls * 1e6
    for s in stores.values():
        await s.close()
    return {**timings, "added_us": timings["one_limiter"] - timings["pass_through"]}


def decision_cost(redis: Redis, calls: int) -> dict[str, dict[str, float]]:
    out = {
        "memory": asyncio.run(_decision_cost(None, calls)),
        "redis": asyncio.run(_decision_cost(redis.url, max(calls // 10, 100))),
    }
    for store, figures in out.items():
        print(
            f"decision cost, {store:6}: pass-through chain {figures['pass_through']:.1f} us, "
            f"with one limiter {figures['one_limiter']:.1f} us "
            f"(+{figures['added_us']:.1f} us per request, in process, no HTTP)",
            flush=True,
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=50.0, help="limit, requests/s")
    parser.add_argument("--overload", type=float, default=5.0, help="offered load / rate")
    parser.add_argument("--processes", default="1,3", help="gateway processes sharing Redis")
    parser.add_argument("--threads", type=int, default=8, help="client threads per run")
    parser.add_argument("--decisions", type=int, default=20000, help="calls per cost run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    args.processes = [int(p) for p in args.processes.split(",") if p]
    upstream, redis = Upstream(), Redis()
    try:
        with tempfile.TemporaryDirectory(prefix="rl-accuracy-") as tmp:
            rows = accuracy(args, upstream, redis, Path(tmp))
        costs = decision_cost(redis, args.decisions)
    finally:
        upstream.stop()
        redis.stop()
    if args.json:
        print(json.dumps({"accuracy": rows, "decision_cost": costs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
