"""The gateway's one error tree, and problem+json (RFC 9457) rendering.

::

    GatewayError                    base of everything the gateway raises on purpose
    ├── ConfigError            a policy file that cannot be loaded (file:line:col issues)
    ├── StoreError             a state store failed or timed out (policies: on_store_error)
    └── UpstreamError          the call below a policy failed; ``status``: the edge's answer
        ├── UpstreamConnectError    connect refused / reset before a response    -> 502
        ├── UpstreamTimeout         read or total timeout                        -> 504
        │   └── UpstreamConnectTimeout  no connection within the connect timeout -> 504
        ├── UpstreamProtocolError   the upstream sent something that is not HTTP -> 502
        └── UpstreamBodyError       the upstream died while a body was streaming
                                    (response started: the edge cuts the connection)

    ClientGone                      not a GatewayError: the client went away (or broke
                                    its body's framing) while its body was being read;
                                    no answer is owed, the front-end ends the request


Library errors (aiohttp, redis, OSError) are translated where they enter with
``raise ... from exc`` and never reach policies. Errors the gateway answers itself
(404, 405, 429, ...) are not exceptions: they are responses built by :func:`problem`.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from gateway.types import Headers

PROBLEM_BASE = "https://policy-gateway.dev/problems/"
PROBLEM_CONTENT_TYPE = b"application/problem+json"


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ClientGone(Exception):
    """The client disconnected, or broke its body's framing, while its body was read.

    Deliberately not a :class:`GatewayError`: policies that handle gateway faults must
    let it through, and the edge must not turn it into a 5xx.
    """


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a policy file, pointed at by line and column (1-based)."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class ConfigError(GatewayError):
    """A policy file could not be loaded; ``issues`` lists every problem found.

    ``digest`` is that of the refused text when it was read (else empty), so a reload
    can tell the same bad file seen twice from a new one.
    """

    def __init__(self, issues: list[ConfigIssue], digest: str = "") -> None:
        self.issues = issues
        self.digest = digest
        super().__init__("\n".join(str(i) for i in issues))


class StoreError(GatewayError):
    """A store call failed or exceeded its timeout."""


class ReplyError(StoreError):
    """Redis answered a command with an error reply; the connection stays usable.

    Here rather than in ``stores/resp.py``, which is compiled: a compiled class with a
    Python base (this one's is :class:`StoreError`) breaks weak references to its
    instances (mypyc clears the weak reference list like an attribute), and anything,
    a test framework say, may take one to an exception.
    """

    @property
    def code(self) -> str:
        """The error's first word, by Redis convention its kind: ``ERR``, ``NOSCRIPT``..."""
        return str(self).partition(" ")[0]


class UpstreamError(GatewayError):
    """The call below failed. ``kind`` labels metrics; ``status`` is the edge's answer."""

    kind = "error"
    status = 502
    problem_type = "upstream-error"
    title = "Bad Gateway"


class UpstreamConnectError(UpstreamError):
    kind = "connect"
    problem_type = "upstream-connect"
    title = "Upstream connection failed"


class UpstreamTimeout(UpstreamError):
    kind = "timeout"
    status = 504
    problem_type = "upstream-timeout"
    title = "Upstream timed out"


class UpstreamConnectTimeout(UpstreamTimeout):
    """No connection within the connect timeout (the target may be black-holed)."""

    kind = "connect_timeout"


class UpstreamProtocolError(UpstreamError):
    kind = "protocol"
    problem_type = "upstream-protocol"
    title = "Upstream sent an invalid response"


class UpstreamBodyError(UpstreamError):
    kind = "body"
    problem_type = "upstream-body"
    title = "Upstream response body was cut"


def problem_body(
    status: int, problem_type: str, title: str, detail: str, trace_id: str = "", **extra: object
) -> bytes:
    doc: dict[str, object] = {
        "type": PROBLEM_BASE + problem_type,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if trace_id:
        doc["trace_id"] = trace_id
    doc.update(extra)
    return orjson.dumps(doc)


def problem_headers(body: bytes, extra: Headers | None = None) -> Headers:
    headers: Headers = [
        (b"content-type", PROBLEM_CONTENT_TYPE),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if extra:
        headers.extend(extra)
    return headers
