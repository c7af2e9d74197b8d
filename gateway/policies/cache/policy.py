"""The ``cache`` policy: a shared HTTP cache (RFC 9111) in front of the upstream.

For GET and HEAD: look the request up (L1, then L2); serve a fresh stored response
(or a 304 to a matching conditional request); serve a stale one while one background
request refreshes it (``stale-while-revalidate``); otherwise revalidate with
``If-None-Match`` / ``If-Modified-Since`` and freshen the entry from a 304; on a miss
make one upstream request per key (coalescing), store what may be stored, and serve a
stale entry when the upstream fails within ``stale-if-error``. Other methods pass
through; a successful unsafe one invalidates the URLs it touched (§4.4) on every
replica. Every response that passed the cache carries ``Cache-Status`` (RFC 9211).

This module is the chain element: the lookup and the fresh hit (the hot path, built by
:mod:`.answers`), invalidation and shadow mode. Misses and storing are in :mod:`.fill`,
stale entries and revalidation in :mod:`.revalidate`.

In ``mode: shadow`` the cache looks up, stores and counts, but never answers and never
changes the request or the response.
"""

from __future__ import annotations

import time
from typing import ClassVar

from gateway.exchange import Exchange, Response
from gateway.policies.base import LATER, BuildContext, Later, Policy
from gateway.policies.cache.answers import Answers
from gateway.policies.cache.coalesce import BackgroundTasks, Coalescer
from gateway.policies.cache.config import CacheConfig
from gateway.policies.cache.entry import Entry, Settings
from gateway.policies.cache.fill import Filler
from gateway.policies.cache.hub import CacheHub, SharedTier
from gateway.policies.cache.invalidation import Invalidation, Matcher, routed_path
from gateway.policies.cache.keys import KeyBuilder
from gateway.policies.cache.memory import MemoryTier
from gateway.policies.cache.request import Ask, asks_nothing, fresh_for, select
from gateway.policies.cache.revalidate import Revalidator
from gateway.policies.cache.rules import NO_RULES, SAFE_METHODS
from gateway.policies.cache.stats import CacheStats
from gateway.policies.cache.status import FWD_METHOD, FWD_REQUEST, FWD_URI_MISS, FWD_VARY_MISS
from gateway.policies.cache.tiers import Tiers
from gateway.routing import Route
from gateway.stores import Counters, KeyValue, PubSub, Stores
from gateway.stores.guard import StoreGuard
from gateway.types import Clock, Handler

#: Background refreshes and warm-ups running at once per policy; more are skipped.
MAX_BACKGROUND = 32


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
        self.stats = CacheStats(ctx.metrics, ctx.route)
        self.shared: SharedTier | None = None
        guard = None
        if shared_name is not None:
            store = ctx.stores.require(shared_name, KeyValue, Counters, PubSub)
            self.shared = store  # type: ignore[assignment]
            guard = StoreGuard(ctx.metrics, shared_name, self.name)
        l1 = MemoryTier(config.memory.max_bytes, self.stats.l1_changed) if memory_name else None
        self.tiers = Tiers(
            l1, self.shared, guard, self.settings, self.monotonic, self._banned, self.stats.l2_read
        )
        # Entries depend on these; a reload that changes none of them keeps the memory tier.
        shaping = {"ttl", "max_ttl", "stale_while_revalidate", "stale_if_error", "key",
                   "memory", "tags_header"}  # fmt: skip
        self._tier_id = f"{ctx.route}\n{config.model_dump_json(include=shaping)}"
        self._tier_held = False
        self.coalescer = Coalescer()
        self.background = BackgroundTasks(MAX_BACKGROUND)
        self.answers = Answers(self.name, config.cache_status, config.tags_header)
        self.filler = Filler(
            self.name, config, settings=self.settings, keys=self.keys, tiers=self.tiers,
            coalescer=self.coalescer, answers=self.answers, stats=self.stats, wall=self.wall,
            monotonic=self.monotonic,
        )  # fmt: skip
        self.revalidator = Revalidator(self.filler, self.background)
        self._next: Handler | None = None
        #: The route whose chain holds this policy, set when the snapshot is built: an
        #: invalidation after an unsafe request applies only to URLs it could serve.
        #: None (a policy built on its own): every URL.
        self.scope: Route | None = None
        self._matchers: dict[str, Matcher] = {}
        self._honor = config.request_cache_control == "honor"
        self._observing = self.shadow  # mode: shadow (read once: the config is frozen)
        self.decides_now = not self._observing and self.tiers.l1 is not None
        self._method_status = self.answers.status(fwd=FWD_METHOD)

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
        warm = self.config.warm
        if warm and not self._observing and call_next is not None:
            started = self.background.spawn(self.filler.warm(warm, call_next))
            if not started:
                self.stats.background("warm", "skipped")

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
        if self._observing:
            return await self._shadow(exchange, call_next)
        if not asks_nothing(exchange.headers):
            return await self._lookup(exchange, call_next, None)
        # The hot path: a request with no directives or conditions, a fresh entry in
        # memory or in the shared store. Anything else (stale, Vary mismatch, a miss)
        # takes the full lookup, with what was found here.
        now = self.wall()
        primary = self.keys.key_of(exchange)
        tiers = self.tiers
        l1 = tiers.l1
        variants = l1.get(primary, now) if l1 is not None else None
        if variants is not None:
            tier = "l1"
        elif tiers.l2 is not None:
            variants, tier = await tiers.shared(primary, now)
        else:
            variants, tier = (), ""
        if variants:
            response = self._fresh(exchange, variants, now, tier)
            if response is not None:
                return response
        return await self._lookup(exchange, call_next, (variants, tier, now))

    def decide_now(self, exchange: Exchange) -> Response | Later | None:
        """The hot path's in-process half: a fresh L1 hit for a plain GET or HEAD."""
        method = exchange.method
        l1 = self.tiers.l1
        if (method != "GET" and method != "HEAD") or l1 is None:
            return LATER
        if not asks_nothing(exchange.headers):
            return LATER
        now = self.wall()
        variants = l1.get(self.keys.key_of(exchange), now)
        if variants:
            response = self._fresh(exchange, variants, now, "l1")
            if response is not None:
                return response
        return LATER  # __call__ looks again (a dict lookup), then in L2

    def _fresh(
        self, exchange: Exchange, variants: tuple[Entry, ...], now: float, tier: str
    ) -> Response | None:
        """The fresh hit among ``variants`` for a request that asks nothing, if any."""
        entry = variants[0]
        found = select(variants, exchange.headers) if entry.select_names else entry
        return self.answers.fresh_hit(exchange, found, now, tier) if found is not None else None

    async def _lookup(
        self,
        exchange: Exchange,
        call_next: Handler,
        found: tuple[tuple[Entry, ...], str, float] | None,
    ) -> Response:
        """Every GET and HEAD the hot path did not answer: both tiers (unless the hot
        path already ``found`` what they hold), the request's own directives and
        conditions, then a hit, a stale entry or a miss."""
        ask = Ask(exchange, call_next, self.keys, self._honor)
        if ask.precondition:  # If-Match / If-Unmodified-Since: only the origin can answer
            exchange.decide(self.name, "bypass", "precondition")
            return await self.filler.fetch(ask, FWD_REQUEST)
        if found is None:
            now = self.wall()
            variants, tier = await self.tiers.get(ask.primary, now)
        else:
            variants, tier, now = found
        entry = select(variants, exchange.headers) if variants else None
        if entry is None:
            return await self.filler.miss(ask, FWD_VARY_MISS if variants else FWD_URI_MISS)
        age = entry.age(now)
        ttl = entry.lifetime - age
        if (
            ttl > 0
            and not entry.no_cache
            and (ask.rules is NO_RULES or fresh_for(entry, ask.rules, now))
        ):
            exchange.decide(self.name, "hit", tier)
            return self.answers.serve(ask, entry, now, self.answers.hit_status(ttl, tier), age)
        return await self.revalidator.stale(ask, entry, now, ttl)

    # Invalidation -----------------------------------------------------------------------

    async def _other_method(self, exchange: Exchange, call_next: Handler) -> Response:
        response = await call_next(exchange)
        if exchange.method not in SAFE_METHODS and 200 <= response.status < 400:
            await self._invalidate_after(exchange, response)
        if not self._observing and self._method_status is not None:
            response.headers = [*response.headers, (b"cache-status", self._method_status)]
        return response

    async def _invalidate_after(self, exchange: Exchange, response: Response) -> None:
        """RFC 9111 §4.4, in every cache of the runtime (see :meth:`CacheHub.after_unsafe`)."""
        count = await self.hub.after_unsafe(exchange, response)
        exchange.decide(self.name, "invalidate", str(count))

    async def invalidate_local(self, inv: Invalidation, *, origin: bool, purge: bool) -> int:
        """Apply an invalidation to this policy's tiers; the number of URLs/variants dropped.

        ``origin``: this replica issued it, so the shared tier's key is deleted too
        (other replicas only drop their in-process copies). ``purge``: an admin purge,
        whose URL without a host drops that URL under every host. Otherwise it follows
        an unsafe request (always a URL): skipped unless this cache's route could have
        served the URL to the request's host (so a request to one tenant's route never
        empties another's cache), and a request without ``Host`` reaches only what was
        stored without one.
        """
        l1 = self.tiers.l1
        if inv.kind != "url":
            return l1.remove_where(self._matcher(inv)) if l1 is not None else 0
        if not purge and not self._could_serve(inv):
            return 0
        url = self.keys.url(inv.value.encode("latin-1"))
        removed = 0
        if self.keys.use_host and inv.host is None and purge:
            if l1 is not None:
                removed = sum(l1.delete(k) for k in l1.keys_for_url(url))
            return removed
        primary = self.keys.primary(url, inv.host or "")
        if l1 is not None and l1.delete(primary):
            removed = 1
        if origin and self.shared is not None and await self.tiers.delete(primary):
            removed = max(removed, 1)
        return removed

    def _could_serve(self, inv: Invalidation) -> bool:
        """Whether this cache's route could have served ``inv``'s URL to its host: its
        host and path conditions (its header conditions do not narrow it: the headers
        of the requests that filled the cache are not known here)."""
        route = self.scope
        if route is None:
            return True
        host = inv.host.encode("latin-1") if inv.host else b""
        return route.match_host(host) and route.match_path(routed_path(inv.value)) is not None

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
            await self.filler.consider(
                exchange, ask.primary, ask.url, ask.host, ask.rules, response, now, self.wall()
            )
        return response
