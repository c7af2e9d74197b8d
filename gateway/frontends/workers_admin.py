"""The supervisor's admin port under ``workers: N``: merged metrics, forwarded calls.

See :mod:`gateway.frontends.native_workers` for the design."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson

from gateway.admin.app import bearer_matches
from gateway.errors import problem_body
from gateway.frontends.workers_protocol import ADMIN_TIMEOUT, AdminAnswer, AdminCall, Combiner
from gateway.observability.metrics import Metrics
from gateway.runtime import Runtime

if TYPE_CHECKING:
    from gateway.frontends.native_workers import Supervisor, WorkerProcess

log = logging.getLogger("gateway")


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


def _combined(
    indices: list[int], answers: list[AdminAnswer | None], combined: dict[str, Any], lost: str
) -> AdminAnswer:
    """``combined`` as the answer: 200, or 504 naming the workers that did not answer
    (``lost`` says what that means) with ``combined`` still in it."""
    missing = [i for i, a in zip(indices, answers, strict=True) if a is None]
    if missing:
        detail = f"workers {missing} did not answer in {ADMIN_TIMEOUT:g}s: {lost}"
        return _problem(504, "workers-timeout", "Gateway Timeout", detail, **combined)
    return AdminAnswer(200, [("content-type", "application/json")], orjson.dumps(combined))


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
    return _combined(indices, answers, combined, "the purge may not have reached them")


def combine_cache_status(indices: list[int], answers: list[AdminAnswer | None]) -> AdminAnswer:
    """One ``GET /admin/cache`` for the workers: each route's cache policy with its
    in-process tier and background tasks summed over the workers that run it, bans as
    the most any worker holds, and each worker's own answer under ``workers``.

    Policies are matched by route (one cache policy per route). While a reload reaches
    the workers one by one their policies may differ: every route any worker has is
    listed, its mode and tiers as the lowest-numbered worker that has it reports them,
    and ``consistent`` is false. A worker that did not answer in time turns it into a 504
    that still shows the others."""
    error = _unanimous_error(indices, answers)
    if error is not None:
        return error
    docs = {i: a.json() for i, a in zip(indices, answers, strict=True) if a is not None}
    by_route: dict[str, dict[str, Any]] = {}
    for doc in docs.values():
        for policy in doc["policies"]:
            entry = by_route.get(policy["route"])
            if entry is None:
                by_route[policy["route"]] = dict(policy)
                continue
            entry["background"] = int(entry["background"]) + int(policy["background"])
            mine, theirs = entry["memory"], policy["memory"]
            if mine is not None and theirs is not None:
                entry["memory"] = {k: int(mine[k]) + int(theirs[k]) for k in mine}
    routes = [sorted(p["route"] for p in doc["policies"]) for doc in docs.values()]
    combined: dict[str, Any] = {
        "policies": list(by_route.values()),
        "bans": max(int(doc["bans"]) for doc in docs.values()),
        "shared_stores": sorted({s for doc in docs.values() for s in doc["shared_stores"]}),
        "consistent": all(r == routes[0] for r in routes),
        "workers": {str(i): doc for i, doc in docs.items()},
    }
    return _combined(indices, answers, combined, "their tiers are not counted")


#: Admin calls that act on, or report, the Runtime serving traffic, so every worker's:
#: what the supervisor's own Runtime would do or say is not enough. Anything else stays
#: in the supervisor.
FORWARDED: dict[tuple[str, str], Combiner] = {
    ("POST", "/admin/cache/purge"): combine_purge,
    ("GET", "/admin/cache"): combine_cache_status,
}


def _authorized(scope: Any, token: str | None) -> bool:
    """The bearer token is right (else the supervisor's own app answers 401 or 404)."""
    if not token:
        return False
    given = b""
    for name, value in scope["headers"]:
        if name == b"authorization":
            given = value
    return bearer_matches(given.decode("latin-1"), token)


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


async def _respond(send: Any, answer: AdminAnswer, with_body: bool = True) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers
               if k.lower() != "content-length"]  # fmt: skip
    headers.append((b"content-length", str(len(answer.body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body if with_body else b""})


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
        # HEAD is the GET without its body, also when the workers answer the GET.
        head = scope.get("method") == "HEAD"
        method = "GET" if head else scope.get("method", "")
        combine = FORWARDED.get((method, scope.get("path", "")))
        if scope["type"] == "http" and combine is not None and _authorized(scope, token):
            request = AdminCall(
                method, scope["path"], scope["query_string"].decode("latin-1"),
                [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
                await _read_body(receive),
            )  # fmt: skip
            workers = list(supervisor.workers)
            answers = await asyncio.gather(*(w.admin(request) for w in workers))
            answer = combine([w.index for w in workers], list(answers))
            await _respond(send, answer, with_body=not head)
            return
        await app(scope, receive, send)

    return admin
