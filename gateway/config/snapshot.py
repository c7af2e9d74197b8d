"""A Snapshot: everything one config file compiles to, immutable once built.

Building is a pure function of the parsed config and the long-lived resources
(stores, transports, metrics). Front-ends read ``runtime.snapshot`` once per request,
so a reload never changes a request half-way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from gateway.chain import build_chain, build_prelude, chain_levels
from gateway.config.loader import Positions, format_loc
from gateway.config.models import GatewayConfig
from gateway.edge import problem_response, upstream_error_response
from gateway.errors import (
    ClientGone,
    ConfigError,
    ConfigIssue,
    GatewayError,
    StoreError,
    UpstreamError,
)
from gateway.exchange import Exchange, Response, new_trace_id
from gateway.observability.logs import AccessLog
from gateway.observability.metrics import Metrics
from gateway.policies import REGISTRY, ordered
from gateway.policies.base import BuildContext, Policy
from gateway.policies.cache.hub import CacheHub
from gateway.policies.cache.policy import CachePolicy
from gateway.policies.cache.rules import SAFE_METHODS
from gateway.routing import Route, Router
from gateway.stores import Stores
from gateway.transport.forward import UpstreamPool, make_forwarder
from gateway.transport.headers import parse_networks, resolve_client_ip
from gateway.types import Clock, Handler

log = logging.getLogger("gateway")

_HEX = frozenset(b"0123456789abcdef")


def trace_id_from(traceparent: bytes | None) -> str:
    """The trace id of a valid W3C ``traceparent``, else a new one."""
    if traceparent is not None and len(traceparent) >= 55 and traceparent[2:3] == b"-":
        tid = traceparent[3:35]
        if set(tid) <= _HEX and tid != b"0" * 32:
            return tid.decode()
    return new_trace_id()


@dataclass
class Resources:
    """Long-lived things a snapshot uses but does not own."""

    stores: Stores
    metrics: Metrics
    access_log: AccessLog
    pools: dict[str, UpstreamPool]
    clock: Clock = time.monotonic
    replicas: int = 1


@dataclass(eq=False)
class Snapshot:
    config: GatewayConfig
    router: Router
    pools: dict[str, UpstreamPool]
    policies: list[Policy[Any]]
    resources: Resources
    digest: str = ""
    trusted: tuple[Any, ...] = ()
    loaded_at: float = field(default_factory=time.time)
    #: The runtime's caches, when some route has one: a non-error answer to an unsafe
    #: request that a route without a cache served invalidates them too (RFC 9111 §4.4;
    #: a route with one leaves it to its cache policy). None: nothing to invalidate.
    caches: CacheHub | None = None
    cached_routes: frozenset[Route] = frozenset()
    #: The same routes in file order, for :meth:`_cacheable`.
    cache_scopes: tuple[Route, ...] = ()

    async def dispatch(self, exchange: Exchange, *, upgrade_gate: bool = False) -> Response:
        """Route and run the chain; every failure becomes a problem+json response.

        ``upgrade_gate``: run the route's policies for a WebSocket handshake that the
        front-end relays itself (ASGI mode); a ``101`` answer means "go ahead".
        """
        handler = self.resolve(exchange, upgrade_gate=upgrade_gate)
        if isinstance(handler, Response):
            return exchange.answered(handler)
        try:
            return exchange.answered(await handler(exchange))
        except ClientGone:
            raise  # nobody to answer: the front-end ends the request (499)
        except Exception as exc:
            return exchange.answered(self.failed(exchange, exc))

    def resolve(self, exchange: Exchange, *, upgrade_gate: bool = False) -> Response | Handler:
        """The first half of :meth:`dispatch`: the route's handler, or the answer (404/405).

        The native front-end awaits the handler itself (one coroutine frame less on every
        resume of the request's task) and maps its failures with :meth:`failed`.
        """
        if self.trusted:
            exchange.client_ip = resolve_client_ip(exchange.peer_ip, exchange.headers, self.trusted)
        traceparent = exchange.header(b"traceparent")
        exchange.trace_id = new_trace_id() if traceparent is None else trace_id_from(traceparent)
        match = self.router.match(exchange.method, exchange.path, exchange.host, exchange.headers)
        route = match.route
        if route is None:
            if match.allowed:
                allow = ", ".join(sorted(match.allowed)).encode()
                return problem_response(
                    exchange, 405, "method-not-allowed", "Method Not Allowed",
                    f"{exchange.method} is not allowed here; allowed: {allow.decode()}",
                    [(b"allow", allow)],
                )  # fmt: skip
            return problem_response(
                exchange, 404, "no-route", "Not Found", f"no route matches {exchange.path}"
            )
        exchange.route = route
        exchange.path_params = match.params
        if upgrade_gate:
            assert route.upgrade_gate is not None
            return route.upgrade_gate
        if (
            self.caches is not None
            and exchange.method not in SAFE_METHODS
            and route not in self.cached_routes
            and self._cacheable(exchange)
        ):
            return self._invalidating(route, exchange, self.caches)
        prelude = route.prelude
        if prelude is not None:
            # The policies that can decide without awaiting do so now: the answer, or
            # the rest of the chain.
            try:
                return prelude(exchange)
            except Exception as exc:
                return self.failed(exchange, exc)
        assert route.handler is not None
        return route.handler

    def _cacheable(self, exchange: Exchange) -> bool:
        """Whether a route with a cache could serve this request's path to its host: an
        unsafe request that none could (another tenant's host, a path outside every
        cached route) invalidates nothing and pays for no wrapper."""
        path = exchange.path
        host = exchange.host
        for route in self.cache_scopes:
            if route.match_host(host) and route.match_path(path) is not None:
                return True
        return False

    def _invalidating(
        self, route: Route, exchange: Exchange, caches: CacheHub
    ) -> Response | Handler:
        """:meth:`resolve` for an unsafe method on a route without a cache: the route's
        handler, then (on a 2xx or 3xx) the caches' invalidation, before the answer is
        sent, so the client's next request cannot find what it changed."""
        prelude = route.prelude
        if prelude is None:
            assert route.handler is not None
            handler = route.handler
        else:
            try:
                found = prelude(exchange)
            except Exception as exc:
                return self.failed(exchange, exc)
            if isinstance(found, Response):
                return found
            handler = found
        return partial(_invalidate_after, caches, handler)

    def failed(self, exchange: Exchange, exc: Exception) -> Response:
        """The answer for what a route's handler raised (never called for ClientGone)."""
        name = exchange.route.name if exchange.route is not None else "none"
        if isinstance(exc, UpstreamError):
            return upstream_error_response(exchange, exc)
        if isinstance(exc, StoreError):
            log.warning("route %s: store error reached the edge: %s", name, exc)
            return problem_response(exchange, 503, "store-unavailable", "Service Unavailable",
                                    "a state store is unavailable")  # fmt: skip
        if isinstance(exc, GatewayError):
            log.error("route %s: %s", name, exc)
            return problem_response(exchange, 502, "gateway-error", "Bad Gateway", str(exc))
        log.error("route %s: unexpected error (trace %s)", name, exchange.trace_id, exc_info=exc)
        return problem_response(
            exchange, 500, "internal", "Internal Server Error",
            "the gateway failed to handle this request; see its log for the trace id",
        )  # fmt: skip

    def finish(self, exchange: Exchange, status: int, bytes_out: int) -> None:
        """Called by the front-end after the last response byte: metrics, log, callbacks."""
        duration = time.perf_counter() - exchange.start
        route = exchange.route.name if exchange.route is not None else "none"
        res = self.resources
        res.metrics.request_done(route, exchange.method, status, duration)
        for d in exchange.decisions:
            res.metrics.decision(route, d.policy, d.action, d.shadow)
        res.access_log.write(exchange, status, bytes_out, duration, route)

    async def start(self) -> None:
        for policy in self.policies:
            await policy.start()

    async def stop(self) -> None:
        for policy in self.policies:
            try:
                await policy.stop()
            except Exception:
                log.exception("policy %s failed to stop", policy.label)


def build_snapshot(
    config: GatewayConfig,
    resources: Resources,
    positions: Positions | None = None,
    base_dir: Path | None = None,
    digest: str = "",
) -> Snapshot:
    """Compile routes and chains. Raises ConfigError (with positions) on any failure."""
    trusted = parse_networks(config.trusted_proxies)
    routes: list[Route] = []
    all_policies: list[Policy[Any]] = []
    issues: list[ConfigIssue] = []
    file = positions.file if positions else "<config>"
    for i, spec in enumerate(config.routes):
        route = Route.compile(spec.name, spec.upstream, spec.match)
        pool = resources.pools.get(spec.upstream)
        if pool is None:
            issues.append(ConfigIssue(file, 1, 1, f"upstream {spec.upstream!r} has no pool"))
            continue
        ctx = BuildContext(
            route=spec.name,
            upstream=spec.upstream,
            stores=resources.stores,
            metrics=resources.metrics,
            clock=resources.clock,
            base_dir=base_dir or Path.cwd(),
            replicas=resources.replicas,
            workers=config.workers,
        )
        chain: list[Policy[Any]] = []
        for name in ordered(list(spec.policies)):
            try:
                chain.extend(REGISTRY[name].build(spec.policies[name], ctx))
            except (ValueError, KeyError, OSError) as exc:
                loc = ("routes", i, "policies", name)
                message = f"{format_loc(loc)}: {exc.args[0] if exc.args else exc}"
                issues.append(
                    positions.issue(loc, message) if positions else ConfigIssue(file, 1, 1, message)
                )
        terminal = make_forwarder(pool, trusted, resources.metrics)
        # Built first, so policies that keep the handler below them bind the real chain.
        route.upgrade_gate = build_chain(chain, _allow_upgrade)
        levels = chain_levels(chain, terminal)
        route.handler = levels[0]
        route.prelude = build_prelude(chain, levels)
        route.policy_names = [p.label for p in chain]
        route.policies = chain
        for policy in chain:
            if isinstance(policy, CachePolicy):
                policy.scope = route  # it invalidates only what this route could serve
        routes.append(route)
        all_policies.extend(chain)
    if issues:
        raise ConfigError(issues)
    caches = [p for p in all_policies if isinstance(p, CachePolicy)]
    cached = [r for r in routes if any(isinstance(p, CachePolicy) for p in r.policies)]
    return Snapshot(
        config=config,
        router=Router(routes),
        pools=resources.pools,
        policies=all_policies,
        resources=resources,
        digest=digest,
        trusted=trusted,
        caches=caches[0].hub if caches else None,
        cached_routes=frozenset(cached),
        cache_scopes=tuple(cached),
    )


async def _invalidate_after(caches: CacheHub, handler: Handler, exchange: Exchange) -> Response:
    """Run ``handler``; after a 2xx or 3xx, invalidate what the request changed."""
    response = await handler(exchange)
    if 200 <= response.status < 400:
        count = await caches.after_unsafe(exchange, response)
        exchange.decide(CachePolicy.name, "invalidate", str(count))
    return response


async def _allow_upgrade(exchange: Exchange) -> Response:
    """The terminal of a route's upgrade gate: every policy let the handshake through."""
    return Response(101)


SnapshotFactory = Callable[[GatewayConfig], Snapshot]
