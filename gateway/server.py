"""``gateway run``: start the runtime, the proxy front-end and the admin app; drain on SIGTERM.

SIGTERM/SIGINT: ``/readyz`` turns 503 at once; the listener keeps serving for
``shutdown.pre_stop_delay``; then it stops accepting, and in-flight requests get up to
``shutdown.drain_timeout`` to finish; stores and logs flush; exit 0.
SIGHUP: reload the policy file (a bad file changes nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from typing import Protocol

import uvicorn

from gateway.admin.app import build_admin_app
from gateway.config.loader import LoadedConfig
from gateway.config.models import GatewayConfig, split_host_port
from gateway.frontends.asgi import GatewayApp
from gateway.runtime import Runtime

log = logging.getLogger("gateway")


class Frontend(Protocol):
    """A proxy listener the server can start and drain."""

    async def start(self) -> None: ...

    async def stop_accepting(self) -> None: ...

    async def drain(self, timeout: float) -> None:
        """Wait for in-flight requests (up to ``timeout``), then close every connection."""
        ...


class _Uvicorn(uvicorn.Server):
    """A uvicorn server whose signals are ours: the gateway orders its own shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_server(app: object, address: str, config: GatewayConfig, *, proxy: bool) -> _Uvicorn:
    host, port = split_host_port(address)
    limits = config.limits
    return _Uvicorn(
        uvicorn.Config(
            app,  # type: ignore[arg-type]
            host=host,
            port=port,
            lifespan="off",
            http="httptools",
            ws="websockets-sansio" if proxy else "none",
            log_level="warning",
            access_log=False,
            server_header=False,
            date_header=False,
            timeout_keep_alive=int(max(limits.keepalive_timeout, 1)),
            timeout_graceful_shutdown=int(max(config.shutdown.drain_timeout, 1)),
            proxy_headers=False,
        )
    )


class AsgiFrontend:
    """The proxy under uvicorn (``server: asgi``)."""

    def __init__(self, runtime: Runtime, config: GatewayConfig) -> None:
        self.server = uvicorn_server(GatewayApp(runtime), config.listen, config, proxy=True)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the proxy listener failed to start")
            await asyncio.sleep(0.01)

    async def stop_accepting(self) -> None:
        for server in self.server.servers:
            server.close()

    async def drain(self, timeout: float) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task


def make_frontend(runtime: Runtime, config: GatewayConfig) -> Frontend:
    if config.server == "native":
        try:
            from gateway.frontends.native import NativeFrontend
        except ImportError:  # pragma: no cover - until the native front-end ships
            return AsgiFrontend(runtime, config)
        return NativeFrontend(runtime, config)
    return AsgiFrontend(runtime, config)


async def serve(loaded: LoadedConfig, ready_fd: int | None = None) -> int:
    config = loaded.config
    runtime = Runtime(loaded)
    await runtime.start()
    frontend = make_frontend(runtime, config)
    admin = uvicorn_server(
        build_admin_app(runtime, os.environ.get("GATEWAY_ADMIN_TOKEN") or None),
        config.admin,
        config,
        proxy=False,
    )
    admin_task = asyncio.create_task(admin.serve())
    try:
        await frontend.start()
        while not admin.started:
            if admin_task.done():
                admin_task.result()
                raise RuntimeError("the admin listener failed to start")
            await asyncio.sleep(0.01)
    except BaseException:
        admin.should_exit = True
        await runtime.close()
        raise
    log.info(
        "gateway listening on %s (%s), admin on %s", config.listen, config.server, config.admin
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        task = loop.create_task(runtime.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await stop.wait()

    runtime.draining = True
    shutdown = config.shutdown
    log.info("draining: ready=false, serving %.1fs more before closing the listener",
             shutdown.pre_stop_delay)  # fmt: skip
    await asyncio.sleep(shutdown.pre_stop_delay)
    await frontend.stop_accepting()
    await frontend.drain(shutdown.drain_timeout)
    admin.should_exit = True
    await admin_task
    await runtime.close()
    log.info("stopped")
    return 0


def run(loaded: LoadedConfig) -> int:
    try:
        import uvloop

        return int(uvloop.run(serve(loaded)))
    except ImportError:  # pragma: no cover
        return asyncio.run(serve(loaded))
