"""The policy registry and the one canonical order (outermost first).

Adding a policy: a package ``gateway/policies/<name>/`` with ``config.py`` and
``policy.py``, one entry in REGISTRY, and its place in ORDER.
"""

from __future__ import annotations

from typing import Any

from gateway.policies.adaptive.policy import AdaptivePolicy
from gateway.policies.base import Policy
from gateway.policies.cache.policy import CachePolicy
from gateway.policies.concurrency.policy import ConcurrencyPolicy
from gateway.policies.noop.policy import NoopPolicy
from gateway.policies.rate_limit.policy import RateLimitPolicy

ORDER: list[str] = [
    "noop",
    "anomaly",
    "rate_limit",
    "concurrency",
    "adaptive",
    "validate",
    "cache",
    "retry",
    "circuit_breaker",
]

REGISTRY: dict[str, type[Policy[Any]]] = {
    NoopPolicy.name: NoopPolicy,
    RateLimitPolicy.name: RateLimitPolicy,
    ConcurrencyPolicy.name: ConcurrencyPolicy,
    AdaptivePolicy.name: AdaptivePolicy,
    CachePolicy.name: CachePolicy,
}


def ordered(names: list[str]) -> list[str]:
    """Policy names in the canonical chain order."""
    return sorted(names, key=ORDER.index)
