"""Both front-ends at the socket level, through the real upstream (issue 3, point 2).

A normal client hides these cases: pipelined requests, HTTP/1.0, chunked uploads,
``Expect: 100-continue``, request smuggling, slow clients, clients that vanish,
oversized heads, raw WebSocket relay and HEAD framing. Every test writes raw bytes and
reads the raw answer, so what is asserted is what is on the wire.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.harness import (
    UPSTREAM_SCRIPT,
    Gateway,
    Upstream,
    base_config,
    free_port,
    raw_connection,
    read_until_close,
    wait_for_port,
    wait_until,
)

pytestmark = pytest.mark.integration

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class QuietUpstream(Upstream):
    """The test upstream, its stderr going to a file rather than an unread pipe.

    The shared fixture's pipe is never read. When a client here walks away from a
    ``/huge`` response, the gateway closes its upstream connection (as it should) and
    the upstream's ``/huge`` loop keeps writing into the closed transport; asyncio logs
    ``socket.send() raised exception.`` for each write, the 64 KiB pipe fills, and the
    upstream blocks for the rest of the session.
    """

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self._log = open(log, "wb")  # noqa: SIM115 - kept open for the process
        self.proc = subprocess.Popen(
            [sys.executable, str(UPSTREAM_SCRIPT), "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )
        wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        super().stop()
        self._log.close()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """This module's own upstream (overrides the session one; see QuietUpstream)."""
    server = QuietUpstream(tmp_path_factory.mktemp("upstream") / "upstream.err")
    yield server
    server.stop()


# -- a raw HTTP/1.1 client ----------------------------------------------------------------


@dataclass
class Reply:
    status: int
    head: bytes
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


class Wire:
    """Reads responses off a raw socket one by one, framing them as a client must."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def read_head(self) -> Reply:
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if not self._fill():
                raise EOFError(f"connection closed before a response head: {bytes(self.buf)!r}")
        head = bytes(self.buf[: end + 4])
        del self.buf[: end + 4]
        lines = head[:-4].split(b"\r\n")
        version, status, *_ = lines[0].split(b" ", 2)
        assert version in (b"HTTP/1.1", b"HTTP/1.0"), head
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
        return Reply(int(status), head, headers, b"")

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError(f"connection closed after {len(self.buf)} of {n} body bytes")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _read_line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[: end + 2]
                return line
            if not self._fill():
                raise EOFError("connection closed inside a chunked body")

    def read(self, method: str = "GET") -> Reply:
        """The next response (informational ones included) with its body."""
        reply = self.read_head()
        if reply.status < 200 or method == "HEAD" or reply.status in (204, 304):
            return reply
        coding = (reply.header("transfer-encoding") or "").lower()
        length = reply.header("content-length")
        if coding:
            assert coding == "chunked", reply.head
            body = bytearray()
            while True:
                size = int(self._read_line().split(b";")[0], 16)
                if size == 0:
                    while self._read_line():  # trailers, then the blank line
                        pass
                    break
                body += self._read_exact(size)
                assert self._read_exact(2) == b"\r\n"
            reply.body = bytes(body)
        elif length is not None:
            reply.body = self._read_exact(int(length))
        else:  # close-delimited
            while self._fill():
                pass
            reply.body = bytes(self.buf)
            self.buf.clear()
        return reply

    def read_final(self, method: str = "GET") -> Reply:
        reply = self.read(method)
        while reply.status < 200:
            reply = self.read(method)
        return reply

    def closed(self, timeout: float = 5) -> bool:
        """Whether the peer closes (EOF or reset) within ``timeout`` with nothing more sent."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return not self.buf
        except TimeoutError:
            return False
        self.buf += data
        return not data and not self.buf


def request(
    method: str, target: str, *headers: str, body: bytes = b"", version: str = "1.1"
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", *headers]
    if version == "1.1" and not any(h.lower().startswith("host:") for h in headers):
        lines.insert(1, "Host: sockets.test")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%X\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def upstream_count(upstream: Upstream, name: str) -> int:
    """GET/HEAD requests for ``/cache/r/NAME`` the upstream has answered."""
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    try:
        conn.request("GET", f"/cache/stats/{name}")
        resp = conn.getresponse()
        return int(json.loads(resp.read())["requests"])
    finally:
        conn.close()


def no_traceback(gw: Gateway) -> None:
    err = gw.stderr()
    assert "Traceback" not in err, err[-3000:]
    assert '"level":"error"' not in err, err[-3000:]


def in_flight_is_zero(gw: Gateway) -> bool:
    return gw.metric("gateway_requests_in_flight") == 0


def keeps_serving(gw: Gateway, times: int = 3) -> None:
    for i in range(times):
        status, _, body = gw.request("GET", f"/echo?alive={i}", timeout=5)
        assert status == 200, body
        assert json.loads(body)["target"] == f"/echo?alive={i}"


# -- pipelining ----------------------------------------------------------------------------


def test_pipelined_requests_answered_in_order(gateway: Gateway) -> None:
    post_body = b"hello pipelined world"
    upload = [b"a" * 100, b"b" * 3000, b"c"]
    burst = (
        request("GET", "/echo?n=1")
        + request("POST", "/echo?n=2", f"Content-Length: {len(post_body)}", body=post_body)
        + request("GET", "/status/201")
        + request("PUT", "/echo?n=4", "Transfer-Encoding: chunked", body=chunked(*upload))
        + request("GET", "/chunked?n=3&size=4")
        + request("GET", "/echo?n=6", "Connection: close")
    )
    with raw_connection(gateway.port, timeout=10) as sock:
        wire = Wire(sock)
        wire.send(burst)
        first = wire.read()
        assert first.status == 200 and first.json()["target"] == "/echo?n=1"
        assert first.json()["body_length"] == 0
        second = wire.read()
        assert second.status == 200 and second.json()["target"] == "/echo?n=2"
        assert second.json()["method"] == "POST"
        assert second.json()["body_sha256"] == sha(post_body)
        third = wire.read()
        assert (third.status, third.body) == (201, b"status 201")
        fourth = wire.read()
        assert fourth.status == 200 and fourth.json()["target"] == "/echo?n=4"
        assert fourth.json()["body_sha256"] == sha(b"".join(upload))
        fifth = wire.read()
        assert (fifth.status, fifth.body) == (200, b"aaaabbbbcccc")
        last = wire.read()
        assert last.status == 200 and last.json()["target"] == "/echo?n=6"
        assert wire.closed(), "Connection: close on the last request must close"


def test_pipelined_cache_hits_limits_and_misses_keep_their_order(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    # Hits in memory, 429s from a limiter in memory and 404s are answered without the
    # chain's coroutines (natively, in the read callback); upstream requests and bodies
    # are not. Pipelined together, every answer still goes out in request order.
    config = base_config(upstream.url, frontend)
    config["routes"] = [
        {"name": "only", "match": {"path": "/{rest:path}", "methods": ["GET", "HEAD", "POST"]},
         "upstream": "app", "policies": {
            "rate_limit": [{"name": "burst", "rate": "7/h", "algorithm": "fixed_window"}],
            "cache": {"stores": ["memory"]},
        }},
    ]  # fmt: skip
    gw = start_gateway(config)
    name = unique("order")
    with raw_connection(gw.port, timeout=10) as sock:
        wire = Wire(sock)
        wire.send(request("GET", f"/cacheable/{name}"))
        filled = wire.read()
        assert filled.status == 200
        post_body = b"between hits"
        wire.send(
            request("GET", f"/cacheable/{name}")  # hit
            + request("HEAD", f"/cacheable/{name}")  # hit, no body
            + request("GET", "/echo?n=3")  # upstream
            + request("GET", f"/cacheable/{name}")  # hit
            + request("POST", "/echo?n=5", f"Content-Length: {len(post_body)}", body=post_body)
            + request("DELETE", "/echo?n=6")  # 405: no route allows it
            + request("GET", f"/cacheable/{name}")  # hit: the 7th and last of the hour
            + request("GET", "/echo?n=8", "Connection: close")  # 429
        )
        replies = [wire.read("HEAD" if i == 1 else "GET") for i in range(8)]
        assert [r.status for r in replies] == [200, 200, 200, 200, 200, 405, 200, 429]
        assert replies[0].body == filled.body == replies[3].body == replies[6].body
        assert replies[1].body == b""
        assert replies[1].header("content-length") == str(len(filled.body))
        for hit in (replies[0], replies[1], replies[3], replies[6]):
            assert "; hit" in (hit.header("cache-status") or ""), hit.head
        assert replies[2].json()["target"] == "/echo?n=3"
        assert replies[4].json()["body_sha256"] == sha(post_body)
        assert replies[5].header("allow") == "GET, HEAD, POST"
        remaining = [(r.header("ratelimit") or "").split(";")[1:2] for r in replies]
        assert remaining == [["r=5"], ["r=4"], ["r=3"], ["r=2"], ["r=1"], [], ["r=0"], ["r=0"]]
        assert wire.closed()
    assert wait_until(lambda: in_flight_is_zero(gw))
    no_traceback(gw)


def test_hits_answered_at_once_then_close_when_asked(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    # Every request here is a hit in memory: the native front-end answers them all in
    # the read callback, writes them at the end of the loop turn, then closes.
    config = base_config(upstream.url, frontend)
    config["routes"][1]["policies"] = {"cache": {"stores": ["memory"]}}
    gw = start_gateway(config)
    path = f"/cacheable/{unique('close')}"
    status, _, stored = gw.request("GET", path)
    assert status == 200
    with raw_connection(gw.port, timeout=10) as sock:
        wire = Wire(sock)
        wire.send(request("GET", path) * 5 + request("GET", path, "Connection: close"))
        replies = [wire.read() for _ in range(6)]
        assert [(r.status, r.body) for r in replies] == [(200, stored)] * 6
        assert replies[-1].header("connection") == "close"
        assert wire.closed()
    with raw_connection(gw.port, timeout=10) as sock:
        wire = Wire(sock)
        wire.send(request("GET", path, version="1.0"))
        reply = wire.read()
        assert (reply.status, reply.body) == (200, stored)
        assert wire.closed()
    keeps_serving(gw)
    no_traceback(gw)


def test_pipelined_head_has_no_body_and_next_response_is_intact(gateway: Gateway) -> None:
    with raw_connection(gateway.port) as sock:
        wire = Wire(sock)
        wire.send(request("HEAD", "/echo?n=1") + request("GET", "/echo?n=2", "Connection: close"))
        head = wire.read("HEAD")
        assert head.status == 200
        assert int(head.header("content-length") or "0") > 0, head.head
        assert head.header("transfer-encoding") is None
        # Not a byte of body: the next thing on the wire is the next status line.
        nxt = wire.read()
        assert nxt.status == 200, nxt.head
        assert nxt.json()["target"] == "/echo?n=2"
        assert wire.closed()


def test_pipelined_head_of_streamed_and_empty_resources(gateway: Gateway) -> None:
    with raw_connection(gateway.port) as sock:
        wire = Wire(sock)
        wire.send(
            request("HEAD", "/status/204")
            + request("HEAD", "/users/9")
            + request("GET", "/users/9", "Connection: close")
        )
        assert wire.read("HEAD").status == 204
        head = wire.read("HEAD")
        assert head.status == 200 and head.body == b""
        get = wire.read()
        assert get.status == 200 and get.json()["target"] == "/users/9"
        assert wire.closed()


def test_error_in_a_pipeline_waits_for_earlier_answers(gateway: Gateway) -> None:
    with raw_connection(gateway.port) as sock:
        wire = Wire(sock)
        wire.send(request("GET", "/slow?delay=0.3") + b"NOT HTTP AT ALL\r\n\r\n")
        first = wire.read()
        assert (first.status, first.body) == (200, b"slow")
        second = wire.read()
        assert second.status == 400
        assert wire.closed()


# -- HTTP/1.0 ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(5, 10), (400, 1000)], ids=["small", "large"])
def test_http10_gets_no_chunked_response(gateway: Gateway, size: tuple[int, int]) -> None:
    n, chunk = size
    expected = b"".join(bytes([ord("a") + i % 26]) * chunk for i in range(n))
    with raw_connection(gateway.port, timeout=10) as sock:
        wire = Wire(sock)
        wire.send(request("GET", f"/chunked?n={n}&size={chunk}", version="1.0"))
        reply = wire.read()
        assert reply.status == 200
        assert reply.header("transfer-encoding") is None, reply.head
        assert reply.body == expected
        length = reply.header("content-length")
        assert length is None or int(length) == len(expected)
        assert (reply.header("connection") or "close").lower() == "close"
        assert wire.closed(), "an HTTP/1.0 client that did not ask for keep-alive is closed"


def test_http10_request_is_proxied_and_closed(gateway: Gateway) -> None:
    body = b"ten bytes!"
    with raw_connection(gateway.port) as sock:
        wire = Wire(sock)
        wire.send(
            request("POST", "/echo?v=10", f"Content-Length: {len(body)}", body=body, version="1.0")
        )
        reply = wire.read()
        assert reply.status == 200
        doc = reply.json()
        assert doc["target"] == "/echo?v=10" and doc["body_sha256"] == sha(body)
        assert wire.closed()


def test_http10_keep_alive_when_asked(gateway: Gateway, frontend: str) -> None:
    if frontend == "asgi":
        pytest.skip(
            "uvicorn closes every HTTP/1.0 connection even when the client asks for "
            "keep-alive; HTTP/1.0 lets a server do that (keep-alive is only an offer)"
        )
    keep = "Connection: keep-alive"
    with raw_connection(gateway.port) as sock:
        wire = Wire(sock)
        for i in range(3):
            wire.send(request("GET", f"/echo?ka={i}", keep, version="1.0"))
            reply = wire.read()
            assert reply.status == 200 and reply.json()["target"] == f"/echo?ka={i}"
            assert (reply.header("connection") or "").lower() == "keep-alive", reply.head
            assert reply.header("content-length") is not None
        # Unknown length: either made known (and kept alive) or close-delimited (and closed).
        wire.send(request("GET", "/chunked?n=3&size=5", keep, version="1.0"))
        reply = wire.read()
        assert reply.status == 200 and reply.body == b"aaaaabbbbbccccc"
        assert reply.header("transfer-encoding") is None, reply.head
        if reply.header("content-length") is None:
            assert (reply.header("connection") or "").lower() == "close", reply.head
            assert wire.closed()
            return
        assert (reply.header("connection") or "").lower() == "keep-alive", reply.head
        wire.send(request("GET", "/echo?last=1", version="1.0"))
        assert wire.read().json()["target"] == "/echo?last=1"
        assert wire.closed(), "no keep-alive asked: closed"


# -- request bodies ------------------------------------------------------------------------


def test_chunked_upload_reaches_the_upstream_whole(gateway: Gateway) -> None:
    pieces = [os.urandom(1), os.urandom(4096), os.urandom(70000), os.urandom(17)]
    payload = b"".join(pieces)
    with raw_connection(gateway.port, timeout=10) as sock:
        wire = Wire(sock)
        wire.send(request("POST", "/echo?up=1", "Transfer-Encoding: chunked"))
        for piece in pieces:  # chunk by chunk, a pause in between: the body streams
            wire.send(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
            time.sleep(0.05)
        wire.send(b"0\r\n\r\n")
        reply = wire.read()
    assert reply.status == 200
    doc = reply.json()
    assert doc["body_length"] == len(payload)
    assert doc["body_sha256"] == sha(payload)


def test_expect_100_continue(gateway: Gateway) -> None:
    payload = os.urandom(5000)
    with raw_connection(gateway.port) as sock:
        wire = Wire(sock)
        wire.send(
            request(
                "PUT",
                "/echo?expect=1",
                f"Content-Length: {len(payload)}",
                "Expect: 100-continue",
            )
        )
        interim = wire.read()  # before a single body byte was sent
        assert interim.status == 100, interim.head
        assert interim.head.startswith(b"HTTP/1.1 100 ")
        wire.send(payload)
        final = wire.read()
        assert final.status == 200
        assert final.json()["body_sha256"] == sha(payload)
        # the connection stays usable
        wire.send(request("GET", "/echo?after=1", "Connection: close"))
        assert wire.read().json()["target"] == "/echo?after=1"


def test_expect_100_continue_refused_without_continue(start_gateway: GatewayFactory) -> None:
    """The gateway answers itself (404): no ``100``, the body is never sent, and the
    connection closes (the server cannot know whether the body will follow)."""
    gw = start_gateway(routes=[{"name": "only", "match": {"prefix": "/only"}, "upstream": "app"}])
    with raw_connection(gw.port) as sock:
        wire = Wire(sock)
        wire.send(request("POST", "/elsewhere", "Content-Length: 100000", "Expect: 100-continue"))
        reply = wire.read()
        assert reply.status == 404, reply.head
        assert reply.header("content-type") == "application/problem+json"
        if not wire.closed(timeout=3):
            # Kept open: then the server must be reading (and dropping) the body.
            wire.send(b"x" * 100000 + request("GET", "/only/next", "Connection: close"))
            assert wire.read().json()["target"] == "/only/next"


# -- request smuggling ----------------------------------------------------------------------

# Each case: the outer request for /cache/r/NAME hides a second one for /cache/r/NAME-inner.
SMUGGLING = {
    "cl-te": "GET /cache/r/{n} HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n"
    "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /cache/r/{n}-inner HTTP/1.1\r\nHost: x\r\n\r\n",
    "te-cl": "GET /cache/r/{n} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    "Content-Length: 4\r\n\r\n5c\r\nGET /cache/r/{n}-inner HTTP/1.1\r\nHost: x\r\n\r\n0\r\n\r\n",
    "duplicate-cl": "GET /cache/r/{n} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
    "Content-Length: 45\r\n\r\nGET /cache/r/{n}-inner HTTP/1.1\r\nHost: x\r\n\r\n",
    "cl-list": "GET /cache/r/{n} HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 45\r\n\r\n"
    "GET /cache/r/{n}-inner HTTP/1.1\r\nHost: x\r\n\r\n",
    "obs-fold": "GET /cache/r/{n} HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n"
    "GET /cache/r/{n}-inner HTTP/1.1\r\nHost: x\r\n\r\n",
    "obs-fold-te": "GET /cache/r/{n} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
    "Transfer-Encoding:\r\n chunked\r\n\r\nGET /cache/r/{n}-inner HTTP/1.1\r\nHost: x\r\n\r\n",
    "te-gzip": "GET /cache/r/{n} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"
    "GET /cache/r/{n}-inner HTTP/1.1\r\nHost: x\r\n\r\n",
    "te-chunked-gzip": "GET /cache/r/{n} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip"
    "\r\n\r\n0\r\n\r\nGET /cache/r/{n}-inner HTTP/1.1\r\nHost: x\r\n\r\n",
    "te-space-before-colon": "GET /cache/r/{n} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
    "Transfer-Encoding : chunked\r\n\r\nGET /cache/r/{n}-inner HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(SMUGGLING))
def test_smuggling_attempt_is_refused_and_never_forwarded(
    start_gateway: GatewayFactory, upstream: Upstream, case: str
) -> None:
    gw = start_gateway()
    name = unique(case)
    data = SMUGGLING[case].format(n=name).encode()
    with raw_connection(gw.port) as sock:
        wire = Wire(sock)
        wire.send(data)
        reply = wire.read()
        assert reply.status == 400, reply.head + reply.body
        assert reply.header("content-type") == "application/problem+json"
        assert (reply.header("connection") or "").lower() == "close"
        assert wire.closed(), "nothing more may be read from a connection whose framing broke"
    keeps_serving(gw, 1)  # and the access log has caught up with the refused request
    time.sleep(0.3)
    assert upstream_count(upstream, name) == 0
    assert upstream_count(upstream, f"{name}-inner") == 0
    seen = [line for line in gw.access_lines() if name in str(line.get("path"))]
    assert not seen, f"the refused request went through the chain: {seen}"
    no_traceback(gw)


def test_malformed_chunked_body_is_refused(gateway: Gateway) -> None:
    with raw_connection(gateway.port) as sock:
        wire = Wire(sock)
        wire.send(request("POST", "/echo?bad=1", "Transfer-Encoding: chunked") + b"zz\r\nxx\r\n")
        try:
            reply = wire.read()
        except (EOFError, ConnectionResetError):
            pass  # closing without an answer is also a refusal
        else:
            assert reply.status == 400, reply.head
        assert wire.closed()
    keeps_serving(gateway)


# -- limits and slow clients -----------------------------------------------------------------


def test_slowloris_head_is_cut_even_while_bytes_trickle(start_gateway: GatewayFactory) -> None:
    gw = start_gateway(limits={"header_timeout": "1s"})
    with raw_connection(gw.port, timeout=5) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        answer = b""
        cut = False
        sock.settimeout(0.25)
        while time.monotonic() - started < 8:
            try:
                sock.sendall(b"X-Slow: %d\r\n" % int(time.monotonic() * 1000))
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            if not data:
                cut = True
                break
            answer += data
        elapsed = time.monotonic() - started
    assert cut, "a client trickling its head forever must be cut"
    assert elapsed < 6, f"cut after {elapsed:.1f}s with header_timeout 1s"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
    keeps_serving(gw, 1)


def test_silent_connection_is_closed(start_gateway: GatewayFactory) -> None:
    gw = start_gateway(limits={"header_timeout": "500ms"})
    with raw_connection(gw.port, timeout=5) as sock:
        started = time.monotonic()
        data = read_until_close(sock)
        assert time.monotonic() - started < 4
    assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:200]


def test_idle_keep_alive_connection_is_closed(start_gateway: GatewayFactory) -> None:
    gw = start_gateway(limits={"keepalive_timeout": "1s"})
    with raw_connection(gw.port) as sock:
        wire = Wire(sock)
        wire.send(request("GET", "/echo?n=1"))
        assert wire.read().status == 200
        time.sleep(0.3)  # a short pause is fine: the connection is still there
        wire.send(request("GET", "/echo?n=2"))
        assert wire.read().json()["target"] == "/echo?n=2"
        started = time.monotonic()
        assert wire.closed(timeout=6), "an idle keep-alive connection must be closed"
        elapsed = time.monotonic() - started
    assert 0.5 < elapsed < 5, f"closed after {elapsed:.1f}s with keepalive_timeout 1s"


def test_request_line_too_long_is_414(start_gateway: GatewayFactory) -> None:
    gw = start_gateway(limits={"max_request_line": "2KiB"})
    with raw_connection(gw.port) as sock:
        wire = Wire(sock)
        wire.send(request("GET", "/echo?" + "a" * 1500, "Connection: close"))
        assert wire.read().status == 200
    with raw_connection(gw.port) as sock:
        wire = Wire(sock)
        wire.send(request("GET", "/echo?" + "a" * 5000))
        reply = wire.read()
        assert reply.status == 414, reply.head
        assert reply.header("content-type") == "application/problem+json"
        assert wire.closed()
    keeps_serving(gw, 1)


def test_too_many_headers_is_431(start_gateway: GatewayFactory) -> None:
    gw = start_gateway(limits={"max_headers": 20})
    some = [f"X-H{i}: v" for i in range(10)]
    many = [f"X-H{i}: v" for i in range(40)]
    with raw_connection(gw.port) as sock:
        wire = Wire(sock)
        wire.send(request("GET", "/echo", *some, "Connection: close"))
        assert wire.read().status == 200
    with raw_connection(gw.port) as sock:
        wire = Wire(sock)
        wire.send(request("GET", "/echo", *many))
        reply = wire.read()
        assert reply.status == 431, reply.head
        assert reply.header("content-type") == "application/problem+json"
        assert wire.closed()
    keeps_serving(gw, 1)


def refused_promptly(sock: socket.socket, within: float = 4) -> bytes:
    """What the gateway answers before closing; fails if it neither answers nor closes."""
    sock.settimeout(within)
    chunks = []
    try:
        while data := sock.recv(65536):
            chunks.append(data)
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"neither refused nor closed within {within}s: {chunks}") from None
    return b"".join(chunks)


def test_endless_header_line_is_refused(start_gateway: GatewayFactory) -> None:
    """One header line that never ends, arriving over many reads."""
    gw = start_gateway(limits={"max_header_size": "4KiB", "header_timeout": "10s"})
    with raw_connection(gw.port) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(64):
                sock.sendall(b"v" * 1024)
                time.sleep(0.01)
        answer = refused_promptly(sock)
    assert answer.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400")) or answer == b"", answer[:200]
    keeps_serving(gw, 1)


def test_oversized_head_in_one_read_is_refused(start_gateway: GatewayFactory) -> None:
    """The same, but the whole oversized head arrives in a single read."""
    gw = start_gateway(limits={"max_header_size": "4KiB", "header_timeout": "10s"})
    with raw_connection(gw.port) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Endless: " + b"v" * 65536)
        answer = refused_promptly(sock)
    assert answer.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400")) or answer == b"", answer[:200]
    keeps_serving(gw, 1)


CHUNKED_HEAD = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("reads", ["trickle", "one"])
def test_endless_trailer_line_is_refused(start_gateway: GatewayFactory, reads: str) -> None:
    """A trailer line that never ends: httptools buffers it, so it is bounded as a head."""
    gw = start_gateway(limits={"max_header_size": "4KiB", "header_timeout": "10s"})
    with raw_connection(gw.port) as sock:
        start = CHUNKED_HEAD + b"3\r\nabc\r\n0\r\nX-Ok: 1\r\nX-Endless: "
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if reads == "one":
                sock.sendall(start + b"v" * 65536)
            else:
                sock.sendall(start)
                for _ in range(64):
                    sock.sendall(b"v" * 1024)
                    time.sleep(0.01)
        answer = refused_promptly(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:300]
    assert b"trailer fields exceed 4096 bytes" in answer, answer
    keeps_serving(gw, 1)


def test_chunk_framing_is_not_counted_as_trailer(start_gateway: GatewayFactory) -> None:
    """Thousands of one-byte chunks in one read: the size lines are not a trailer."""
    gw = start_gateway(limits={"max_header_size": "4KiB"})
    body = b"".join(b"1\r\n%c\r\n" % (97 + i % 26) for i in range(4000))
    with raw_connection(gw.port) as sock:
        wire = Wire(sock)
        # The trailer fields themselves stay within the bound: 3 KiB of them.
        trailer = b"".join(b"X-T%d: %s\r\n" % (i, b"t" * 500) for i in range(6))
        wire.send(CHUNKED_HEAD + body + b"0\r\n" + trailer + b"\r\n")
        reply = wire.read()
        assert reply.status == 200, reply.head
        assert reply.json()["body_length"] == 4000


def test_stalled_request_body_is_cut(start_gateway: GatewayFactory) -> None:
    gw = start_gateway(limits={"body_timeout": "1s"})
    with raw_connection(gw.port, timeout=8) as sock:
        sock.sendall(request("POST", "/echo", "Content-Length: 1000", body=b"x" * 10))
        started = time.monotonic()
        read_until_close(sock)
        assert time.monotonic() - started < 6
    assert wait_until(lambda: in_flight_is_zero(gw), timeout=5)
    keeps_serving(gw, 1)
    no_traceback(gw)


def test_client_that_stops_reading_is_cut(start_gateway: GatewayFactory, frontend: str) -> None:
    if frontend == "asgi":
        pytest.skip("uvicorn has no send timeout: a client that never reads holds its request")
    gw = start_gateway(limits={"body_timeout": "1s"})
    with raw_connection(gw.port, timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(request("GET", "/huge?bytes=500000000"))
        time.sleep(0.5)
        assert wait_until(lambda: in_flight_is_zero(gw), timeout=8), "never cut"
    keeps_serving(gw)
    no_traceback(gw)


# -- clients that go away --------------------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_gone_mid_response_of_huge(gateway: Gateway, how: str) -> None:
    with raw_connection(gateway.port) as sock:
        sock.sendall(request("GET", "/huge?bytes=200000000"))
        got = 0
        while got < 1_000_000:
            data = sock.recv(65536)
            assert data
            got += len(data)
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert wait_until(lambda: in_flight_is_zero(gateway), timeout=8)
    keeps_serving(gateway, 5)
    status, _, body = gateway.request("GET", "/huge?bytes=3000000", timeout=10)
    assert status == 200 and len(body) == 3_000_000
    no_traceback(gateway)


def test_client_gone_while_upstream_is_slow(gateway: Gateway) -> None:
    for _ in range(3):
        with raw_connection(gateway.port) as sock:
            sock.sendall(request("GET", "/slow?delay=1"))
            time.sleep(0.2)
    keeps_serving(gateway)
    time.sleep(1.2)  # the abandoned upstream calls end (or are cancelled) meanwhile
    assert wait_until(lambda: in_flight_is_zero(gateway), timeout=5)
    keeps_serving(gateway)
    no_traceback(gateway)


def test_client_gone_mid_upload(gateway: Gateway) -> None:
    for declared in ("Content-Length: 1000000", "Transfer-Encoding: chunked"):
        with raw_connection(gateway.port) as sock:
            body = b"x" * 1000 if declared.startswith("Content") else b"3e8\r\n" + b"x" * 1000
            sock.sendall(request("POST", "/echo?gone=1", declared, body=body))
            time.sleep(0.3)
    assert wait_until(lambda: in_flight_is_zero(gateway), timeout=5)
    keeps_serving(gateway)
    time.sleep(0.3)
    no_traceback(gateway)


def test_client_gone_with_expect_continue_pending(gateway: Gateway) -> None:
    with raw_connection(gateway.port) as sock:
        wire = Wire(sock)
        wire.send(request("PUT", "/echo", "Content-Length: 10", "Expect: 100-continue"))
        assert wire.read().status == 100
    assert wait_until(lambda: in_flight_is_zero(gateway), timeout=5)
    keeps_serving(gateway)
    time.sleep(0.3)
    no_traceback(gateway)


def test_many_abandoned_connections_do_not_leak(gateway: Gateway) -> None:
    def abandon(i: int) -> None:
        with raw_connection(gateway.port) as sock:
            sock.sendall(request("GET", f"/slow?delay=0.5&i={i}"))

    threads = [threading.Thread(target=abandon, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    keeps_serving(gateway)
    assert wait_until(lambda: in_flight_is_zero(gateway), timeout=6)
    no_traceback(gateway)


# -- WebSocket ---------------------------------------------------------------------------


def ws_frame(opcode: int, payload: bytes, mask: bytes = b"\x1f\x2e\x3d\x4c") -> bytes:
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_read(wire: Wire) -> tuple[int, bytes]:
    first, second = wire._read_exact(2)
    assert first & 0x80, "the echo sends whole frames"
    assert not second & 0x80, "a server never masks its frames"
    n = second & 0x7F
    if n == 126:
        n = struct.unpack(">H", wire._read_exact(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", wire._read_exact(8))[0]
    return first & 0x0F, wire._read_exact(n)


def ws_handshake(key: bytes) -> bytes:
    return (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
    )


def ws_switched(wire: Wire, key: bytes) -> None:
    switched = wire.read_head()
    assert switched.status == 101, switched.head
    assert (switched.header("upgrade") or "").lower() == "websocket"
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
    assert switched.header("sec-websocket-accept") == accept


def test_websocket_frames_both_ways(gateway: Gateway) -> None:
    key = base64.b64encode(os.urandom(16))
    binary = bytes(range(256)) * 2  # 512 bytes: a 16-bit length
    with raw_connection(gateway.port) as sock:
        wire = Wire(sock)
        wire.send(ws_handshake(key))
        ws_switched(wire, key)
        wire.send(ws_frame(0x1, "héllo".encode()))
        assert ws_read(wire) == (0x1, "héllo".encode())
        wire.send(ws_frame(0x2, binary))
        assert ws_read(wire) == (0x2, binary)
        big = os.urandom(100_000)  # a 64-bit length, more than one read on each hop
        wire.send(ws_frame(0x2, big))
        assert ws_read(wire) == (0x2, big)
        wire.send(ws_frame(0x9, b"ping"))
        assert ws_read(wire) == (0xA, b"ping")
        wire.send(ws_frame(0x8, b"\x03\xe8"))
        assert ws_read(wire) == (0x8, b"\x03\xe8")
        assert wire.closed(), "the connection ends with the close handshake"
    keeps_serving(gateway, 1)
    no_traceback(gateway)


def test_websocket_raw_relay_keeps_early_frames(gateway: Gateway, frontend: str) -> None:
    if frontend == "asgi":
        pytest.skip(
            "uvicorn drops bytes sent before its 101; RFC 6455 4.1 says a client waits for "
            "the 101, so only the native front-end's raw relay promises to pass them on"
        )
    key = base64.b64encode(os.urandom(16))
    with raw_connection(gateway.port) as sock:
        wire = Wire(sock)
        # The first frames ride in the same packet as the handshake.
        wire.send(ws_handshake(key) + ws_frame(0x1, b"early") + ws_frame(0x2, b"\x00\xff"))
        ws_switched(wire, key)
        assert ws_read(wire) == (0x1, b"early")
        assert ws_read(wire) == (0x2, b"\x00\xff")
        wire.send(ws_frame(0x8, b"\x03\xe8"))
        assert ws_read(wire) == (0x8, b"\x03\xe8")
        assert wire.closed()
    assert wait_until(lambda: in_flight_is_zero(gateway), timeout=5)
    keeps_serving(gateway, 1)
    no_traceback(gateway)


def test_websocket_client_leaving_ends_the_relay(gateway: Gateway) -> None:
    key = base64.b64encode(os.urandom(16))
    with raw_connection(gateway.port) as sock:
        wire = Wire(sock)
        wire.send(ws_handshake(key))
        ws_switched(wire, key)
        wire.send(ws_frame(0x1, b"bye"))
        assert ws_read(wire) == (0x1, b"bye")
    # No close frame: the client just vanished. The relay ends, nothing leaks.
    assert wait_until(lambda: in_flight_is_zero(gateway), timeout=5)
    keeps_serving(gateway, 1)
    time.sleep(0.3)
    no_traceback(gateway)


# -- drain, seen from the sockets -------------------------------------------------------


def test_drain_closes_idle_connections_and_finishes_busy_ones(
    start_gateway: GatewayFactory,
) -> None:
    gw = start_gateway(shutdown={"pre_stop_delay": "0s", "drain_timeout": "10s"})
    # Signal handlers are in place once the gateway says it listens.
    assert wait_until(lambda: "gateway listening on" in gw.stderr(), timeout=10)
    with raw_connection(gw.port) as idle_sock, raw_connection(gw.port) as busy_sock:
        idle, busy = Wire(idle_sock), Wire(busy_sock)
        idle.send(request("GET", "/echo?idle=1"))
        assert idle.read().status == 200
        busy.send(request("GET", "/slow?delay=1.5"))
        time.sleep(0.3)
        gw.send_signal(signal.SIGTERM)
        assert idle.closed(timeout=3), "an idle keep-alive connection is closed at once"
        reply = busy.read()
        assert (reply.status, reply.body) == (200, b"slow")
        assert (reply.header("connection") or "").lower() == "close", reply.head
        assert busy.closed()
    assert gw.proc.wait(15) == 0
    no_traceback(gw)


def test_request_cut_at_the_drain_deadline(start_gateway: GatewayFactory) -> None:
    gw = start_gateway(shutdown={"pre_stop_delay": "0s", "drain_timeout": "1s"})
    assert wait_until(lambda: "gateway listening on" in gw.stderr(), timeout=10)
    with raw_connection(gw.port) as sock:
        wire = Wire(sock)
        wire.send(request("GET", "/slow?delay=8"))
        time.sleep(0.3)
        gw.send_signal(signal.SIGTERM)
        # Cut without an answer (no 500), as the native front-end always did.
        answer = refused_promptly(sock, within=6)
    assert answer == b"", answer[:300]
    assert gw.proc.wait(15) == 0
    no_traceback(gw)
    # Every process log line is JSON: no uvicorn error line, no traceback.
    assert all(line.startswith("{") for line in gw.stderr().splitlines()), gw.stderr()
    (line,) = [doc for doc in gw.access_lines() if doc["path"] == "/slow"]
    assert line["status"] == 503  # the gateway closed it, not the client (499)
