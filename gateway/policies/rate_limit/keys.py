"""What a rate limiter counts by: the ``key`` option, parsed once and resolved per request.

A key is one source or a template of sources and literal text:

* ``ip``: the client address (after ``trusted_proxies`` resolution);
* ``route``: the route's name (one bucket for the whole route);
* ``header:NAME``: a request header's value (stored hashed: it is often a credential);
* ``jwt:CLAIM``: a claim of the verified bearer token (``jwt:org.id`` for nested claims);
* a template such as ``{ip}:{header:X-Tenant}``.

A source without a value (no header, no token, an empty or non-scalar claim) resolves
to ``anonymous``: such requests share one explicit bucket and are never skipped. An
invalid token resolves to :class:`InvalidToken` (the policy answers 401).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.exchange import Exchange

if TYPE_CHECKING:
    from gateway.policies.rate_limit.jwt import JwtVerifier

ANONYMOUS = "anonymous"
#: Values longer than this are stored as a digest (bounded key size in any store).
MAX_PLAIN = 64

_PART = re.compile(r"\{([^{}]*)\}")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_CLAIM = re.compile(r"^[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*$")


class InvalidToken:
    """A bearer token that is not acceptable; ``reason`` goes into the 401 detail."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


Source = tuple[str, str]  # ("ip" | "route" | "header" | "jwt", argument)


def parse_source(text: str) -> Source:
    kind, sep, arg = text.partition(":")
    if kind in ("ip", "route") and not sep:
        return kind, ""
    if kind == "header" and sep and _HEADER_NAME.match(arg):
        return kind, arg.lower()
    if kind == "jwt" and sep and _CLAIM.match(arg):
        return kind, arg
    raise ValueError(
        f"{text!r} is not a key source; use ip, route, header:NAME or jwt:CLAIM "
        "(or a template such as {ip}:{header:X-Tenant})"
    )


def parse_key(spec: str) -> list[str | Source]:
    """Literal text and sources of a key, in order; ValueError when malformed."""
    if "{" not in spec and "}" not in spec:
        return [parse_source(spec.strip())]
    parts: list[str | Source] = []
    pos = 0
    for m in _PART.finditer(spec):
        if m.start() > pos:
            parts.append(spec[pos : m.start()])
        parts.append(parse_source(m.group(1).strip()))
        pos = m.end()
    rest = spec[pos:]
    if "{" in rest or "}" in rest or any("{" in p or "}" in p for p in parts if isinstance(p, str)):
        raise ValueError(f"{spec!r}: unbalanced braces in the key template")
    if rest:
        parts.append(rest)
    if not any(isinstance(p, tuple) for p in parts):
        raise ValueError(f"{spec!r}: a key template needs at least one {{source}}")
    return parts


def uses_jwt(spec: str) -> bool:
    return any(isinstance(p, tuple) and p[0] == "jwt" for p in parse_key(spec))


def _digest(value: bytes) -> str:
    return "h:" + hashlib.blake2b(value, digest_size=12).hexdigest()


def _bounded(value: str) -> str:
    return value if len(value) <= MAX_PLAIN else _digest(value.encode())


Part = Callable[[Exchange], "str | InvalidToken | None"]


class KeyResolver:
    """Resolves a parsed key for one request: the bucket's name, or InvalidToken."""

    def __init__(self, spec: str, route: str, verifier: JwtVerifier | None) -> None:
        self.spec = spec
        self._verifier = verifier
        self._parts: list[str | Part] = [
            p if isinstance(p, str) else self._source(p, route) for p in parse_key(spec)
        ]
        only = self._parts[0]
        self._single: Part | None = only if len(self._parts) == 1 and callable(only) else None

    def _source(self, source: Source, route: str) -> Part:
        kind, arg = source
        if kind == "ip":
            return _client_ip
        if kind == "route":
            return lambda exchange: route
        if kind == "header":
            name = arg.encode("latin-1")

            def header(exchange: Exchange) -> str | None:
                value = exchange.header(name)
                return _digest(value) if value else None

            return header
        verifier = self._verifier
        assert verifier is not None, "a jwt: key needs a verifier"
        path = tuple(arg.split("."))

        def claim(exchange: Exchange) -> str | InvalidToken | None:
            claims = verifier.claims(exchange)
            if claims is None or isinstance(claims, InvalidToken):
                return claims
            value = claim_value(claims, path)
            return _bounded(value) if value is not None else None

        return claim

    def __call__(self, exchange: Exchange) -> str | InvalidToken:
        single = self._single
        if single is not None:
            value = single(exchange)
            return ANONYMOUS if value is None else value
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = part(exchange)
            if isinstance(value, InvalidToken):
                return value
            out.append(ANONYMOUS if value is None else value)
        return _bounded("".join(out))


def _client_ip(exchange: Exchange) -> str | None:
    return exchange.client_ip or None


def claim_value(claims: dict[str, Any], path: tuple[str, ...]) -> str | None:
    """A scalar claim (dotted path into nested objects) as text, or None."""
    value: Any = claims
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, int | float):
        return str(value)
    return None
