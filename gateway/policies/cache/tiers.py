"""The two tiers together: in-process memory (L1) first, then the shared store (L2).

A hit in L1 is served from memory; an L1 miss that hits L2 is promoted into L1; a
stored response is written to both. Every L2 call goes through the policy's
StoreGuard; after a failure L2 is skipped for ``L2_RETRY_AFTER`` seconds, so a Redis
outage costs one timeout per interval rather than one per request (L1 keeps serving).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from gateway.errors import StoreError
from gateway.policies.cache.entry import Entry, Settings, dump, load
from gateway.policies.cache.memory import MemoryTier
from gateway.stores import KeyValue
from gateway.stores.guard import StoreGuard
from gateway.types import Clock

T = TypeVar("T")
L2_RETRY_AFTER = 1.0
#: Most variants (Vary / key headers) kept per URL.
MAX_VARIANTS = 16


class SharedStore(KeyValue, Protocol):
    def key(self, *parts: str) -> str: ...


class Tiers:
    def __init__(
        self,
        l1: MemoryTier | None,
        l2: SharedStore | None,
        guard: StoreGuard | None,
        settings: Settings,
        monotonic: Clock,
        banned: Callable[[Entry, float], bool] = lambda entry, now: False,
        on_l2: Callable[[str], None] | None = None,
    ) -> None:
        self.l1 = l1
        self.l2 = l2
        self.guard = guard
        self.settings = settings
        self.monotonic = monotonic
        self.banned = banned
        self._count_l2 = on_l2
        self._l2_down_until = 0.0

    def l2_key(self, primary: str) -> str:
        assert self.l2 is not None
        digest = hashlib.blake2b(primary.encode("utf-8", "surrogateescape"), digest_size=16)
        return self.l2.key("cache:" + digest.hexdigest())

    @property
    def l2_usable(self) -> bool:
        return self.l2 is not None and self.monotonic() >= self._l2_down_until

    async def get(self, primary: str, now: float) -> tuple[tuple[Entry, ...], str]:
        """The variants stored under ``primary`` and the tier they came from ("" if none)."""
        l1 = self.l1
        if l1 is not None:
            found = l1.get(primary, now)
            if found is not None:
                return found, "l1"
        variants = await self._read_l2(primary, now)
        if not variants:
            return (), ""
        if l1 is not None:
            l1.put(primary, variants)
        return variants, "l2"

    async def _read_l2(self, primary: str, now: float) -> tuple[Entry, ...]:
        if not self.l2_usable:
            return ()
        assert self.l2 is not None
        key = self.l2_key(primary)
        _, blob = await self._guarded(self.l2.get(key))
        if blob is None:
            self._count("miss")
            return ()
        entries = load(blob, self.settings)
        usable = tuple(e for e in entries if e.expires_at() > now and not self.banned(e, now))
        if len(usable) != len(entries):
            if usable:
                await self._write_l2(key, usable, now)
            else:
                await self._guarded(self.l2.delete(key))
        self._count("hit" if usable else "miss")
        return usable

    async def put(self, primary: str, entry: Entry, now: float) -> tuple[bool, bool]:
        """Store ``entry`` with the other variants of its key; (in L1, in L2)."""
        existing = list(self.l1.peek(primary) or ()) if self.l1 is not None else []
        if self.l2 is not None and entry.select_names and self.l2_usable:
            # Variants stored by other replicas are kept too.
            known = {e.select_values for e in existing}
            existing.extend(
                e for e in await self._read_l2(primary, now) if e.select_values not in known
            )
        variants = [entry]
        for old in existing:
            if (
                old.select_names == entry.select_names
                and old.select_values != entry.select_values
                and old.expires_at() > now
                and len(variants) < MAX_VARIANTS
            ):
                variants.append(old)
        kept = tuple(variants)
        in_l1 = self.l1.put(primary, kept) if self.l1 is not None else False
        in_l2 = False
        if self.l2 is not None and self.l2_usable:
            in_l2 = await self._write_l2(self.l2_key(primary), kept, now)
        return in_l1, in_l2

    async def _write_l2(self, key: str, variants: tuple[Entry, ...], now: float) -> bool:
        assert self.l2 is not None
        ttl = max(v.expires_at() for v in variants) - now
        if ttl <= 0:
            return False
        ok, _ = await self._guarded(self.l2.set(key, dump(variants), ttl))
        return ok

    async def delete(self, primary: str, *, shared: bool = True) -> bool:
        """Drop every variant of ``primary`` from L1 and (with ``shared``) from L2."""
        removed = self.l1.delete(primary) if self.l1 is not None else False
        if shared and self.l2 is not None and self.l2_usable:
            _, count = await self._guarded(self.l2.delete(self.l2_key(primary)))
            removed = removed or bool(count)
        return removed

    async def _guarded(self, operation: Awaitable[T]) -> tuple[bool, T | None]:
        """(succeeded, result); a store failure is counted, logged by the guard, and
        takes L2 out of use for ``L2_RETRY_AFTER`` seconds."""
        try:
            return True, await operation
        except StoreError as exc:
            if self.guard is not None:
                self.guard.failed(exc)
            self._l2_down_until = self.monotonic() + L2_RETRY_AFTER
            self._count("error")
            return False, None

    def _count(self, result: str) -> None:
        if self._count_l2 is not None:
            self._count_l2(result)
