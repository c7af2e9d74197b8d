"""Admin API of the cache, mounted under ``/admin/cache`` behind the admin bearer token.

``POST /admin/cache/purge`` with a JSON body naming exactly one of::

    {"url": "/products/42?color=red"}      one URL (every variant); absolute URLs too
    {"prefix": "/products/"}               every URL starting with this
    {"glob": "/products/*/reviews"}        ``*`` matches any run of characters, ``/`` too
    {"tag": "product-42"}                  every entry whose tags header listed it
    {"all": true}                          everything

plus an optional ``"host"`` (only entries stored for that Host; needs ``key.host``).
The purge applies here at once and reaches every replica through each shared store's
pub/sub channel and ban log; the answer says whether that replication succeeded.

``GET /admin/cache``: the live cache policies, their tiers and sizes, and the bans held.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.errors import problem_body
from gateway.policies.cache.invalidation import KINDS, Invalidation, Kind
from gateway.policies.cache.policy import CachePolicy

if TYPE_CHECKING:
    from gateway.runtime import Runtime

Endpoint = Callable[[Request], Awaitable[Response]]


def _problem(status: int, kind: str, title: str, detail: str) -> Response:
    body = problem_body(status, kind, title, detail)
    return Response(body, status, media_type="application/problem+json")


def _policies(runtime: Runtime) -> list[CachePolicy]:
    return [p for p in runtime.snapshot.policies if isinstance(p, CachePolicy)]


def parse_purge(doc: Any) -> tuple[Kind, str, str | None]:
    """(kind, value, host) from a purge body; ValueError with a readable message."""
    if not isinstance(doc, dict):
        raise ValueError("the body must be a JSON object")
    unknown = sorted(set(doc) - {*KINDS, "host"})
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; expected one of {list(KINDS)} and host")
    given = [k for k in KINDS if k in doc]
    if len(given) != 1:
        raise ValueError(f"name exactly one of {list(KINDS)}")
    kind = given[0]
    host = doc.get("host")
    if host is not None and (not isinstance(host, str) or not host):
        raise ValueError("host must be a non-empty string")
    if kind == "all":
        if doc["all"] is not True:
            raise ValueError('"all" must be true')
        return kind, "", host
    value = doc[kind]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{kind} must be a non-empty string")
    if kind == "url" and value.startswith(("http://", "https://")):
        parts = urlsplit(value)
        host = host or parts.netloc
        value = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if kind in ("url", "prefix", "glob") and not value.startswith(("/", "*")):
        raise ValueError(f"{kind} must start with / (a path, optionally with its query)")
    return kind, value, host


def cache_routes(runtime: Runtime, guarded: Callable[[Endpoint], Endpoint]) -> list[Route]:
    async def purge(request: Request) -> Response:
        try:
            kind, value, host = parse_purge(orjson.loads(await request.body()))
        except orjson.JSONDecodeError:
            return _problem(400, "cache-purge-invalid", "Bad Request", "the body is not JSON")
        except ValueError as exc:
            return _problem(400, "cache-purge-invalid", "Bad Request", str(exc))
        policies = _policies(runtime)
        if not policies:
            detail = "no route has a cache policy in the running config"
            return _problem(404, "cache-not-configured", "Not Found", detail)
        first = policies[0]
        inv = Invalidation.new(kind, value, host, first.wall())
        result = await first.hub.invalidate(inv, source="admin", ban=True)
        return JSONResponse(
            {
                "id": inv.id,
                "purged": {"kind": kind, "value": value, "host": inv.host},
                "removed_here": result.removed,
                "replicated": result.replicated,
                "shared_stores": result.stores,
            }
        )

    async def status(request: Request) -> Response:
        out = []
        for policy in _policies(runtime):
            l1 = policy.tiers.l1
            out.append(
                {
                    "route": policy.route,
                    "mode": policy.config.mode,
                    "stores": policy.config.stores,
                    "memory": None
                    if l1 is None
                    else {"bytes": l1.bytes, "max_bytes": l1.max_bytes, "urls": len(l1)},
                    "background": len(policy.background),
                }
            )
        hub = _policies(runtime)[0].hub if out else None
        return JSONResponse(
            {
                "policies": out,
                "bans": len(hub.bans) if hub is not None else 0,
                "shared_stores": hub.shared_stores if hub is not None else [],
            }
        )

    return [
        Route("/admin/cache", guarded(status)),
        Route("/admin/cache/purge", guarded(purge), methods=["POST"]),
    ]
