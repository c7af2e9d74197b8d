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
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.loader import LoadedConfig, load_file
from gateway.config.models import GatewayConfig, StoreSpec, Upstream
from gateway.config.snapshot import Resources, Snapshot, build_snapshot
from gateway.errors import ConfigError
from gateway.observability.logs import AccessLog
from gateway.observability.metrics import Metrics
from gateway.stores import Store, Stores, build_store
from gateway.transport.base import Transport
from gateway.transport.forward import UpstreamPool

log = logging.getLogger("gateway")

TransportFactory = Callable[[Upstream], Transport]

#: Settings read once at start; a reload that changes them logs that a restart is needed.
PROCESS_SETTINGS = (
    "server", "workers", "listen", "admin", "limits", "shutdown", "logging", "reload",
)  # fmt: skip


@dataclass
class _Prepared:
    loaded: LoadedConfig
    snapshot: Snapshot
    pools: dict[str, UpstreamPool]
    new_stores: dict[str, Store]
    fresh_pools: dict[str, UpstreamPool]


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
        self._store_specs: dict[str, StoreSpec] = {}
        self._last_specs: dict[str, StoreSpec] = {}
        self._stores_dict: dict[str, Store] = {}
        self.stores = Stores(self._stores_dict)
        self.pools: dict[str, UpstreamPool] = {}
        self.draining = False
        self.in_flight = 0
        self._retired: set[asyncio.Task[None]] = set()
        self._retiring: set[UpstreamPool] = set()  # closed after a grace, or at close()
        self._stopping: set[Snapshot] = set()  # replaced snapshots, stopped after a grace
        self._watch_task: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._digest = ""
        #: Why the last reload was refused (``FILE:LINE:COL: message`` lines, as
        #: ``gateway check`` prints them); empty once a reload succeeds.
        self.reload_errors: list[str] = []
        self._refusal: tuple[str, list[str]] | None = None  # (digest, errors) last counted
        self._commit(self._prepare(loaded))
        self.metrics.config_info.labels(loaded.digest).set(1)

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

    def _prepare(self, loaded: LoadedConfig) -> _Prepared:
        """Build a complete snapshot off to the side; nothing live changes.

        Raises ConfigError (with file positions) when anything fails; whatever was
        built for the attempt is released.
        """
        config = loaded.config
        new_stores: dict[str, Store] = {}
        issues = []
        for name, spec in config.store_specs.items():
            if name in self._stores_dict:
                continue
            try:
                new_stores[name] = build_store(name, spec, self.clock)
            except (ValueError, OSError) as exc:
                issues.append(loaded.positions.issue(("stores", name), f"stores.{name}: {exc}"))
        if issues:
            self._release(new_stores, {})
            raise ConfigError(issues)
        stores = Stores({**self._stores_dict, **new_stores})
        pools = self._pools_for(config)
        fresh = {name: pool for name, pool in pools.items() if self.pools.get(name) is not pool}
        resources = Resources(
            stores=stores,
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
            self._release(new_stores, fresh)
            raise
        return _Prepared(loaded, snapshot, pools, new_stores, fresh)

    def _commit(self, prepared: _Prepared) -> None:
        """Make a prepared snapshot live; retire pools it no longer uses after a grace."""
        self._stores_dict.update(prepared.new_stores)
        specs = prepared.loaded.config.store_specs
        for name, spec in specs.items():
            running = self._store_specs.get(name)
            if running not in (None, spec) and self._last_specs.get(name) != spec:
                log.warning("store %r changed: the new settings apply after a restart", name)
        self._store_specs = {**specs, **self._store_specs}  # what each live store was built with
        self._last_specs = specs
        retired = [p for n, p in self.pools.items() if prepared.pools.get(n) is not p]
        self.pools = prepared.pools
        self.snapshot = prepared.snapshot
        self._digest = prepared.loaded.digest
        # Requests still running on the old snapshot keep their pools until drained.
        for pool in retired:
            self._retire(pool, self.process_config.shutdown.drain_timeout)

    def _release(self, stores: dict[str, Store], pools: dict[str, UpstreamPool]) -> None:
        for store in stores.values():
            self._later(store.close())
        for pool in pools.values():
            self._later(pool.transport.close())

    def _retire_snapshot(self, old: Snapshot) -> None:
        """Stop the old snapshot's policies once requests still using them are done."""
        self._stopping.add(old)

        async def stop_later() -> None:
            await asyncio.sleep(self.process_config.shutdown.drain_timeout)
            if old in self._stopping:
                self._stopping.discard(old)
                await self._stop_policies(old)

        self._later(stop_later())

    def _retire(self, pool: UpstreamPool, grace: float) -> None:
        self._retiring.add(pool)

        async def close_later() -> None:
            await asyncio.sleep(grace)
            self._retiring.discard(pool)
            await pool.transport.close()

        self._later(close_later())

    def _later(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop yet (the first snapshot): nothing was opened
            coro.close()
            return
        task = loop.create_task(coro)
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def _start_policies(self, snapshot: Snapshot) -> None:
        """Start a snapshot's policies as it goes live (background work: cache warming)."""
        await snapshot.start()

    async def _stop_policies(self, snapshot: Snapshot) -> None:
        await snapshot.stop()

    async def start(self) -> None:
        await self._start_policies(self.snapshot)
        if self.process_config.reload.watch:
            self._watch_task = asyncio.create_task(self._watch())

    def _load(self) -> LoadedConfig:
        """The config a reload applies: the file, read again."""
        return load_file(self.path)

    async def reload(self) -> bool:
        """Load the file again and swap the snapshot; False (old one kept) on any error."""
        async with self._reload_lock:
            loaded: LoadedConfig | None = None
            try:
                loaded = self._load()
                if loaded.digest == self._digest:
                    self.reload_errors, self._refusal = [], None
                    return True
                prepared = self._prepare(loaded)
            except ConfigError as exc:
                digest = loaded.digest if loaded is not None else exc.digest
                if self._refused(digest, [str(issue) for issue in exc.issues]):
                    log.error(
                        "reload of %s failed; keeping the running config:\n%s", self.path, exc
                    )
                return False
            except Exception as exc:
                digest = loaded.digest if loaded is not None else ""
                if self._refused(digest, [f"{self.path}: {type(exc).__name__}: {exc}"]):
                    log.exception("reload of %s failed; keeping the running config", self.path)
                return False
            try:
                await self._start_policies(prepared.snapshot)
            except Exception as exc:
                error = f"{self.path}: the new config failed to start: {type(exc).__name__}: {exc}"
                if self._refused(loaded.digest, [error]):
                    log.exception("reload: the new config failed to start; keeping the running one")
                await self._stop_policies(prepared.snapshot)
                self._release(prepared.new_stores, prepared.fresh_pools)
                return False
            changed = [
                key
                for key in PROCESS_SETTINGS
                if getattr(loaded.config, key) != getattr(self.process_config, key)
            ]
            if changed:
                log.warning("reload: %s changed; these apply after a restart", ", ".join(changed))
            old = self.snapshot
            self._commit(prepared)
            self.metrics.config_info.clear()
            self.metrics.config_info.labels(loaded.digest).set(1)
            self.metrics.reloads.labels("success").inc()
            self.reload_errors, self._refusal = [], None
            log.info("reloaded %s (config %s)", self.path, loaded.digest)
            self._retire_snapshot(old)
            return True

    def _refused(self, digest: str, errors: list[str]) -> bool:
        """Count a refused reload; False (count and log nothing) when it is the refusal
        last counted: the same file refused for the same reasons, as when SIGHUP and the
        watcher both see one bad edit. Another attempt is still made each time, since a
        file the policy file refers to (a JWKS) may have been fixed in between."""
        self.reload_errors = errors
        if self._refusal == (digest, errors):
            return False
        self._refusal = (digest, errors)
        self.metrics.reloads.labels("failure").inc()
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
        stopping, self._stopping = self._stopping, set()
        for old in stopping:
            await self._stop_policies(old)
        await self._stop_policies(self.snapshot)
        for pool in self.pools.values():
            await pool.transport.close()
        for task in list(self._retired):
            task.cancel()
        retiring, self._retiring = self._retiring, set()
        for pool in retiring:  # their grace is cut short: the process is stopping
            await pool.transport.close()
        await self.stores.close()
        self.access_log.flush()
