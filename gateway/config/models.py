"""The policy file's models: frozen, ``extra="forbid"``, a description on every field.

``gateway schema`` exports these (plus every registered policy's config model) as
JSON Schema for editors.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.config.units import Duration, Size

HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)


class Model(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _host_port(value: str, what: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ValueError(f"{what} must be HOST:PORT, like 127.0.0.1:8080; got {value!r}")
    return value


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _overlap(a: str, b: str) -> bool:
    """Whether two listening hosts take the same addresses (on one port they clash)."""
    if a == b or "::" in (a, b) or "" in (a, b):  # `::` takes IPv4 too (dual stack)
        return True
    if "0.0.0.0" in (a, b):
        return ":" not in (b if a == "0.0.0.0" else a)
    return False


#: An HTTP field name (RFC 9110 5.1: a token).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _positive(value: float, what: str) -> float:
    """A size or a time that every request needs some of: 0 would fail them all."""
    if value <= 0:
        raise ValueError(f"must be more than 0: with 0, {what}")
    return value


class Timeouts(Model):
    """Upstream timeouts. A timeout maps to 504 problem+json."""

    connect: Duration = Field(
        2.0, description="Time to open a TCP (and TLS) connection; more than 0."
    )
    read: Duration = Field(
        30.0,
        description="Longest wait for the next byte of the response (headers or body); "
        "more than 0.",
    )
    total: Duration | None = Field(
        None,
        description="Deadline for the whole exchange up to the response headers; none by "
        "default, more than 0 when given.",
    )

    @field_validator("connect", "read", "total")
    @classmethod
    def _not_zero(cls, value: float | None) -> float | None:
        if value is None:
            return None
        return _positive(value, "every request to this upstream would time out")


class Pool(Model):
    """Keep-alive connection pool, per upstream target."""

    max_connections: int = Field(
        256, ge=1, description="Most connections open to one target (busy plus idle)."
    )
    idle_timeout: Duration = Field(
        60.0, description="An idle pooled connection older than this is closed, not reused."
    )
    max_requests: int = Field(
        0, ge=0, description="Requests per connection before it is retired; 0 means no limit."
    )


class Upstream(Model):
    """A service the gateway forwards to."""

    url: str = Field(
        description="Base URL: http://host:port or https://host:port, optionally with a path "
        "prefix that is prepended to every forwarded path."
    )
    targets: list[str] = Field(
        default_factory=list,
        description="More base URLs of the same service; requests are balanced round-robin "
        "over url and targets, skipping targets that failed recently (passive health).",
    )
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Upstream timeouts.")
    pool: Pool = Field(default_factory=Pool, description="Keep-alive connection pool.")
    host_header: Literal["preserve", "upstream"] | str = Field(
        "preserve",
        description="Host header sent upstream: `preserve` (the client's), `upstream` (the "
        "target's host:port), or a literal value.",
    )
    verify_tls: bool = Field(True, description="Verify the certificate of https:// targets.")

    @field_validator("url", "targets")
    @classmethod
    def _check_url(cls, value: Any) -> Any:
        for url in [value] if isinstance(value, str) else value:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r} is not an http:// or https:// URL")
            if parts.query or parts.fragment:
                raise ValueError(f"{url!r}: an upstream URL takes no query or fragment")
        return value

    @property
    def all_urls(self) -> list[str]:
        return [self.url, *self.targets]


_TEMPLATE_PART = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(path))?\}")


class Match(Model):
    """Which requests a route takes. `path` or `prefix` (exactly one), plus filters."""

    path: str | None = Field(
        None,
        description="Path template: `/users/{id}` matches one segment per `{name}`; "
        "`/files/{rest:path}` matches the rest of the path, slashes included.",
    )
    prefix: str | None = Field(
        None, description="Path prefix, matched on segment boundaries: `/api` takes /api, /api/x."
    )
    methods: list[str] | None = Field(
        None,
        description="Allowed methods; another method on a matching path gets 405. All if "
        "unset; an empty list is an error.",
    )
    host: str | None = Field(
        None,
        description="Host to match (port ignored, case-insensitive); `*.example.com` "
        "matches any subdomain. Not empty: omit it to match any host.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Request headers (names are HTTP tokens) that must be present with "
        "exactly this value; the value `*` only requires presence.",
    )

    @field_validator("path")
    @classmethod
    def _unique_parameters(cls, value: str | None) -> str | None:
        names = _TEMPLATE_PART.findall(value or "")
        seen: set[str] = set()
        for name, _ in names:
            if name in seen:
                raise ValueError(f"{value!r}: the parameter {{{name}}} appears twice")
            seen.add(name)
        return value

    @field_validator("methods")
    @classmethod
    def _some_methods(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("an empty list allows no method; omit methods to allow all")
        return value

    @field_validator("host")
    @classmethod
    def _some_host(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("an empty host matches no request; omit host to match any")
        return value

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value if not _TOKEN.fullmatch(name)]
        if bad:
            listed = ", ".join(repr(name) for name in bad)
            raise ValueError(
                f"not a header name: {listed} (a name is letters, digits and !#$%&'*+-.^_`|~)"
            )
        return value

    @model_validator(mode="after")
    def _one_of(self) -> Match:
        if (self.path is None) == (self.prefix is None):
            raise ValueError("match takes exactly one of `path` or `prefix`")
        target = self.path if self.path is not None else self.prefix
        assert target is not None
        if not target.startswith("/"):
            raise ValueError(f"{target!r} must start with /")
        if self.path is not None:
            rest = _TEMPLATE_PART.sub("", self.path)
            if "{" in rest or "}" in rest:
                raise ValueError(
                    f"{self.path!r}: a parameter is {{name}} or {{name:path}} (letters, digits, _)"
                )
            if ":path}" in self.path and not self.path.endswith(":path}"):
                raise ValueError(f"{self.path!r}: {{name:path}} must be the last part")
        if self.methods is not None:
            bad = [m for m in self.methods if m.upper() not in HTTP_METHODS]
            if bad:
                raise ValueError(f"unknown HTTP method(s) {bad}")
        return self


class Route(Model):
    """One route: a match, an upstream, and the policies that run on it."""

    name: str = Field(
        description="Unique route name, used in metrics, logs and explain; not empty."
    )
    match: Match = Field(description="Which requests this route takes.")
    upstream: str = Field(description="Name of an entry in `upstreams`.")
    policies: dict[str, Any] = Field(
        default_factory=dict,
        description="Policies for this route, by policy name; they run in the gateway's fixed "
        "order, not the order written here.",
    )

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a route needs a name (metrics, logs and explain show it)")
        return value


class StoreSpec(Model):
    """A named state store."""

    url: str = Field(
        description="`memory://`, `redis://[:password@]host:port/db`, `rediss://...` (TLS), "
        "`redis+sentinel://host:port[,host:port]/service_name/db` or "
        "`redis+cluster://host:port[,host:port]`. Single-server `redis://` and `rediss://` "
        "URLs without query options use the gateway's own pipelined client; the others, "
        "redis-py."
    )
    timeout: Duration = Field(
        0.05, description="Longest any one store call may take before it counts as failed."
    )
    prefix: str = Field("gw:", description="Prefix of every key this gateway writes.")
    max_entries: int = Field(
        100_000, ge=1, description="memory:// only: most keys kept (least recently used go)."
    )

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in ("memory", "redis", "rediss", "redis+sentinel", "redis+cluster"):
            raise ValueError(
                f"{value!r}: store URL scheme must be memory, redis, rediss, redis+sentinel "
                "or redis+cluster"
            )
        return value


class Limits(Model):
    """Protection of the proxy port against oversized and slow clients."""

    max_request_line: Size = Field(
        8192, description="Longest request line; 414 beyond it. More than 0."
    )
    max_header_size: Size = Field(
        65536,
        description="Largest total size of the request headers; 431 beyond it. More than 0.",
    )
    max_headers: int = Field(100, ge=1, description="Most request header fields; 431 beyond it.")
    header_timeout: Duration = Field(
        10.0,
        description="Time a client has to send the complete request head (slowloris defence); "
        "408 and close beyond it. More than 0.",
    )
    body_timeout: Duration = Field(
        60.0,
        description="Longest pause between two chunks of a request body; close beyond it. "
        "More than 0.",
    )
    keepalive_timeout: Duration = Field(
        75.0, description="An idle keep-alive client connection is closed after this."
    )

    @field_validator("max_request_line", "max_header_size")
    @classmethod
    def _some_bytes(cls, value: int) -> int:
        return int(_positive(value, "every request would be refused"))

    @field_validator("header_timeout")
    @classmethod
    def _head_time(cls, value: float) -> float:
        return _positive(value, "every connection would be closed before its request")

    @field_validator("body_timeout")
    @classmethod
    def _body_time(cls, value: float) -> float:
        return _positive(value, "every request body and every paused response would be cut off")


class Shutdown(Model):
    """What SIGTERM does."""

    pre_stop_delay: Duration = Field(
        0.0,
        description="After SIGTERM, /readyz answers 503 at once but the listener keeps serving "
        "this long, so load balancers stop sending first.",
    )
    drain_timeout: Duration = Field(
        30.0, description="Then the listener closes and in-flight requests get this long to end."
    )


class Logging(Model):
    """Logs: the access log on stdout, process events on stderr, JSON lines by default."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least severe level written."
    )
    format: Literal["json", "text"] = Field("json", description="Line format.")
    access_log: bool = Field(True, description="Write one line per request.")


#: The shortest `reload.interval`: the watcher stats the file this often, and a shorter
#: interval (`0s` above all) would keep a core busy polling.
MIN_RELOAD_INTERVAL = 0.1


class Reload(Model):
    """Hot reload of this file."""

    watch: bool = Field(
        True, description="Watch the file's directory and reload on change (SIGHUP always works)."
    )
    interval: Duration = Field(
        1.0, description="How often the directory is checked; at least 100ms."
    )

    @field_validator("interval")
    @classmethod
    def _not_busy(cls, value: float) -> float:
        if value < MIN_RELOAD_INTERVAL:
            raise ValueError(
                f"must be at least 100ms (the file is checked this often); got {value:g}s"
            )
        return value


class GatewayConfig(Model):
    """The policy file."""

    version: Literal[1] = Field(description="Format version of this file; the integer 1.")
    server: Literal["native", "asgi"] = Field(
        "native",
        description="Front-end: `native` (asyncio + httptools, fastest) or `asgi` (uvicorn).",
    )
    workers: int = Field(
        1, ge=1, le=64, description="Worker processes sharing the listen port (SO_REUSEPORT)."
    )
    listen: str = Field("127.0.0.1:8080", description="Proxy address, HOST:PORT.")
    admin: str = Field(
        "127.0.0.1:9901",
        description="Admin address, HOST:PORT: /healthz, /readyz, /metrics and /admin/*.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="CIDRs whose X-Forwarded-For / Forwarded headers are believed when "
        "finding the client address.",
    )
    limits: Limits = Field(default_factory=Limits, description="Client-side limits.")
    shutdown: Shutdown = Field(default_factory=Shutdown, description="Graceful shutdown.")
    logging: Logging = Field(default_factory=Logging, description="Logs.")
    reload: Reload = Field(default_factory=Reload, description="Hot reload.")
    stores: dict[str, StoreSpec] = Field(
        default_factory=dict,
        description="Named state stores; `memory` always exists. A string value is a URL.",
    )
    upstreams: dict[str, Upstream] = Field(description="Named upstream services.")
    routes: list[Route] = Field(description="Routes, tried in order; the first match wins.")

    @field_validator("version", mode="before")
    @classmethod
    def _integer_one(cls, value: Any) -> Any:
        if type(value) is not int or value != 1:
            raise ValueError(f"must be the integer 1; got {value!r}")
        return value

    @field_validator("listen", "admin")
    @classmethod
    def _addr(cls, value: str) -> str:
        return _host_port(value, "an address")

    @field_validator("admin")
    @classmethod
    def _not_listen(cls, value: str, info: ValidationInfo) -> str:
        listen = info.data.get("listen")
        if listen is None:  # refused itself
            return value
        (host, port), (admin_host, admin_port) = split_host_port(listen), split_host_port(value)
        if port == admin_port != 0 and _overlap(host, admin_host):
            raise ValueError(f"the admin port cannot be the proxy's (listen: {listen})")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a CIDR such as 10.0.0.0/8") from exc
        return value

    @field_validator("stores", mode="before")
    @classmethod
    def _store_urls(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: {"url": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @property
    def store_specs(self) -> dict[str, StoreSpec]:
        specs = {"memory": StoreSpec(url="memory://")}
        specs.update(self.stores)
        return specs
