"""The in-process tier (L1): least recently used first out, bounded by bytes.

A slot holds every stored variant of one primary key. Lookups are one dict access and
one ``move_to_end``; an index by URL makes invalidating a URL independent of the size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from gateway.policies.cache.entry import Entry


class Slot:
    __slots__ = ("expires", "size", "url", "variants")

    def __init__(self, variants: tuple[Entry, ...], size: int) -> None:
        self.variants = variants
        self.size = size
        self.expires = max(v.expires_at() for v in variants)
        self.url = variants[0].url


class MemoryTier:
    def __init__(
        self, max_bytes: int, on_change: Callable[[int, int, int], None] | None = None
    ) -> None:
        """``on_change(bytes, entries, evicted)`` is called after every change."""
        self.max_bytes = max_bytes
        self.bytes = 0
        self._data: OrderedDict[str, Slot] = OrderedDict()
        self._by_url: dict[str, set[str]] = {}
        self._on_change = on_change

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str, now: float) -> tuple[Entry, ...] | None:
        """The variants under ``key`` (marked as recently used), or None."""
        slot = self._data.get(key)
        if slot is None:
            return None
        if slot.expires <= now:
            self._drop(key)
            self._changed(0)
            return None
        self._data.move_to_end(key)
        return slot.variants

    def peek(self, key: str) -> tuple[Entry, ...] | None:
        slot = self._data.get(key)
        return slot.variants if slot is not None else None

    def put(self, key: str, variants: tuple[Entry, ...]) -> bool:
        """Store ``variants`` under ``key`` (replacing what was there); False if too big.

        A refusal that changes nothing costs a sum and a comparison: an L2 hit that L1
        refuses (too big for it) offers it again on every hit.
        """
        size = variants[0].size if len(variants) == 1 else sum(v.size for v in variants)
        if not variants or size > self.max_bytes:
            if key in self._data:
                self._drop(key)
                self._changed(0)
            return False
        if key in self._data:
            self._drop(key)
        slot = Slot(variants, size)
        self._data[key] = slot
        self._by_url.setdefault(slot.url, set()).add(key)
        self.bytes += slot.size
        evicted = 0
        while self.bytes > self.max_bytes:
            oldest = next(iter(self._data))
            self._drop(oldest)
            evicted += 1
        self._changed(evicted)
        return True

    def delete(self, key: str) -> bool:
        if key not in self._data:
            return False
        self._drop(key)
        self._changed(0)
        return True

    def keys_for_url(self, url: str) -> list[str]:
        return list(self._by_url.get(url, ()))

    def remove_where(self, doomed: Callable[[Entry], bool]) -> int:
        """Drop every variant for which ``doomed(entry)`` is true; the count dropped."""
        removed = 0
        for key, slot in list(self._data.items()):
            keep = tuple(v for v in slot.variants if not doomed(v))
            if len(keep) == len(slot.variants):
                continue
            removed += len(slot.variants) - len(keep)
            self._drop(key)
            if keep:
                new = Slot(keep, sum(v.size for v in keep))
                self._data[key] = new
                self._by_url.setdefault(new.url, set()).add(key)
                self.bytes += new.size
        if removed:
            self._changed(0)
        return removed

    def clear(self) -> None:
        self._data.clear()
        self._by_url.clear()
        self.bytes = 0
        self._changed(0)

    def _drop(self, key: str) -> None:
        slot = self._data.pop(key)
        self.bytes -= slot.size
        keys = self._by_url.get(slot.url)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_url[slot.url]

    def _changed(self, evicted: int) -> None:
        if self._on_change is not None:
            self._on_change(self.bytes, len(self._data), evicted)
