"""The embedded store: one process, bounded (LRU + TTL), never blocks."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

from gateway.config.models import StoreSpec
from gateway.stores import ScriptArg
from gateway.types import Clock

MemoryScript = Callable[["MemoryStore", Sequence[str], Sequence[ScriptArg]], object]

#: Python twins of the Redis Lua scripts, registered by the algorithms that use them.
MEMORY_SCRIPTS: dict[str, MemoryScript] = {}


class MemoryStore:
    kind = "memory"

    def __init__(self, name: str, spec: StoreSpec, clock: Clock) -> None:
        self.name = name
        self.prefix = spec.prefix
        self.max_entries = spec.max_entries
        self.clock = clock
        self._data: OrderedDict[str, tuple[object, float]] = OrderedDict()
        self._subscribers: dict[str, list[Callable[[bytes], Awaitable[None]]]] = {}

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @property
    def entries(self) -> OrderedDict[str, tuple[object, float]]:
        """The raw map, for scripts compiled against this store (one call per decision).

        ``key -> (value, deadline)``, least recently used first; a deadline of 0 never
        expires, one at or before ``clock()`` is absent. A script that reads or writes it
        keeps the rules of :meth:`load` and :meth:`save`: an expired key is deleted, a
        key read or written becomes the most recent, and after adding a key the least
        recent go until at most ``max_entries`` remain.
        """
        return self._data

    # Raw access for scripts: values are any Python object.
    def load(self, key: str) -> object | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires and expires <= self.clock():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def save(self, key: str, value: object, ttl: float) -> None:
        data = self._data
        data[key] = (value, self.clock() + ttl if ttl > 0 else 0.0)
        data.move_to_end(key)
        while len(data) > self.max_entries:
            data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    async def get(self, key: str) -> bytes | None:
        value = self.load(key)
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self.save(key, value, ttl)

    async def delete(self, *keys: str) -> int:
        return sum(self._data.pop(k, None) is not None for k in keys)

    async def incr(self, key: str, amount: int, ttl: float) -> int:
        current = self.load(key)
        value = (current if isinstance(current, int) else 0) + amount
        if current is None:
            self.save(key, value, ttl)
        else:
            item = self._data[key]
            self._data[key] = (value, item[1])
        return value

    async def run(self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]) -> object:
        return MEMORY_SCRIPTS[name](self, keys, args)

    async def publish(self, channel: str, message: bytes) -> None:
        for callback in list(self._subscribers.get(channel, ())):
            await callback(message)

    async def subscribe(self, channel: str, callback: Callable[[bytes], Awaitable[None]]) -> None:
        self._subscribers.setdefault(channel, []).append(callback)

    async def ping(self) -> bool:
        await asyncio.sleep(0)
        return True

    async def close(self) -> None:
        self._data.clear()
        self._subscribers.clear()
