"""AIMD concurrency limit, as in Netflix concurrency-limits' ``AIMDLimit``.

Each completed request is a sample: if it failed with an overload sign (an upstream
error, 502/503/504) or took longer than the target latency, the limit is multiplied
by ``backoff``; otherwise, if the route was using at least half of the limit when the
request started, the limit grows by one. The limit stays within ``[min, max]``.
Requests beyond ``floor(limit)`` in flight are shed at once (no queue: queueing is
what an overloaded upstream needs least).
"""

from __future__ import annotations

import math

#: Statuses that mean the upstream is overloaded or unreachable.
OVERLOAD_STATUSES = frozenset({502, 503, 504})


class AimdLimit:
    __slots__ = ("backoff", "in_flight", "limit", "max", "min", "target")

    def __init__(self, minimum: int, maximum: int, initial: int, target: float,
                 backoff: float) -> None:  # fmt: skip
        self.min = float(minimum)
        self.max = float(maximum)
        self.limit = float(initial)
        self.target = target
        self.backoff = backoff
        self.in_flight = 0

    @property
    def current(self) -> int:
        return math.floor(self.limit)

    def try_acquire(self) -> int:
        """The in-flight count including this request, or 0 when it must be shed."""
        if self.in_flight >= math.floor(self.limit):
            return 0
        self.in_flight += 1
        return self.in_flight

    def release(self) -> None:
        self.in_flight -= 1

    def done(self, exchange: object, status: int) -> None:
        """:meth:`release` as an ``exchange.on_complete`` callback."""
        self.in_flight -= 1

    def sample(self, latency: float, overloaded: bool, in_flight: int) -> None:
        if overloaded or latency > self.target:
            self.limit = max(self.min, self.limit * self.backoff)
        elif in_flight * 2 >= self.limit:
            self.limit = min(self.max, self.limit + 1.0)
