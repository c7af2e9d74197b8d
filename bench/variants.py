"""Gateway variants the benchmark can run, as data.

A variant is the gateway's front-end plus what goes into the one benchmark route
(``policies:``), any named stores, and extra environment. Adding a variant is one entry
in ``VARIANTS``; select it with ``bench/run.py --variants native,asgi,<name>``.

Placeholders in store URLs and policy values are filled in by the harness:

- ``{redis}``: the URL of a ``redis-server`` the harness starts on a random loopback
  port (only when a selected variant mentions it), e.g. ``redis://127.0.0.1:PORT/0``.

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

    @property
    def needs_redis(self) -> bool:
        return "{redis}" in json.dumps([self.policies, self.stores, self.env])


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
}

DEFAULT_VARIANTS: tuple[str, ...] = ("native", "asgi")


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
