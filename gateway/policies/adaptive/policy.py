"""The ``adaptive`` policy: shed with 503 beyond a limit that follows upstream latency.

The limit (see ``aimd.py``) and the in-flight count are the state shared between
requests; they live in this instance (per route, per process, restarting with a
reload) and are exported as ``gateway_adaptive_limit`` / ``gateway_adaptive_in_flight``.
"""

from __future__ import annotations

from typing import ClassVar

from gateway.edge import problem_response
from gateway.errors import UpstreamError
from gateway.exchange import Decision, Exchange, Response
from gateway.policies.adaptive.aimd import OVERLOAD_STATUSES, AimdLimit
from gateway.policies.adaptive.config import AdaptiveConfig
from gateway.policies.base import BuildContext, Policy
from gateway.types import Handler, Headers

ALLOW, SHED = "allow", "shed"


class AdaptivePolicy(Policy[AdaptiveConfig]):
    name: ClassVar[str] = "adaptive"
    config_model = AdaptiveConfig

    def __init__(self, config: AdaptiveConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        state = self.state = AimdLimit(
            config.min, config.max, config.start, config.target_latency, config.backoff
        )
        self._clock = ctx.clock
        self._release = state.done
        ctx.metrics.gauge(
            "gateway_adaptive_limit", "Current adaptive concurrency limit, by route.", ["route"]
        ).labels(ctx.route).set_function(lambda: state.current)
        ctx.metrics.gauge(
            "gateway_adaptive_in_flight",
            "Requests in flight under the adaptive limit, by route.",
            ["route"],
        ).labels(ctx.route).set_function(lambda: state.in_flight)
        self._shed_headers: Headers = [(b"retry-after", b"1")]
        self._detail = f"route {ctx.route!r} is shedding load: its upstream is slowing down"

    def explain(self, exchange: Exchange) -> str:
        config = self.config
        return (
            f"AIMD limit {self.state.current} (between {config.min} and {config.max}), "
            f"target latency {config.target_latency * 1000:g}ms; 503 beyond"
        )

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Response:
        state = self.state
        in_flight = state.try_acquire()
        if not in_flight:
            exchange.decide(self.name, SHED)
            return problem_response(
                exchange, 503, "temporary-reduced-capacity", "Service Unavailable",
                self._detail, list(self._shed_headers),
            )  # fmt: skip
        exchange.decisions.append(Decision(self.name, ALLOW))
        clock = self._clock
        started = clock()
        try:
            response = await call_next(exchange)
        except UpstreamError:
            state.sample(clock() - started, True, in_flight)
            state.release()
            raise
        except BaseException:
            state.release()
            raise
        state.sample(clock() - started, response.status in OVERLOAD_STATUSES, in_flight)
        exchange.on_complete(self._release)
        return response
