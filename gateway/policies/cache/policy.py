"""The ``cache`` policy: a shared HTTP cache (RFC 9111) in front of the upstream.

For GET and HEAD: look the request up (L1, then L2); serve a fresh stored response
(or a 304 to a matching conditional request); serve a stale one while one background
request refreshes it (``stale-while-revalidate``); otherwise revalidate with
``If-None-Match`` / ``If-Modified-Since`` and freshen the entry from a 304; on a miss
make one upstream request per key (coalescing), store what may be stored, and serve a
stale entry when the upstream fails within ``stale-if-error``. Other methods pass
through; a successful unsafe one invalidates the URLs it touched (§4.4) on every
replica. Every response that passed the cache carries ``Cache-Status`` (RFC 9211).

In ``mode: shadow`` the cache looks up, stores and counts, but never answers and never
changes the request or the response.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar
from urllib.parse import urlsplit

from gateway.edge import problem_response
from gateway.errors import UpstreamError
from gateway.exchange import Exchange, Response, new_trace_id
from gateway.policies.base import BuildContext, Policy
from gateway.policies.cache.coalesce import BackgroundTasks, Coalescer, Flight
from gateway.policies.cache.config import CacheConfig
from gateway.policies.cache.entry import Entry, Settings, parse_tags, stored_headers
from gateway.policies.cache.hub import CacheHub, SharedTier
from gateway.policies.cache.invalidation import Invalidation, Matcher
from gateway.policies.cache.keys import KeyBuilder, selected_values
from gateway.policies.cache.memory import MemoryTier
from gateway.policies.cache.request import (
    CLIENT_CONDITIONALS,
    Ask,
    fresh_for,
    not_modified,
    select,
    stale_on_error,
    validating_headers,
)
from gateway.policies.cache.rules import (
    NO_RULES,
    SAFE_METHODS,
    RequestRules,
    age_header,
    etag_matches,
    is_failure,
    not_storable,
    response_facts,
    same_origin_path,
)
from gateway.policies.cache.status import (
    FWD_METHOD,
    FWD_REQUEST,
    FWD_STALE,
    FWD_URI_MISS,
    FWD_VARY_MISS,
    cache_status,
)
from gateway.policies.cache.tiers import Tiers
from gateway.stores import Counters, KeyValue, PubSub, Stores
from gateway.stores.guard import StoreGuard
from gateway.types import Clock, Handler, Headers

log = logging.getLogger("gateway.cache")

#: Background refreshes and warm-ups running at once per policy; more are skipped.
MAX_BACKGROUND = 32
#: Why a response was not stored, when the reason is the upstream's answer (not the
#: request's): such keys skip coalescing for a while.
_PASS_REASONS = frozenset(
    {"no-store", "private", "vary-star", "set-cookie", "no-freshness", "too-large", "status"}
)


def _tier_names(names: list[str], stores: Stores) -> tuple[str | None, str | None]:
    memory = shared = None
    for name in names:
        if name not in stores:
            raise ValueError(f"store {name!r} is not defined (have: {', '.join(stores.names())})")
        if stores.get(name).kind == "memory":
            if memory is not None:
                raise ValueError("stores: only one in-process (memory) tier is possible")
            if shared is not None:
                raise ValueError("stores: the in-process (memory) tier comes first")
            memory = name
        else:
            if shared is not None:
                raise ValueError("stores: only one shared store is possible")
            shared = name
    return memory, shared


class CachePolicy(Policy[CacheConfig]):
    name: ClassVar[str] = "cache"
    config_model = CacheConfig

    def __init__(self, config: CacheConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        memory_name, shared_name = _tier_names(config.stores, ctx.stores)
        self.settings = Settings(
            heuristic_ttl=config.ttl,
            max_ttl=config.max_ttl,
            default_swr=config.stale_while_revalidate,
            default_sie=config.stale_if_error,
        )
        self.keys = KeyBuilder(config.key)
        self.wall: Clock = ctx.extra.get("wall_clock", time.time)
        self.monotonic = ctx.clock
        self.hub = CacheHub.of(ctx.stores, ctx.metrics, self.wall)
        self._bind_metrics(ctx)
        self.shared: SharedTier | None = None
        guard = None
        if shared_name is not None:
            store = ctx.stores.require(shared_name, KeyValue, Counters, PubSub)
            self.shared = store  # type: ignore[assignment]
            guard = StoreGuard(ctx.metrics, shared_name, self.name)
        l1 = MemoryTier(config.memory.max_bytes, self._l1_changed) if memory_name else None
        self.tiers = Tiers(
            l1, self.shared, guard, self.settings, self.monotonic, self._banned, self._count_l2
        )
        # Entries depend on these; a reload that changes none of them keeps the memory tier.
        shaping = {"ttl", "max_ttl", "stale_while_revalidate", "stale_if_error", "key",
                   "memory", "tags_header"}  # fmt: skip
        self._tier_id = f"{ctx.route}\n{config.model_dump_json(include=shaping)}"
        self._tier_held = False
        self.coalescer = Coalescer()
        self.background = BackgroundTasks(MAX_BACKGROUND)
        self._next: Handler | None = None
        self._matchers: dict[str, Matcher] = {}
        self._status = config.cache_status.encode() if config.cache_status else None
        self._hit_prefix = self._status + b"; hit; ttl=" if self._status is not None else None
        self._tags = config.tags_header.lower().encode() if config.tags_header else None
        self._honor = config.request_cache_control == "honor"
        self._max_object = config.memory.max_object
        self._wait = config.coalesce_wait

    def _bind_metrics(self, ctx: BuildContext) -> None:
        m, route = ctx.metrics, ctx.route
        self._m_bytes = m.gauge(
            "gateway_cache_memory_bytes", "Bytes held by the in-process cache tier.", ["route"]
        ).labels(route)
        self._m_entries = m.gauge(
            "gateway_cache_memory_entries", "URLs held by the in-process cache tier.", ["route"]
        ).labels(route)
        self._m_evicted = m.counter(
            "gateway_cache_evictions_total",
            "URLs evicted from the in-process tier to stay within memory.max_bytes.",
            ["route"],
        ).labels(route)
        shared = m.counter(
            "gateway_cache_shared_reads_total",
            "Reads of the shared cache tier by result (hit, miss, error).",
            ["route", "result"],
        )
        self._m_shared = {r: shared.labels(route, r).inc for r in ("hit", "miss", "error")}
        self._m_stores = m.counter(
            "gateway_cache_stores_total",
            "Responses considered for storing, by outcome: `stored`, or why not (no-store, "
            "private, too-large, ...).",
            ["route", "outcome"],
        )
        coalesced = m.counter(
            "gateway_cache_coalesced_total",
            "Requests that waited for another request to the same key, by outcome "
            "(reused: served its response; refetched: went upstream themselves).",
            ["route", "outcome"],
        )
        self._m_reused = coalesced.labels(route, "reused").inc
        self._m_refetched = coalesced.labels(route, "refetched").inc
        self._m_background = m.counter(
            "gateway_cache_background_total",
            "Background refreshes (stale-while-revalidate) and warm-ups, by result "
            "(ok, not-stored, error, skipped).",
            ["route", "kind", "result"],
        )
        self._route = route

    # Life cycle -------------------------------------------------------------------------

    @property
    def horizon(self) -> float:
        return self.settings.horizon

    def bind_next(self, call_next: Handler) -> None:
        self._next = call_next

    async def start(self) -> None:
        if self.tiers.l1 is not None and not self._tier_held:
            self.tiers.l1 = self.hub.acquire_tier(self._tier_id, self.tiers.l1)
            self._tier_held = True
        await self.hub.register(self, self.shared)
        call_next = self._next
        if self.config.warm and not self.shadow and call_next is not None:
            self._spawn("warm", self._warm(call_next))

    async def stop(self) -> None:
        await self.background.cancel()
        await self.hub.unregister(self)
        if self._tier_held:
            self.hub.release_tier(self._tier_id)
            self._tier_held = False

    def explain(self, exchange: Exchange) -> str:
        primary, _, _ = self.keys.of(exchange)
        extra = f" + {', '.join(self.config.key.headers)}" if self.config.key.headers else ""
        if exchange.method not in ("GET", "HEAD"):
            what = "passes through" + (
                "; invalidates the URL on success" if exchange.method not in SAFE_METHODS else ""
            )
            return f"{what} (key {primary}{extra})"
        return f"key {primary}{extra}; tiers {' -> '.join(self.config.stores)}"

    # The request path -------------------------------------------------------------------

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Response:
        method = exchange.method
        if method != "GET" and method != "HEAD":
            return await self._other_method(exchange, call_next)
        if self.shadow:
            return await self._shadow(exchange, call_next)
        ask = Ask(exchange, call_next, self.keys, self._honor)
        if ask.precondition:  # If-Match / If-Unmodified-Since: only the origin can answer
            exchange.decide(self.name, "bypass", "precondition")
            return await self._fetch(ask, FWD_REQUEST)
        now = self.wall()
        variants, tier = await self.tiers.get(ask.primary, now)
        entry = select(variants, exchange.headers) if variants else None
        if entry is None:
            return await self._miss(ask, FWD_VARY_MISS if variants else FWD_URI_MISS)
        age = entry.age(now)
        ttl = entry.lifetime - age
        if (
            ttl > 0
            and not entry.no_cache
            and (ask.rules is NO_RULES or fresh_for(entry, ask.rules, now))
        ):
            # The hot path: nothing parsed, one list copy, Cache-Status from a prefix.
            exchange.decide(self.name, "hit", tier)
            prefix = self._hit_prefix
            status = None
            if prefix is not None:
                status = prefix + b"%d" % math.floor(ttl)
                if tier == "l2":
                    status += b"; detail=l2"
            return self._serve(ask, entry, now, status, age)
        return await self._stale(ask, entry, now, ttl)

    async def _stale(self, ask: Ask, entry: Entry, now: float, ttl: float) -> Response:
        """A stored response that cannot be served as fresh to this request."""
        rules = ask.rules
        client_forced = rules.no_cache or (ttl > 0 and not entry.no_cache)
        if not entry.no_cache and not client_forced:
            staleness = -ttl
            if rules.max_stale is not None and entry.max_stale_ok and staleness <= rules.max_stale:
                ask.exchange.decide(self.name, "hit", "max-stale")
                return self._serve(ask, entry, now, self._cs(hit=True, ttl=ttl, detail="max-stale"))
            swr = entry.swr
            if swr > 0 and staleness <= swr and rules.max_age is None and rules.min_fresh is None:
                self._refresh_later(ask, entry)
                ask.exchange.decide(self.name, "stale", "while-revalidate")
                status = self._cs(hit=True, ttl=ttl, detail="stale-while-revalidate")
                return self._serve(ask, entry, now, status)
        if rules.only_if_cached:
            return self._only_if_cached(ask)
        coalesce = self.config.coalesce and not rules.no_cache
        return await self._upstream(ask, FWD_STALE, coalesce, lambda: self._revalidate(ask, entry))

    async def _revalidate(self, ask: Ask, entry: Entry) -> Response:
        """Ask the upstream whether ``entry`` is still good (RFC 9111 §4.3.1)."""
        exchange = ask.exchange
        request_time = self.wall()
        try:
            response = await self._send(ask, validating_headers(exchange.headers, entry))
        except UpstreamError as exc:
            now = self.wall()
            if stale_on_error(entry, ask.rules, now):
                exchange.decide(self.name, "stale", f"if-error:{exc.kind}")
                ask.failed = True
                cs = self._cs(fwd=FWD_STALE, ttl=entry.ttl(now), detail="stale-if-error")
                return self._serve(ask, entry, now, cs)
            raise
        response_time = self.wall()
        status = response.status
        if status == 304:
            await response.aclose()
            tag = response.header(b"etag")
            if tag is None or entry.etag is None or etag_matches(tag, entry.etag):
                fresh = entry.freshened(response.headers, request_time, response_time,
                                        self.settings)  # fmt: skip
                in_l1, in_l2 = await self.tiers.put(ask.primary, fresh, response_time)
                exchange.decide(self.name, "revalidated")
                cs = self._cs(fwd=FWD_STALE, fwd_status=304, ttl=fresh.ttl(response_time),
                              stored=in_l1 or in_l2)  # fmt: skip
                return self._serve(ask, fresh, response_time, cs)
            # A 304 for another representation: ours cannot be used; ask plainly.
            return await self._fetch(ask, FWD_STALE)
        if is_failure(status):
            ask.failed = True
        if ask.failed and stale_on_error(entry, ask.rules, response_time):
            await response.aclose()
            exchange.decide(self.name, "stale", f"if-error:{status}")
            cs = self._cs(fwd=FWD_STALE, fwd_status=status, ttl=entry.ttl(response_time),
                          detail="stale-if-error")  # fmt: skip
            return self._serve(ask, entry, response_time, cs)
        return await self._complete(ask, response, request_time, response_time, FWD_STALE, entry)

    async def _miss(self, ask: Ask, fwd: str) -> Response:
        if ask.rules.only_if_cached:
            return self._only_if_cached(ask)
        coalesce = (
            self.config.coalesce
            and ask.exchange.method == "GET"
            and not ask.rules.no_store
            and not ask.ranged
            and not self.coalescer.passing(ask.primary, self.monotonic())
        )
        return await self._upstream(ask, fwd, coalesce, lambda: self._fetch(ask, fwd))

    async def _upstream(
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
        if entry is not None and fresh_for(entry, ask.rules, now):
            self._m_reused()
            ask.exchange.decide(self.name, "hit", "collapsed")
            return self._serve(ask, entry, now, self._cs(fwd=fwd, ttl=entry.ttl(now),
                                                         collapsed=True))  # fmt: skip
        if entry is not None and flight.failed and stale_on_error(entry, ask.rules, now):
            # The leader found the upstream failing: do not send everyone to it again.
            self._m_reused()
            ask.exchange.decide(self.name, "stale", "if-error:collapsed")
            cs = self._cs(fwd=FWD_STALE, ttl=entry.ttl(now), collapsed=True,
                          detail="stale-if-error")  # fmt: skip
            return self._serve(ask, entry, now, cs)
        self._m_refetched()
        return None

    async def _fetch(self, ask: Ask, fwd: str) -> Response:
        """Go upstream for a full response; store it if allowed."""
        headers = ask.exchange.headers
        fill = not ask.ranged and not ask.precondition and ask.exchange.method == "GET"
        if ask.conditional and fill:
            # Fill the cache with a full response; the client's condition is answered here.
            headers = [(k, v) for k, v in headers if k.lower() not in CLIENT_CONDITIONALS]
        request_time = self.wall()
        response = await self._send(ask, headers)
        return await self._complete(ask, response, request_time, self.wall(), fwd, None)

    async def _complete(
        self,
        ask: Ask,
        response: Response,
        request_time: float,
        response_time: float,
        fwd: str,
        fallback: Entry | None,
    ) -> Response:
        """A full response from upstream: store it if allowed, mark it, return it."""
        exchange = ask.exchange
        try:
            reason, entry = await self._consider(
                exchange, ask.primary, ask.url, ask.host, ask.rules, response,
                request_time, response_time,
            )  # fmt: skip
        except UpstreamError:
            now = self.wall()
            if fallback is None or not stale_on_error(fallback, ask.rules, now):
                raise
            await response.aclose()
            ask.failed = True
            exchange.decide(self.name, "stale", "if-error:body")
            cs = self._cs(fwd=FWD_STALE, ttl=fallback.ttl(now), detail="stale-if-error")
            return self._serve(ask, fallback, now, cs)
        if entry is not None:
            self.coalescer.clear_pass(ask.primary)
        elif reason in _PASS_REASONS and not is_failure(response.status):
            self.coalescer.mark_pass(ask.primary, self.monotonic())
        superseded = reason is not None and not is_failure(response.status)
        if fallback is not None and superseded and exchange.method == "GET":
            await self.tiers.delete(ask.primary)  # replaced by what may not be stored
        exchange.decide(self.name, "miss", reason or "stored")
        if entry is not None:
            ttl = entry.ttl(response_time)
            if ask.conditional and not_modified(ask, entry):
                cs = self._cs(fwd=fwd, fwd_status=response.status, ttl=ttl, stored=True)
                return self._serve(ask, entry, response_time, cs)
            cs = self._cs(fwd=fwd, ttl=ttl, stored=True)
        else:
            cs = self._cs(fwd=fwd, detail=reason)
        response.headers = self._outgoing(response.headers, cs)
        return response

    async def _consider(
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
            heuristics=heuristics, store_set_cookie=self.config.store_set_cookie,
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
                headers=stored_headers(response.headers, facts, self._tags, response_time),
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
        self._m_stores.labels(self._route, reason or "stored").inc()
        return reason, entry

    async def _send(self, ask: Ask, headers: Headers) -> Response:
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

    # Answers ----------------------------------------------------------------------------

    def _serve(
        self, ask: Ask, entry: Entry, now: float, status: bytes | None, age: float | None = None
    ) -> Response:
        """A response built from ``entry``: Age computed, 304 to a matching condition."""
        age_field = (b"age", age_header(entry.age(now) if age is None else age))
        if ask.conditional and entry.status == 200 and not_modified(ask, entry):
            headers = [*entry.not_modified_headers, age_field]
            if status is not None:
                headers.append((b"cache-status", status))
            return Response(304, headers)
        headers = [*entry.send_headers, age_field]
        if status is not None:
            headers.append((b"cache-status", status))
        body = entry.body if ask.exchange.method != "HEAD" else b""
        return Response(entry.status, headers, body, reason=entry.reason)

    def _only_if_cached(self, ask: Ask) -> Response:
        ask.exchange.decide(self.name, "only_if_cached")
        extra: Headers = []
        if self._status is not None:
            extra.append((b"cache-status", self._status + b"; detail=only-if-cached"))
        return problem_response(
            ask.exchange, 504, "cache-only-if-cached", "Gateway Timeout",
            "the request asked for a stored response only (only-if-cached) and none fits",
            extra,
        )  # fmt: skip

    def _cs(self, **params: Any) -> bytes | None:
        return cache_status(self._status, **params) if self._status is not None else None

    def _outgoing(self, headers: Headers, status: bytes | None) -> Headers:
        """A passed-through response's headers: tags header removed, Cache-Status added."""
        tags = self._tags
        out = [(k, v) for k, v in headers if k.lower() != tags] if tags is not None else headers
        if status is not None:
            out = [*out, (b"cache-status", status)]
        return out

    # Background work --------------------------------------------------------------------

    def _refresh_later(self, ask: Ask, entry: Entry) -> None:
        """stale-while-revalidate: one background refresh per key at a time."""
        if self.coalescer.flight(ask.primary) is not None:
            return
        lead = self.coalescer.lead(ask.primary)
        assert lead is not None
        source = ask.exchange
        clone = Exchange(
            "GET",
            source.raw_target,
            validating_headers(source.headers, entry),
            source.peer_ip,
            scheme=source.scheme,
            http_version=source.http_version,
        )
        clone.client_ip = source.client_ip
        clone.route = source.route
        clone.path_params = source.path_params
        clone.trace_id = source.trace_id
        work = self._refresh(clone, ask.call_next, ask.primary, ask.url, ask.host, entry, lead)
        if not self._spawn("refresh", work):
            self.coalescer.land(ask.primary, lead)

    async def _refresh(
        self, clone: Exchange, call_next: Handler, primary: str, url: str, host: str,
        entry: Entry, lead: Flight,
    ) -> None:  # fmt: skip
        result = "error"
        try:
            request_time = self.wall()
            response = await call_next(clone)
            response_time = self.wall()
            if response.status == 304:
                await response.aclose()
                fresh = entry.freshened(response.headers, request_time, response_time,
                                        self.settings)  # fmt: skip
                await self.tiers.put(primary, fresh, response_time)
                result = "ok"
            elif is_failure(response.status):
                await response.aclose()
            else:
                reason, _ = await self._consider(
                    clone, primary, url, host, NO_RULES, response, request_time, response_time
                )
                await response.aclose()
                result = "ok" if reason is None else "not-stored"
        except UpstreamError as exc:
            log.info("cache: background refresh of %s failed: %s", url, exc)
        finally:
            self.coalescer.land(primary, lead)
            self._m_background.labels(self._route, "refresh", result).inc()

    def _spawn(self, kind: str, work: Coroutine[Any, Any, None]) -> bool:
        if self.background.spawn(work):
            return True
        self._m_background.labels(self._route, kind, "skipped").inc()
        return False

    async def _warm(self, call_next: Handler) -> None:
        for target in self.config.warm:
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
                reason, _ = await self._consider(
                    exchange, primary, url, host, NO_RULES, response, request_time, self.wall()
                )
                await response.aclose()
                result = "ok" if reason is None else "not-stored"
            except UpstreamError as exc:
                log.warning("cache: warming %s failed: %s", target, exc)
            finally:
                self._m_background.labels(self._route, "warm", result).inc()

    # Invalidation -----------------------------------------------------------------------

    async def _other_method(self, exchange: Exchange, call_next: Handler) -> Response:
        response = await call_next(exchange)
        if exchange.method not in SAFE_METHODS and 200 <= response.status < 400:
            await self._invalidate_after(exchange, response)
        if not self.shadow and self._status is not None:
            status = cache_status(self._status, fwd=FWD_METHOD)
            response.headers = [*response.headers, (b"cache-status", status)]
        return response

    async def _invalidate_after(self, exchange: Exchange, response: Response) -> None:
        """RFC 9111 §4.4: the target URI, and same-origin Location / Content-Location."""
        raw = exchange.raw_target
        qpos = raw.find(b"?")
        path = (raw if qpos < 0 else raw[:qpos]).decode("latin-1")
        urls = [raw.decode("latin-1")]
        for name in (b"location", b"content-location"):
            value = response.header(name)
            if value is not None:
                other = same_origin_path(value, exchange.scheme, exchange.host, path)
                if other is not None:
                    urls.append(other)
        host = exchange.host.decode("latin-1") or None
        now = self.wall()
        for url in dict.fromkeys(urls):
            inv = Invalidation.new("url", url, host, now)
            await self.hub.invalidate(inv, source="unsafe", ban=False)
        exchange.decide(self.name, "invalidate", str(len(urls)))

    async def invalidate_local(self, inv: Invalidation, *, origin: bool) -> int:
        """Apply an invalidation to this policy's tiers; the number of URLs/variants dropped.

        ``origin``: this replica issued it, so the shared tier's key is deleted too
        (other replicas only drop their in-process copies).
        """
        l1 = self.tiers.l1
        if inv.kind != "url":
            return l1.remove_where(self._matcher(inv)) if l1 is not None else 0
        url = self.keys.url(inv.value.encode("latin-1"))
        removed = 0
        if self.keys.use_host and inv.host is None:
            if l1 is not None:
                removed = sum(l1.delete(k) for k in l1.keys_for_url(url))
            return removed
        primary = self.keys.primary(url, inv.host or "")
        if l1 is not None and l1.delete(primary):
            removed = 1
        if origin and self.shared is not None and await self.tiers.delete(primary):
            removed = max(removed, 1)
        return removed

    def _matcher(self, inv: Invalidation) -> Matcher:
        matcher = self._matchers.get(inv.id)
        if matcher is None:
            if len(self._matchers) > 4096:
                self._matchers.clear()
            url = self.keys.url(inv.value.encode("latin-1")) if inv.kind == "url" else None
            matcher = self._matchers[inv.id] = Matcher(inv, url)
        return matcher

    def _banned(self, entry: Entry, now: float) -> bool:
        bans = self.hub.bans
        return bool(len(bans)) and bans.blocks(entry, now, self._matcher)

    # Shadow -----------------------------------------------------------------------------

    async def _shadow(self, exchange: Exchange, call_next: Handler) -> Response:
        """Look up, count and store; never answer, never change request or response."""
        ask = Ask(exchange, call_next, self.keys, self._honor)
        now = self.wall()
        variants, tier = await self.tiers.get(ask.primary, now)
        entry = select(variants, exchange.headers) if variants else None
        if entry is None:
            exchange.decide(self.name, "miss", FWD_VARY_MISS if variants else FWD_URI_MISS)
        elif fresh_for(entry, ask.rules, now):
            exchange.decide(self.name, "hit", tier)
        else:
            exchange.decide(self.name, "stale", tier)
        response = await call_next(exchange)
        if exchange.method == "GET" and not ask.precondition and not ask.conditional:
            await self._consider(
                exchange, ask.primary, ask.url, ask.host, ask.rules, response, now, self.wall()
            )
        return response

    # Metrics ----------------------------------------------------------------------------

    def _l1_changed(self, size: int, entries: int, evicted: int) -> None:
        self._m_bytes.set(size)
        self._m_entries.set(entries)
        if evicted:
            self._m_evicted.inc(evicted)

    def _count_l2(self, result: str) -> None:
        self._m_shared[result]()
