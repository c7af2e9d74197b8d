"""A worker's end of ``workers: N``: config from the supervisor, readiness, scrapes.

See :mod:`gateway.frontends.native_workers` for the design."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config.loader import LoadedConfig
from gateway.config.models import split_host_port
from gateway.errors import ConfigError
from gateway.frontends.native_workers import config_from_text
from gateway.frontends.workers_admin import _admin_app, _problem, call_asgi
from gateway.frontends.workers_protocol import (
    _ADMIN,
    _CONFIG,
    _FRAME,
    _METRICS,
    _READY,
    AdminCall,
    _pack,
    _unpack,
)
from gateway.runtime import Runtime
from gateway.server import run_loop, serve

log = logging.getLogger("gateway")


class SupervisorLink:
    """The worker's end of the socketpair: readiness out; metrics and admin calls on
    request (an admin call runs through this worker's own admin app, on its Runtime)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self._app: Any = None

    async def open(self, runtime: Runtime, stop: Callable[[], None]) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self._sock)
        self._task = asyncio.create_task(self._serve(reader, self._writer, runtime, stop))

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        runtime: Runtime,
        stop: Callable[[], None],
    ) -> None:
        try:
            while True:
                kind, seq, size = _FRAME.unpack(await reader.readexactly(_FRAME.size))
                payload = await reader.readexactly(size) if size else b""
                if kind == _METRICS:
                    body = runtime.metrics.render()
                    writer.write(_FRAME.pack(_METRICS, seq, len(body)) + body)
                    await writer.drain()
                elif kind == _ADMIN:  # may wait on stores: scrapes do not wait for it
                    task = asyncio.create_task(self._admin(writer, runtime, seq, payload))
                    self._calls.add(task)
                    task.add_done_callback(self._calls.discard)
                elif kind == _CONFIG and isinstance(runtime, WorkerRuntime):
                    task = asyncio.create_task(runtime.apply(payload.decode()))
                    self._calls.add(task)
                    task.add_done_callback(self._calls.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.warning("the supervisor went away: this worker drains and exits")
            stop()

    async def _admin(
        self, writer: asyncio.StreamWriter, runtime: Runtime, seq: int, payload: bytes
    ) -> None:
        head, body = _unpack(payload)
        request = AdminCall(head["method"], head["path"], head["query"],
                            [(k, v) for k, v in head["headers"]], body)  # fmt: skip
        if self._app is None:
            self._app = _admin_app(runtime)
        try:
            answer = await call_asgi(self._app, request)
        except Exception:
            log.exception("admin call %s %s failed", request.method, request.path)
            answer = _problem(500, "internal", "Internal Server Error", "the worker failed")
        reply = _pack({"status": answer.status, "headers": answer.headers}, answer.body)
        with contextlib.suppress(ConnectionError):
            writer.write(_FRAME.pack(_ADMIN, seq, len(reply)) + reply)

    def ready(self) -> None:
        if self._writer is not None:
            self._writer.write(_FRAME.pack(_READY, 0, 0))

    async def close(self) -> None:
        for call in list(self._calls):
            call.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()


def _receive_config(sock: socket.socket) -> str:
    """The first frame from the supervisor: the config text to run (blocking)."""

    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("the supervisor went away")
            data += chunk
        return data

    kind, _, size = _FRAME.unpack(exactly(_FRAME.size))
    if kind != _CONFIG:
        raise ConnectionError(f"expected the config from the supervisor, got {kind!r}")
    return exactly(size).decode()


def _worker_config(text: str, path: str | Path, listen: str) -> LoadedConfig:
    """``text`` as this worker runs it: on the port the supervisor picked if it says ``:0``."""
    loaded = config_from_text(text, path)
    if split_host_port(loaded.config.listen)[1] == 0:  # every worker takes the port picked
        config = loaded.config.model_copy(update={"listen": listen})
        loaded = dataclasses.replace(loaded, config=config)
    return loaded


def worker_main(argv: list[str]) -> int:
    """Entry point of a worker process: ``CONFIG INDEX FD LISTEN``.

    The config comes from the supervisor (the text it runs), never from the file: the
    path only names it and anchors relative references.
    """
    from gateway.observability.logs import setup_logging

    path, _index, fd, listen = argv
    # Until serve() installs its handlers (before it listens), a signal to the whole
    # process group must not kill this worker: the supervisor relays reloads as frames,
    # and a stop as SIGTERM once this worker has said it is ready.
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    sock = socket.socket(fileno=int(fd))
    try:
        sock.setblocking(True)
        loaded = _worker_config(_receive_config(sock), path, listen)
    except (ConfigError, ConnectionError, UnicodeDecodeError) as exc:
        sock.close()
        print(exc, file=sys.stderr)
        return 1
    logging_config = loaded.config.logging
    setup_logging(logging_config.level, logging_config.format)
    WorkerRuntime.listen = listen
    return run_loop(serve(loaded, SupervisorLink(sock), WorkerRuntime))


class WorkerRuntime(Runtime):
    """A worker's Runtime: it never reads the file. The supervisor watches it and sends
    the text to run (:meth:`apply`); a reload applies the last text received."""

    #: The address the supervisor picked (for a config that says ``:0``).
    listen = ""

    def __init__(self, loaded: LoadedConfig, **kwargs: Any) -> None:
        super().__init__(loaded, **kwargs)
        self._loaded = loaded
        self._text: str | None = None

    def _load(self) -> LoadedConfig:
        if self._text is not None:
            text, self._text = self._text, None
            self._loaded = _worker_config(text, self.path, self.listen)
        return self._loaded

    async def apply(self, text: str) -> None:
        """Run ``text`` (validated by the supervisor)."""
        self._text = text
        await self.reload()

    async def _watch(self) -> None:
        return None
