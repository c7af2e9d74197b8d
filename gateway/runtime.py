"""Long-lived resources (stores, transports, metrics, logs), reload and drain.

The Runtime owns everything that outlives one config file. It builds a Snapshot from a
file, swaps it in one assignment on reload, and never replaces a good snapshot with a
bad one. Front-ends read ``runtime.snapshot`` once per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from gateway.config.loader import LoadedConfig, load_file
from gateway.config.models import GatewayConfig, Upstream
from gateway.config.snapshot import Resources, Snapshot, build_snapshot
from gateway.errors import ConfigError
from gateway.observability.logs import AccessLog
from gateway.observability.metrics import Metrics
from gateway.stores import Stores, build_store
from gateway.transport.base import Transport
from gateway.transport.forward import UpstreamPool

log = logging.getLogger("gateway")

TransportFactory = Callable[[Upstream], Transport]

#: Settings read once at start; a reload that changes them logs that a restart is needed.
PROCESS_SETTINGS = ("server", "workers", "listen", "admin", "limits", "shutdown", "logging")


def default_transport(config: Upstream) -> Transport:
    kind = os.environ.get("GATEWAY_TRANSPORT", "native")
    if kind == "aiohttp":
        from gateway.transport.aiohttp_transport import AiohttpTransport

        return AiohttpTransport(config)
    try:
        from gateway.transport.native import NativeTransport
    except ImportError:  # pragma: no cover - the native transport ships with the package
        from gateway.transport.aiohttp_transport import AiohttpTransport

        return AiohttpTransport(config)
    return NativeTransport(config)


def replicas_from_env() -> int:
    try:
        return max(int(os.environ.get("GATEWAY_REPLICAS", "1")), 1)
    except ValueError:
        return 1


class Runtime:
    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        transport_factory: TransportFactory = default_transport,
        metrics: Metrics | None = None,
        access_log: AccessLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config = loaded.config
        self.path = loaded.path
        self.process_config = config
        self.metrics = metrics or Metrics()
        self.access_log = access_log or AccessLog(config.logging.access_log, config.logging.format)
        self.transport_factory = transport_factory
        self.clock = clock
        self.stores = Stores({})
        self._store_specs = config.store_specs
        self._stores_dict = {
            name: build_store(name, spec, clock) for name, spec in self._store_specs.items()
        }
        self.stores = Stores(self._stores_dict)
        self.pools: dict[str, UpstreamPool] = {}
        self.draining = False
        self.in_flight = 0
        self._retired: list[asyncio.Task[None]] = []
        self._watch_task: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self.snapshot = self._build(loaded)
        self.metrics.config_info.labels(loaded.digest).set(1)
        self._digest = loaded.digest

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: object) -> Runtime:
        return cls(load_file(path), **kwargs)  # type: ignore[arg-type]

    @property
    def config(self) -> GatewayConfig:
        return self.snapshot.config

    @property
    def ready(self) -> bool:
        return not self.draining

    def _pools_for(self, config: GatewayConfig) -> dict[str, UpstreamPool]:
        pools: dict[str, UpstreamPool] = {}
        for name, upstream in config.upstreams.items():
            old = self.pools.get(name)
            if old is not None and old.config == upstream:
                pools[name] = old
            else:
                pools[name] = UpstreamPool(name, upstream, self.transport_factory(upstream))
        return pools

    def _build(self, loaded: LoadedConfig) -> Snapshot:
        config = loaded.config
        for name, spec in config.store_specs.items():
            if name not in self._stores_dict:
                self._stores_dict[name] = build_store(name, spec, self.clock)
            elif self._store_specs.get(name) != spec:
                log.warning("store %r changed: the new settings apply after a restart", name)
        pools = self._pools_for(config)
        resources = Resources(
            stores=self.stores,
            metrics=self.metrics,
            access_log=self.access_log,
            pools=pools,
            clock=self.clock,
            replicas=replicas_from_env(),
        )
        try:
            snapshot = build_snapshot(
                config, resources, loaded.positions, loaded.path.parent, loaded.digest
            )
        except BaseException:
            for name, pool in pools.items():
                if self.pools.get(name) is not pool:
                    self._retire(pool)
            raise
        for name, pool in self.pools.items():
            if pools.get(name) is not pool:
                self._retire(pool)
        self.pools = pools
        return snapshot

    def _retire(self, pool: UpstreamPool, grace: float = 0.0) -> None:
        async def close_later() -> None:
            await asyncio.sleep(grace)
            await pool.transport.close()

        # Without a running loop (the first snapshot) nothing was opened yet.
        with contextlib.suppress(RuntimeError):
            self._retired.append(asyncio.get_running_loop().create_task(close_later()))

    async def start(self) -> None:
        await self.snapshot.start()
        if self.process_config.reload.watch:
            self._watch_task = asyncio.create_task(self._watch())

    async def reload(self) -> bool:
        """Load the file again and swap the snapshot; False (old one kept) on any error."""
        async with self._reload_lock:
            try:
                loaded = load_file(self.path)
                if loaded.digest == self._digest:
                    return True
                old_pools = dict(self.pools)
                snapshot = self._build(loaded)
            except ConfigError as exc:
                self.metrics.reloads.labels("failure").inc()
                log.error("reload of %s failed; keeping the running config:\n%s", self.path, exc)
                return False
            except Exception:
                self.metrics.reloads.labels("failure").inc()
                log.exception("reload of %s failed; keeping the running config", self.path)
                return False
            changed = [
                key
                for key in PROCESS_SETTINGS
                if getattr(loaded.config, key) != getattr(self.process_config, key)
            ]
            if changed:
                log.warning("reload: %s changed; these apply after a restart", ", ".join(changed))
            try:
                await snapshot.start()
            except Exception:
                self.metrics.reloads.labels("failure").inc()
                log.exception("reload: the new config failed to start; keeping the running one")
                self.pools = old_pools
                return False
            old, self.snapshot = self.snapshot, snapshot
            self.metrics.config_info.clear()
            self.metrics.config_info.labels(loaded.digest).set(1)
            self._digest = loaded.digest
            self.metrics.reloads.labels("success").inc()
            log.info("reloaded %s (config %s)", self.path, loaded.digest)
            await old.stop()
            return True

    def _fingerprint(self) -> tuple[float, int, str]:
        """Changes when the file or the symlink it resolves through changes."""
        try:
            st = os.stat(self.path)
            return (st.st_mtime, st.st_size, os.path.realpath(self.path))
        except OSError:
            return (0.0, 0, "")

    async def _watch(self) -> None:
        """Poll the file and its directory: Kubernetes swaps a ConfigMap's symlink."""
        interval = self.process_config.reload.interval
        seen = self._fingerprint()
        while True:
            await asyncio.sleep(interval)
            now = self._fingerprint()
            if now != seen and now[2]:
                seen = now
                await self.reload()

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        await self.snapshot.stop()
        for pool in self.pools.values():
            await pool.transport.close()
        for task in self._retired:
            task.cancel()
        await self.stores.close()
        self.access_log.flush()
