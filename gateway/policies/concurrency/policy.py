"""The ``concurrency`` policy: a per-route in-flight limit, 503 problem+json when full.

A slot is taken before the rest of the chain runs and given back after the last
response byte is sent (``exchange.on_complete``), or at once if the chain fails. The
slot counter lives in this instance, so it is per process and restarts with a reload
(for a moment both snapshots admit up to the limit).
"""

from __future__ import annotations

from typing import ClassVar

from gateway.edge import problem_response
from gateway.exchange import Decision, Exchange, Response
from gateway.policies.base import BuildContext, Policy
from gateway.policies.concurrency.config import ConcurrencyConfig
from gateway.policies.concurrency.slots import Slots
from gateway.types import Handler, Headers

ALLOW, QUEUED, REJECT = "allow", "queued", "reject"


class ConcurrencyPolicy(Policy[ConcurrencyConfig]):
    name: ClassVar[str] = "concurrency"
    config_model = ConcurrencyConfig

    def __init__(self, config: ConcurrencyConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        slots = self.slots = Slots(config.max_in_flight, config.queue)
        self._timeout = config.queue_timeout
        self._queue = config.queue > 0
        self._release = slots.done
        in_flight = ctx.metrics.gauge(
            "gateway_concurrency_in_flight",
            "Requests holding a slot of the concurrency policy, by route.",
            ["route"],
        )
        in_flight.labels(ctx.route).set_function(lambda: slots.in_flight)
        queued = ctx.metrics.gauge(
            "gateway_concurrency_queued",
            "Requests waiting for a slot of the concurrency policy, by route.",
            ["route"],
        )
        queued.labels(ctx.route).set_function(lambda: len(slots.waiters))
        self._shed_headers: Headers = [
            (b"retry-after", b"1"),
            (b"ratelimit-policy",
             b'"concurrency";q=%d;qu="concurrent-requests"' % config.max_in_flight),
            (b"ratelimit", b'"concurrency";r=0'),
        ]  # fmt: skip
        self._detail = (
            f"route {ctx.route!r} is serving its limit of {config.max_in_flight} requests "
            "at once; try again shortly"
        )

    def explain(self, exchange: Exchange) -> str:
        config = self.config
        queue = f", queue {config.queue} for {config.queue_timeout:g}s" if config.queue else ""
        return f"at most {config.max_in_flight} in flight{queue}; 503 beyond"

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Response:
        slots = self.slots
        if slots.try_acquire():
            exchange.decisions.append(Decision(self.name, ALLOW))
        elif self._queue and await slots.acquire(self._timeout):
            exchange.decide(self.name, QUEUED)
        else:
            exchange.decide(self.name, REJECT)
            return problem_response(
                exchange, 503, "temporary-reduced-capacity", "Service Unavailable",
                self._detail, list(self._shed_headers),
            )  # fmt: skip
        try:
            response = await call_next(exchange)
        except BaseException:
            slots.release()
            raise
        exchange.on_complete(self._release)
        return response
