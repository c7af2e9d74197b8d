"""A built-in demo upstream, so the gateway can be tried with nothing else running."""

from __future__ import annotations

import time

from aiohttp import web


async def _users(request: web.Request) -> web.Response:
    user_id = request.match_info["id"]
    return web.json_response(
        {"id": user_id, "name": f"user {user_id}", "served_at": time.time()},
        headers={"Cache-Control": "max-age=30"},
    )


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path_qs,
            "headers": dict(request.headers),
            "body_bytes": len(body),
        }
    )


async def _slow(request: web.Request) -> web.Response:
    import asyncio

    await asyncio.sleep(float(request.query.get("seconds", "1")))
    return web.Response(text="slow\n")


def demo_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/users/{id}", _users)
    app.router.add_get("/slow", _slow)
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app


def run_demo_upstream(host: str, port: int) -> int:
    web.run_app(demo_app(), host=host, port=port, print=None)
    return 0
