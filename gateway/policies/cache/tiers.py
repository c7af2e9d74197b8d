"""The two tiers together: in-process memory (L1) first, then the shared store (L2).

A hit in L1 is served from memory; an L1 miss that hits L2 is promoted into L1; a
stored response is written to both. Every variant of a URL lives in one L2 value, so a
lookup is one GET whatever the ``Vary``. Every L2 failure is reported to the policy's
StoreGuard; after one, L2 is skipped for ``L2_RETRY_AFTER`` seconds, so a Redis outage
costs one timeout per interval rather than one per request (L1 keeps serving).
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
#: Hashed L2 keys remembered, and the longest primary key remembered (the map is
#: emptied when full: at most ~2 MB, and hashing again costs only ~0.5 µs).
MAX_KEYS = 4096
MAX_KEY_LENGTH = 256


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
        self._l2_keys: dict[str, str] = {}

    def l2_key(self, primary: str) -> str:
        key = self._l2_keys.get(primary)
        if key is not None:
            return key
        assert self.l2 is not None
        digest = hashlib.blake2b(primary.encode("utf-8", "surrogateescape"), digest_size=16)
        key = self.l2.key("cache:" + digest.hexdigest())
        if len(primary) <= MAX_KEY_LENGTH:
            if len(self._l2_keys) >= MAX_KEYS:
                self._l2_keys.clear()
            self._l2_keys[primary] = key
        return key

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
        return await self.shared(primary, now)

    async def shared(
        self, primary: str, now: float, *, promote: bool = True
    ) -> tuple[tuple[Entry, ...], str]:
        """:meth:`get` after an L1 miss: the usable variants in L2 (one GET, one decode;
        those no longer usable are dropped from L2), promoted into L1."""
        l2 = self.l2
        if l2 is None or (self._l2_down_until and not self.l2_usable):
            return (), ""
        key = self.l2_key(primary)
        try:  # _guarded, inline: this is the hot path of an L2 hit
            blob = await l2.get(key)
        except StoreError as exc:
            self._failed(exc)
            return (), ""
        if blob is None:
            self._count("miss")
            return (), ""
        entries = load(blob, self.settings)
        banned = self.banned
        usable = tuple(
            [e for e in entries if e.response_time + e.keep > now and not banned(e, now)]
        )
        if len(usable) != len(entries):
            if usable:
                await self._write_l2(key, usable, now)
            else:
                await self._guarded(l2.delete(key))
        if not usable:
            self._count("miss")
            return (), ""
        self._count("hit")
        l1 = self.l1
        if l1 is not None and promote:
            l1.put(primary, usable)
        return usable, "l2"

    async def put(self, primary: str, entry: Entry, now: float) -> tuple[bool, bool]:
        """Store ``entry`` with the other variants of its key; (in L1, in L2)."""
        existing = list(self.l1.peek(primary) or ()) if self.l1 is not None else []
        if self.l2 is not None and entry.select_names and self.l2_usable:
            # Variants stored by other replicas are kept too.
            known = {e.select_values for e in existing}
            stored, _ = await self.shared(primary, now, promote=False)
            existing.extend(e for e in stored if e.select_values not in known)
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
        blob = dump(variants, self.settings)
        if blob is None:
            return False
        ok, _ = await self._guarded(self.l2.set(key, blob, ttl))
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
            self._failed(exc)
            return False, None

    def _failed(self, exc: StoreError) -> None:
        if self.guard is not None:
            self.guard.failed(exc)
        self._l2_down_until = self.monotonic() + L2_RETRY_AFTER
        self._count("error")

    def _count(self, result: str) -> None:
        if self._count_l2 is not None:
            self._count_l2(result)
