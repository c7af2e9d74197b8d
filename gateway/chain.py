"""Builds a route's chain from its policies and runs it; shadow mode lives here.

The chain is an onion of closures composed once per snapshot: each policy gets the
next handler as ``call_next``. A policy in ``mode: shadow`` runs and records its
decisions, but the runner guarantees it changes nothing:

* if it answered by itself (429, cache hit, ...), that answer is discarded and the
  rest of the chain runs as if the policy were absent;
* if it called ``call_next``, the first response from below is what goes back up,
  even if the policy replaced it;
* if the call below raised, that error goes up, whatever the policy did with it:
  the chain below never runs twice for one request.

Decisions a shadow policy records are flagged ``shadow=True``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, cast

from gateway.exchange import Decision, Exchange, Response
from gateway.policies.base import LATER, Later, Policy
from gateway.types import Handler


def _mark_shadow(exchange: Exchange, since: int) -> None:
    # Replaced, not changed in place: a policy may record one Decision object it keeps.
    decisions = exchange.decisions
    for i in range(since, len(decisions)):
        d = decisions[i]
        if not d.shadow:
            decisions[i] = Decision(d.policy, d.action, d.detail, shadow=True)


def _enforcing(policy: Policy[Any], call_next: Handler) -> Handler:
    # Not a coroutine of its own: the policy's coroutine is handed to the caller to await.
    def handler(exchange: Exchange) -> Awaitable[Response]:
        return policy(exchange, call_next)

    return handler


def _shadowed(policy: Policy[Any], call_next: Handler) -> Handler:
    async def handler(exchange: Exchange) -> Response:
        below: list[Response] = []
        failed: list[Exception] = []

        async def capture(ex: Exchange) -> Response:
            if below:  # a shadow policy calling again (retry): nothing more goes upstream
                return below[0]
            if failed:
                raise failed[0]
            try:
                response = await call_next(ex)
            except Exception as exc:
                failed.append(exc)
                raise
            below.append(response)
            return response

        since = len(exchange.decisions)
        try:
            answer = await policy(exchange, capture)
        except Exception as exc:
            # A shadow policy must not change the outcome, not even by failing.
            _mark_shadow(exchange, since)
            if failed:  # the chain below failed: that failure is the outcome, sent once
                raise failed[0] from (None if exc is failed[0] else exc)
            exchange.decide(policy.label, "shadow_error")
            if below:
                return below[0]
            return await call_next(exchange)
        _mark_shadow(exchange, since)
        if below:
            if answer is not below[0] and answer.stream is not below[0].stream:
                await answer.aclose()  # a replacement the shadow policy built: never sent
            return below[0]
        await answer.aclose()
        if failed:  # the policy answered for a failure below: the failure is the outcome
            raise failed[0]
        return await call_next(exchange)

    return handler


def build_chain(policies: list[Policy[Any]], terminal: Handler) -> Handler:
    """Compose ``policies`` (outermost first) around ``terminal``."""
    return chain_levels(policies, terminal)[0]


def chain_levels(policies: list[Policy[Any]], terminal: Handler) -> list[Handler]:
    """The chain from each policy down: ``levels[i]`` starts at ``policies[i]``, and
    ``levels[-1]`` is ``terminal``."""
    levels = [terminal]
    handler = terminal
    for index in range(len(policies) - 1, -1, -1):
        policy = policies[index]
        policy.bind_next(handler)
        handler = _shadowed(policy, handler) if policy.shadow else _enforcing(policy, handler)
        levels.append(handler)
    levels.reverse()
    return levels


#: What a route's prelude gives: the answer, or the rest of the chain to await.
Prelude: TypeAlias = "Callable[[Exchange], Response | Handler]"


def build_prelude(policies: list[Policy[Any]], levels: list[Handler]) -> Prelude | None:
    """The synchronous start of a chain, or None when its first policy cannot decide now.

    The enforcing policies at the top of the chain that have ``decides_now`` are asked
    in order (:meth:`Policy.decide_now`); the first answer is the request's, and the
    first ``LATER`` hands over to the chain from that policy down. A request they all
    pass goes to the chain below them. So a cache hit in memory under a rate limiter
    in memory is answered without a coroutine, and a front-end can answer it in the
    read callback that parsed the request.
    """
    steps: list[Callable[[Exchange], Response | Later | None]] = []
    for policy in policies:
        if policy.shadow or not policy.decides_now:
            break
        steps.append(policy.decide_now)
    if not steps:
        return None
    rest = levels[len(steps)]
    if len(steps) == 1:
        decide, here = steps[0], levels[0]

        def prelude(exchange: Exchange) -> Response | Handler:
            result = decide(exchange)
            if result is None:
                return rest
            return here if result is LATER else cast(Response, result)

        return prelude
    stops = list(zip(steps, levels, strict=False))

    def preludes(exchange: Exchange) -> Response | Handler:
        for decide, here in stops:
            result = decide(exchange)
            if result is not None:
                return here if result is LATER else cast(Response, result)
        return rest

    return preludes
