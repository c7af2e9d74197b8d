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

from gateway.exchange import Exchange, find_header

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
    return _reads_token(parse_key(spec))


def _reads_token(parts: list[str | Source]) -> bool:
    return any(isinstance(p, tuple) and p[0] == "jwt" for p in parts)


def _digest(value: bytes) -> str:
    return "h:" + hashlib.blake2b(value, digest_size=12).hexdigest()


def _bounded(value: str) -> str:
    return value if len(value) <= MAX_PLAIN else _digest(value.encode())


#: One source (or the whole key) of a request: its text, ``anonymous`` when it has none.
Plain = Callable[[Exchange], str]
#: The same for a key that reads a token, which may be invalid.
Part = Callable[[Exchange], "str | InvalidToken"]


class KeyResolver:
    """Resolves a parsed key for one request: the bucket's name, or InvalidToken.

    Compiled once per key kind: ``plain`` is the one function to call for a key that
    reads no token (it can never be invalid), and None for a ``jwt:`` key.
    """

    def __init__(self, spec: str, route: str, verifier: JwtVerifier | None) -> None:
        self.spec = spec
        self._verifier = verifier
        parsed = parse_key(spec)
        self.plain: Plain | None = None
        self._resolve: Part
        if not _reads_token(parsed):
            plain = [p if isinstance(p, str) else _plain_source(p, route) for p in parsed]
            self.plain = self._resolve = _joined(plain)
        else:
            parts = [p if isinstance(p, str) else self._source(p, route) for p in parsed]
            self._resolve = _checked(parts)

    def _source(self, source: Source, route: str) -> Part:
        if source[0] != "jwt":
            return _plain_source(source, route)
        verifier = self._verifier
        assert verifier is not None, "a jwt: key needs a verifier"
        path = tuple(source[1].split("."))

        def claim(exchange: Exchange) -> str | InvalidToken:
            claims = verifier.claims(exchange)
            if claims is None:
                return ANONYMOUS
            if isinstance(claims, InvalidToken):
                return claims
            value = claim_value(claims, path)
            return _bounded(value) if value is not None else ANONYMOUS

        return claim

    def __call__(self, exchange: Exchange) -> str | InvalidToken:
        return self._resolve(exchange)


def _client_ip(exchange: Exchange) -> str:
    return exchange.client_ip or ANONYMOUS


def _plain_source(source: Source, route: str) -> Plain:
    kind, arg = source
    if kind == "ip":
        return _client_ip
    if kind == "route":
        return lambda exchange: route
    assert kind == "header", kind
    name = arg.encode("latin-1")

    def header(exchange: Exchange) -> str:
        value = find_header(exchange.headers, name)
        return _digest(value) if value else ANONYMOUS

    return header


def _joined(parts: list[str | Plain]) -> Plain:
    """One source alone (taken as it is), or a template (its text bounded)."""
    only = parts[0]
    if len(parts) == 1 and not isinstance(only, str):
        return only

    def template(exchange: Exchange) -> str:
        return _bounded("".join([p if isinstance(p, str) else p(exchange) for p in parts]))

    return template


def _checked(parts: list[str | Part]) -> Part:
    """As :func:`_joined`, stopping at the first invalid token."""
    only = parts[0]
    if len(parts) == 1 and not isinstance(only, str):
        return only

    def template(exchange: Exchange) -> str | InvalidToken:
        out: list[str] = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = part(exchange)
            if isinstance(value, InvalidToken):
                return value
            out.append(value)
        return _bounded("".join(out))

    return template


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
