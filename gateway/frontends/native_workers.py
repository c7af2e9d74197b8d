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
* **Admin calls that act on the serving Runtime** (listed in :data:`FORWARDED`; today
  only ``POST /admin/cache/purge``) are not run by the supervisor: with a valid bearer
  token it sends the HTTP request over each socketpair (an ``A`` frame), each worker
  runs it through its own admin app on its live Runtime, and the supervisor combines
  the answers (for a purge: ``removed_here`` summed, per-worker details under
  ``workers``; a worker's error answer is returned as is; a worker that does not answer
  within 5 s turns the answer into a 504 that still reports the others). With shared
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
import dataclasses
import hashlib
import hmac
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from gateway.config.loader import LoadedConfig, load_text
from gateway.config.models import split_host_port
from gateway.config.snapshot import Snapshot
from gateway.errors import ConfigError, ConfigIssue, problem_body
from gateway.observability.metrics import Metrics
from gateway.runtime import Runtime
from gateway.server import AdminServer, Signals, bind_socket, run_loop, serve

log = logging.getLogger("gateway")

_FRAME = struct.Struct("!cII")  # kind, sequence number, payload length
_READY, _METRICS, _ADMIN, _CONFIG = b"R", b"M", b"A", b"C"
_HEAD = struct.Struct("!I")  # an admin frame's payload: JSON head length, head, body
_BOOT = (
    "import sys; from gateway.frontends.native_workers import worker_main; "
    "sys.exit(worker_main(sys.argv[1:]))"
)
#: How long workers get to report ready, to answer a metrics scrape, an admin call.
START_TIMEOUT = 60.0
SCRAPE_TIMEOUT = 2.0
ADMIN_TIMEOUT = 5.0
#: Extra time past pre-stop delay + drain deadline before a worker is killed.
KILL_GRACE = 10.0


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
        log.info("gateway listening on %s (%s, %d workers), admin on %s",
                 listen, config.server, config.workers, config.admin)  # fmt: skip
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


class ClusterMetrics(Metrics):
    """The workers' metrics, merged; refreshed right before each ``/metrics`` scrape."""

    def __init__(self, workers: Callable[[], list[WorkerProcess]]) -> None:
        super().__init__()
        self._workers = workers
        self._text = b""

    async def refresh(self) -> None:
        workers = list(self._workers())
        texts = await asyncio.gather(*(w.metrics() for w in workers))
        merged = [(str(w.index), text) for w, text in zip(workers, texts, strict=True) if text]
        merged.append(("supervisor", self.supervisor_series()))
        self._text = merge_expositions(merged)

    def supervisor_series(self) -> bytes:
        """The supervisor's own series the workers cannot know: refused reloads, config."""
        keep: list[bytes] = []
        family = b""
        for line in super().render().splitlines():
            if line.startswith((b"# HELP ", b"# TYPE ")):
                family = line.split(b" ", 3)[2]
                if family in SUPERVISOR_SERIES:
                    keep.append(line)
            elif family in SUPERVISOR_SERIES and SUPERVISOR_SERIES[family] in line:
                keep.append(line)
        return b"\n".join(keep) + b"\n"

    def render(self) -> bytes:
        return self._text


#: The supervisor's series in the merged ``/metrics`` (``worker="supervisor"``): each
#: family, and what its sample lines must contain.
SUPERVISOR_SERIES = {
    b"gateway_config_reloads_total": b'result="failure"',
    b"gateway_config_info": b"",
}


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


# Admin calls forwarded to the workers ----------------------------------------------------


@dataclasses.dataclass
class AdminCall:
    """An admin HTTP request, as the supervisor forwards it to a worker."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclasses.dataclass
class AdminAnswer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


#: ``answers[i]`` is worker ``indices[i]``'s answer, None if it did not answer in time.
Combiner = Callable[[list[int], list[AdminAnswer | None]], AdminAnswer]


def _pack(head: dict[str, Any], body: bytes) -> bytes:
    encoded = orjson.dumps(head)
    return _HEAD.pack(len(encoded)) + encoded + body


def _unpack(payload: bytes) -> tuple[dict[str, Any], bytes]:
    (size,) = _HEAD.unpack_from(payload)
    end = _HEAD.size + size
    head: dict[str, Any] = orjson.loads(payload[_HEAD.size : end])
    return head, payload[end:]


def _problem(status: int, kind: str, title: str, detail: str, **extra: object) -> AdminAnswer:
    body = problem_body(status, kind, title, detail)
    if extra:
        body = orjson.dumps({**orjson.loads(body), **extra})
    return AdminAnswer(status, [("content-type", "application/problem+json")], body)


def _unanimous_error(indices: list[int], answers: list[AdminAnswer | None]) -> AdminAnswer | None:
    """The first error a worker gave (400, 401, 404...: they all run the same config),
    or a 504 naming the workers that did not answer; None when every worker said 2xx."""
    for answer in answers:
        if answer is not None and not 200 <= answer.status < 300:
            return answer
    if all(answer is None for answer in answers):
        return _problem(504, "workers-timeout", "Gateway Timeout", "no worker answered in time")
    return None


def combine_purge(indices: list[int], answers: list[AdminAnswer | None]) -> AdminAnswer:
    """One answer for a cache purge every worker applied: removed entries summed.

    A worker that did not answer in time turns it into a 504 that still reports what the
    others did: the purge may not have reached that worker's memory tier.
    """
    error = _unanimous_error(indices, answers)
    if error is not None:
        return error
    docs = {i: a.json() for i, a in zip(indices, answers, strict=True) if a is not None}
    combined: dict[str, Any] = dict(next(iter(docs.values())))
    combined["removed_here"] = sum(int(doc["removed_here"]) for doc in docs.values())
    combined["replicated"] = all(doc["replicated"] for doc in docs.values())
    combined["workers"] = {str(i): {"id": doc["id"], "removed_here": doc["removed_here"]}
                           for i, doc in docs.items()}  # fmt: skip
    missing = [i for i, a in zip(indices, answers, strict=True) if a is None]
    if missing:
        detail = f"workers {missing} did not answer in {ADMIN_TIMEOUT:g}s: the purge may not "
        detail += "have reached them"
        return _problem(504, "workers-timeout", "Gateway Timeout", detail, **combined)
    return AdminAnswer(200, [("content-type", "application/json")], orjson.dumps(combined))


#: Admin calls that act on the Runtime serving traffic, so on every worker's: what the
#: supervisor's own Runtime would do is not enough. Anything else stays in the supervisor.
FORWARDED: dict[tuple[str, str], Combiner] = {
    ("POST", "/admin/cache/purge"): combine_purge,
}


def _authorized(scope: Any, token: str | None) -> bool:
    """The bearer token is right (else the supervisor's own app answers 401 or 404)."""
    if not token:
        return False
    given = b""
    for name, value in scope["headers"]:
        if name == b"authorization":
            given = value
    return hmac.compare_digest(given, f"Bearer {token}".encode())


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _respond(send: Any, answer: AdminAnswer) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers
               if k.lower() != "content-length"]  # fmt: skip
    headers.append((b"content-length", str(len(answer.body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


async def call_asgi(app: Any, request: AdminCall) -> AdminAnswer:
    """Run ``request`` through an ASGI app in this process (no socket)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": request.method, "scheme": "http", "path": request.path,
        "raw_path": request.path.encode("latin-1"), "root_path": "",
        "query_string": request.query.encode("latin-1"),
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers],
        "client": None, "server": None,
    }  # fmt: skip
    sent = False
    status = 500
    headers: list[tuple[str, str]] = []
    body: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await asyncio.Event().wait()  # never: the request has no more to say
        raise AssertionError  # pragma: no cover

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            headers.extend((k.decode("latin-1"), v.decode("latin-1"))
                           for k, v in message.get("headers", []))  # fmt: skip
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await app(scope, receive, send)
    return AdminAnswer(status, headers, b"".join(body))


def _admin_app(runtime: Runtime) -> Any:
    from gateway.admin.app import build_admin_app

    return build_admin_app(runtime, os.environ.get("GATEWAY_ADMIN_TOKEN") or None)


def _supervisor_admin(runtime: Runtime, metrics: ClusterMetrics, supervisor: Supervisor) -> Any:
    """The admin app, with the workers' metrics gathered before ``/metrics`` renders and
    the calls in :data:`FORWARDED` run by every worker."""
    app = _admin_app(runtime)
    token = os.environ.get("GATEWAY_ADMIN_TOKEN") or None

    async def admin(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await metrics.refresh()
        combine = FORWARDED.get((scope.get("method", ""), scope.get("path", "")))
        if scope["type"] == "http" and combine is not None and _authorized(scope, token):
            request = AdminCall(
                scope["method"], scope["path"], scope["query_string"].decode("latin-1"),
                [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
                await _read_body(receive),
            )  # fmt: skip
            workers = list(supervisor.workers)
            answers = await asyncio.gather(*(w.admin(request) for w in workers))
            await _respond(send, combine([w.index for w in workers], list(answers)))
            return
        await app(scope, receive, send)

    return admin


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
