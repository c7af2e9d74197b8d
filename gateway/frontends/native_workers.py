"""``workers: N``: N worker processes share the proxy port; a supervisor runs the admin.

Design
------
* ``gateway run`` with ``workers > 1`` becomes a **supervisor**. It binds the listen
  address once with ``SO_REUSEPORT`` (failing early if the port is taken, and pinning
  the real port when ``listen`` says ``:0``), then starts N workers as fresh
  interpreters (``sys.executable``; no fork of a process that holds an event loop, so
  no inherited loop, locks or sockets). Each worker gets the config text the
  supervisor runs (a ``C`` frame on its socketpair, parsed with the file's path for
  relative references) and runs :func:`gateway.server.serve`: its own uvloop, Runtime
  (stores, pools, metrics) and front-end, listening with ``SO_REUSEPORT`` so the kernel
  spreads connections over the workers. Nothing on the request path crosses a process boundary.
* The **admin port belongs to the supervisor**, so there is one ``/healthz``,
  ``/readyz`` and ``/metrics`` however many workers run. The supervisor keeps a
  Runtime of its own (never serving traffic) for ``/admin/config``, ``/admin/routes``
  and reload; it builds snapshots but never starts their policies (no cache warming,
  no shared-store subscriptions: that is the workers' work). ``/metrics`` asks every
  worker for its exposition over a private socketpair and merges them, each sample
  labelled ``worker="<index>"`` (a worker that does not answer within 2 s is left out
  of that scrape). The supervisor adds two series of its own, labelled
  ``worker="supervisor"``: ``gateway_config_reloads_total{result="failure"}`` (a file it
  refuses never reaches a worker, so this is the only place a refused reload is
  counted) and ``gateway_config_info``. Its ``result="success"`` sample is left out:
  each worker counts the reload it applied, and the supervisor's would count it once
  more. ``sum without (worker) (...)`` gives the pod's totals (for
  ``gateway_config_info``, filter ``worker!="supervisor"`` to see the workers' configs).
* **Admin calls that act on, or report, the serving Runtime** (listed in
  :data:`FORWARDED`: ``POST /admin/cache/purge`` and ``GET /admin/cache``) are not run
  by the supervisor: with a valid bearer token it sends the HTTP request over each
  socketpair (an ``A`` frame), each worker runs it through its own admin app on its live
  Runtime, and the supervisor combines the answers (for a purge: ``removed_here``
  summed; for the status: each policy's in-process tier summed; per-worker details
  under ``workers``; a worker's error answer is returned as is; a worker that does not
  answer within 5 s turns the answer into a 504 that still reports the others). With shared
  cache stores each worker also publishes its purge, so the ban log gets one entry per
  worker (harmless: replicas apply each once).
* **Reload**: the supervisor alone reads the file. On a change, SIGHUP or
  ``POST /admin/reload`` it reloads its own Runtime first; only if that succeeds does it
  send the text it validated to the workers (a ``C`` frame), so a bad file never reaches
  them. A worker never reads the file: one that starts (or restarts after a crash) gets
  the text the supervisor is running, whatever the file on disk says by then.
* **Signals**: SIGTERM/SIGINT turn ``/readyz`` to 503 and are forwarded to the
  workers, which drain as a single process would (pre-stop delay, drain deadline).
  The supervisor exits 0 when every worker exited 0, else 1; a worker still running
  well past its drain deadline is killed. A worker ignores stop signals once it has
  drained, so a signal to the whole process group (Ctrl-C, systemd's control-group
  SIGTERM), which it may get twice, still ends in a clean exit. Handlers are in place
  before any port listens; a SIGHUP that comes before the gateway is up is applied then.
* **Socketpair frames**: ``kind, seq, length`` then the payload. ``C`` (config text to
  run: the first frame a worker reads, then one per reload), ``R`` (worker ready),
  ``M`` (metrics: empty request, exposition reply), ``A`` (admin call: a JSON head and
  the body, both ways); a reply carries its request's ``seq``.
* **Crashes**: a worker that dies while the gateway is not stopping is restarted, with
  a back-off (1 s doubling to 30 s) while it keeps dying young. A worker whose
  supervisor disappears (its socketpair reads EOF) drains and exits by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import build
from gateway.config.loader import LoadedConfig, load_text
from gateway.config.models import split_host_port
from gateway.config.snapshot import Snapshot
from gateway.errors import ConfigError, ConfigIssue
from gateway.frontends.workers_admin import ClusterMetrics, _supervisor_admin
from gateway.frontends.workers_protocol import (
    _ADMIN,
    _CONFIG,
    _FRAME,
    _METRICS,
    _READY,
    ADMIN_TIMEOUT,
    AdminAnswer,
    AdminCall,
    _pack,
    _unpack,
)
from gateway.runtime import Runtime
from gateway.server import AdminServer, Signals, bind_socket, run_loop

log = logging.getLogger("gateway")

_BOOT = (
    "import sys; from gateway.frontends.workers_child import worker_main; "
    "sys.exit(worker_main(sys.argv[1:]))"
)
#: How long workers get to report ready, to answer a metrics scrape, an admin call.
START_TIMEOUT = 60.0
SCRAPE_TIMEOUT = 2.0
#: Extra time past pre-stop delay + drain deadline before a worker is killed.
KILL_GRACE = 10.0
#: Exit codes of a worker that stopped as asked: its own 0, or the stop signal itself.
STOPPED = frozenset({0, -signal.SIGTERM, -signal.SIGINT})


def read_config(path: str | Path) -> str:
    """The text of a policy file (a ConfigError if it cannot be read)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(str(path), 1, 1, f"cannot read the file: {exc}")]) from exc


def config_from_text(text: str, path: str | Path) -> LoadedConfig:
    """``text`` parsed as if read from ``path`` (which relative references start from)."""
    config, positions = load_text(text, str(path))
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return LoadedConfig(config, positions, Path(path), digest)


def supervise(loaded: LoadedConfig) -> int:
    return run_loop(Supervisor(loaded).run())


class Supervisor:
    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.workers: list[WorkerProcess] = []
        self.stopping = False

    async def run(self) -> int:
        stop = asyncio.Event()
        runtime: SupervisorRuntime | None = None

        async def reload() -> object:
            return None if runtime is None else await runtime.reload()

        # Before any port answers (the workers' and the admin's): see Signals.
        signals = Signals(stop.set, reload)
        try:
            # The text the workers run: the file as loaded, read again (if it changed
            # since, what it says now, provided it is valid).
            text = read_config(self.loaded.path)
            if hashlib.sha256(text.encode()).hexdigest()[:16] != self.loaded.digest:
                self.loaded = config_from_text(text, self.loaded.path)
                self.config = self.loaded.config
        except ConfigError as exc:
            signals.undo()
            log.error("%s", exc)
            return 1
        config = self.config
        try:
            reserved = bind_socket(config.listen, reuse_port=True)
            try:
                host, _ = split_host_port(config.listen)
                port = reserved.getsockname()[1]
                listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                metrics = ClusterMetrics(lambda: self.workers)
                runtime = SupervisorRuntime(
                    self.loaded, text, self._reload_workers, metrics=metrics
                )
                return await self._run(listen, runtime, metrics, signals, stop)
            finally:
                reserved.close()
        finally:
            signals.undo()

    async def _run(
        self,
        listen: str,
        runtime: SupervisorRuntime,
        metrics: ClusterMetrics,
        signals: Signals,
        stop: asyncio.Event,
    ) -> int:
        config = self.config
        self.workers = [WorkerProcess(i, str(self.loaded.path), listen, lambda: runtime.text)
                        for i in range(config.workers)]  # fmt: skip
        try:
            await asyncio.gather(*(w.start() for w in self.workers))
        except Exception as exc:
            await self._stop_workers(KILL_GRACE)
            await runtime.close()
            if stop.is_set():  # asked to stop meanwhile: nothing was serving yet
                log.info("stopped while starting (%s)", exc)
                return 0
            log.error("a worker failed to start: %s", exc)
            return 1
        await runtime.start()
        admin = AdminServer(runtime, config, app=_supervisor_admin(runtime, metrics, self))
        try:
            await admin.start()
        except BaseException as exc:
            log.error("%s", exc)
            await self._stop_workers(KILL_GRACE)
            await runtime.close()
            if isinstance(exc, Exception):
                return 1
            raise
        log.info("gateway listening on %s (%s, %d workers, %s), admin on %s", listen,
                 config.server, config.workers, build.describe(), config.admin)  # fmt: skip
        signals.ready()
        watchers = [asyncio.create_task(self._watch(w)) for w in self.workers]
        await stop.wait()

        self.stopping = True
        runtime.draining = True
        shutdown = config.shutdown
        codes = await self._stop_workers(shutdown.pre_stop_delay + shutdown.drain_timeout)
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await admin.stop()
        await runtime.close()
        # A worker ends cleanly with 0. A stop signal can also end it once it has
        # drained: removing the loop's handler restores the default action for a
        # moment, and a signal to the whole group (Ctrl-C, systemd) may land on a
        # thread that does not block it. That is the stop asked for, not a failure.
        failed = [i for i, code in enumerate(codes) if code not in STOPPED]
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
            stopping = self.stopping  # a local, so the test below reads the flag afresh
            if stopping:
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

    def _reload_workers(self, text: str) -> None:
        for worker in self.workers:
            worker.send_config(text)

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

    def __init__(
        self, index: int, config_path: str, listen: str, config_text: Callable[[], str]
    ) -> None:
        self.index = index
        self.config_path = config_path
        self.listen = listen
        self.config_text = config_text  # the text the supervisor runs, at any moment
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
        self.send_config(self.config_text())  # the first frame the worker reads
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
                elif kind in (_METRICS, _ADMIN):
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

    async def call(self, kind: bytes, payload: bytes, timeout: float) -> bytes | None:
        """Send a request frame; the worker's reply, or None if it did not answer in time."""
        if self._writer is None or self._writer.is_closing():
            return None
        self._seq += 1
        seq = self._seq
        reply = self._replies[seq] = asyncio.get_running_loop().create_future()
        try:
            self._writer.write(_FRAME.pack(kind, seq, len(payload)) + payload)
            return await asyncio.wait_for(reply, timeout)
        except (TimeoutError, ConnectionError, asyncio.CancelledError):
            return None
        finally:
            self._replies.pop(seq, None)

    async def metrics(self) -> bytes | None:
        """This worker's Prometheus exposition, or None if it did not answer in time."""
        return await self.call(_METRICS, b"", SCRAPE_TIMEOUT)

    async def admin(self, request: AdminCall) -> AdminAnswer | None:
        """Run an admin request on this worker's live Runtime; None if no answer in time."""
        sent = {"method": request.method, "path": request.path, "query": request.query,
                "headers": request.headers}  # fmt: skip
        reply = await self.call(_ADMIN, _pack(sent, request.body), ADMIN_TIMEOUT)
        if reply is None:
            return None
        head, body = _unpack(reply)
        return AdminAnswer(int(head["status"]), [(k, v) for k, v in head["headers"]], body)

    def send_config(self, text: str) -> None:
        """Have the worker run ``text`` (validated by the supervisor)."""
        if self._writer is None or self._writer.is_closing():
            return  # not started yet, or gone: it gets the text as it (re)starts
        payload = text.encode()
        with contextlib.suppress(ConnectionError):
            self._writer.write(_FRAME.pack(_CONFIG, 0, len(payload)) + payload)

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
    """The supervisor's Runtime: serves no traffic; a good reload is passed to workers.

    It builds snapshots (``/admin/config``, ``/admin/routes``, validating a reload) but
    never starts their policies: background work (cache warming, shared-store
    subscriptions) is the workers' job.
    """

    def __init__(
        self, loaded: LoadedConfig, text: str, on_reload: Callable[[str], None], **kwargs: Any
    ) -> None:
        super().__init__(loaded, **kwargs)
        self.text = text  # the running config's text: what workers get
        self._read = text
        self._on_reload = on_reload

    def _load(self) -> LoadedConfig:
        text = read_config(self.path)
        loaded = config_from_text(text, self.path)
        self._read = text
        return loaded

    async def _start_policies(self, snapshot: Snapshot) -> None:
        return None

    async def _stop_policies(self, snapshot: Snapshot) -> None:
        return None

    async def reload(self) -> bool:
        ok = await super().reload()
        if ok:  # nothing ran between the reload's end and here: _read is what it applied
            self.text = self._read
            self._on_reload(self.text)
        return ok
