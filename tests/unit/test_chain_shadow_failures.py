"""A shadow policy around a failing chain: the failure goes up once, nothing runs twice.

(The runner change made with the rate_limit / concurrency / adaptive policies: before it,
a shadow policy that let an upstream error through made the runner call the chain below
a second time, sending a non-idempotent request upstream twice.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

import pytest

from gateway.chain import build_chain
from gateway.errors import UpstreamConnectError
from gateway.exchange import Exchange, Response
from gateway.observability.metrics import Metrics
from gateway.policies.base import BuildContext, Policy, PolicyConfig
from gateway.stores import Stores
from gateway.types import Handler


def ctx() -> BuildContext:
    return BuildContext("r", "app", Stores({}), Metrics(), lambda: 0.0, Path("."))


class PassThrough(Policy[PolicyConfig]):
    name: ClassVar[str] = "pass"
    config_model = PolicyConfig

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Response:
        exchange.decide(self.name, "allow")
        return await call_next(exchange)


class Swallow(Policy[PolicyConfig]):
    """Answers for a failure below (as a retry or fallback policy might)."""

    name: ClassVar[str] = "swallow"
    config_model = PolicyConfig

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Response:
        try:
            return await call_next(exchange)
        except UpstreamConnectError:
            return Response(503, body=b"fallback")


def failing() -> tuple[Handler, list[int]]:
    calls: list[int] = []

    async def upstream(exchange: Exchange) -> Response:
        calls.append(1)
        raise UpstreamConnectError("connection refused")

    return upstream, calls


@pytest.mark.parametrize("policy_class", [PassThrough, Swallow])
def test_the_failure_below_a_shadow_policy_is_raised_once(
    policy_class: type[Policy[PolicyConfig]],
) -> None:
    upstream, calls = failing()
    chain = build_chain([policy_class(PolicyConfig(mode="shadow"), ctx())], upstream)
    exchange = Exchange("POST", b"/orders", [], "127.0.0.1")

    async def go() -> None:
        await chain(exchange)

    with pytest.raises(UpstreamConnectError):
        asyncio.run(go())
    assert calls == [1]
    assert all(d.shadow for d in exchange.decisions)
    assert not any(d.action == "shadow_error" for d in exchange.decisions)
