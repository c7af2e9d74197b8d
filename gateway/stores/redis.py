"""Redis store: single server, Sentinel or Cluster; Lua loaded once, called by SHA.

A single server (``redis://`` or ``rediss://`` without query options) is served by the
purpose-built pipelined client of :mod:`gateway.stores.resp`; Sentinel, Cluster, URLs
with query options, and subscriptions go through redis-py (``client``).

Every call is bounded by the store's ``timeout`` and raises StoreError on any failure;
redis errors never leave this module.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import NoScriptError, RedisError

from gateway.config.models import StoreSpec
from gateway.errors import StoreError
from gateway.stores import ScriptArg
from gateway.stores.resp import Address, RespClient

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
        sentinel = Sentinel(hosts, password=password, **common)  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis 8
        return sentinel.master_for(path[0], db=db, password=password)
    if parts.scheme == "redis+cluster":
        nodes = [
            ClusterNode(*_host_port(h, 6379)) for h in parts.netloc.rpartition("@")[2].split(",")
        ]
        password = unquote(parts.password) if parts.password else None
        return RedisCluster(startup_nodes=nodes, password=password, **common)
    return aioredis.Redis.from_url(url, **common)


def resp_address(url: str) -> Address | None:
    """The server of a ``redis://`` or ``rediss://`` URL; None for the forms left to redis-py.

    ``redis[s]://[[username]:password@]host[:port][/db]``; a URL with query options
    (``?ssl_cert_reqs=...``, ``?db=...``) is left to redis-py, which knows them all.
    ValueError on a bad port or db.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or parts.query or parts.fragment:
        return None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"{url!r}: the path must be a database number")
    return Address(
        host=parts.hostname or "localhost",
        port=parts.port or 6379,
        db=int(path) if path else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=parts.scheme == "rediss",
    )


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
        # redis-py (connects on first use): Sentinel, Cluster, URLs with query options, and
        # subscriptions; every other call of a single server goes through ``resp``.
        self.client: Any = connect(spec.url, spec.timeout)
        address = resp_address(spec.url)
        self.resp: RespClient | None = None
        if address is not None:
            context = ssl.create_default_context() if address.tls else None
            self.resp = RespClient(name, address, spec.timeout, context)
        # Only the store's own client sends a call from synchronous code (``start``).
        self.starts_now = self.resp is not None
        self._shas: dict[str, bytes] = {}  # SHA by script name, for ``resp``
        self._py_shas: dict[str, str] = {}  # the same, for redis-py
        self._scripts: dict[str, bytes] = {}  # the Lua text by script name, once loaded
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

    def get(self, key: str) -> Awaitable[bytes | None]:
        """The value; with the store's own client, the reply's future itself."""
        resp = self.resp
        if resp is not None:
            return cast("Awaitable[bytes | None]", resp.call(b"GET", key))
        return self._call("GET", lambda: self.client.get(key))

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        px = max(int(ttl * 1000), 1)
        resp = self.resp
        if resp is not None:
            await resp.call(b"SET", key, value, b"PX", px)
            return
        await self._call("SET", lambda: self.client.set(key, value, px=px))

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        resp = self.resp
        if resp is not None:
            return cast(int, await resp.call(b"DEL", *keys))
        count: int = await self._call("DEL", lambda: self.client.delete(*keys))
        return count

    async def incr(self, key: str, amount: int, ttl: float) -> int:
        value = await self.run("incr_expire", [key], [amount, max(int(ttl * 1000), 1)])
        return int(str(value))

    def run(self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]) -> Awaitable[object]:
        """The script's reply. With the store's own client and the script's SHA known,
        this is the reply's future itself: no coroutine between the caller and Redis."""
        resp = self.resp
        if resp is not None:
            sha = self._shas.get(name)
            if sha is not None:
                return resp.call_script(sha, self._scripts[name], keys, args)
            return self._load_and_run(resp, name, keys, args)
        return self._call(f"script {name}", lambda: self._run_redis_py(name, keys, args))

    def start(
        self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]
    ) -> asyncio.Future[object] | None:
        """The script's call, written to Redis now: its reply's future; None when it
        cannot be sent without awaiting (no open connection yet, the script not loaded
        yet, or a client that redis-py serves), and ``run`` is the way."""
        resp = self.resp
        if resp is None:
            return None
        sha = self._shas.get(name)
        if sha is None:
            return None
        return resp.start_script(sha, self._scripts[name], keys, args)

    def on_reply(self, call: Awaitable[object], hook: Callable[[object], None]) -> bool:
        """Have ``hook(reply)`` called as soon as ``call``'s reply is read, before ``call``
        resolves (:meth:`RespClient.on_reply`); False when it cannot be (a call that is
        not a pending future of the store's own client), and only ``call`` will tell."""
        resp = self.resp
        if resp is None or not isinstance(call, asyncio.Future):
            return False
        return resp.on_reply(call, hook)

    async def _load_and_run(
        self, resp: RespClient, name: str, keys: Sequence[str], args: Sequence[ScriptArg]
    ) -> object:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = load_lua(name).encode()
        sha = await resp.call(b"SCRIPT", b"LOAD", script)
        if not isinstance(sha, bytes):
            raise StoreError(f"store {self.name!r}: SCRIPT LOAD answered {sha!r}")
        self._shas[name] = sha
        return await resp.call_script(sha, script, keys, args)

    async def _run_redis_py(
        self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]
    ) -> object:
        sha = self._py_shas.get(name)
        if sha is None:
            sha = await self.client.script_load(load_lua(name))
            self._py_shas[name] = sha
        try:
            return await self.client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:  # the server restarted or flushed its script cache
            self._py_shas[name] = sha = await self.client.script_load(load_lua(name))
            return await self.client.evalsha(sha, len(keys), *keys, *args)

    async def publish(self, channel: str, message: bytes) -> None:
        resp = self.resp
        if resp is not None:
            await resp.call(b"PUBLISH", self.prefix + channel, message)
            return
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
            if self.resp is not None:
                await self.resp.call(b"PING")
            else:
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
        if self.resp is not None:
            await self.resp.close()
        try:
            await self.client.aclose()
        except (RedisError, OSError):
            log.debug("store %s: close failed", self.name)
