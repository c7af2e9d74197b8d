"""The policy registry and the one canonical order (outermost first).

Adding a policy: a package ``gateway/policies/<name>/`` with ``config.py`` and
``policy.py``, one entry in REGISTRY, and its place in ORDER.
"""

from __future__ import annotations

from typing import Any

from gateway.policies.base import Policy
from gateway.policies.noop.policy import NoopPolicy

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
}


def ordered(names: list[str]) -> list[str]:
    """Policy names in the canonical chain order."""
    return sorted(names, key=ORDER.index)
