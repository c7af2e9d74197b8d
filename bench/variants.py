"""Gateway variants the benchmark can run, as data.

A variant is the gateway's front-end plus what goes into the one benchmark route
(``policies:``), any named stores, and extra environment. Adding a variant is one entry
in ``VARIANTS``; select it with ``bench/run.py --variants native,asgi,<name>``.

Placeholders in store URLs and policy values are filled in by the harness:

- ``{redis}``: the URL of a ``redis-server`` the harness starts on a random loopback
  port (only when a selected variant mentions it), e.g. ``redis://127.0.0.1:PORT/0``.

Cache variants request ``CACHEABLE_PATH``, which the upstream answers with
``Cache-Control: public, max-age=3600``. ``nginx_cache=True`` makes the harness also
run nginx with ``proxy_cache`` (target ``nginx-cache``) on that path and compare;
``baseline`` names the pass-through variant on the same path that a hit must not cost
more than (the harness adds it to the run when it was not selected).

``GROUPS`` are names for several variants at once (``--variants cache``).

Example (once the rate-limit policy exists; keep limits far above the offered load so
the benchmark measures the decision, not 429s -- the table shows non-2xx counts)::

    "ratelimit-redis": Variant(
        description="rate_limit in Redis, limit never reached",
        stores={"shared": "{redis}"},
        policies={"rate_limit": {"store": "shared", "rate": "10000000/s", "key": "ip"}},
    ),
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Variant:
    """One way to run the gateway under test."""

    description: str
    server: Literal["native", "asgi"] = "native"
    policies: dict[str, Any] = field(default_factory=dict)
    stores: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    path: str = "/"  # the path wrk requests through this variant
    nginx_cache: bool = False  # compare with nginx proxy_cache serving hits on `path`
    baseline: str | None = None  # pass-through variant (same path) to compare with

    @property
    def caches(self) -> bool:
        return "cache" in self.policies

    @property
    def needs_redis(self) -> bool:
        return "{redis}" in json.dumps([self.policies, self.stores, self.env])


#: The upstream path whose answer may be cached (see bench/upstream.py).
CACHEABLE_PATH = "/cacheable"
#: An entry is its body, headers, URL and 400 bytes of bookkeeping
#: (gateway/policies/cache/entry.py), so with this in-process limit every entry is too
#: big for L1 while a 14-byte body is within ``max_object`` (which bounds every tier).
_TINY_L1 = 256

VARIANTS: dict[str, Variant] = {
    "native": Variant(
        description="native front-end, default transport, pass-through (no policies)",
        server="native",
    ),
    "asgi": Variant(
        description="ASGI front-end under uvicorn, default transport, pass-through",
        server="asgi",
    ),
    "native-aiohttp": Variant(
        description="native front-end with the aiohttp transport (GATEWAY_TRANSPORT=aiohttp)",
        server="native",
        env={"GATEWAY_TRANSPORT": "aiohttp"},
    ),
    "asgi-aiohttp": Variant(
        description="ASGI front-end with the aiohttp transport (the issue-2 baseline)",
        server="asgi",
        env={"GATEWAY_TRANSPORT": "aiohttp"},
    ),
    "noop": Variant(
        description="native front-end, one `noop` policy in the chain (cost of a policy hop)",
        server="native",
        policies={"noop": {}},
    ),
    "ratelimit-memory": Variant(
        description="native, one token-bucket rate_limit per client IP in memory, "
        "limit never reached",
        server="native",
        policies={
            "rate_limit": [
                {
                    "name": "per-ip",
                    "key": "ip",
                    "algorithm": "token_bucket",
                    "rate": "10000000/s",
                    "burst": 10000000,
                    "store": "memory",
                }
            ]
        },
    ),
    "ratelimit-redis": Variant(
        description="native, one token-bucket rate_limit per client IP in Redis, "
        "limit never reached",
        server="native",
        stores={"shared": "{redis}"},
        policies={
            "rate_limit": [
                {
                    "name": "per-ip",
                    "key": "ip",
                    "algorithm": "token_bucket",
                    "rate": "10000000/s",
                    "burst": 10000000,
                    "store": "shared",
                }
            ]
        },
    ),
    "redis-store": Variant(
        description="native, pass-through, with a Redis store configured but unused "
        "(checks the harness's redis plumbing)",
        server="native",
        stores={"shared": "{redis}"},
    ),
    "cacheable": Variant(
        description=f"native, pass-through (no policies), GET {CACHEABLE_PATH}: the "
        "baseline a cache hit must not cost more than",
        server="native",
        path=CACHEABLE_PATH,
        nginx_cache=True,
    ),
    "cache-l1": Variant(
        description="native, cache with stores [memory]: every request after the first is "
        "an L1 (in-process) hit",
        server="native",
        path=CACHEABLE_PATH,
        policies={"cache": {"stores": ["memory"]}},
        nginx_cache=True,
        baseline="cacheable",
    ),
    "cache-l2": Variant(
        description=f"native, cache with stores [memory, shared] and an L1 of {_TINY_L1} "
        "bytes that cannot hold the entry: every lookup misses L1, hits Redis, and the "
        "promotion into L1 is refused",
        server="native",
        path=CACHEABLE_PATH,
        stores={"shared": "{redis}"},
        policies={
            "cache": {
                "stores": ["memory", "shared"],
                "memory": {"max_bytes": _TINY_L1, "max_object": _TINY_L1},
            }
        },
        nginx_cache=True,
        baseline="cacheable",
    ),
    "cache-shared": Variant(
        description="native, cache with stores [shared] (no in-process tier): every hit "
        "is a Redis read",
        server="native",
        path=CACHEABLE_PATH,
        stores={"shared": "{redis}"},
        policies={"cache": {"stores": ["shared"]}},
        nginx_cache=True,
        baseline="cacheable",
    ),
}

DEFAULT_VARIANTS: tuple[str, ...] = ("native", "asgi")

GROUPS: dict[str, tuple[str, ...]] = {
    "cache": ("cacheable", "cache-l1", "cache-l2"),
}


def expand(names: list[str]) -> list[str]:
    """``names`` with groups replaced by their variants and each variant's baseline
    added (just before it, unless already there), without duplicates."""
    out: list[str] = []
    for name in names:
        for member in GROUPS.get(name, (name,)):
            if member not in out:
                out.append(member)
    for name in list(out):
        variant = VARIANTS.get(name)
        if variant is not None and variant.baseline and variant.baseline not in out:
            out.insert(out.index(name), variant.baseline)
    return out


def fill(value: Any, placeholders: dict[str, str]) -> Any:
    """``value`` with every ``{name}`` placeholder in its strings replaced."""
    if isinstance(value, str):
        for name, replacement in placeholders.items():
            value = value.replace("{" + name + "}", replacement)
        return value
    if isinstance(value, dict):
        return {k: fill(v, placeholders) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, placeholders) for v in value]
    return value
