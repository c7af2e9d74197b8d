"""Redis store: single server, Sentinel or Cluster; Lua loaded once, called by SHA.

Every call is bounded by the store's ``timeout`` and raises StoreError on any failure;
redis errors never leave this module.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import NoScriptError, RedisError

from gateway.config.models import StoreSpec
from gateway.errors import StoreError
from gateway.stores import ScriptArg

log = logging.getLogger("gateway.stores")
T = TypeVar("T")


def load_lua(name: str) -> str:
    return (resources.files("gateway.stores") / "lua" / f"{name}.lua").read_text()


def connect(url: str, timeout: float) -> Any:
    """A redis.asyncio client for any of the supported URL forms."""
    parts = urlsplit(url)
    common: dict[str, Any] = {
        "socket_timeout": max(timeout, 0.001) * 4,
        "socket_connect_timeout": max(timeout, 0.001) * 4,
        "retry_on_timeout": False,
    }
    if parts.scheme == "redis+sentinel":
        hosts = [_host_port(h, 26379) for h in parts.netloc.rpartition("@")[2].split(",")]
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("redis+sentinel:// URL needs /service_name[/db]")
        db = int(path[1]) if len(path) > 1 else 0
        password = unquote(parts.password) if parts.password else None
        sentinel = Sentinel(hosts, password=password, **common)  # type: ignore[no-untyped-call]
        return sentinel.master_for(path[0], db=db, password=password)
    if parts.scheme == "redis+cluster":
        nodes = [
            ClusterNode(*_host_port(h, 6379)) for h in parts.netloc.rpartition("@")[2].split(",")
        ]
        password = unquote(parts.password) if parts.password else None
        return RedisCluster(startup_nodes=nodes, password=password, **common)
    return aioredis.Redis.from_url(url, **common)


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port``; ValueError on a bad port."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"{text!r}: a host is missing")
    if port and not port.isdigit():
        raise ValueError(f"{text!r}: the port must be a number")
    return host, int(port) if port else default_port


class RedisStore:
    kind = "redis"

    def __init__(self, name: str, spec: StoreSpec) -> None:
        self.name = name
        self.prefix = spec.prefix
        self.timeout = spec.timeout
        self.url = spec.url
        self.client: Any = connect(spec.url, spec.timeout)
        self._shas: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def key(self, *parts: str) -> str:
        # The first part is the hash tag: keys of one logical object share a Cluster slot.
        head, *rest = parts
        return self.prefix + "{" + head + "}" + "".join(":" + p for p in rest)

    async def _call(self, op: str, factory: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await factory()
        except TimeoutError as exc:
            raise StoreError(f"store {self.name!r}: {op} timed out after {self.timeout}s") from exc
        except (RedisError, OSError) as exc:
            raise StoreError(f"store {self.name!r}: {op} failed: {exc}") from exc

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._call("GET", lambda: self.client.get(key))
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        px = max(int(ttl * 1000), 1)
        await self._call("SET", lambda: self.client.set(key, value, px=px))

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        count: int = await self._call("DEL", lambda: self.client.delete(*keys))
        return count

    async def incr(self, key: str, amount: int, ttl: float) -> int:
        value = await self.run("incr_expire", [key], [amount, max(int(ttl * 1000), 1)])
        return int(str(value))

    async def run(self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]) -> object:
        async def call() -> object:
            sha = self._shas.get(name)
            if sha is None:
                sha = await self.client.script_load(load_lua(name))
                self._shas[name] = sha
            try:
                return await self.client.evalsha(sha, len(keys), *keys, *args)
            except NoScriptError:  # the server restarted or flushed its script cache
                self._shas[name] = sha = await self.client.script_load(load_lua(name))
                return await self.client.evalsha(sha, len(keys), *keys, *args)

        return await self._call(f"script {name}", call)

    async def publish(self, channel: str, message: bytes) -> None:
        await self._call("PUBLISH", lambda: self.client.publish(self.prefix + channel, message))

    async def subscribe(self, channel: str, callback: Callable[[bytes], Awaitable[None]]) -> None:
        self._tasks.append(asyncio.create_task(self._listen(self.prefix + channel, callback)))

    async def _listen(self, channel: str, callback: Callable[[bytes], Awaitable[None]]) -> None:
        """Keep a subscription alive across Redis outages (reconnect with backoff)."""
        backoff = 0.1
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(channel)
                backoff = 0.1
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None and isinstance(msg.get("data"), bytes):
                        await callback(msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnect: the store must outlive Redis blips
                log.warning("store %s: subscription to %s lost: %s", self.name, channel, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    log.debug("store %s: pubsub close failed", self.name)

    async def ping(self) -> bool:
        try:
            await self._call("PING", lambda: self.client.ping())
        except StoreError:
            return False
        return True

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                log.debug("store %s: subscription task ended", self.name)
        self._tasks.clear()
        try:
            await self.client.aclose()
        except (RedisError, OSError):
            log.debug("store %s: close failed", self.name)
