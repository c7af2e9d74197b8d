"""The Redis round trip a rate limiter in Redis waits for, measured the way it waits.

One connection, one command at a time (as wrk -c1 drives the gateway): the limiter's
own ``EVALSHA`` (the token bucket script with the ``ratelimit-redis`` variant's rate,
burst and key shape), sent and awaited through the gateway's Redis client on uvloop, so
the figure includes what the gateway's side of a round trip costs (encoding, the write,
the wake-up, parsing the reply, resuming the awaiting task) and nothing else.

    python bench/redis_rtt.py redis://127.0.0.1:6379/0 --duration 3

prints one JSON object: ``calls``, ``p50_us``, ``p99_us``, ``mean_us``. bench/run.py runs
it once a round, pinned to the proxy's CPU, beside the gateway variants that use Redis.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence

import uvloop

from gateway.config.units import parse_rate
from gateway.policies.rate_limit.algorithms import compile_algorithm
from gateway.stores.redis import load_lua, resp_address
from gateway.stores.resp import RespClient

#: The rate and burst of the ``ratelimit-redis`` variant (bench/variants.py).
RATE, BURST = "10000000/s", 10000000
#: A key shaped like the limiter's: prefix, hash tag, route, limiter, algorithm, bucket.
KEY = "gw:{rl:bench:rtt:tb:}127.0.0.1"


async def probe(url: str, duration: float, warmup: float) -> dict[str, float]:
    address = resp_address(url)
    if address is None:
        raise SystemExit(f"{url}: only redis:// URLs without options are measured")
    client = RespClient("bench", address, 1.0, None)
    algorithm = compile_algorithm("token_bucket", parse_rate(RATE), BURST)
    script = load_lua(algorithm.script).encode()
    sha = await client.call(b"SCRIPT", b"LOAD", script)
    assert isinstance(sha, bytes), sha
    keys, args = (KEY,), algorithm.args
    clock = time.perf_counter
    samples: list[float] = []
    try:
        end = clock() + warmup
        while clock() < end:
            await client.call_script(sha, script, keys, args)
        end = clock() + duration
        while True:
            start = clock()
            if start >= end:
                break
            await client.call_script(sha, script, keys, args)
            samples.append(clock() - start)
    finally:
        await client.close()
    ordered = sorted(samples)
    return {
        "calls": len(samples),
        "p50_us": statistics.median(ordered) * 1e6,
        "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6,
        "mean_us": statistics.fmean(ordered) * 1e6,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("url", help="redis://host:port/db")
    p.add_argument("--duration", type=float, default=3.0, help="seconds measured")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds before measuring")
    args = p.parse_args(argv)
    result = uvloop.run(probe(args.url, args.duration, args.warmup))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
