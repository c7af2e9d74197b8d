"""The per-request context (Exchange) and the Response that policies return.

Policies read and write the exchange; they never keep request state on ``self``.
Headers are the raw ``(name, value)`` byte pairs as received; names keep their case
and lookups compare case-insensitively, so nothing is converted per request.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from random import randbytes as _random_bytes
from typing import TYPE_CHECKING, Any, Protocol

from gateway.types import Header, Headers

if TYPE_CHECKING:
    from gateway.routing import Route


class ByteStream(Protocol):
    """An async iterator of body chunks that can be closed early."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Upgraded(Protocol):
    """A raw byte pipe to the upstream after a ``101 Switching Protocols``."""

    async def read(self) -> bytes:
        """The next bytes from the upstream; ``b""`` when it closed."""
        ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...


class _Chained:
    """Already-read chunks, then the rest of the stream they came from."""

    def __init__(
        self, prefix: list[bytes], iterator: AsyncIterator[bytes], rest: ByteStream
    ) -> None:
        self._prefix = prefix
        self._iterator = iterator
        self._rest = rest

    def __aiter__(self) -> _Chained:
        return self

    async def __anext__(self) -> bytes:
        # An iterator class, not an async generator: the compiled build has no async
        # generators.
        if self._prefix:
            return self._prefix.pop(0)
        return await self._iterator.__anext__()

    async def aclose(self) -> None:
        await self._rest.aclose()


async def buffer_stream(stream: ByteStream, limit: int) -> tuple[bytes | None, ByteStream | None]:
    """Read ``stream`` whole if it fits in ``limit`` bytes.

    Returns ``(body, None)`` when it fits, or ``(None, replacement)`` when it does not,
    where ``replacement`` yields every byte of the original stream (nothing is lost).
    """
    chunks: list[bytes] = []
    size = 0
    iterator = stream.__aiter__()
    async for chunk in iterator:
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return None, _Chained(chunks, iterator, stream)
    return b"".join(chunks), None


def find_header(headers: Headers, name: bytes) -> bytes | None:
    """First value of header ``name`` (lower-case bytes), or None."""
    size = len(name)
    for key, value in headers:
        if len(key) == size and key.lower() == name:
            return value
    return None


def find_all(headers: Headers, name: bytes) -> list[bytes]:
    """Every value of header ``name`` (lower-case bytes), in order."""
    size = len(name)
    return [v for k, v in headers if len(k) == size and k.lower() == name]


class Response:
    """What a policy or the transport answers.

    The body is either whole (``body``) or streamed (``stream``, not None). A ``101``
    from the upstream carries ``upgraded``, the byte pipe the front-end relays.
    """

    __slots__ = ("body", "headers", "reason", "status", "stream", "upgraded")

    def __init__(
        self,
        status: int,
        headers: Headers | None = None,
        body: bytes = b"",
        stream: ByteStream | None = None,
        reason: bytes = b"",
        upgraded: Upgraded | None = None,
    ) -> None:
        self.status = status
        self.headers: Headers = headers if headers is not None else []
        self.body = body
        self.stream = stream
        self.reason = reason
        self.upgraded = upgraded

    def header(self, name: bytes) -> bytes | None:
        return find_header(self.headers, name)

    async def read(self, limit: int) -> bool:
        """Buffer a streamed body up to ``limit`` bytes; False (body still intact) if larger."""
        if self.stream is None:
            return len(self.body) <= limit
        body, rest = await buffer_stream(self.stream, limit)
        if body is None:
            self.stream = rest
            return False
        self.body, self.stream = body, None
        return True

    async def aclose(self) -> None:
        """Release a streamed body that will not be sent (closes the upstream side)."""
        if self.stream is not None:
            stream, self.stream = self.stream, None
            await stream.aclose()
        if self.upgraded is not None:
            self.upgraded.close()


class Decision:
    """One policy's verdict on a request, for metrics, spans, logs and explain.

    A plain slotted class: one is made per policy per request (a frozen dataclass
    costs four times as much to build), or made once and recorded for every request it
    applies to; so nothing changes a Decision once it is recorded.
    """

    __slots__ = ("action", "detail", "policy", "shadow")

    def __init__(self, policy: str, action: str, detail: str = "", shadow: bool = False) -> None:
        self.policy = policy
        self.action = action
        self.detail = detail
        self.shadow = shadow

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Decision):
            return NotImplemented
        return (self.policy, self.action, self.detail, self.shadow) == (
            other.policy, other.action, other.detail, other.shadow,
        )  # fmt: skip

    def __hash__(self) -> int:
        return hash((self.policy, self.action, self.detail, self.shadow))

    def __repr__(self) -> str:
        return f"Decision({self.policy!r}, {self.action!r}, {self.detail!r}, shadow={self.shadow})"


CompleteCallback = Callable[["Exchange", int], Awaitable[None] | None]


def new_trace_id() -> str:
    """A W3C trace id: 32 lower-case hex digits, never all zero."""
    tid = _random_bytes(16).hex()
    return tid if tid != _ZERO_ID else new_trace_id()


_ZERO_ID = "0" * 32


class Exchange:
    """Everything about one request, from the front-end to the transport and back."""

    __slots__ = (
        "_complete",
        "body",
        "body_stream",
        "bytes_in",
        "client_ip",
        "content_length",
        "decisions",
        "headers",
        "host",
        "http_version",
        "method",
        "path",
        "path_params",
        "peer_ip",
        "query",
        "quota_taken",
        "raw_target",
        "response_fields",
        "route",
        "scheme",
        "scratch",
        "span",
        "start",
        "store_call",
        "trace_id",
        "upstream_duration",
    )

    def __init__(
        self,
        method: str,
        raw_target: bytes,
        headers: Headers,
        peer_ip: str,
        *,
        scheme: str = "http",
        http_version: str = "1.1",
        body: bytes | None = b"",
        body_stream: ByteStream | None = None,
        content_length: int | None = None,
        host: bytes | None = None,
    ) -> None:
        self.method = method
        self.raw_target = raw_target
        qpos = raw_target.find(b"?")
        if qpos >= 0:
            raw_path, self.query = raw_target[:qpos], raw_target[qpos + 1 :]
        else:
            raw_path, self.query = raw_target, b""
        # Routing sees the percent-decoded, dot-resolved path; see normalize_target.
        if _SUSPECT(raw_path) is not None and raw_path[:1] == b"/":
            forwarded, self.path = normalize_target(raw_path)
            if forwarded != raw_path:
                raw_target = forwarded + raw_target[len(raw_path) :]
                self.raw_target = raw_target
        else:
            self.path = raw_path.decode("latin-1")
        self.headers = headers
        self.peer_ip = peer_ip
        self.client_ip = peer_ip
        self.scheme = scheme
        self.http_version = http_version
        self.body = body if body_stream is None else None
        self.body_stream = body_stream
        # Declared length of a streamed body (None: chunked, length unknown).
        self.content_length = content_length if body_stream is not None else None
        # The front-end may pass the Host value it already saw while parsing.
        self.host = host if host is not None else (find_header(headers, b"host") or b"")
        self.route: Route | None = None
        self.path_params: dict[str, str] = {}
        self.decisions: list[Decision] = []
        self.scratch: dict[str, Any] = {}
        self.span: Any = None
        self.start = time.perf_counter()
        self.trace_id = ""
        self.upstream_duration = 0.0
        self.bytes_in = 0
        #: Header fields a policy adds to whatever answer the request gets (a rate
        #: limiter's ``RateLimit``); the front-end appends them: see :meth:`answered`.
        self.response_fields: tuple[Header, ...] = ()
        self._complete: list[CompleteCallback] | None = None
        #: A store call a policy started before its coroutine ran (from
        #: ``Policy.decide_now``): the policy and the call's future, taken by that policy.
        self.store_call: tuple[object, asyncio.Future[object]] | None = None
        #: What the rate limiters that admitted this request took, as calls that give
        #: it back, for a later limiter of the same list that refuses the request.
        self.quota_taken: list[Callable[[], object]] | None = None

    def header(self, name: bytes) -> bytes | None:
        """First value of a request header; ``name`` is lower-case bytes."""
        return find_header(self.headers, name)

    def decide(self, policy: str, action: str, detail: str = "") -> None:
        self.decisions.append(Decision(policy, action, detail))

    def add_response_fields(self, fields: tuple[Header, ...]) -> None:
        """Fields for the answer, whoever gives it (the upstream, a policy, an error).

        A policy that only adds fields on the way out need not wait for the response,
        so it needs no coroutine frame of its own around the rest of the chain.
        """
        self.response_fields += fields

    def answered(self, response: Response) -> Response:
        """``response`` with the fields policies added (called once, by the front-end)."""
        fields = self.response_fields
        if fields:
            response.headers.extend(fields)
        return response

    async def read_body(self, limit: int) -> bytes | None:
        """The whole request body if it fits in ``limit`` bytes, else None.

        When it does not fit, the body stays intact for the upstream (streamed on).
        """
        if self.body is not None:
            return self.body if len(self.body) <= limit else None
        assert self.body_stream is not None
        body, rest = await buffer_stream(self.body_stream, limit)
        if body is None:
            self.body_stream = rest
            return None
        self.body, self.body_stream, self.content_length = body, None, None
        return body

    def on_complete(self, callback: CompleteCallback) -> None:
        """Run ``callback(exchange, status)`` after the last response byte is sent."""
        if self._complete is None:
            self._complete = []
        self._complete.append(callback)

    @property
    def complete_callbacks(self) -> Sequence[CompleteCallback]:
        """What :meth:`on_complete` registered (usually nothing: an empty tuple, no list)."""
        return self._complete or ()


#: Whether a path may need normalizing: an escape, a dot segment or an empty segment.
#: (One regex search: ``bytes in bytes`` first tries the operand as an int, raising and
#: clearing a TypeError each time.)
_SUSPECT = re.compile(rb"%|/\.|//").search


def remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 §5.2.4 on an absolute path; ``..`` never climbs above the root."""
    out: list[bytes] = []
    segments = path.split(b"/")[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == b".":
            if last:
                out.append(b"")
        elif segment == b"..":
            if out:
                out.pop()
            if last:
                out.append(b"")
        else:
            out.append(segment)
    return b"/" + b"/".join(out)


def normalize_target(raw_path: bytes) -> tuple[bytes, str]:
    """The path to forward and the path to route on.

    Dot segments (also percent-encoded ones) are resolved in both, so a route's
    policies cannot be bypassed with ``/public/../admin``: routing and the upstream
    see the same resource. Routing sees the percent-decoded path; the forwarded path
    keeps every other escape (``%2F`` stays ``%2F``).
    """
    from urllib.parse import unquote_to_bytes

    forwarded = raw_path
    if b"%2e" in raw_path.lower():
        forwarded = raw_path.replace(b"%2e", b".").replace(b"%2E", b".")
    if b"/." in forwarded:
        forwarded = remove_dot_segments(forwarded)
    decoded = unquote_to_bytes(forwarded) if b"%" in forwarded else forwarded
    if b"/." in decoded:  # dots that only appear once decoded (..%2F): route on the result
        decoded = remove_dot_segments(decoded)
    routed = decoded.decode("utf-8", "replace")
    if "//" in routed:  # merge slashes for routing only, as nginx does
        while "//" in routed:
            routed = routed.replace("//", "/")
    return forwarded, routed
