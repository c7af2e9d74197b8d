"""How a policy survives its store: bounded calls, counted and rate-limited logging.

A policy awaits its store call itself and hands a StoreError to
:meth:`StoreGuard.failed`: the failure or timeout is counted in
``gateway_store_errors_total{store,policy}`` and logged at most once per
``log_interval``. The policy then applies its declared
``on_store_error`` (allow, deny, local_share, ...): the guard never decides that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from gateway.observability.metrics import Metrics

log = logging.getLogger("gateway.stores")


class StoreGuard:
    def __init__(
        self,
        metrics: Metrics,
        store: str,
        policy: str,
        log_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._count = metrics.store_errors.labels(store, policy).inc
        self.store = store
        self.policy = policy
        self.log_interval = log_interval
        self.clock = clock
        self._last_log = -float("inf")
        self._suppressed = 0

    def failed(self, exc: Exception) -> None:
        self._count()
        now = self.clock()
        if now - self._last_log >= self.log_interval:
            extra = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
            log.warning("policy %s: store %s failed: %s%s", self.policy, self.store, exc, extra)
            self._last_log = now
            self._suppressed = 0
        else:
            self._suppressed += 1
