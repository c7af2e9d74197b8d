"""``gateway run``: the runtime, the proxy front-end and the admin app; drain on SIGTERM.

SIGTERM/SIGINT: ``/readyz`` turns 503 at once; the listener keeps serving for
``shutdown.pre_stop_delay``; then it stops accepting, and in-flight requests get up to
``shutdown.drain_timeout`` to finish; stores and logs flush; exit 0.
SIGHUP: reload the policy file (a bad file changes nothing).

With ``workers: 1`` everything runs in this one process. With ``workers: N > 1`` this
process becomes a supervisor (see :mod:`gateway.frontends.native_workers`): N worker
processes each run :func:`serve` with their own event loop, runtime and front-end on
the same port (``SO_REUSEPORT``), and the supervisor serves the admin port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, Protocol

import uvicorn

from gateway import build
from gateway.admin.app import build_admin_app
from gateway.config.loader import LoadedConfig
from gateway.config.models import GatewayConfig, split_host_port
from gateway.frontends.asgi import GatewayApp
from gateway.frontends.uvicorn_limits import limited_protocol
from gateway.launch import take_early_reload
from gateway.runtime import Runtime

log = logging.getLogger("gateway")


class Frontend(Protocol):
    """A proxy listener the server can start and drain."""

    async def start(self) -> None: ...

    async def stop_accepting(self) -> None: ...

    async def drain(self, timeout: float) -> None:
        """Wait for in-flight requests (up to ``timeout``), then close every connection."""
        ...


class WorkerLink(Protocol):
    """A worker's line to its supervisor (see ``native_workers``)."""

    async def open(self, runtime: Runtime, stop: Callable[[], None]) -> None:
        """Start answering the supervisor; call ``stop`` if the supervisor goes away."""
        ...

    def ready(self) -> None: ...

    async def close(self) -> None: ...


class _Uvicorn(uvicorn.Server):
    """A uvicorn server whose signals are ours: the gateway orders its own shutdown."""

    #: ``shutdown.drain_timeout`` as given (uvicorn's own setting is whole seconds).
    drain_timeout = 0.0

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's graceful shutdown, with the exact drain deadline and a quiet cut.

        At the deadline, the requests still running are cancelled (each is closed
        without an answer and logged as ``DRAIN_CUT``) and given a moment to write
        their access lines, rather than cut with uvicorn's error line and a traceback.
        """
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        state = self.server_state
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.drain_timeout):
                # Polled, as uvicorn does: its server state has no event to wait on.
                while (state.connections or state.tasks) and not self.force_exit:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        tasks = list(state.tasks)
        if tasks:
            log.warning("drain deadline: %d request(s) still open are cut", len(tasks))
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=1.0)
        for server in self.servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)


def uvicorn_server(app: object, address: str, config: GatewayConfig, *, proxy: bool) -> _Uvicorn:
    host, port = split_host_port(address)
    limits = config.limits
    server = _Uvicorn(
        uvicorn.Config(
            app,  # type: ignore[arg-type]
            host=host,
            port=port,
            lifespan="off",
            # Said, not detected: uvicorn's detection does not see that a compiled
            # function is a coroutine function, and would take it for ASGI 2.
            interface="asgi3",
            http=limited_protocol(limits) if proxy else "httptools",
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
    server.drain_timeout = config.shutdown.drain_timeout
    return server


def bind_socket(address: str, *, reuse_port: bool) -> socket.socket:
    """A bound TCP socket for ``HOST:PORT``; with ``reuse_port`` others may bind it too."""
    host, port = split_host_port(address)
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_uvicorn(
    server: _Uvicorn, address: str, sockets: list[socket.socket] | None = None
) -> None:
    """``server.serve()``, with uvicorn's exit on a failed bind turned into an OSError."""
    try:
        await server.serve(sockets=sockets)
    except SystemExit as exc:
        raise OSError(f"could not listen on {address}") from exc


class AsgiFrontend:
    """The proxy under uvicorn (``server: asgi``)."""

    def __init__(
        self, runtime: Runtime, config: GatewayConfig, *, reuse_port: bool = False
    ) -> None:
        self.server = uvicorn_server(GatewayApp(runtime), config.listen, config, proxy=True)
        self._socket = bind_socket(config.listen, reuse_port=True) if reuse_port else None
        self._address = config.listen
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        sockets = [self._socket] if self._socket is not None else None
        self._task = asyncio.create_task(serve_uvicorn(self.server, self._address, sockets))
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
        if self._socket is not None:
            self._socket.close()


def make_frontend(runtime: Runtime, config: GatewayConfig, *, reuse_port: bool = False) -> Frontend:
    if config.server == "native":
        from gateway.frontends.native import NativeFrontend

        return NativeFrontend(runtime, config, reuse_port=reuse_port)
    return AsgiFrontend(runtime, config, reuse_port=reuse_port)


class AdminServer:
    """The admin app (Starlette) under uvicorn on its own port."""

    def __init__(self, runtime: Runtime, config: GatewayConfig, app: Any = None) -> None:
        if app is None:
            app = build_admin_app(runtime, os.environ.get("GATEWAY_ADMIN_TOKEN") or None)
        self.server = uvicorn_server(app, config.admin, config, proxy=False)
        self.address = config.admin
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        task = self._task = asyncio.create_task(serve_uvicorn(self.server, self.address))
        while not self.server.started:
            if task.done():
                self._task = None
                task.result()
                raise OSError(f"the admin listener could not start on {self.address}")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task


class Signals:
    """SIGTERM/SIGINT call ``stop``; SIGHUP runs ``reload``, on the running loop.

    Install them before any socket listens: a signal that comes as soon as a port
    answers must find them. A SIGHUP before :meth:`ready` is kept and applied then (one
    reload, however many came); SIGTERM/SIGINT call ``stop`` at once, which the caller
    waits on only once it is up.
    """

    _STOP = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, stop: Callable[[], None], reload: Callable[[], Awaitable[object]]) -> None:
        self._stop = stop
        self._reload = reload
        self._loop = asyncio.get_running_loop()
        self._reloads: set[asyncio.Future[object]] = set()
        self._ready = False
        self._pending_reload = False
        for sig in self._STOP:
            self._loop.add_signal_handler(sig, stop)
        self._loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        # One that came while the process was still starting (gateway.launch) is kept.
        self._pending_reload = take_early_reload()

    def _on_hup(self) -> None:
        if not self._ready:
            self._pending_reload = True
            return
        task = asyncio.ensure_future(self._reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    def ready(self) -> None:
        """Up: reloads run from now on, and one asked for meanwhile runs now."""
        self._ready = True
        if self._pending_reload:
            self._pending_reload = False
            self._on_hup()

    def undo(self, *, ignore_stop: bool = False) -> None:
        """Remove the handlers; with ``ignore_stop`` SIGTERM/SIGINT are ignored from now
        on (a worker that drained must still exit 0 when a second stop signal comes)."""
        # Removing a handler restores the default action: with ``ignore_stop``, a stop
        # signal coming meanwhile must wait (blocked), then find SIG_IGN.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, self._STOP) if ignore_stop else None
        try:
            for sig in (*self._STOP, signal.SIGHUP):
                self._loop.remove_signal_handler(sig)
            if ignore_stop:
                for sig in self._STOP:
                    signal.signal(sig, signal.SIG_IGN)
        finally:
            if blocked is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def on_signals(
    stop: Callable[[], None], reload: Callable[[], Awaitable[object]]
) -> Callable[[], None]:
    """SIGTERM/SIGINT call ``stop``; SIGHUP runs ``reload``. Returns an undo function."""
    signals = Signals(stop, reload)
    signals.ready()
    return signals.undo


async def serve(
    loaded: LoadedConfig, link: WorkerLink | None = None, runtime_type: type[Runtime] = Runtime
) -> int:
    """Serve until SIGTERM. A worker (``link`` set) shares the port and has no admin."""
    config = loaded.config
    stop = asyncio.Event()
    runtime: Runtime | None = None

    async def reload() -> object:
        return None if runtime is None else await runtime.reload()

    # Before any port answers: a signal then must neither kill nor be lost.
    signals = Signals(stop.set, reload)
    try:
        runtime = runtime_type(loaded)
        await runtime.start()
        frontend = make_frontend(runtime, config, reuse_port=link is not None)
        admin = AdminServer(runtime, config) if link is None else None
        try:
            await frontend.start()
            try:
                if admin is not None:
                    await admin.start()
                if link is not None:
                    await link.open(runtime, stop.set)
            except BaseException:
                await frontend.stop_accepting()
                await frontend.drain(0.0)
                if admin is not None:
                    await admin.stop()
                raise
        except BaseException:
            await runtime.close()
            raise
    except BaseException:
        signals.undo()
        raise
    signals.ready()
    if link is None:
        log.info("gateway listening on %s (%s, %s), admin on %s", config.listen,
                 config.server, build.describe(), config.admin)  # fmt: skip
    else:
        link.ready()
    await stop.wait()

    runtime.draining = True
    shutdown = config.shutdown
    log.info("draining: ready=false, serving %.1fs more before closing the listener",
             shutdown.pre_stop_delay)  # fmt: skip
    await asyncio.sleep(shutdown.pre_stop_delay)
    await frontend.stop_accepting()
    await frontend.drain(shutdown.drain_timeout)
    if admin is not None:
        await admin.stop()
    if link is not None:
        await link.close()
    signals.undo(ignore_stop=link is not None)
    await runtime.close()
    log.info("stopped")
    return 0


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(main)
    return int(uvloop.run(main))


def run(loaded: LoadedConfig) -> int:
    if loaded.config.workers > 1:
        from gateway.frontends.native_workers import supervise

        return supervise(loaded)
    return run_loop(serve(loaded))
