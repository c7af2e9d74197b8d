"""Filling the cache from the upstream: misses, one request per key at a time, and
storing what RFC 9111 §3 and the config allow.

A miss leads a *flight* for its key (later misses for the key wait for it, then look
again); a key whose response may not be stored skips coalescing for a while
(hit-for-pass). A full response is stored in both tiers when allowed, marked with
``Cache-Status`` and returned. Warming runs the same path for the configured URLs when
the policy starts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from gateway.errors import UpstreamError
from gateway.exchange import Exchange, Response, new_trace_id
from gateway.policies.cache.answers import Answers
from gateway.policies.cache.coalesce import Coalescer, Flight
from gateway.policies.cache.config import CacheConfig
from gateway.policies.cache.entry import Entry, Settings, parse_tags, stored_headers
from gateway.policies.cache.keys import KeyBuilder, selected_values
from gateway.policies.cache.request import (
    CLIENT_CONDITIONALS,
    Ask,
    fresh_for,
    not_modified,
    select,
    stale_on_error,
)
from gateway.policies.cache.rules import (
    NO_RULES,
    RequestRules,
    ResponseFacts,
    is_failure,
    not_storable,
    response_facts,
)
from gateway.policies.cache.stats import CacheStats
from gateway.policies.cache.status import FWD_STALE
from gateway.policies.cache.tiers import Tiers
from gateway.types import Clock, Handler, Headers

log = logging.getLogger("gateway.cache")

#: Why a response was not stored, when the reason is the upstream's answer (not the
#: request's): such keys skip coalescing for a while.
_PASS_REASONS = frozenset(
    {"no-store", "private", "vary-star", "set-cookie", "no-freshness", "too-large", "status"}
)


class Filler:
    def __init__(
        self,
        policy: str,
        config: CacheConfig,
        *,
        settings: Settings,
        keys: KeyBuilder,
        tiers: Tiers,
        coalescer: Coalescer,
        answers: Answers,
        stats: CacheStats,
        wall: Clock,
        monotonic: Clock,
    ) -> None:
        self.policy = policy
        self.settings = settings
        self.keys = keys
        self.tiers = tiers
        self.coalescer = coalescer
        self.answers = answers
        self.stats = stats
        self.wall = wall
        self.monotonic = monotonic
        self.coalesce = config.coalesce
        self._wait = config.coalesce_wait
        self._max_object = config.memory.max_object
        self.store_set_cookie = config.store_set_cookie
        self._tags = answers.tags

    async def miss(self, ask: Ask, fwd: str) -> Response:
        """Nothing stored fits the request: go upstream (coalesced when possible)."""
        if ask.rules.only_if_cached:
            return self.answers.only_if_cached(ask)
        coalesce = (
            self.coalesce
            and ask.exchange.method == "GET"
            and not ask.rules.no_store
            and not ask.ranged
            and not self.coalescer.passing(ask.primary, self.monotonic())
        )
        return await self.upstream(ask, fwd, coalesce, lambda: self.fetch(ask, fwd))

    async def upstream(
        self, ask: Ask, fwd: str, coalesce: bool, call: Callable[[], Awaitable[Response]]
    ) -> Response:
        """Go upstream through ``call``; with ``coalesce``, join a request already in
        flight for this key or lead one that later requests join."""
        lead = None
        if coalesce:
            flight = self.coalescer.flight(ask.primary)
            if flight is not None:
                reused = await self._follow(ask, flight, fwd)
                if reused is not None:
                    return reused
            lead = self.coalescer.lead(ask.primary)
        try:
            return await call()
        except UpstreamError:
            ask.failed = True
            raise
        finally:
            if lead is not None:
                self.coalescer.land(ask.primary, lead, ask.failed)

    async def _follow(self, ask: Ask, flight: Flight, fwd: str) -> Response | None:
        """Wait for the request already under way for this key, then look again."""
        await self.coalescer.wait(flight, self._wait)
        now = self.wall()
        variants, _ = await self.tiers.get(ask.primary, now)
        entry = select(variants, ask.exchange.headers) if variants else None
        answers = self.answers
        if entry is not None and fresh_for(entry, ask.rules, now):
            self.stats.reused()
            ask.exchange.decide(self.policy, "hit", "collapsed")
            cs = answers.status(fwd=fwd, ttl=entry.ttl(now), collapsed=True)
            return answers.serve(ask, entry, now, cs)
        if entry is not None and flight.failed and stale_on_error(entry, ask.rules, now):
            # The leader found the upstream failing: do not send everyone to it again.
            self.stats.reused()
            ask.exchange.decide(self.policy, "stale", "if-error:collapsed")
            cs = answers.status(fwd=FWD_STALE, ttl=entry.ttl(now), collapsed=True,
                                detail="stale-if-error")  # fmt: skip
            return answers.serve(ask, entry, now, cs)
        self.stats.refetched()
        return None

    async def fetch(self, ask: Ask, fwd: str) -> Response:
        """Go upstream for a full response; store it if allowed."""
        headers = ask.exchange.headers
        fill = not ask.ranged and not ask.precondition and ask.exchange.method == "GET"
        if ask.conditional and fill:
            # Fill the cache with a full response; the client's condition is answered here.
            headers = [(k, v) for k, v in headers if k.lower() not in CLIENT_CONDITIONALS]
        request_time = self.wall()
        response = await self.send(ask, headers)
        return await self.complete(ask, response, request_time, self.wall(), fwd, None)

    async def complete(
        self,
        ask: Ask,
        response: Response,
        request_time: float,
        response_time: float,
        fwd: str,
        fallback: Entry | None,
    ) -> Response:
        """A full response from upstream: store it if allowed, mark it, return it.

        ``fallback``: the stale entry being revalidated, served instead when the body
        fails within its ``stale-if-error`` window, and dropped when superseded.
        """
        exchange = ask.exchange
        answers = self.answers
        try:
            reason, entry = await self.consider(
                exchange, ask.primary, ask.url, ask.host, ask.rules, response,
                request_time, response_time,
            )  # fmt: skip
        except UpstreamError:
            now = self.wall()
            if fallback is None or not stale_on_error(fallback, ask.rules, now):
                raise
            await response.aclose()
            ask.failed = True
            exchange.decide(self.policy, "stale", "if-error:body")
            cs = answers.status(fwd=FWD_STALE, ttl=fallback.ttl(now), detail="stale-if-error")
            return answers.serve(ask, fallback, now, cs)
        if entry is not None:
            self.coalescer.clear_pass(ask.primary)
        elif reason in _PASS_REASONS and not is_failure(response.status):
            self.coalescer.mark_pass(ask.primary, self.monotonic())
        superseded = reason is not None and not is_failure(response.status)
        if fallback is not None and superseded and exchange.method == "GET":
            await self.tiers.delete(ask.primary)  # replaced by what may not be stored
        exchange.decide(self.policy, "miss", reason or "stored")
        if entry is not None:
            ttl = entry.ttl(response_time)
            if ask.conditional and not_modified(ask, entry):
                cs = answers.status(fwd=fwd, fwd_status=response.status, ttl=ttl, stored=True)
                return answers.serve(ask, entry, response_time, cs)
            cs = answers.status(fwd=fwd, ttl=ttl, stored=True)
            response.headers = answers.outgoing(self.keys.with_vary(response.headers), cs)
        else:
            # Not stored here, but a cache downstream may store it: it must keep the
            # variants of the key headers apart too.
            cs = answers.status(fwd=fwd, detail=reason)
            response.headers = answers.outgoing(self.keys.with_vary(response.headers), cs)
        return response

    async def consider(
        self,
        exchange: Exchange,
        primary: str,
        url: str,
        host: str,
        rules: RequestRules,
        response: Response,
        request_time: float,
        response_time: float,
    ) -> tuple[str | None, Entry | None]:
        """Store ``response`` if RFC 9111 §3 and the config allow: (why not, entry)."""
        facts = response_facts(response.status, response.headers)
        authorization = exchange.header(b"authorization") is not None
        heuristics = not authorization and exchange.header(b"cookie") is None
        reason = not_storable(
            exchange.method, facts, rules, authorization=authorization,
            heuristics=heuristics, store_set_cookie=self.store_set_cookie,
        )  # fmt: skip
        if reason is None and not await response.read(self._max_object):
            reason = "too-large"
        entry = None
        if reason is None:
            names = self.keys.selection(facts.vary)
            entry = Entry(
                url=url,
                host=host,
                status=response.status,
                reason=response.reason,
                headers=self.shaped(response.headers, facts, response_time),
                body=response.body,
                request_time=request_time,
                response_time=response_time,
                age_value=facts.age,
                select_names=names,
                select_values=selected_values(exchange.headers, names),
                tags=parse_tags(response.headers, self._tags),
                heuristics=heuristics,
                settings=self.settings,
                facts=facts,
            )
            if not entry.worth_keeping:
                reason, entry = "no-freshness", None
            else:
                in_l1, in_l2 = await self.tiers.put(primary, entry, response_time)
                if not (in_l1 or in_l2):
                    reason, entry = "unavailable", None
        self.stats.stored(reason or "stored")
        return reason, entry

    def shaped(self, headers: Headers, facts: ResponseFacts, response_time: float) -> Headers:
        """A response's header section as stored (:func:`stored_headers`), with the key
        headers in its ``Vary``."""
        return self.keys.with_vary(stored_headers(headers, facts, self._tags, response_time))

    async def send(self, ask: Ask, headers: Headers) -> Response:
        """Call the chain below with ``headers`` in place of the request's own."""
        exchange = ask.exchange
        if headers is exchange.headers:
            return await ask.call_next(exchange)
        original = exchange.headers
        exchange.headers = headers
        try:
            return await ask.call_next(exchange)
        finally:
            exchange.headers = original

    async def warm(self, targets: list[str], call_next: Handler) -> None:
        """Store each of ``targets`` (``[//host]/path?query``) unless it is stored fresh."""
        for target in targets:
            result = "error"
            parts = urlsplit(target)
            raw = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            headers: Headers = [(b"host", parts.netloc.encode("latin-1"))] if parts.netloc else []
            exchange = Exchange("GET", raw.encode("latin-1"), headers, "127.0.0.1")
            exchange.trace_id = new_trace_id()
            primary, url, host = self.keys.of(exchange)
            try:
                now = self.wall()
                variants, _ = await self.tiers.get(primary, now)
                entry = select(variants, headers) if variants else None
                if entry is not None and entry.ttl(now) > 0:
                    result = "fresh"
                    continue
                request_time = self.wall()
                response = await call_next(exchange)
                reason, _ = await self.consider(
                    exchange, primary, url, host, NO_RULES, response, request_time, self.wall()
                )
                await response.aclose()
                result = "ok" if reason is None else "not-stored"
            except UpstreamError as exc:
                log.warning("cache: warming %s failed: %s", target, exc)
            finally:
                self.stats.background("warm", result)
