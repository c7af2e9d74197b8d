"""``workers: N``: N worker processes share the proxy port; a supervisor runs the admin.

Design
------
* ``gateway run`` with ``workers > 1`` becomes a **supervisor**. It binds the listen
  address once with ``SO_REUSEPORT`` (failing early if the port is taken, and pinning
  the real port when ``listen`` says ``:0``), then starts N workers as fresh
  interpreters (``sys.executable``; no fork of a process that holds an event loop, so
  no inherited loop, locks or sockets). Each worker loads the file itself and runs
  :func:`gateway.server.serve`: its own uvloop, Runtime (stores, pools, metrics) and
  front-end, listening with ``SO_REUSEPORT`` so the kernel spreads connections over
  the workers. Nothing on the request path crosses a process boundary.
* The **admin port belongs to the supervisor**, so there is one ``/healthz``,
  ``/readyz`` and ``/metrics`` however many workers run. The supervisor keeps a
  Runtime of its own (never serving traffic) for ``/admin/config``, ``/admin/routes``
  and reload. ``/metrics`` asks every worker for its exposition over a private
  socketpair and merges them, each sample labelled ``worker="<index>"``
  (``sum without (worker) (...)`` gives the pod's totals; a worker that does not answer
  within 2 s is left out of that scrape).
* **Reload**: the supervisor alone watches the file. On a change, SIGHUP or
  ``POST /admin/reload`` it reloads its own Runtime first; only if that succeeds does it
  send SIGHUP to the workers, so a bad file never reaches them.
* **Signals**: SIGTERM/SIGINT turn ``/readyz`` to 503 and are forwarded to the
  workers, which drain as a single process would (pre-stop delay, drain deadline).
  The supervisor exits 0 when every worker exited 0, else 1; a worker still running
  well past its drain deadline is killed.
* **Crashes**: a worker that dies while the gateway is not stopping is restarted, with
  a back-off (1 s doubling to 30 s) while it keeps dying young. A worker whose
  supervisor disappears (its socketpair reads EOF) drains and exits by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from gateway.config.loader import LoadedConfig, load_file
from gateway.config.models import split_host_port
from gateway.observability.metrics import Metrics
from gateway.runtime import Runtime
from gateway.server import AdminServer, bind_socket, on_signals, run_loop, serve

log = logging.getLogger("gateway")

_FRAME = struct.Struct("!cII")  # kind, sequence number, payload length
_READY, _METRICS = b"R", b"M"
_BOOT = (
    "import sys; from gateway.frontends.native_workers import worker_main; "
    "sys.exit(worker_main(sys.argv[1:]))"
)
#: How long workers get to report ready, and to answer a metrics scrape.
START_TIMEOUT = 60.0
SCRAPE_TIMEOUT = 2.0
#: Extra time past pre-stop delay + drain deadline before a worker is killed.
KILL_GRACE = 10.0


def supervise(loaded: LoadedConfig) -> int:
    return run_loop(Supervisor(loaded).run())


class Supervisor:
    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.workers: list[WorkerProcess] = []
        self.stopping = False

    async def run(self) -> int:
        config = self.config
        reserved = bind_socket(config.listen, reuse_port=True)
        try:
            host, _ = split_host_port(config.listen)
            port = reserved.getsockname()[1]
            listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            return await self._run(listen)
        finally:
            reserved.close()

    async def _run(self, listen: str) -> int:
        config = self.config
        metrics = ClusterMetrics(lambda: self.workers)
        runtime = SupervisorRuntime(self.loaded, self._reload_workers, metrics=metrics)
        self.workers = [WorkerProcess(i, str(self.loaded.path), listen)
                        for i in range(config.workers)]  # fmt: skip
        try:
            await asyncio.gather(*(w.start() for w in self.workers))
        except Exception as exc:
            log.error("a worker failed to start: %s", exc)
            await self._stop_workers(KILL_GRACE)
            await runtime.close()
            return 1
        await runtime.start()
        admin = AdminServer(runtime, config, app=_refreshing(runtime, metrics))
        try:
            await admin.start()
        except BaseException as exc:
            log.error("%s", exc)
            await self._stop_workers(KILL_GRACE)
            await runtime.close()
            if isinstance(exc, Exception):
                return 1
            raise
        log.info("gateway listening on %s (%s, %d workers), admin on %s",
                 listen, config.server, config.workers, config.admin)  # fmt: skip
        stop = asyncio.Event()
        undo = on_signals(stop.set, runtime.reload)
        watchers = [asyncio.create_task(self._watch(w)) for w in self.workers]
        await stop.wait()

        self.stopping = True
        runtime.draining = True
        shutdown = config.shutdown
        codes = await self._stop_workers(shutdown.pre_stop_delay + shutdown.drain_timeout)
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        undo()
        await admin.stop()
        await runtime.close()
        failed = [i for i, code in enumerate(codes) if code != 0]
        if failed:
            log.error("workers %s exited with errors: %s", failed, codes)
            return 1
        log.info("stopped")
        return 0

    async def _watch(self, worker: WorkerProcess) -> None:
        """Restart ``worker`` whenever it dies while the gateway is not stopping."""
        backoff = 1.0
        while True:
            code = await worker.wait()
            if self.stopping:
                return
            young = time.monotonic() - worker.started_at < 5.0
            backoff = min(backoff * 2, 30.0) if young else 1.0
            log.error("worker %d exited with %s; restarting in %.0fs", worker.index, code, backoff)
            await asyncio.sleep(backoff)
            if self.stopping:
                return
            try:
                await worker.start()
            except Exception as exc:
                log.error("worker %d failed to restart: %s", worker.index, exc)

    def _reload_workers(self) -> None:
        for worker in self.workers:
            worker.signal(signal.SIGHUP)

    async def _stop_workers(self, expected: float) -> list[int | None]:
        for worker in self.workers:
            worker.signal(signal.SIGTERM)
        waits = [asyncio.ensure_future(w.wait()) for w in self.workers]
        _, late = await asyncio.wait(waits, timeout=expected + KILL_GRACE)
        for worker in self.workers:
            if worker.running:
                log.error("worker %d did not stop in time: killed", worker.index)
                worker.signal(signal.SIGKILL)
        if late:
            await asyncio.wait(late)
        codes = [w.result() for w in waits]
        for worker in self.workers:
            await worker.close()
        return codes


class WorkerProcess:
    """One worker as the supervisor sees it: the process and its socketpair."""

    def __init__(self, index: int, config_path: str, listen: str) -> None:
        self.index = index
        self.config_path = config_path
        self.listen = listen
        self.started_at = 0.0
        self.proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._replies: dict[int, asyncio.Future[bytes]] = {}
        self._seq = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        await self.close()
        mine, theirs = socket.socketpair()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _BOOT, self.config_path, str(self.index),
                str(theirs.fileno()), self.listen, pass_fds=(theirs.fileno(),),
            )  # fmt: skip
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self.started_at = time.monotonic()
        reader, self._writer = await asyncio.open_unix_connection(sock=mine)
        self._ready = asyncio.get_running_loop().create_future()
        self._reader_task = asyncio.create_task(self._read(reader, self._ready))
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT)
        except BaseException:
            self.signal(signal.SIGKILL)
            await self.wait()
            raise

    async def _read(self, reader: asyncio.StreamReader, ready: asyncio.Future[None]) -> None:
        try:
            while True:
                kind, seq, size = _FRAME.unpack(await reader.readexactly(_FRAME.size))
                payload = await reader.readexactly(size) if size else b""
                if kind == _READY and not ready.done():
                    ready.set_result(None)
                elif kind == _METRICS:
                    reply = self._replies.pop(seq, None)
                    if reply is not None and not reply.done():
                        reply.set_result(payload)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if not ready.done():
                ready.set_exception(RuntimeError(f"worker {self.index} exited while starting"))
            for reply in self._replies.values():
                reply.cancel()
            self._replies.clear()

    async def metrics(self) -> bytes | None:
        """This worker's Prometheus exposition, or None if it did not answer in time."""
        if self._writer is None or self._writer.is_closing():
            return None
        self._seq += 1
        seq = self._seq
        reply = self._replies[seq] = asyncio.get_running_loop().create_future()
        try:
            self._writer.write(_FRAME.pack(_METRICS, seq, 0))
            return await asyncio.wait_for(reply, SCRAPE_TIMEOUT)
        except (TimeoutError, ConnectionError, asyncio.CancelledError):
            return None
        finally:
            self._replies.pop(seq, None)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def wait(self) -> int | None:
        if self.proc is None:
            return None
        return await self.proc.wait()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
            self._writer = None
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
            self._reader_task = None


class SupervisorRuntime(Runtime):
    """The supervisor's Runtime: serves no traffic; a good reload is passed to workers."""

    def __init__(self, loaded: LoadedConfig, on_reload: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(loaded, **kwargs)
        self._on_reload = on_reload

    async def reload(self) -> bool:
        ok = await super().reload()
        if ok:
            self._on_reload()
        return ok


class ClusterMetrics(Metrics):
    """The workers' metrics, merged; refreshed right before each ``/metrics`` scrape."""

    def __init__(self, workers: Callable[[], list[WorkerProcess]]) -> None:
        super().__init__()
        self._workers = workers
        self._text = b""

    async def refresh(self) -> None:
        workers = list(self._workers())
        texts = await asyncio.gather(*(w.metrics() for w in workers))
        self._text = merge_expositions(
            (str(w.index), text) for w, text in zip(workers, texts, strict=True) if text
        )

    def render(self) -> bytes:
        return self._text


def merge_expositions(texts: Iterable[tuple[str, bytes]]) -> bytes:
    """Prometheus text expositions as one, each sample labelled ``worker="<name>"``."""
    headers: dict[bytes, list[bytes]] = {}
    samples: dict[bytes, list[bytes]] = {}
    for worker, text in texts:
        label = b'worker="' + worker.encode() + b'"'
        family = b""
        for line in text.splitlines():
            if line.startswith((b"# HELP ", b"# TYPE ")):
                family = line.split(b" ", 3)[2]
                lines = headers.setdefault(family, [])
                samples.setdefault(family, [])
                if line not in lines:
                    lines.append(line)
            elif line and not line.startswith(b"#"):
                brace, space = line.find(b"{"), line.find(b" ")
                if 0 <= brace < space:
                    line = line[: brace + 1] + label + b"," + line[brace + 1 :]
                else:
                    line = line[:space] + b"{" + label + b"}" + line[space:]
                samples.setdefault(family, []).append(line)
    out: list[bytes] = []
    for family, lines in headers.items():
        out.extend(lines)
        out.extend(samples[family])
    return b"\n".join(out) + b"\n" if out else b""


def _refreshing(runtime: Runtime, metrics: ClusterMetrics) -> Any:
    """The admin app, with the workers' metrics gathered before ``/metrics`` renders."""
    import os

    from gateway.admin.app import build_admin_app

    app = build_admin_app(runtime, os.environ.get("GATEWAY_ADMIN_TOKEN") or None)

    async def admin(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await metrics.refresh()
        await app(scope, receive, send)

    return admin


class SupervisorLink:
    """The worker's end of the socketpair: readiness out, metrics on request."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=fd)
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

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
                if size:
                    await reader.readexactly(size)
                if kind == _METRICS:
                    body = runtime.metrics.render()
                    writer.write(_FRAME.pack(_METRICS, seq, len(body)) + body)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            log.warning("the supervisor went away: this worker drains and exits")
            stop()

    def ready(self) -> None:
        if self._writer is not None:
            self._writer.write(_FRAME.pack(_READY, 0, 0))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()


def worker_main(argv: list[str]) -> int:
    """Entry point of a worker process: ``CONFIG INDEX FD LISTEN``."""
    from gateway.errors import ConfigError
    from gateway.observability.logs import setup_logging

    path, _index, fd, listen = argv
    try:
        loaded = load_file(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if split_host_port(loaded.config.listen)[1] == 0:  # every worker takes the port picked
        config = loaded.config.model_copy(update={"listen": listen})
        loaded = dataclasses.replace(loaded, config=config)
    logging_config = loaded.config.logging
    setup_logging(logging_config.level, logging_config.format)
    return run_loop(serve(loaded, SupervisorLink(int(fd)), WorkerRuntime))


class WorkerRuntime(Runtime):
    """A worker's Runtime: the supervisor watches the file and relays reloads as SIGHUP."""

    async def _watch(self) -> None:
        return None
