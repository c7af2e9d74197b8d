"""The ``rate_limit`` policy: every list entry is its own chain element (``rate_limit:NAME``).

Per request: resolve the key (401 on an invalid token), run the algorithm's atomic
script in the store (one call, one Redis round trip), then answer 429 problem+json
with Retry-After and the IETF RateLimit fields, or pass on and add ``RateLimit`` to
the response on the way out.

On Redis the call is sent as early as the request allows: when this limiter is the
first policy that must wait (every one above it decided without awaiting), the native
front-end's read callback sends it as it routes the request (``decide_now``), and the
coroutine that later awaits it finds the reply on its way or already there. So the
round trip overlaps the task's wake-up and the walk down the chain instead of following
them. When the upstream comes next, the request is also prepared for the wire during
the round trip and written from the reply's callback when it admits (:mod:`.admit`).

In memory a request costs about a microsecond, so everything is prepared at build: the
key is one function per key kind, the algorithm is compiled for the store (a plain call,
no coroutine), and the header fields are preformatted (``RateLimit-Policy`` is
constant; a token bucket's ``RateLimit`` is formatted once per state).

Header fields follow draft-ietf-httpapi-ratelimit-headers (-10/-11): both are
structured-field Lists of String items with parameters, one item per limiter::

    RateLimit-Policy: "per-ip";q=100;w=1
    RateLimit: "per-ip";r=42;t=1

When the store fails, ``on_store_error`` decides; after a failure the store is skipped
for ``store_backoff`` so that no request waits on a store known to be down. The only
state shared between requests is that deadline (and the counters in the store).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from typing import Any, ClassVar, cast

from gateway.config.models import StoreSpec
from gateway.edge import problem_response
from gateway.errors import StoreError
from gateway.exchange import Decision, Exchange, Response
from gateway.policies.base import LATER, BuildContext, Later, Policy
from gateway.policies.rate_limit.admit import OnReply, arm
from gateway.policies.rate_limit.algorithms import (
    Check,
    Verdict,
    compile_algorithm,
)
from gateway.policies.rate_limit.config import RateLimitConfig, RateLimitRule
from gateway.policies.rate_limit.fields import Fields, sf_string
from gateway.policies.rate_limit.give_back import GiveBack, GiveBacks, give_back, no_refund, note
from gateway.policies.rate_limit.jwt import JwtVerifier
from gateway.policies.rate_limit.keys import InvalidToken, KeyResolver
from gateway.stores import Scripts, StartsScripts, Store
from gateway.stores.guard import StoreGuard
from gateway.stores.memory import MemoryStore
from gateway.transport.forward import Forwarder
from gateway.transport.native import Outgoing
from gateway.types import Handler

# Decision actions (gateway_policy_decisions_total{action=...}).
ALLOW, REJECT = "allow", "reject"
LOCAL_ALLOW, LOCAL_REJECT = "local_allow", "local_reject"  # local_share while the store is down
FAIL_OPEN, FAIL_CLOSED = "fail_open", "fail_closed"  # on_store_error allow / deny
INVALID_TOKEN = "invalid_token"


class _StoreHealth:
    """The one piece of state shared across requests: until when the store is skipped."""

    __slots__ = ("down_until",)

    def __init__(self) -> None:
        self.down_until = -math.inf


async def _answer(response: Response) -> Response:
    return response


class RateLimitPolicy(Policy[RateLimitRule]):
    name: ClassVar[str] = "rate_limit"
    config_model = RateLimitConfig

    @classmethod
    def build(cls, config: Any, ctx: BuildContext) -> list[Policy[Any]]:
        limiters: list[RateLimitPolicy] = []
        for i, rule in enumerate(cast(RateLimitConfig, config).root):
            try:
                limiters.append(cls(rule, ctx))
            except (ValueError, KeyError, OSError) as exc:
                message = exc.args[0] if exc.args else str(exc)
                raise ValueError(f"[{i}] ({rule.name}): {message}") from exc
        # Every entry must pass, and a request counts only against limits it passed all
        # of: an enforcing limiter followed by another one notes what it took, and one
        # that refuses gives back what the limiters before it took.
        enforcing = [p for p in limiters if not p.shadow]
        for p in enforcing[:-1]:
            p.notes_taken = True
        policies: list[Policy[Any]] = list(limiters)
        return policies

    def __init__(self, config: RateLimitRule, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self._label = f"rate_limit:{config.name}"
        store = self._store_for(config, ctx)
        algorithm = compile_algorithm(config.algorithm, config.rate, config.burst)
        self.algorithm = algorithm
        self._run = cast(Scripts, store).run
        # A store that can send a call from synchronous code (Redis, on its own client):
        # decide_now sends it from the read callback that parsed the request. One that
        # redis-py serves (Sentinel, Cluster, URLs with options) only awaits.
        starts = isinstance(store, StartsScripts) and store.starts_now
        self._start = cast(StartsScripts, store).start if starts else None
        self._on_reply: OnReply | None = cast(StartsScripts, store).on_reply if starts else None
        #: The forwarder, when it is the handler below this limiter and the store hooks
        #: replies: then an admitted request goes upstream from the reply's callback.
        self._forwarder: Forwarder | None = None
        self._key_of = store.key
        self._script, self._args = algorithm.script, algorithm.args
        self._prefix = f"rl:{ctx.route}:{config.name}:{algorithm.short}:"
        verifier = JwtVerifier(config.jwt, ctx.base_dir) if config.jwt is not None else None
        self._resolve = KeyResolver(config.key, ctx.route, verifier)
        # Keys that read no token have one function that returns the bucket's name.
        self._bucket = self._resolve.plain
        # In memory the algorithm is compiled into a plain function of the store key,
        # called without a coroutine; its keys are ``store.key(prefix + bucket)``, which
        # for MemoryStore is ``store.key(prefix) + bucket``.
        self._check: Check | None = None
        self._memory_prefix = ""
        if isinstance(store, MemoryStore):
            self._check = algorithm.in_memory(store)
            self._memory_prefix = store.key(self._prefix)

        # Store failures (a Redis store): the guard counts and logs; on_store_error decides.
        self._remote = store.kind != "memory"
        self._clock = ctx.clock
        self._health = _StoreHealth()
        self._backoff = config.store_backoff
        self._on_error = config.on_store_error
        self._guard = (
            StoreGuard(ctx.metrics, config.store, self._label, clock=ctx.clock)
            if self._remote
            else None
        )
        # local_share: every process of every replica holds its own share in memory.
        self.replicas = config.replicas or ctx.replicas
        self.workers = ctx.workers
        self.processes = self.replicas * self.workers
        self._local = local = self._local_store(ctx)
        local_algorithm = algorithm.shared(self.processes)
        self._local_check = local_algorithm.in_memory(local)
        self._local_prefix = local.key("rl-local:" + self._prefix)
        self._deny_retry = max(1, math.ceil(config.store_backoff))

        # Everything the headers need, computed once; while local_share stands in for the
        # store, the fields state the share this process enforces.
        item = sf_string(config.name)
        exceeded = f"rate limit {config.name!r} ({config.rate})"
        self._fields = Fields(item, algorithm, exceeded)
        share = f"{local_algorithm.quota}/{local_algorithm.window}s"
        local_exceeded = f"{exceeded[:-1]}, this process's share {share} while its store is down)"
        self._local_fields = Fields(item, local_algorithm, local_exceeded)
        # The decision of an admitted request: one object, recorded for every such request.
        self._allowed = Decision(self._label, ALLOW)
        self.decides_now = self._bucket is not None and (
            self._check is not None or self._start is not None
        )
        enforcing = config.mode == "enforce"
        self._enforcing = enforcing
        #: Whether an enforcing limiter after this one may refuse what this one admitted
        #: (set by ``build``): then the request's exchange notes what this one took.
        self.notes_taken = False
        self._give_backs = GiveBacks(
            algorithm.refund_in_memory(store) if isinstance(store, MemoryStore) else no_refund,
            local_algorithm.refund_in_memory(local),
            self._run,
            algorithm.refund_script,
            algorithm.args,
            lambda bucket: self._key_of(self._prefix + bucket),
            lambda: self._clock() < self._health.down_until,
        )
        self._headers_on_admit = enforcing and config.headers == "all"
        self._headers_on_reject = config.headers != "none"
        self._problem_extra: dict[str, object] = {"violated-policies": [config.name]}

    def bind_next(self, call_next: Handler) -> None:
        if isinstance(call_next, Forwarder) and self._on_reply is not None and self._enforcing:
            self._forwarder = call_next

    @staticmethod
    def _store_for(config: RateLimitRule, ctx: BuildContext) -> Store:
        if config.store not in ctx.stores:
            have = ", ".join(ctx.stores.names()) or "none"
            raise ValueError(f"store {config.store!r} is not defined in `stores` (have: {have})")
        return ctx.stores.require(config.store, Scripts)

    @staticmethod
    def _local_store(ctx: BuildContext) -> MemoryStore:
        """The process's memory store for local_share (bounded by its max_entries)."""
        if "memory" in ctx.stores:
            store = ctx.stores.get("memory")
            if isinstance(store, MemoryStore):
                return store
        return MemoryStore("local", StoreSpec(url="memory://"), ctx.clock)

    @property
    def label(self) -> str:
        return self._label

    def explain(self, exchange: Exchange) -> str:
        config = self.config
        what = f"{config.algorithm} {config.rate}"
        if config.algorithm == "token_bucket":
            what += f" burst {int(self.algorithm.args[1])}"
        bucket = self._resolve(exchange)
        if isinstance(bucket, InvalidToken):
            key = f"key {config.key}: invalid token ({bucket.reason}), answers 401"
        else:
            key = f"key {config.key} = {bucket!r} -> {self._key_of(self._prefix + bucket)}"
        where = f"store {config.store}"
        if self._remote:
            where += f", on_store_error {config.on_store_error}"
            if config.on_store_error == "local_share":
                share = f"÷{self.replicas} replicas"
                if self.workers > 1:
                    share += f" x {self.workers} workers"
                where += f" ({share})"
        return f"{what}; {key}; {where}"

    def __call__(self, exchange: Exchange, call_next: Handler) -> Awaitable[Response]:
        if self._check is None or self._bucket is None:
            return self._decide(exchange, call_next)
        # In memory, with a key that reads no token, the decision needs no await: the
        # policy hands back the rest of the chain's awaitable instead of wrapping it in a
        # coroutine of its own (one frame less on each resume of the request's task).
        answer = self.decide_now(exchange)
        return call_next(exchange) if answer is None else _answer(cast(Response, answer))

    def decide_now(self, exchange: Exchange) -> Response | Later | None:
        check, plain = self._check, self._bucket
        if plain is None:
            return LATER
        if check is None:
            self._send_early(exchange, plain(exchange))
            return LATER
        key = self._memory_prefix + plain(exchange)
        verdict = check(key)
        if not verdict[0]:
            exchange.decisions.append(Decision(self._label, REJECT))
            return self._reject(exchange, verdict[3], self._fields)
        exchange.decisions.append(self._allowed)
        if self.notes_taken:
            note(exchange, self._give_backs.memory(key, verdict[4]))
        if self._headers_on_admit:
            exchange.add_response_fields(self._fields.admitted(verdict))
        return None

    def _send_early(self, exchange: Exchange, bucket: str) -> None:
        """Send the store's call now, for ``_decide`` to await.

        decide_now is asked only when this policy is the next to run for the request, so
        the call is the one ``_decide`` would send, sent earlier: Redis works while the
        request's task wakes up and comes down the chain, instead of after. When the store
        cannot send it without awaiting (not connected yet), ``_decide`` sends it.
        """
        start = self._start
        if start is None or self._clock() < self._health.down_until:
            return
        call = start(self._script, (self._key_of(self._prefix + bucket),), self._args)
        if call is not None:
            exchange.store_call = (self, call)

    def _store_call(self, exchange: Exchange, bucket: str) -> Awaitable[object] | None:
        """The call ``_send_early`` sent for this request, or one sent now; None while the
        store is skipped after a failure."""
        sent = exchange.store_call
        if sent is not None and sent[0] is self:
            exchange.store_call = None
            return sent[1]
        if self._clock() < self._health.down_until:
            return None
        return self._run(self._script, (self._key_of(self._prefix + bucket),), self._args)

    async def _decide(self, exchange: Exchange, call_next: Handler) -> Response:
        """The general path: a token to verify, or a store to wait for."""
        plain = self._bucket
        if plain is not None:
            bucket = plain(exchange)
        else:
            resolved = self._resolve(exchange)
            if isinstance(resolved, InvalidToken):
                return self._invalid_token(exchange, resolved)
            bucket = resolved
        check = self._check
        verdict: Verdict | None
        armed: Outgoing | None = None
        if check is not None:
            verdict = check(self._memory_prefix + bucket)
            action = ALLOW if verdict[0] else REJECT
        elif (call := self._store_call(exchange, bucket)) is not None:
            # The upstream next: the request is armed to go from the reply's callback.
            forwarder = self._forwarder  # set only when the store hooks replies
            if forwarder is not None and call_next is forwarder:
                armed = arm(forwarder, cast(OnReply, self._on_reply), exchange, call)
            # The store's call awaited here, not in a helper coroutine: while Redis
            # answers, the request's task waits through as few frames as possible.
            try:
                result = await call
            except StoreError as exc:
                self._store_failed(exc)
                verdict, action = self._on_store_error(bucket)
            except BaseException:
                if armed is not None:
                    armed.drop()
                raise
            else:
                verdict = cast(Verdict, result)
                action = ALLOW if verdict[0] else REJECT
        else:
            verdict, action = self._on_store_error(bucket)
        exchange.decisions.append(
            self._allowed if action == ALLOW else Decision(self._label, action)
        )
        try:
            refusal = self._settle(exchange, verdict, action, bucket, check)
        except BaseException:
            if armed is not None:
                armed.drop()
            raise
        if refusal is not None:
            if armed is not None:
                armed.drop()  # never written from now on
            return refusal
        if armed is not None:
            return await cast(Forwarder, self._forwarder).send_armed(exchange, armed)
        return await call_next(exchange)

    def _settle(
        self,
        exchange: Exchange,
        verdict: Verdict | None,
        action: str,
        bucket: str,
        check: Check | None,
    ) -> Response | None:
        """The refusal, or None for a request that goes on: then what it took is noted
        for a later limiter that refuses, and its response fields are added."""
        if verdict is None:  # the store failed: on_store_error allow / deny
            if action == FAIL_CLOSED:
                return self._reject(exchange, self._deny_retry * 1000, self._fields)
            return None
        local = action in (LOCAL_ALLOW, LOCAL_REJECT)
        fields = self._local_fields if local else self._fields
        if not verdict[0]:
            return self._reject(exchange, verdict[3], fields)
        if self.notes_taken:
            note(exchange, self._give_back(bucket, verdict[4], local, check))
        if self._headers_on_admit:
            exchange.add_response_fields(fields.admitted(verdict))
        return None

    def _give_back(self, bucket: str, token: int, local: bool, check: Check | None) -> GiveBack:
        """How to give back the admission of ``bucket`` that left ``token``."""
        if local:
            return self._give_backs.local(self._local_prefix + bucket, token)
        if check is not None:
            return self._give_backs.memory(self._memory_prefix + bucket, token)
        return self._give_backs.store(bucket, token)

    def _store_failed(self, exc: StoreError) -> None:
        """Counted and logged (once per interval); the store is skipped for a while."""
        assert self._guard is not None
        self._guard.failed(exc)
        self._health.down_until = self._clock() + self._backoff

    def _on_store_error(self, bucket: str) -> tuple[Verdict | None, str]:
        """The verdict and the decision's action without the store; verdict None: no
        fallback (``allow`` or ``deny``)."""
        if self._on_error == "allow":
            return None, FAIL_OPEN
        if self._on_error == "deny":
            return None, FAIL_CLOSED
        verdict = self._local_check(self._local_prefix + bucket)
        return verdict, LOCAL_ALLOW if verdict[0] else LOCAL_REJECT

    def _invalid_token(self, exchange: Exchange, invalid: InvalidToken) -> Response:
        if self._enforcing:
            give_back(exchange)
        exchange.decide(self._label, INVALID_TOKEN)
        return problem_response(
            exchange, 401, "invalid-token", "Unauthorized",
            f"the bearer token is not acceptable: {invalid.reason}",
            [(b"www-authenticate", b'Bearer error="invalid_token"')],
        )  # fmt: skip

    def _reject(self, exchange: Exchange, retry_ms: int, fields: Fields) -> Response:
        if self._enforcing:  # a request counts only against limits it passed all of
            give_back(exchange)
        return fields.too_many(exchange, retry_ms, self._headers_on_reject, self._problem_extra)
