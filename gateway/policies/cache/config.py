"""The ``cache`` policy's configuration (key ``cache`` under a route's ``policies``)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.config.models import Model
from gateway.config.units import Duration, Size
from gateway.policies.base import PolicyConfig

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class CacheMemory(Model):
    """The in-process tier (L1): least recently used entries go first."""

    max_bytes: Size = Field(
        64 * 1024 * 1024,
        description="Most bytes (bodies plus headers) the in-process tier holds for this route.",
    )
    max_object: Size = Field(
        1024 * 1024,
        description="Largest response body stored in any tier; larger responses stream "
        "through to the client unstored.",
    )

    @model_validator(mode="after")
    def _fits(self) -> CacheMemory:
        if self.max_object > self.max_bytes:
            raise ValueError("memory.max_object cannot exceed memory.max_bytes")
        return self


class CacheKey(Model):
    """What identifies a stored response besides the request path."""

    query: Literal["sorted", "as_is", "ignore"] = Field(
        "sorted",
        description="`sorted`: query parameters sorted by name (`?b=2&a=1` and `?a=1&b=2` "
        "share an entry), the values of a repeated name in the order received, empty "
        "segments (`&&`) dropped; `as_is`: the query exactly as received; `ignore`: the "
        "query is not part of the key.",
    )
    headers: list[str] = Field(
        default_factory=list,
        description="Request headers whose values select a separate entry, as if the upstream "
        "always sent `Vary` with them (`Accept-Language`, `Authorization`, ...); they are "
        "added to the `Vary` of the responses the cache stores and serves.",
    )
    ignore_query: list[str] = Field(
        default_factory=list,
        description="Query parameter names left out of the key; `*` matches any run of "
        "characters (`utm_*`, `fbclid`). The upstream still receives them.",
    )
    host: bool = Field(
        False,
        description="Make the Host header part of the key. Off by default: a sidecar serves "
        "one service under many names; turn it on when the upstream serves virtual hosts.",
    )

    @field_validator("headers")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a header name")
        return value


class CacheConfig(PolicyConfig):
    """A shared HTTP cache (RFC 9111) in two tiers: in-process memory, then a Redis store.

    Responses are stored and reused as the upstream's Cache-Control, Expires, Vary and
    validators allow; the options below fill in what the upstream leaves unsaid.
    """

    ttl: Duration | None = Field(
        None,
        description="Freshness lifetime of a response that carries no explicit freshness "
        "(no `s-maxage`, `max-age` or `Expires`) and may be cached heuristically (RFC 9111 "
        "§4.2.2: status 200, 203, 204, 300, 301, 308, 404, 405, 410, 414 or 501, or marked "
        "`public`). Unset: 10% of the time since `Last-Modified`, and nothing without it. "
        "Never applies to requests carrying `Cookie` or `Authorization`.",
    )
    max_ttl: Duration = Field(
        3600.0,
        gt=0,
        description="Cap on any freshness lifetime, explicit or heuristic; also caps the stale "
        "windows a response asks for.",
    )
    stores: list[str] = Field(
        default_factory=lambda: ["memory"],
        min_length=1,
        max_length=2,
        description="The tiers, in lookup order: `memory` (or any `memory://` store) is the "
        "in-process tier; a Redis store from `stores:` is the shared tier, which also carries "
        "invalidations between replicas. `[memory, shared]`, `[memory]` or `[shared]`.",
    )
    memory: CacheMemory = Field(
        default_factory=CacheMemory, description="Limits of the in-process tier."
    )
    key: CacheKey = Field(default_factory=CacheKey, description="How the cache key is built.")
    stale_while_revalidate: Duration = Field(
        0.0,
        description="How long after it turns stale a response may still be served while one "
        "background request refreshes it, when the response has no `stale-while-revalidate` "
        "directive of its own. Never with `must-revalidate`, `proxy-revalidate`, `no-cache` "
        "or `s-maxage`.",
    )
    stale_if_error: Duration = Field(
        0.0,
        description="How long after it turns stale a response may be served when the upstream "
        "fails (5xx, connect error, timeout, open breaker), when the response has no "
        "`stale-if-error` directive of its own. Same exceptions as `stale_while_revalidate`.",
    )
    coalesce: bool = Field(
        True,
        description="Concurrent misses for one key make one upstream request; the others wait "
        "for its response (up to `coalesce_wait`) instead of going upstream.",
    )
    coalesce_wait: Duration = Field(
        5.0,
        description="Longest a coalesced request waits for the first one before it goes "
        "upstream by itself.",
    )
    tags_header: str | None = Field(
        "Surrogate-Key",
        description="Response header listing the entry's tags (space or comma separated), "
        "used by purge-by-tag; removed from the response the client gets. `null`: no tags.",
    )
    store_set_cookie: bool = Field(
        False,
        description="Store responses that carry `Set-Cookie`. RFC 9111 allows it, but the "
        "cookie would then be handed to every client, so by default (like nginx and Varnish) "
        "such responses pass through unstored.",
    )
    request_cache_control: Literal["honor", "ignore"] = Field(
        "honor",
        description="`honor`: a client's `Cache-Control` (`no-cache`, `max-age`, `min-fresh`, "
        "`max-stale`, `only-if-cached`) and `Pragma: no-cache` apply; `ignore`: only "
        "`no-store` does, so clients cannot force requests to a fragile upstream (browsers "
        "send `no-cache` on reload).",
    )
    cache_status: str | None = Field(
        "gateway",
        description="Name of this cache in the `Cache-Status` response header (RFC 9211); "
        "`null` leaves the header out.",
    )
    warm: list[str] = Field(
        default_factory=list,
        description="Paths (`/catalog?page=1`) or absolute URLs fetched through the chain "
        "below the cache when the config goes live (start and every reload), unless already "
        "fresh in the cache.",
    )

    @field_validator("tags_header")
    @classmethod
    def _tags_header(cls, value: str | None) -> str | None:
        if value is not None and not _HEADER_NAME.match(value):
            raise ValueError(f"{value!r} is not a header name")
        return value

    @field_validator("cache_status")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z*][A-Za-z0-9_.:/*-]*$", value):
            raise ValueError(f"{value!r} is not a structured-field token (letters, digits, -._:/*)")
        return value

    @field_validator("warm")
    @classmethod
    def _warm(cls, value: list[str]) -> list[str]:
        for url in value:
            if not (url.startswith("/") or url.startswith(("http://", "https://"))):
                raise ValueError(f"{url!r}: a warm entry is a path (/...) or an http(s) URL")
        return value
