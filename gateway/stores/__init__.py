"""State stores, split by capability; algorithms never import a backend.

Capabilities:

* :class:`KeyValue`: ``get`` / ``set`` with TTL / ``delete``;
* :class:`Counters`: ``incr`` with expiry;
* :class:`Scripts`: ``run(name, keys, args)``: an atomic server-side operation
  (a Lua file in ``lua/`` on Redis, a registered Python function in memory);
* :class:`StartsScripts`: ``start(name, keys, args)``: a script's call sent at once,
  from synchronous code, when the store can (a Redis store's own connection); and
  ``on_reply(call, hook)``: the call's reply handed to ``hook`` as soon as it is read;
* :class:`PubSub`: ``publish`` / ``subscribe`` (invalidation between replicas).

Every call raises :class:`gateway.errors.StoreError` on failure or after the store's
timeout; policies apply their ``on_store_error``. A policy asks for the capabilities
it needs with :meth:`Stores.require`, which fails at config load, not at the first
request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

from gateway.config.models import StoreSpec
from gateway.types import Clock

ScriptArg = int | float | str | bytes


@runtime_checkable
class KeyValue(Protocol):
    def get(self, key: str) -> Awaitable[bytes | None]:
        """The value, or None (an ``async def`` will do)."""
        ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def delete(self, *keys: str) -> int: ...


@runtime_checkable
class Counters(Protocol):
    async def incr(self, key: str, amount: int, ttl: float) -> int: ...


@runtime_checkable
class Scripts(Protocol):
    def run(self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]) -> Awaitable[object]:
        """The script's reply (an ``async def`` will do)."""
        ...


@runtime_checkable
class StartsScripts(Protocol):
    #: Whether ``start`` can ever send: False for a client that only awaits (then
    #: ``start`` always answers None and a caller should not ask it).
    starts_now: bool

    def start(
        self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]
    ) -> asyncio.Future[object] | None:
        """``run``'s call, sent now: its reply's future, or None when it cannot be sent
        without awaiting (then ``run`` it). The caller may drop the future unawaited
        (its request went away): a failure set on it must not be logged as never
        retrieved."""
        ...

    def on_reply(self, call: Awaitable[object], hook: Callable[[object], None]) -> bool:
        """Have ``hook(reply)`` called from the callback that reads ``call``'s reply,
        before ``call`` resolves, so that the caller's next step need not wait for its
        task to wake up; only for a reply that is not an error. False when the store
        cannot for this call."""
        ...


@runtime_checkable
class PubSub(Protocol):
    async def publish(self, channel: str, message: bytes) -> None: ...

    async def subscribe(self, channel: str, callback: Callable[[bytes], Awaitable[None]]) -> None:
        """Deliver every message on ``channel`` to ``callback`` until the store closes."""
        ...


class Store(Protocol):
    name: str
    kind: str
    prefix: str

    def key(self, *parts: str) -> str:
        """A namespaced key; ``{hash tag}`` keeps related keys on one Cluster slot."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class Stores:
    """The named stores of a process, built once and kept across reloads."""

    def __init__(self, stores: dict[str, Store]) -> None:
        self._stores = stores

    def __contains__(self, name: str) -> bool:
        return name in self._stores

    def names(self) -> list[str]:
        return sorted(self._stores)

    def get(self, name: str) -> Store:
        try:
            return self._stores[name]
        except KeyError:
            raise KeyError(
                f"store {name!r} is not defined (have: {', '.join(self.names())})"
            ) from None

    def require(self, name: str, *capabilities: type) -> Store:
        """The store ``name``, checked to offer every capability; ValueError if not."""
        store = self.get(name)
        missing = [c.__name__ for c in capabilities if not isinstance(store, c)]
        if missing:
            raise ValueError(f"store {name!r} ({store.kind}) lacks {', '.join(missing)}")
        return store

    def items(self) -> list[tuple[str, Store]]:
        return sorted(self._stores.items())

    async def close(self) -> None:
        for store in self._stores.values():
            await store.close()


def build_store(name: str, spec: StoreSpec, clock: Clock) -> Store:
    scheme = spec.url.split("://", 1)[0]
    if scheme == "memory":
        from gateway.stores.memory import MemoryStore

        return MemoryStore(name, spec, clock)
    from gateway.stores.redis import RedisStore

    return RedisStore(name, spec)


def build_stores(specs: dict[str, StoreSpec], clock: Clock) -> Stores:
    return Stores({name: build_store(name, spec, clock) for name, spec in specs.items()})
