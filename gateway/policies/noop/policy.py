"""The diagnostic ``noop`` policy (see NoopConfig)."""

from __future__ import annotations

from typing import ClassVar

from gateway.edge import problem_response
from gateway.exchange import Exchange, Response
from gateway.policies.base import BuildContext, Policy
from gateway.policies.noop.config import NoopConfig
from gateway.types import Handler


class NoopPolicy(Policy[NoopConfig]):
    name: ClassVar[str] = "noop"
    config_model = NoopConfig

    def __init__(self, config: NoopConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self._header: tuple[bytes, bytes] | None = None
        if config.response_header:
            key, _, value = config.response_header.partition(":")
            self._header = (key.strip().encode("latin-1"), value.strip().encode("latin-1"))

    def explain(self, exchange: Exchange) -> str:
        if self.config.respond is not None:
            return f"answers {self.config.respond}"
        return "passes through"

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Response:
        config = self.config
        if config.buffer_body is not None:
            body = await exchange.read_body(config.buffer_body)
            size = "too-large" if body is None else str(len(body))
            exchange.decide(self.name, "buffered", size)
        if config.respond is not None:
            exchange.decide(self.name, "respond", str(config.respond))
            return problem_response(
                exchange, config.respond, "noop", "Answered by the noop policy", "noop policy"
            )
        exchange.decide(self.name, "pass")
        response = await call_next(exchange)
        if self._header is not None:
            response.headers.append(self._header)
        return response
