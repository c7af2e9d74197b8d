"""The compiled router: routes tried in file order; the first full match wins.

A path that matches some route only with another method yields 405 with ``Allow``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.config.models import Match
from gateway.exchange import find_header
from gateway.types import Headers

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.exchange import Exchange, Response
    from gateway.types import Handler

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(path))?\}")


def compile_template(template: str) -> re.Pattern[str]:
    """``/users/{id}/files/{rest:path}`` -> an anchored regex with named groups."""
    out, pos = [], 0
    for m in _PARAM.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        out.append(f"(?P<{m.group(1)}>.+)" if m.group(2) else f"(?P<{m.group(1)}>[^/]+)")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out) + r"\Z")


@dataclass(eq=False)
class Route:
    """A compiled route. ``handler`` (the chain) is set when the snapshot is built."""

    name: str
    upstream: str
    match: Match
    methods: frozenset[str] | None
    policy_names: list[str] = field(default_factory=list)
    policies: list[Any] = field(default_factory=list)
    handler: Handler | None = None
    upgrade_gate: Handler | None = None  # the policies alone, for ASGI WebSocket handshakes
    #: The chain's synchronous start (gateway.chain.build_prelude), if it has one.
    prelude: Callable[[Exchange], Response | Handler] | None = None
    _regex: re.Pattern[str] | None = None
    _exact: str | None = None
    _prefix: str | None = None
    _host: str | None = None
    _host_suffix: str | None = None
    _headers: list[tuple[bytes, bytes | None]] = field(default_factory=list)

    @classmethod
    def compile(cls, name: str, upstream: str, match: Match) -> Route:
        route = cls(
            name=name,
            upstream=upstream,
            match=match,
            methods=frozenset(m.upper() for m in match.methods) if match.methods else None,
        )
        if match.path is not None:
            if _PARAM.search(match.path):
                route._regex = compile_template(match.path)
            else:
                route._exact = match.path
        else:
            assert match.prefix is not None
            route._prefix = match.prefix.rstrip("/")
        if match.host:
            host = _without_root_dot(match.host.lower())
            if host.startswith("*."):
                route._host_suffix = host[1:]
            else:
                route._host = host
        route._headers = [
            (k.lower().encode("latin-1"), None if v == "*" else v.encode("latin-1"))
            for k, v in match.headers.items()
        ]
        return route

    def match_path(self, path: str) -> dict[str, str] | None:
        if self._exact is not None:
            return {} if path == self._exact else None
        if self._regex is not None:
            m = self._regex.match(path)
            return m.groupdict() if m else None
        prefix = self._prefix
        assert prefix is not None
        if not prefix:
            return {}
        if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
            return {}
        return None

    def match_host(self, host: bytes) -> bool:
        """The host condition alone: a route without one matches every host (an empty
        one too); a route with one never matches an empty host."""
        if self._host is None and self._host_suffix is None:
            return True
        name = host.decode("latin-1").lower()
        if name.startswith("["):
            name = name[: name.find("]") + 1]
        else:
            name = name.rpartition(":")[0] or name
        # "secret.example." is the fully qualified spelling of "secret.example".
        name = _without_root_dot(name)
        if self._host is not None and name != self._host:
            return False
        return self._host_suffix is None or name.endswith(self._host_suffix)

    def match_rest(self, host: bytes, headers: Headers) -> bool:
        """Host and header conditions (everything but path and method)."""
        if (self._host is not None or self._host_suffix is not None) and not self.match_host(host):
            return False
        for key, want in self._headers:
            got = find_header(headers, key)
            if got is None or (want is not None and got != want):
                return False
        return True


def _without_root_dot(name: str) -> str:
    """A host name without the one trailing dot of its absolute (FQDN) spelling."""
    return name[:-1] if name.endswith(".") else name


class RouteMatch:
    """The router's answer: the route and its path parameters, or what methods exist."""

    __slots__ = ("allowed", "params", "route")

    def __init__(
        self,
        route: Route | None,
        params: dict[str, str],
        allowed: frozenset[str] | None = None,  # the path matched but no method did
    ) -> None:
        self.route = route
        self.params = params
        self.allowed = allowed


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    def match(self, method: str, path: str, host: bytes, headers: Headers) -> RouteMatch:
        allowed: set[str] = set()
        for route in self.routes:
            params = route.match_path(path)
            if params is None or not route.match_rest(host, headers):
                continue
            methods = route.methods
            if methods is None or method in methods:
                return RouteMatch(route, params)
            allowed |= methods
        if allowed:
            return RouteMatch(None, {}, frozenset(allowed))
        return RouteMatch(None, {})
