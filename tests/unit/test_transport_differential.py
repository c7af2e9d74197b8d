"""Differential tests: the native transport against the aiohttp one (the oracle).

Hypothesis generates a short keep-alive conversation: requests (method, raw path,
headers, no body / a bytes body / a streamed body with or without a length) and the
responses a raw capture server answers with (status, reason, raw headers, a body framed
by Content-Length, chunked, or read until close, written in one or several pieces).
Both transports run the same conversation against the same server; the bytes each put
on the wire and the responses each hand back must match.

What the seam lets differ, and only that, is normalised, explicitly (``oracle_wire``):

1. aiohttp adds ``Content-Length: 0`` to a request without a body whose method is not
   GET, HEAD, OPTIONS or TRACE. The native transport sends exactly the headers it is
   given (the forwarding step adds ``content-length: 0`` where a body is expected).
2. A framing field a transport adds itself (``content-length`` for a bytes body given
   without one, ``transfer-encoding: chunked`` for a stream without a length) is
   spelled ``Content-Length``/``Transfer-Encoding`` by aiohttp and in lower case, like
   every header the forwarding step produces, by the native transport.

Not generated, because the oracle is wrong there: repeated request header names
(aiohttp keeps only the last; the native transport sends all, in order; see
``test_request_is_written_exactly_as_given`` in ``test_native_transport.py``).

Independently of the oracle, the native request bytes must equal :func:`expected_wire`:
the request line and the given headers verbatim, plus only those framing fields.
"""

from __future__ import annotations

import asyncio
import string
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.models import Timeouts, Upstream
from gateway.exchange import Response
from gateway.transport.aiohttp_transport import AiohttpTransport
from gateway.transport.base import Target, Transport, UpstreamRequest
from gateway.transport.native import NativeTransport
from gateway.types import Headers
from tests.unit.test_native_transport import Body, Peer, Server

GET_LIKE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
TIMEOUTS = Timeouts(connect=5.0, read=10.0)


@dataclass
class Exchange:
    method: str
    path: bytes
    headers: Headers
    body: bytes | list[bytes] | None  # a list is a streamed body, chunk by chunk
    status: int
    reason: bytes
    response_headers: Headers
    framing: str  # "length" | "chunked" | "close"
    response_body: bytes
    pieces: list[int]  # where the server splits its response into separate writes


# --- strategies -----------------------------------------------------------------------

_TOKEN = string.ascii_letters + string.digits + "-_"
_VALUE = "".join(chr(c) for c in range(0x21, 0x7F))
_PATH = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/"

names = st.text(_TOKEN, min_size=1, max_size=12).map(lambda s: "X-" + s)
values = st.text(_VALUE + " ", max_size=24).map(str.strip).map(str.encode)


@st.composite
def header_lists(draw: st.DrawFn, unique: bool) -> Headers:
    chosen = draw(st.lists(names, max_size=6, unique_by=str.lower if unique else None))
    return [(name.encode(), draw(values)) for name in chosen]


@st.composite
def paths(draw: st.DrawFn) -> bytes:
    segments = draw(st.lists(st.text(_PATH, max_size=8), min_size=1, max_size=4))
    path = "/" + "/".join(segments)
    if draw(st.booleans()):
        path += "%2F" + draw(st.sampled_from(["a", "%20", "%E2%82%AC", "%2e%2E"]))
    if draw(st.booleans()):
        path += "?" + draw(st.text(_PATH + "?%", min_size=1, max_size=16))
    return path.encode()


@st.composite
def exchanges(draw: st.DrawFn) -> Exchange:
    method = draw(st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]))
    host = draw(st.sampled_from([b"example.com", b"127.0.0.1:8080", b"Svc.Internal"]))
    headers: Headers = [(b"host", host), *draw(header_lists(unique=True))]
    kind = draw(st.sampled_from(["none", "bytes", "bytes-unframed", "stream", "stream-length"]))
    body: bytes | list[bytes] | None = None
    if kind == "none":
        if method not in GET_LIKE and draw(st.booleans()):
            headers.append((b"content-length", b"0"))  # as the forwarding step would
            body = b""
    elif kind.startswith("bytes"):
        body = draw(st.binary(min_size=1, max_size=3000))
        if kind == "bytes":
            headers.append((draw(st.sampled_from([b"content-length", b"Content-Length"])),
                            str(len(body)).encode()))  # fmt: skip
    else:
        body = draw(st.lists(st.binary(max_size=700), max_size=5))
        if kind == "stream-length":
            headers.append((b"content-length", str(sum(map(len, body))).encode()))

    status = draw(st.sampled_from([200, 201, 204, 206, 301, 304, 400, 404, 418, 500, 503]))
    reason = draw(st.text(string.ascii_letters + " ", max_size=20).map(str.strip)).encode()
    response_headers = draw(header_lists(unique=False))
    bodiless = method == "HEAD" or status in (204, 304)
    framing = "length" if bodiless else draw(st.sampled_from(["length", "chunked", "close"]))
    response_body = b"" if bodiless else draw(st.binary(max_size=5000))
    pieces = sorted(draw(st.lists(st.integers(1, 6000), max_size=3)))
    return Exchange(method, draw(paths()), headers, body, status, reason,
                    response_headers, framing, response_body, pieces)  # fmt: skip


# --- the wire -------------------------------------------------------------------------


def has(headers: Headers, name: bytes) -> bool:
    return any(k.lower() == name for k, _ in headers)


def expected_wire(ex: Exchange) -> bytes:
    """The request exactly as given, plus the framing the transport may add."""
    lines = [ex.method.encode() + b" " + ex.path + b" HTTP/1.1"]
    lines += [k + b": " + v for k, v in ex.headers]
    body = b""
    if isinstance(ex.body, bytes):
        if ex.body and not has(ex.headers, b"content-length"):
            lines.append(b"content-length: %d" % len(ex.body))
        body = ex.body
    elif isinstance(ex.body, list):
        if has(ex.headers, b"content-length"):
            body = b"".join(ex.body)
        else:
            lines.append(b"transfer-encoding: chunked")
            body = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in ex.body if c) + b"0\r\n\r\n"
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def oracle_wire(raw: bytes, ex: Exchange) -> bytes:
    """aiohttp's bytes with the two documented differences normalised away."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    given = {k.lower() for k, _ in ex.headers}
    out = [lines[0]]
    for line in lines[1:]:
        name, _, value = line.partition(b": ")
        lower = name.lower()
        if lower in (b"content-length", b"transfer-encoding") and lower not in given:
            if (
                line == b"Content-Length: 0"
                and ex.method not in GET_LIKE
                and not ex.body
                and not isinstance(ex.body, list)
            ):
                continue  # difference 1
            line = lower + b": " + value  # difference 2
        out.append(line)
    return b"\r\n".join(out) + b"\r\n\r\n" + body


def response_bytes(ex: Exchange) -> bytes:
    head = [b"HTTP/1.1 %d %b" % (ex.status, ex.reason) if ex.reason else b"HTTP/1.1 %d" % ex.status]
    head += [k + b": " + v for k, v in ex.response_headers]
    body = ex.response_body
    if ex.framing == "length":
        head.append(b"Content-Length: %d" % len(ex.response_body))
        if ex.method == "HEAD" or ex.status in (204, 304):
            body = b""
    elif ex.framing == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        step = max(1, len(body) // 3)
        chunks = [body[i : i + step] for i in range(0, len(body), step)]
        body = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def expected_headers(ex: Exchange) -> Headers:
    headers = list(ex.response_headers)
    if ex.framing == "length":
        headers.append((b"Content-Length", b"%d" % len(ex.response_body)))
    elif ex.framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
    return headers


# --- running a conversation -----------------------------------------------------------


@dataclass
class Seen:
    wire: list[bytes]
    responses: list[tuple[int, bytes, Headers, bytes]]


async def converse(transport: Transport, conversation: list[Exchange]) -> Seen:
    wire: list[bytes] = []
    script = iter(conversation)

    async def handler(peer: Peer) -> None:
        while (req := await peer.request()) is not None:
            wire.append(req.raw)
            ex = next(script)
            data = response_bytes(ex)
            start = 0
            for cut in ex.pieces:
                if start < cut < len(data):
                    peer.write(data[start:cut])
                    await peer.writer.drain()
                    await asyncio.sleep(0)
                    start = cut
            peer.write(data[start:])
            if ex.framing == "close":
                return

    responses = []
    async with Server(handler) as server:
        target = Target.parse(server.url)
        for ex in conversation:
            body: Any = Body(list(ex.body)) if isinstance(ex.body, list) else ex.body
            request = UpstreamRequest(ex.method, target, ex.path, list(ex.headers), body, TIMEOUTS)
            response = await transport.send(request)
            responses.append(
                (response.status, response.reason, response.headers, await read(response))
            )
        await transport.close()
    return Seen(wire, responses)


async def read(response: Response) -> bytes:
    if response.stream is None:
        return response.body
    return b"".join([chunk async for chunk in response.stream])


def both(conversation: list[Exchange]) -> tuple[Seen, Seen]:
    async def main() -> tuple[Seen, Seen]:
        config = Upstream(url="http://127.0.0.1:1")
        native = await converse(NativeTransport(config), conversation)
        oracle = await converse(AiohttpTransport(config), conversation)
        return native, oracle

    return asyncio.run(main())


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(exchanges(), min_size=1, max_size=3))
def test_native_and_aiohttp_agree_on_the_wire_and_on_the_response(
    conversation: list[Exchange],
) -> None:
    native, oracle = both(conversation)
    assert len(native.wire) == len(oracle.wire) == len(conversation)
    for ex, sent, oracle_sent in zip(conversation, native.wire, oracle.wire, strict=True):
        assert sent == expected_wire(ex)
        assert sent == oracle_wire(oracle_sent, ex)
    assert native.responses == oracle.responses
    for ex, (status, reason, headers, body) in zip(conversation, native.responses, strict=True):
        assert (status, reason, headers) == (ex.status, ex.reason, expected_headers(ex))
        bodiless = ex.method == "HEAD" or ex.status in (204, 304)
        assert body == (b"" if bodiless else ex.response_body)
