"""What the cache keeps for as long as the runtime lives, across config reloads.

One :class:`CacheHub` per runtime, attached through a weak map to the runtime's
built-in ``memory`` store (a store object lives as long as its runtime, across
reloads), so two runtimes side by side never share one. It holds:

* the in-process tiers, shared by a route's old and new policy during a reload and kept
  when the route's cache config did not change (a reload does not empty the cache);
* the live cache policies, to which every invalidation is applied: an admin purge to
  all of them, one after an unsafe request (also to a route without a cache, which the
  snapshot hands here) to those whose route could have served its URL to its host;
* one pub/sub subscription per shared store (Redis subscriptions cannot be undone, so
  they are made once per process, not once per snapshot);
* the ban list and the replicated *ban log*: each admin purge is also written under a
  sequence number in the shared store, and every ``BAN_POLL`` seconds each replica reads
  the entries it has not seen. A replica that missed a pub/sub message (a Redis blip) or
  started after the purge still learns of it before it could serve what it purged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar
from weakref import WeakKeyDictionary

from gateway.errors import StoreError
from gateway.exchange import Exchange, Response
from gateway.observability.metrics import Metrics
from gateway.policies.cache.invalidation import CLOCK_SKEW, BanList, Invalidation, unsafe_targets
from gateway.policies.cache.memory import MemoryTier
from gateway.stores import Counters, KeyValue, PubSub, Stores
from gateway.stores.guard import StoreGuard

log = logging.getLogger("gateway.cache")
T = TypeVar("T")

CHANNEL = "cache:invalidate"
BAN_POLL = 5.0
#: Ban log entries read when a replica starts (the newest ones).
MAX_FETCH = 256
LOG_TTL = 30 * 86400.0
MAX_SEEN = 10_000


class SharedTier(KeyValue, Counters, PubSub, Protocol):
    name: str

    def key(self, *parts: str) -> str: ...


class CacheTarget(Protocol):
    """What the hub needs of a live cache policy.

    ``invalidate_local(inv, origin=, purge=)`` applies one invalidation to the policy's
    tiers: ``purge`` for an admin purge (every cache; no host: every host), otherwise
    the one after an unsafe request, which the policy skips unless its route could have
    served the URL to that host.
    """

    @property
    def horizon(self) -> float: ...

    async def invalidate_local(self, inv: Invalidation, *, origin: bool, purge: bool) -> int: ...


@dataclass
class _Shared:
    store: SharedTier
    guard: StoreGuard
    users: int = 0
    last_seq: int = 0
    poll: asyncio.Task[None] | None = None
    subscribed: bool = False


@dataclass
class _Tier:
    tier: MemoryTier
    users: int = 0


@dataclass
class PurgeResult:
    removed: int
    replicated: bool
    stores: list[str] = field(default_factory=list)


_HUBS: WeakKeyDictionary[object, CacheHub] = WeakKeyDictionary()


class CacheHub:
    def __init__(self, metrics: Metrics, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.bans = BanList()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._targets: list[CacheTarget] = []
        self._tiers: dict[str, _Tier] = {}
        self._shared: dict[str, _Shared] = {}
        self._uses: dict[int, str | None] = {}
        self._count = metrics.counter(
            "gateway_cache_invalidations_total",
            "Cache invalidations applied, by kind (url, prefix, glob, tag, all) and source "
            "(admin; unsafe: after a successful POST/PUT/DELETE/PATCH; remote: pub/sub from "
            "another replica; log: the replicated ban log).",
            ["kind", "source"],
        )
        self._metrics = metrics

    @classmethod
    def of(cls, stores: Stores, metrics: Metrics, clock: Callable[[], float]) -> CacheHub:
        """The hub of the runtime these stores belong to.

        A snapshot gets a new :class:`Stores` view on every reload, but the store objects
        in it live as long as the runtime; the built-in ``memory`` store (always there)
        is the anchor.
        """
        anchor: object = stores.get("memory") if "memory" in stores else stores
        hub = _HUBS.get(anchor)
        if hub is None:
            hub = _HUBS[anchor] = cls(metrics, clock)
        return hub

    # In-process tiers, kept across reloads while some policy uses them.
    def acquire_tier(self, ident: str, candidate: MemoryTier) -> MemoryTier:
        held = self._tiers.get(ident)
        if held is None:
            held = self._tiers[ident] = _Tier(candidate)
        held.users += 1
        return held.tier

    def release_tier(self, ident: str) -> None:
        held = self._tiers.get(ident)
        if held is not None:
            held.users -= 1
            if held.users <= 0:
                del self._tiers[ident]

    # Live policies and their shared store.
    async def register(self, target: CacheTarget, store: SharedTier | None) -> None:
        self._targets.append(target)
        self._uses[id(target)] = store.name if store is not None else None
        if store is None:
            return
        shared = self._shared.get(store.name)
        if shared is None:
            guard = StoreGuard(self._metrics, store.name, "cache")
            shared = self._shared[store.name] = _Shared(store, guard)
        shared.users += 1
        if not shared.subscribed:
            shared.subscribed = True
            await self._ok(shared, store.subscribe(CHANNEL, self._receive))
            await self._read_log(shared)
        if shared.poll is None or shared.poll.done():
            shared.poll = asyncio.get_running_loop().create_task(self._poll(shared))

    async def unregister(self, target: CacheTarget) -> None:
        with contextlib.suppress(ValueError):
            self._targets.remove(target)
        name = self._uses.pop(id(target), None)
        shared = self._shared.get(name) if name is not None else None
        if shared is None:
            return
        shared.users -= 1
        if shared.users <= 0 and shared.poll is not None:
            shared.poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await shared.poll
            shared.poll = None

    @property
    def horizon(self) -> float:
        return max((t.horizon for t in self._targets), default=0.0) + CLOCK_SKEW

    @property
    def shared_stores(self) -> list[str]:
        return sorted(n for n, s in self._shared.items() if s.users > 0)

    # Invalidation.
    async def invalidate(self, inv: Invalidation, *, source: str, ban: bool) -> PurgeResult:
        """Apply ``inv`` here, then send it to every replica through each shared store.

        ``ban`` (admin purges) also records it in the ban list and the replicated ban
        log; invalidations after unsafe methods delete exact keys and need neither.
        """
        self._remember(inv.id)
        removed = await self._apply(inv, origin=True, ban=ban, source=source)
        replicated = True
        names = self.shared_stores
        message = (b"B" if ban else b"U") + inv.encode()
        for name in names:
            shared = self._shared[name]
            store = shared.store
            sent = await self._ok(shared, store.publish(CHANNEL, message))
            logged = True
            if ban:
                seq = await self._try(shared, store.incr(self._seq_key(shared), 1, LOG_TTL))
                logged = seq is not None and await self._ok(
                    shared, store.set(self._ban_key(shared, seq), inv.encode(), self.horizon)
                )
            replicated = replicated and sent and logged
        return PurgeResult(removed, replicated and bool(names), names)

    async def after_unsafe(self, exchange: Exchange, response: Response) -> int:
        """Invalidate what a non-error answer to an unsafe request changed (RFC 9111 §4.4,
        :func:`unsafe_targets`), whichever route served it, in each live cache whose
        route could have served that URL to the request's host (each cache decides, in
        :meth:`CacheTarget.invalidate_local`, here and on every replica); the number of
        URLs."""
        urls = unsafe_targets(exchange, response)
        host = exchange.host.decode("latin-1") or None
        now = self.clock()
        for url in urls:
            await self.invalidate(
                Invalidation.new("url", url, host, now), source="unsafe", ban=False
            )
        return len(urls)

    async def _apply(self, inv: Invalidation, *, origin: bool, ban: bool, source: str) -> int:
        if ban:
            now = self.clock()
            self.bans.add(inv, inv.time + self.horizon, now)
        removed = 0
        for target in list(self._targets):
            removed += await target.invalidate_local(inv, origin=origin, purge=ban)
        self._count.labels(inv.kind, source).inc()
        return removed

    async def _receive(self, message: bytes) -> None:
        ban = message[:1] == b"B"
        inv = Invalidation.decode(message[1:])
        if inv is None or not self._remember(inv.id):
            return
        await self._apply(inv, origin=False, ban=ban, source="remote")

    def _remember(self, ident: str) -> bool:
        """False when ``ident`` was already applied here."""
        if ident in self._seen:
            return False
        self._seen[ident] = None
        while len(self._seen) > MAX_SEEN:
            self._seen.popitem(last=False)
        return True

    # The replicated ban log.
    def _seq_key(self, shared: _Shared) -> str:
        return shared.store.key("cache-bans")

    def _ban_key(self, shared: _Shared, seq: int) -> str:
        return shared.store.key("cache-bans", str(seq))

    async def _read_log(self, shared: _Shared) -> None:
        current = await self._try(shared, shared.store.incr(self._seq_key(shared), 0, LOG_TTL))
        if current is None:
            return
        if current < shared.last_seq:  # the log expired and restarted
            shared.last_seq = 0
        start = max(shared.last_seq, current - MAX_FETCH) + 1
        for seq in range(start, current + 1):
            raw = await self._try(shared, shared.store.get(self._ban_key(shared, seq)))
            inv = Invalidation.decode(raw) if raw is not None else None
            if inv is not None and self._remember(inv.id):
                await self._apply(inv, origin=False, ban=True, source="log")
        shared.last_seq = current

    async def _poll(self, shared: _Shared) -> None:
        while True:
            await asyncio.sleep(BAN_POLL)
            try:
                await self._read_log(shared)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cache: reading the ban log of %s failed", shared.store.name)

    async def _try(self, shared: _Shared, operation: Awaitable[T]) -> T | None:
        try:
            return await operation
        except StoreError as exc:
            shared.guard.failed(exc)
            return None

    async def _ok(self, shared: _Shared, operation: Awaitable[None]) -> bool:
        try:
            await operation
        except StoreError as exc:
            shared.guard.failed(exc)
            return False
        return True
