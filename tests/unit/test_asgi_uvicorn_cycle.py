"""The ASGI mode's uvicorn protocol and cycle, driven through a fake transport.

What is on the wire for any ASGI app: framing, header checks, one write per small
response, the head of a streamed response never held back, HTTP/1.0 without chunks,
pipelining in order, and the connection's deadlines.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE
from uvicorn.server import ServerState

from gateway.config.models import Limits
from gateway.errors import UpstreamBodyError
from gateway.frontends.uvicorn_limits import limited_protocol

App = Callable[[Any, Any, Any], Awaitable[None]]


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, data: Any) -> None:
        self.writes.append(b"".join(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5555)}.get(name, default)

    @property
    def wire(self) -> bytes:
        return b"".join(self.writes)


async def serve(
    app: App, data: bytes, limits: Limits | None = None, protocol_class: Any = None
) -> tuple[Any, FakeTransport]:
    """A connection of the limited protocol that received ``data``; the app has run."""
    if protocol_class is None:
        protocol_class = limited_protocol(limits or Limits())
    config = Config(
        app,
        lifespan="off",
        http=protocol_class,
        server_header=False,
        date_header=False,
        log_config=None,
        access_log=False,
        proxy_headers=False,
    )
    state = ServerState()
    protocol = protocol_class(config=config, server_state=state, app_state={})  # type: ignore[call-arg]
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(data)
    for _ in range(20):
        await asyncio.sleep(0)
    if state.tasks:
        await asyncio.wait(state.tasks, timeout=2)
    await asyncio.sleep(0)
    return protocol, transport


def whole(headers: list[tuple[bytes, bytes]], body: bytes, status: int = 200) -> App:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


GET = b"GET /x?y=1 HTTP/1.1\r\nHost: t\r\n\r\n"


def run(coro: Awaitable[tuple[Any, FakeTransport]]) -> tuple[Any, FakeTransport]:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_small_response_is_one_write_with_names_as_given() -> None:
    app = whole([(b"Content-Type", b"text/plain"), (b"Content-Length", b"2")], b"hi")
    _, transport = run(serve(app, GET))
    assert transport.writes == [
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
    ]
    assert not transport.closed


def test_scope_is_what_uvicorn_builds() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)
        await whole([(b"content-length", b"0")], b"")(scope, receive, send)

    run(serve(app, b"GET /a%20b/c?q=%41 HTTP/1.1\r\nHost: t\r\nX-Up: V\r\n\r\n"))
    assert seen["type"] == "http"
    assert seen["method"] == "GET"
    assert seen["path"] == "/a b/c"
    assert seen["raw_path"] == b"/a%20b/c"
    assert seen["query_string"] == b"q=%41"
    assert seen["headers"] == [(b"host", b"t"), (b"x-up", b"V")]
    assert seen["http_version"] == "1.1"
    assert seen["client"] == ("127.0.0.1", 5555)
    assert seen["server"] == ("127.0.0.1", 8000)
    assert seen["scheme"] == "http"
    assert seen["root_path"] == ""
    assert seen["asgi"]["spec_version"] == "2.3"


def test_head_of_a_streamed_response_is_not_held_back() -> None:
    written_before_body: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.01)  # the first chunk is slow to come
        written_before_body.extend(transport_ref[0].writes)
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    transport_ref: list[FakeTransport] = []

    async def scenario() -> tuple[Any, FakeTransport]:
        original = FakeTransport.__init__

        def init(self: FakeTransport) -> None:
            original(self)
            transport_ref.append(self)

        FakeTransport.__init__ = init  # type: ignore[method-assign]
        try:
            return await serve(app, GET)
        finally:
            FakeTransport.__init__ = original  # type: ignore[method-assign]

    _, transport = run(scenario())
    assert written_before_body == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
    assert transport.wire.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ([(b"bad name", b"v")], "Invalid HTTP header name."),
        ([(b"a: b", b"c")], "Invalid HTTP header name."),
        ([(b"x: y\r\nz", b"c")], "Invalid HTTP header name."),
        ([(b"x-ok", b"v"), (b"x-bad", b"a\r\nInjected: yes")], "Invalid HTTP header value."),
        ([(b"x-bad", b"a\nb")], "Invalid HTTP header value."),
        ([(b"x-bad", b"a\rb")], "Invalid HTTP header value."),
        ([(b"x-bad", b"a\x00b")], "Invalid HTTP header value."),
        ([(b"x-bad", b"a\x7f")], "Invalid HTTP header value."),
        ([(b"x-bad", b"\r\n")], "Invalid HTTP header value."),
    ],
)
def test_invalid_headers_never_reach_the_wire(
    headers: list[tuple[bytes, bytes]], error: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, transport = run(serve(whole(headers, b""), GET))
    assert transport.wire == b""
    assert transport.closed
    errors = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert [str(e) for e in errors] == [error]


def test_header_checks_accept_exactly_what_uvicorn_accepts() -> None:
    """Random heads, names reused across connections of one server (the names memo)."""
    rng = random.Random(7)
    anything = b'aZ-_09:; \t\r\n\x00\x1f\x7f\x80\xff()<>@,[]={}\\"/?'
    tame = b"aZ-_09\x80\xff!#$%&'*+.^`|~"  # what a name may hold; values may hold more

    def text(size: int) -> bytes:
        return bytes(rng.choice(anything if rng.random() < 0.1 else tame) for _ in range(size))

    pool = [text(rng.randint(0, 5)) for _ in range(40)]
    protocol_class = limited_protocol(Limits())

    async def scenario() -> None:
        for _ in range(300):
            headers = [
                (rng.choice(pool), text(rng.randint(0, 6))) for _ in range(rng.randint(1, 4))
            ]
            headers = [(n, v) for n, v in headers if n.lower() not in FRAMING]
            valid = all(
                not HEADER_RE.search(n) and not HEADER_VALUE_RE.search(v) for n, v in headers
            )
            app = whole([*headers, (b"content-length", b"0")], b"")
            _, transport = await serve(app, GET, protocol_class=protocol_class)
            if valid:
                lines = b"".join(b"%s: %s\r\n" % pair for pair in headers)
                assert transport.wire == b"HTTP/1.1 200 OK\r\n%scontent-length: 0\r\n\r\n" % lines
            else:
                assert transport.wire == b"", headers

    asyncio.run(scenario())


FRAMING = (b"content-length", b"transfer-encoding", b"connection")


def test_tab_in_a_value_is_allowed() -> None:
    _, transport = run(serve(whole([(b"x-t", b"a\tb"), (b"content-length", b"0")], b""), GET))
    assert transport.wire.startswith(b"HTTP/1.1 200 OK\r\nx-t: a\tb\r\n")


def test_http10_body_of_unknown_length_is_close_delimited() -> None:
    request = b"GET / HTTP/1.0\r\nHost: t\r\n\r\n"
    _, transport = run(serve(whole([(b"content-type", b"text/plain")], b"hello"), request))
    assert transport.wire == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nhello"
    )
    assert transport.closed


def test_http11_body_of_unknown_length_is_chunked() -> None:
    _, transport = run(serve(whole([], b"hello"), GET))
    assert transport.wire == (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )


def test_head_response_has_no_body() -> None:
    request = b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n"
    _, transport = run(serve(whole([(b"content-length", b"5")], b"hello"), request))
    assert transport.wire == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"


def test_body_shorter_than_content_length_cuts_the_connection() -> None:
    _, transport = run(serve(whole([(b"content-length", b"10")], b"short"), GET))
    assert transport.closed


def test_body_longer_than_content_length_is_never_written() -> None:
    _, transport = run(serve(whole([(b"content-length", b"2")], b"too long"), GET))
    assert transport.wire == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
    assert transport.closed


def test_connection_close_from_the_app_closes() -> None:
    app = whole([(b"Connection", b"Close"), (b"content-length", b"0")], b"")
    _, transport = run(serve(app, GET))
    assert transport.wire == b"HTTP/1.1 200 OK\r\nConnection: Close\r\ncontent-length: 0\r\n\r\n"
    assert transport.closed


def test_pipelined_requests_are_answered_in_order() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = scope["path"].encode()
        if scope["path"] == "/slow":
            await asyncio.sleep(0.02)
        await whole([(b"content-length", b"%d" % len(body))], body)(scope, receive, send)

    data = b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET /fast HTTP/1.1\r\nHost: t\r\n\r\n"

    async def scenario() -> tuple[Any, FakeTransport]:
        protocol, transport = await serve(app, data)
        await asyncio.sleep(0.05)
        return protocol, transport

    _, transport = run(scenario())
    assert transport.wire.count(b"HTTP/1.1 200") == 2
    assert transport.wire.index(b"/slow") < transport.wire.index(b"/fast")


def test_request_body_reaches_the_app() -> None:
    got: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            got.append(message["body"])
            if not message["more_body"]:
                break
        await whole([(b"content-length", b"0")], b"")(scope, receive, send)

    request = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
    _, transport = run(serve(app, request))
    assert b"".join(got) == b"hello"
    assert transport.wire.startswith(b"HTTP/1.1 200 OK")


def test_idle_connection_is_closed_after_keep_alive_timeout() -> None:
    async def scenario() -> tuple[Any, FakeTransport]:
        app = whole([(b"content-length", b"0")], b"")
        protocol, transport = await serve(app, GET, Limits(keepalive_timeout=0.3))
        assert not transport.closed
        await asyncio.sleep(0.5)
        return protocol, transport

    _, transport = run(scenario())
    assert transport.closed


def test_slow_head_gets_408() -> None:
    async def scenario() -> tuple[Any, FakeTransport]:
        protocol, transport = await serve(
            whole([], b""), b"GET / HTTP/1.1\r\nHost: t\r\n", Limits(header_timeout=0.05)
        )
        await asyncio.sleep(0.2)
        return protocol, transport

    _, transport = run(scenario())
    assert transport.wire.startswith(b"HTTP/1.1 408 ")
    assert transport.closed


# -- what the protocol refuses before the app is called, as the native front-end does -----


def echo_scope(seen: list[Any]) -> App:
    """An app that records its scope and answers 200 with no body."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        while (await receive())["more_body"]:
            pass
        await whole([(b"content-length", b"0")], b"")(scope, receive, send)

    return app


def refusal(wire: bytes) -> tuple[bytes, dict[bytes, bytes], dict[str, Any]]:
    head, _, body = wire.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    fields = dict(line.lower().split(b": ", 1) for line in lines)
    return status, fields, json.loads(body)


@pytest.mark.parametrize(
    ("request_bytes", "status", "detail"),
    [
        (b"GET /x HTTP/1.1\r\n\r\n", 400, "a request needs exactly one Host header"),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "exactly one Host"),
        (b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "the Host header is not a valid host"),
        (b"GET /x HTTP/1.1\r\nHost: a/b@c\r\n\r\n", 400, "the Host header is not a valid host"),
        (b"GET /x HTTP/2.0\r\nHost: t\r\n\r\n", 505, "only HTTP/1.0 and 1.1 are served"),
        (b"GET /x\r\n\r\n", 505, "only HTTP/1.0 and 1.1 are served"),
        (b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400, "must be a path or an absolute URL"),
        (b"GET http://u:p@h/x HTTP/1.1\r\nHost: t\r\n\r\n", 400, "invalid absolute"),
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            501,
            "CONNECT is not served",
        ),
        (b"BREW /pot HTTP/1.1\r\nHost: t\r\n\r\n", 501, "method BREW is not implemented"),
        (b"\r\nget /x HTTP/1.1\r\nHost: t\r\n\r\n", 501, "method get is not implemented"),
        (b"G(T /x HTTP/1.1\r\nHost: t\r\n\r\n", 400, "Invalid method"),
        (b"%s /x HTTP/1.1\r\nHost: t\r\n\r\n" % (b"X" * 33), 400, "Invalid method"),
    ],
)
def test_head_refused_before_the_app(request_bytes: bytes, status: int, detail: str) -> None:
    seen: list[Any] = []
    _, transport = run(serve(echo_scope(seen), request_bytes))
    assert not seen, "the app must not be called"
    line, fields, problem = refusal(transport.wire)
    assert line.startswith(b"HTTP/1.1 %d " % status)
    assert fields[b"content-type"] == b"application/problem+json"
    assert fields[b"cache-control"] == b"no-store"
    assert fields[b"connection"] == b"close"
    assert b"date" in fields
    assert problem["status"] == status
    assert detail in problem["detail"]
    assert transport.closed


@pytest.mark.parametrize(
    "host", [b"t", b"example.com:8080", b"[::1]:8080", b"10.0.0.1", b"xn--bcher-kva.example", b""]
)
def test_valid_hosts_reach_the_app(host: bytes) -> None:
    seen: list[Any] = []
    run(serve(echo_scope(seen), b"GET /x HTTP/1.1\r\nHost: %s\r\n\r\n" % host))
    assert [dict(scope["headers"])[b"host"] for scope in seen] == [host]


def test_http10_without_host_reaches_the_app() -> None:
    seen: list[Any] = []
    run(serve(echo_scope(seen), b"GET /x HTTP/1.0\r\n\r\n"))
    assert len(seen) == 1


def test_options_asterisk_reaches_the_app() -> None:
    seen: list[Any] = []
    run(serve(echo_scope(seen), b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n"))
    assert [scope["raw_path"] for scope in seen] == [b"*"]


@pytest.mark.parametrize(
    ("target", "path", "query", "host"),
    [
        (b"http://other.example:81/echo?q=1", "/echo", b"q=1", b"other.example:81"),
        (b"https://other.example/a%20b", "/a b", b"", b"other.example"),
        (b"http://other", "/", b"", b"other"),
        (b"http://other?q=2", "/", b"q=2", b"other"),
    ],
)
def test_absolute_form_authority_replaces_host(
    target: bytes, path: str, query: bytes, host: bytes
) -> None:
    seen: list[Any] = []
    request_bytes = b"GET %s HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n" % target
    run(serve(echo_scope(seen), request_bytes))
    (scope,) = seen
    assert (scope["path"], scope["query_string"]) == (path, query)
    assert scope["headers"] == [(b"host", host), (b"x-a", b"1")]


def test_request_trailers_are_not_merged_into_the_headers() -> None:
    seen: list[Any] = []
    request_bytes = (
        b"POST /x HTTP/1.1\r\nHost: good\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nHost: evil\r\nAuthorization: Bearer x\r\n\r\n"
    )
    _, transport = run(serve(echo_scope(seen), request_bytes))
    (scope,) = seen
    assert scope["headers"] == [(b"host", b"good"), (b"transfer-encoding", b"chunked")]
    assert transport.wire.startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize(
    ("version", "head"),
    [(b"1.0", b"HTTP/1.1 200 OK\r\n"),  # RFC 9110 10.1.1: no 1xx to an HTTP/1.0 client
     (b"1.1", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")],
)  # fmt: skip
def test_100_continue_only_to_an_http11_client(version: bytes, head: bytes) -> None:
    request_bytes = (
        b"POST /x HTTP/%s\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n" % version
    )

    async def scenario() -> tuple[Any, FakeTransport]:
        protocol, transport = await serve(echo_scope([]), request_bytes)
        protocol.data_received(b"hello")
        await asyncio.sleep(0.01)
        return protocol, transport

    _, transport = run(scenario())
    assert transport.wire.startswith(head)


def test_parser_refusal_names_the_fault() -> None:
    request_bytes = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
    _, transport = run(serve(echo_scope([]), request_bytes))
    line, fields, problem = refusal(transport.wire)
    assert line == b"HTTP/1.1 400 Bad Request"
    assert fields[b"cache-control"] == b"no-store"
    assert problem["detail"] != "the request is not valid HTTP/1.1"


def test_limit_refusals_are_not_stored() -> None:
    request_bytes = b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: t\r\n\r\n"
    _, transport = run(serve(echo_scope([]), request_bytes, Limits(max_request_line=64)))
    line, fields, problem = refusal(transport.wire)
    assert line.startswith(b"HTTP/1.1 414 ")
    assert fields[b"cache-control"] == b"no-store"
    assert (problem["status"], problem["title"]) == (414, "URI Too Long")
    assert problem["detail"] == "the request line is longer than 64 bytes"


# -- responses without a body, and statuses without a phrase -------------------------------


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_status_with_content_length_keeps_the_connection(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    app = whole([(b"ETag", b'"x"'), (b"Content-Length", b"50")], b"", status)
    _, transport = run(serve(app, GET))
    assert transport.wire.endswith(b'ETag: "x"\r\nContent-Length: 50\r\n\r\n')
    assert not transport.closed
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_head_with_a_streamed_body_sends_no_body() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    _, transport = run(serve(app, b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n"))
    assert transport.wire == b"HTTP/1.1 200 OK\r\n\r\n"
    assert not transport.closed


@pytest.mark.parametrize("status", [299, 499, 599, 600, 999])
def test_status_without_a_phrase_is_sent(status: int) -> None:
    _, transport = run(serve(whole([(b"content-length", b"2")], b"ok", status), GET))
    assert transport.wire.startswith(b"HTTP/1.1 %d " % status)
    assert transport.wire.endswith(b"\r\n\r\nok")
    assert not transport.closed


def test_impossible_status_is_a_500() -> None:
    _, transport = run(serve(whole([(b"content-length", b"2")], b"ok", 1000), GET))
    assert transport.wire.startswith(b"HTTP/1.1 500 ")


def test_upstream_body_error_cuts_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-length", b"100")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"0123456789", "more_body": True})
        raise UpstreamBodyError("connection closed mid-body")

    _, transport = run(serve(app, GET))
    assert transport.wire.endswith(b"\r\n\r\n0123456789")
    assert transport.closed
    assert not [r for r in caplog.records if r.exc_info]
