"""Admin endpoints: health, readiness, metrics, and the bearer-token admin API.

``/healthz``, ``/readyz`` and ``/metrics`` are open on the admin port. Everything
under ``/admin/`` needs ``Authorization: Bearer <GATEWAY_ADMIN_TOKEN>``; without that
env var the admin API is off (404).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.errors import problem_body
from gateway.runtime import Runtime

Endpoint = Callable[[Request], Awaitable[Response]]
_SECRET_KEY = re.compile(
    r"(password|passwd|secret|token|credentials?|api_?key|private_?key|authorization|cookie)$",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]+@")
PROM_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def problem(status: int, kind: str, title: str, detail: str) -> Response:
    return Response(
        problem_body(status, kind, title, detail), status, media_type="application/problem+json"
    )


def bearer_matches(authorization: str, token: str) -> bool:
    """Whether an ``Authorization`` value is ``Bearer <token>``.

    The scheme is case-insensitive (RFC 9110 11.1: ``bearer`` and ``BEARER`` are
    ``Bearer``); the token is compared in constant time.
    """
    scheme, _, credentials = authorization.strip().partition(" ")
    given = credentials.strip().encode()
    return hmac.compare_digest(given, token.encode()) and scheme.lower() == "bearer"


def mask_secrets(value: Any, key: str = "") -> Any:
    """The config with passwords in URLs and secret-looking keys replaced by ``***``."""
    if isinstance(value, dict):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, key) for v in value]
    if isinstance(value, str):
        if _SECRET_KEY.search(key) and value:
            return "***"
        return _URL_PASSWORD.sub(r"\1***@", value)
    return value


def policy_routes(runtime: Runtime, guarded: Callable[[Endpoint], Endpoint]) -> list[Route]:
    """Admin routes that policies add under ``/admin/`` (all behind the bearer token)."""
    from gateway.policies.cache.admin import cache_routes

    return cache_routes(runtime, guarded)


def build_admin_app(runtime: Runtime, token: str | None) -> Starlette:
    def guarded(endpoint: Endpoint) -> Endpoint:
        async def check(request: Request) -> Response:
            if not token:
                detail = "the admin API is off: set GATEWAY_ADMIN_TOKEN to enable it"
                return problem(404, "admin-disabled", "Not Found", detail)
            if not bearer_matches(request.headers.get("authorization", ""), token):
                detail = "a valid `Authorization: Bearer <token>` is required"
                response = problem(401, "unauthorized", "Unauthorized", detail)
                response.headers["www-authenticate"] = 'Bearer realm="gateway-admin"'
                return response
            return await endpoint(request)

        return check

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        if runtime.ready:
            return PlainTextResponse("ready\n")
        return PlainTextResponse("draining\n", status_code=503)

    async def metrics(request: Request) -> Response:
        return Response(runtime.metrics.render(), media_type=PROM_CONTENT_TYPE)

    async def config(request: Request) -> Response:
        snapshot = runtime.snapshot
        doc = snapshot.config.model_dump(mode="json")
        for route in doc.get("routes", []):
            route["policies"] = {
                name: (value.model_dump(mode="json") if hasattr(value, "model_dump") else value)
                for name, value in snapshot.config.routes[
                    [r.name for r in snapshot.config.routes].index(route["name"])
                ].policies.items()
            }
        return JSONResponse(
            {
                "digest": snapshot.digest,
                "loaded_at": snapshot.loaded_at,
                "config": mask_secrets(doc),
            }
        )

    async def routes(request: Request) -> Response:
        out = []
        for route in runtime.snapshot.router.routes:
            match = route.match.model_dump(mode="json", exclude_none=True)
            out.append(
                {
                    "name": route.name,
                    "match": match,
                    "upstream": route.upstream,
                    "policies": route.policy_names,
                }
            )
        return JSONResponse({"routes": out})

    async def reload(request: Request) -> Response:
        if await runtime.reload():
            return JSONResponse({"reloaded": True, "digest": runtime.snapshot.digest})
        errors = runtime.reload_errors
        detail = "the file was refused; the running configuration stays:\n" + "\n".join(errors)
        body = problem_body(
            422, "reload-refused", "Unprocessable Content", detail,
            errors=errors, reloaded=False, digest=runtime.snapshot.digest,
        )  # fmt: skip
        return Response(body, 422, media_type="application/problem+json")

    async def http_error(request: Request, exc: Exception) -> Response:
        """Starlette's own 404 and 405, as problem+json like every other admin error."""
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            detail = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
            response = problem(405, "method-not-allowed", "Method Not Allowed", detail)
        elif exc.status_code == 404:
            detail = f"the admin port has no {request.url.path}"
            response = problem(404, "not-found", "Not Found", detail)
        else:
            title = HTTPStatus(exc.status_code).phrase
            response = problem(exc.status_code, "admin-error", title, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    return Starlette(
        exception_handlers={HTTPException: http_error},
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/admin/config", guarded(config)),
            Route("/admin/routes", guarded(routes)),
            Route("/admin/reload", guarded(reload), methods=["POST"]),
            *policy_routes(runtime, guarded),
        ],
    )
