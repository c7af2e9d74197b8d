"""The chain runner: onion order, answering, calling once or several times, shadow mode."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, ClassVar

from gateway.chain import build_chain, build_prelude, chain_levels
from gateway.exchange import Decision, Exchange, Response
from gateway.observability.metrics import Metrics
from gateway.policies.base import LATER, BuildContext, Later, Policy, PolicyConfig
from gateway.stores import Stores
from gateway.types import Handler


def ctx() -> BuildContext:
    return BuildContext("r", "app", Stores({}), Metrics(), lambda: 0.0, Path("."))


class Answer(Policy[PolicyConfig]):
    name: ClassVar[str] = "answer"
    config_model = PolicyConfig

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Response:
        exchange.decide(self.name, "reject")
        return Response(429, body=b"no")


class Retry(Policy[PolicyConfig]):
    name: ClassVar[str] = "retry"
    config_model = PolicyConfig

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Response:
        response = await call_next(exchange)
        while response.status >= 500 and exchange.scratch.setdefault("tries", 1) < 3:
            exchange.scratch["tries"] += 1
            response = await call_next(exchange)
        exchange.decide(self.name, f"tries={exchange.scratch.get('tries', 1)}")
        return response


class Replace(Policy[PolicyConfig]):
    name: ClassVar[str] = "replace"
    config_model = PolicyConfig

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Response:
        await call_next(exchange)
        exchange.decide(self.name, "replaced")
        return Response(200, body=b"replaced")


class Trace(Policy[PolicyConfig]):
    name: ClassVar[str] = "trace"
    config_model = PolicyConfig

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Response:
        exchange.scratch.setdefault("order", []).append(self.config.mode)
        return await call_next(exchange)


def terminal(statuses: list[int]) -> tuple[Handler, list[int]]:
    calls: list[int] = []

    async def handler(exchange: Exchange) -> Response:
        calls.append(1)
        return Response(statuses[min(len(calls), len(statuses)) - 1], body=b"upstream")

    return handler, calls


def run(handler: Handler) -> tuple[Response, Exchange]:
    exchange = Exchange("GET", b"/", [], "127.0.0.1")
    return asyncio.run(handler(exchange)), exchange


def enforce() -> PolicyConfig:
    return PolicyConfig()


def shadow() -> PolicyConfig:
    return PolicyConfig(mode="shadow")


def test_policy_answers_by_itself() -> None:
    final, calls = terminal([200])
    response, ex = run(build_chain([Answer(enforce(), ctx())], final))
    assert response.status == 429 and not calls
    assert [(d.policy, d.action, d.shadow) for d in ex.decisions] == [("answer", "reject", False)]


def test_shadow_answer_is_discarded_and_recorded() -> None:
    final, calls = terminal([200])
    response, ex = run(build_chain([Answer(shadow(), ctx())], final))
    assert response.status == 200 and response.body == b"upstream" and calls == [1]
    assert [(d.policy, d.action, d.shadow) for d in ex.decisions] == [("answer", "reject", True)]


def test_retry_calls_several_times() -> None:
    final, calls = terminal([503, 502, 200])
    response, _ = run(build_chain([Retry(enforce(), ctx())], final))
    assert response.status == 200 and len(calls) == 3


def test_shadow_retry_sends_nothing_more_upstream() -> None:
    final, calls = terminal([503, 200])
    response, _ = run(build_chain([Retry(shadow(), ctx())], final))
    assert response.status == 503 and len(calls) == 1


def test_replace_on_the_way_out_and_shadow_keeps_original() -> None:
    final, _ = terminal([500])
    assert run(build_chain([Replace(enforce(), ctx())], final))[0].body == b"replaced"
    response, ex = run(build_chain([Replace(shadow(), ctx())], final))
    assert response.body == b"upstream" and ex.decisions[0].shadow


def test_onion_order() -> None:
    final, _ = terminal([200])
    chain = build_chain([Trace(enforce(), ctx()), Trace(shadow(), ctx())], final)
    _, ex = run(chain)
    assert ex.scratch["order"] == ["enforce", "shadow"]


def test_failing_shadow_policy_changes_nothing() -> None:
    class Broken(Policy[PolicyConfig]):
        name: ClassVar[str] = "broken"
        config_model = PolicyConfig

        async def __call__(self, exchange: Exchange, call_next: Handler) -> Response:
            raise RuntimeError("bug")

    final, calls = terminal([200])
    response, ex = run(build_chain([Broken(shadow(), ctx())], final))
    assert response.status == 200 and calls == [1]
    assert ex.decisions[-1].action == "shadow_error"


class Chunks:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


def test_read_body_within_and_over_limit() -> None:
    async def go() -> None:
        ex = Exchange(
            "POST", b"/", [], "1.1.1.1", body_stream=Chunks([b"ab", b"cd"]), content_length=4
        )
        assert await ex.read_body(10) == b"abcd"
        assert ex.body_stream is None and ex.content_length is None
        big = Exchange("POST", b"/", [], "1.1.1.1", body_stream=Chunks([b"ab", b"cd", b"ef"]))
        assert await big.read_body(3) is None
        assert big.body_stream is not None
        assert b"".join([c async for c in big.body_stream]) == b"abcdef"

    asyncio.run(go())


def test_response_read_keeps_large_bodies_intact() -> None:
    async def go() -> None:
        small = Response(200, stream=Chunks([b"a", b"b"]))
        assert await small.read(5) and small.body == b"ab" and small.stream is None
        big = Response(200, stream=Chunks([b"aaa", b"bbb"]))
        assert not await big.read(4)
        assert big.stream is not None
        assert b"".join([c async for c in big.stream]) == b"aaabbb"

    asyncio.run(go())


def test_noop_policy_config_surface(tmp_path: Any) -> None:
    from gateway.policies import ORDER, REGISTRY

    assert set(REGISTRY) <= set(ORDER)
    assert ORDER.index("rate_limit") < ORDER.index("validate") < ORDER.index("cache")
    assert ORDER.index("cache") < ORDER.index("retry") < ORDER.index("circuit_breaker")


class Keep(Policy[PolicyConfig]):
    """Records the same Decision object for every request, as the rate limiter does."""

    name: ClassVar[str] = "keep"
    config_model = PolicyConfig

    def __init__(self, config: PolicyConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        self.allowed = Decision(self.name, "allow")

    def __call__(self, exchange: Exchange, call_next: Handler) -> Awaitable[Response]:
        exchange.decisions.append(self.allowed)
        exchange.add_response_fields(((b"x-kept", b"1"),))
        return call_next(exchange)


def test_a_shadow_policy_above_never_changes_a_decision_another_request_shares() -> None:
    final, _ = terminal([200])
    kept = Keep(enforce(), ctx())
    below_shadow = build_chain([Trace(shadow(), ctx()), kept], final)
    response, first = run(below_shadow)
    assert first.decisions == [Decision("keep", "allow", shadow=True)]
    assert response.headers == []  # added by the front-end: Exchange.answered
    assert first.answered(response).headers == [(b"x-kept", b"1")]
    _, second = run(build_chain([kept], final))
    assert second.decisions == [Decision("keep", "allow")]
    assert kept.allowed.shadow is False


class Now(Policy[PolicyConfig]):
    """Decides without awaiting: passes (None), answers, or leaves it for later."""

    name: ClassVar[str] = "now"
    config_model = PolicyConfig
    decides_now = True

    def __init__(self, config: PolicyConfig, context: BuildContext, verdict: str) -> None:
        super().__init__(config, context)
        self.verdict = verdict
        self.calls = 0

    def decide_now(self, exchange: Exchange) -> Response | Later | None:
        if self.verdict == "later":
            return LATER
        exchange.decide(self.name, self.verdict)
        return Response(429, body=b"now") if self.verdict == "answer" else None

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Response:
        self.calls += 1
        exchange.decide(self.name, "called")
        return await call_next(exchange)


def resolve(policies: list[Policy[Any]]) -> tuple[Response | Handler, Exchange, list[int]]:
    final, calls = terminal([200])
    prelude = build_prelude(policies, chain_levels(policies, final))
    assert prelude is not None
    exchange = Exchange("GET", b"/", [], "127.0.0.1")
    return prelude(exchange), exchange, calls


def test_a_prelude_answers_without_running_the_chain() -> None:
    answered, exchange, calls = resolve(
        [Now(enforce(), ctx(), "pass"), Now(enforce(), ctx(), "answer"), Trace(enforce(), ctx())]
    )
    assert isinstance(answered, Response) and answered.body == b"now"
    assert [d.action for d in exchange.decisions] == ["pass", "answer"]
    assert calls == []


def test_a_prelude_hands_over_to_the_chain_from_the_policy_that_must_wait() -> None:
    first, later = Now(enforce(), ctx(), "pass"), Now(enforce(), ctx(), "later")
    rest, exchange, calls = resolve([first, later])
    assert not isinstance(rest, Response)
    response = asyncio.run(rest(exchange))
    assert response.status == 200 and calls == [1]
    # The first policy decided once, in the prelude; the second ran as a coroutine.
    assert [d.action for d in exchange.decisions] == ["pass", "called"]
    assert first.calls == 0 and later.calls == 1


def test_a_request_every_step_passes_goes_to_the_chain_below_them() -> None:
    rest, exchange, calls = resolve([Now(enforce(), ctx(), "pass"), Trace(enforce(), ctx())])
    assert not isinstance(rest, Response)
    asyncio.run(rest(exchange))
    assert exchange.scratch["order"] == ["enforce"] and calls == [1]


def test_no_prelude_under_a_shadow_policy_or_one_that_cannot_decide_now() -> None:
    final, _ = terminal([200])
    for top in (Now(shadow(), ctx(), "answer"), Trace(enforce(), ctx())):
        policies: list[Policy[Any]] = [top, Now(enforce(), ctx(), "answer")]
        assert build_prelude(policies, chain_levels(policies, final)) is None
