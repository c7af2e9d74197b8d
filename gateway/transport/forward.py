"""The chain's terminal step: pick a target, prepare the headers, call the transport.

Header preparation lives here, not in each transport, so every transport puts the same
bytes on the wire: hop-by-hop fields are removed, Host is set per the upstream's
``host_header``, X-Forwarded-For/Proto/Host and Via are added (client-supplied ones are
believed only from ``trusted_proxies``), and framing is recomputed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, cast

from gateway.config.models import Upstream
from gateway.errors import UpstreamConnectError, UpstreamConnectTimeout, UpstreamError
from gateway.exchange import Exchange, Response
from gateway.transport.base import Target, Transport, UpstreamRequest
from gateway.transport.headers import (
    FORWARDING,
    HOP_BY_HOP,
    IPNetwork,
    connection_tokens,
    is_trusted,
    is_websocket,
    upgrade_value,
)
from gateway.transport.native import NativeTransport, Outgoing
from gateway.types import Headers

if TYPE_CHECKING:
    from gateway.observability.metrics import Metrics

#: Consecutive connect failures that take a target out of rotation, and for how long.
EJECT_AFTER_FAILURES = 3
EJECT_FOR_SECONDS = 5.0

_RESPONSE_DROP = HOP_BY_HOP
#: Request fields the forwarding step looks at; every other one is passed on as is.
_SPECIAL = HOP_BY_HOP | FORWARDING | frozenset({b"host", b"content-length"})
_REQUEST_VIA = {"1.1": b"1.1 gateway", "1.0": b"1.0 gateway"}
_UPGRADE_KEEP = frozenset({b"upgrade", b"connection"})
_VIA = (b"via", b"1.1 gateway")


class UpstreamPool:
    """The targets of one upstream, balanced round-robin with passive health."""

    def __init__(self, name: str, config: Upstream, transport: Transport) -> None:
        self.name = name
        self.config = config
        self.transport = transport
        self.targets = [Target.parse(u) for u in config.all_urls]
        self._next = 0
        self._failures = [0] * len(self.targets)
        self._down_until = [0.0] * len(self.targets)

    def pick(self) -> tuple[int, Target]:
        count = len(self.targets)
        if count == 1:
            return 0, self.targets[0]
        now = time.monotonic()
        for _ in range(count):
            index = self._next % count
            self._next += 1
            if self._down_until[index] <= now:
                return index, self.targets[index]
        index = self._next % count  # all ejected: try anyway rather than fail outright
        self._next += 1
        return index, self.targets[index]

    def report(self, index: int, ok: bool) -> None:
        if ok:
            self._failures[index] = 0
            return
        self._failures[index] += 1
        if self._failures[index] >= EJECT_AFTER_FAILURES:
            self._down_until[index] = time.monotonic() + EJECT_FOR_SECONDS
            self._failures[index] = 0


_SCHEMES = {"http": b"http", "https": b"https"}


def request_headers(
    exchange: Exchange,
    target: Target,
    host_mode: str,
    trusted: tuple[IPNetwork, ...],
    listed: frozenset[bytes] | None = None,
) -> tuple[Headers, bool]:
    """Headers for the upstream, and whether this is a protocol upgrade request.

    Only a WebSocket upgrade is one (``is_websocket``): it keeps its ``Upgrade`` field
    and gets ``Connection: upgrade``. Any other ``Upgrade`` (``h2c``...) is hop-by-hop
    like the rest (RFC 9110 7.8) and dropped with its ``Connection`` token, so the
    request goes upstream as a plain one and a ``101`` to it is a protocol error.

    ``listed``: the tokens of the request's ``Connection`` header, also hop-by-hop. The
    common request has none, so the first pass does not look for them; meeting a
    ``Connection`` header, it starts again with its tokens.
    """
    upgrade = (
        listed is not None
        and b"upgrade" in listed
        and is_websocket(upgrade_value(exchange.headers))
    )
    if host_mode == "preserve":
        host = exchange.host or target.authority
    elif host_mode == "upstream":
        host = target.authority
    else:
        host = host_mode.encode("latin-1")
    out: Headers = [(b"host", host)]
    xff: list[bytes] | None = None
    proto = forwarded_host = None
    believe: bool | None = None
    for key, value in exchange.headers:
        name = key.lower()
        if name not in _SPECIAL:  # the common case: an end-to-end field, passed on
            if listed is None or name not in listed:
                out.append((key, value))
            continue
        if name in HOP_BY_HOP:
            if listed is None and name == b"connection":
                tokens = connection_tokens(exchange.headers)
                return request_headers(exchange, target, host_mode, trusted, tokens)
            if upgrade and name == b"upgrade":
                out.append((key, value))
            continue
        if name in FORWARDING:
            if believe is None:
                believe = bool(trusted) and is_trusted(exchange.peer_ip, trusted)
            if believe:
                if name == b"x-forwarded-for":
                    if xff is None:
                        xff = []
                    xff.append(value)
                elif name == b"x-forwarded-proto":
                    proto = value
                elif name == b"x-forwarded-host":
                    forwarded_host = value
                else:
                    out.append((key, value))
            continue
        if name != b"host" and name != b"content-length":
            out.append((key, value))
    peer = exchange.peer_ip.encode("latin-1")
    if xff is None:
        out.append((b"x-forwarded-for", peer))
    else:
        xff.append(peer)
        out.append((b"x-forwarded-for", b", ".join(xff)))
    _forwarding_tail(exchange, out, host, proto, forwarded_host, upgrade)
    return out, upgrade


def _forwarding_tail(
    exchange: Exchange,
    out: Headers,
    host: bytes,
    proto: bytes | None,
    fhost: bytes | None,
    upgrade: bool = False,
) -> None:
    """X-Forwarded-Proto/Host, Via, Connection for an upgrade, and the request's framing."""
    scheme = exchange.scheme
    out.append((b"x-forwarded-proto", proto or _SCHEMES.get(scheme) or scheme.encode("latin-1")))
    out.append((b"x-forwarded-host", fhost or exchange.host or host))
    via = _REQUEST_VIA.get(exchange.http_version)
    if via is None:
        via = exchange.http_version.encode("latin-1") + b" gateway"
    out.append((b"via", via))
    if upgrade:
        out.append((b"connection", b"upgrade"))
    body = exchange.body
    if body is not None:
        if body or exchange.method in ("POST", "PUT", "PATCH"):
            out.append((b"content-length", b"%d" % len(body)))
    elif exchange.content_length is not None:
        out.append((b"content-length", b"%d" % exchange.content_length))


def response_headers(response: Response) -> None:
    """Remove hop-by-hop fields from an upstream response (in place) and add Via.

    A 204 also loses ``Content-Length``: RFC 9110 8.6 forbids it there, and a client
    could take it for the length of a body that never comes."""
    headers = response.headers
    if response.status == 204:
        headers = response.headers = [h for h in headers if h[0].lower() != b"content-length"]
    if response.status != 101:
        # One pass for the common case; a Connection header needs its tokens first.
        kept: Headers = []
        for item in headers:
            name = item[0].lower()
            if name in _RESPONSE_DROP:
                if name == b"connection":
                    break
                continue
            kept.append(item)
        else:
            kept.append(_VIA)
            response.headers = kept
            return
    listed = connection_tokens(headers)
    keep = _UPGRADE_KEEP if response.status == 101 else frozenset()
    drop = (_RESPONSE_DROP - keep) | (listed - keep)
    response.headers = [(k, v) for k, v in headers if k.lower() not in drop]
    response.headers.append(_VIA)


class Forwarder:
    """The terminal handler of every chain on routes to one upstream pool."""

    def __init__(
        self, pool: UpstreamPool, trusted: tuple[IPNetwork, ...], metrics: Metrics | None
    ) -> None:
        transport = pool.transport
        self._pool = pool
        self._transport = transport
        self._single = len(pool.targets) == 1
        # Only the native transport writes a prepared request from a callback, and only
        # to a single target: with several, arming would take a round-robin turn (and
        # a target's health) before the decision, for requests that may be refused.
        native = isinstance(transport, NativeTransport) and self._single
        self._native = cast(NativeTransport, transport) if native else None
        self._timeouts = pool.config.timeouts
        self._host_mode = pool.config.host_header
        self._trusted = trusted
        self._observe = metrics.upstream_observer(pool.name) if metrics is not None else None
        self._count_error = (
            metrics.upstream_error_counter(pool.name) if metrics is not None else None
        )
        self._only = pool.targets[0]

    def __call__(self, exchange: Exchange) -> Awaitable[Response]:
        index, target = self._pick()
        request = self._request(exchange, target)
        return self._sent(exchange, index, self._transport.send(request), time.perf_counter())

    def arm(self, exchange: Exchange) -> Outgoing | None:
        """The request prepared for the wire now, while a policy above waits for its
        decision; None when it cannot be fired from a callback (a streamed body, an
        upgrade, a transport other than the native one, an upstream with several
        targets). The caller fires it on an admitting decision and completes it with
        :meth:`send_armed`; one refused drops it. Nothing reaches the upstream until it
        is fired, and ``timeouts.total`` counts from then."""
        native = self._native
        if native is None or (exchange.body is None and exchange.body_stream is not None):
            return None
        request = self._request(exchange, self._only)  # armed only with a single target
        if request.upgrade:
            return None
        return native.prepare(request)

    def send_armed(self, exchange: Exchange, outgoing: Outgoing) -> Awaitable[Response]:
        """What calling this forwarder would give, for a request it armed: the response
        of the request as fired (or written now, if it was not)."""
        started = outgoing.fired_at if outgoing.head is not None else time.perf_counter()
        return self._sent(exchange, 0, outgoing.response(), started)

    def _pick(self) -> tuple[int, Target]:
        if self._single:  # passive health cannot change the pick: no bookkeeping
            return 0, self._only
        return self._pool.pick()

    def _request(self, exchange: Exchange, target: Target) -> UpstreamRequest:
        headers, upgrade = request_headers(exchange, target, self._host_mode, self._trusted)
        raw = exchange.raw_target
        body = exchange.body
        return UpstreamRequest(
            exchange.method,
            target,
            target.base_path + raw if target.base_path else raw,
            headers,
            body if body is not None else exchange.body_stream,
            self._timeouts,
            upgrade,
        )

    async def _sent(
        self, exchange: Exchange, index: int, sending: Awaitable[Response], started: float
    ) -> Response:
        try:
            response = await sending
        except UpstreamError as exc:
            if self._count_error is not None:
                self._count_error(exc.kind)
            # Only failures to connect say the target is unhealthy; a slow answer does not.
            if not self._single:
                self._pool.report(
                    index, not isinstance(exc, UpstreamConnectError | UpstreamConnectTimeout)
                )
            raise
        finally:
            elapsed = time.perf_counter() - started
            exchange.upstream_duration += elapsed
            if self._observe is not None:
                self._observe(elapsed)
        if not self._single:
            self._pool.report(index, True)
        response_headers(response)
        return response


def make_forwarder(
    pool: UpstreamPool, trusted: tuple[IPNetwork, ...], metrics: Metrics | None
) -> Forwarder:
    """The terminal handler of every chain on routes to ``pool``."""
    return Forwarder(pool, trusted, metrics)
