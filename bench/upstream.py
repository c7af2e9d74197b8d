"""The benchmark's direct upstream: a tiny, fast HTTP/1.1 server with fixed answers.

Every request (any method, any path) gets the same small ``200`` with ``Content-Length``
and keep-alive, so the upstream costs as little CPU as Python allows and is never the
bottleneck of a proxy measurement. Request bodies are read and dropped; pipelined
requests are answered in order with one write per read; ``Connection: close`` and
HTTP/1.0 without keep-alive are honoured.

Two paths differ, for the cache benchmark:

- any path starting with ``/cacheable`` (``/cacheable?v=2`` too): the same body, plus
  ``Cache-Control: public, max-age=3600``, so a shared cache may store it for an hour.
  Each such request is counted.
- ``/__bench/stats``: ``{"cacheable": N}``, the number of ``/cacheable`` requests this
  process has answered (not counted itself), so the harness can tell how many requests
  a cache let through. With ``--workers N`` each process counts its own.

    python bench/upstream.py --port 8000 [--host 127.0.0.1] [--workers N]

With ``--workers N`` (N > 1) that many processes share the port with ``SO_REUSEPORT``.
Prints ``ready`` on stdout once the first listener is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
from typing import cast

import httptools

BODY = b"Hello, world!\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
    b"\r\n" + BODY
)
CACHEABLE_PATH = b"/cacheable"
CACHEABLE_RESPONSE = RESPONSE.replace(
    b"\r\n\r\n", b"\r\nCache-Control: public, max-age=3600\r\n\r\n", 1
)
STATS_PATH = b"/__bench/stats"
#: ``/cacheable`` requests answered by this process.
COUNTS = {"cacheable": 0}


def _with_close(response: bytes) -> bytes:
    return response.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)


def _stats_response() -> bytes:
    body = json.dumps(COUNTS).encode()
    return (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: application/json\r\n"
        b"Cache-Control: no-store\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"\r\n" + body
    )


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parse with httptools, answer each complete message."""

    __slots__ = ("_close", "_out", "_parser", "_transport", "_url")

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []  # answers to the messages completed in this read
        self._url = b""
        self._close = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            transport.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            transport.close()
            return
        out = self._out
        if not out:
            return
        self._out = []
        if self._close:
            out[-1] = _with_close(out[-1])
            transport.write(b"".join(out))
            transport.close()
        else:
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def on_url(self, url: bytes) -> None:
        self._url += url  # usually one call; more when the request line is split

    def on_message_complete(self) -> None:
        url, self._url = self._url, b""
        if url.startswith(CACHEABLE_PATH):
            COUNTS["cacheable"] += 1
            self._out.append(CACHEABLE_RESPONSE)
        elif url == STATS_PATH:
            self._out.append(_stats_response())
        else:
            self._out.append(RESPONSE)
        if not self._parser.should_keep_alive():
            self._close = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


def _socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


async def _serve(sock: socket.socket, announce: bool) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, sock=sock, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if announce:
        print("ready", flush=True)
    async with server:
        await stop.wait()


def _run(sock: socket.socket, announce: bool) -> None:
    try:
        import uvloop

        uvloop.run(_serve(sock, announce))
    except ImportError:
        asyncio.run(_serve(sock, announce))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    reuse = args.workers > 1
    children: list[int] = []
    for _ in range(args.workers - 1):
        pid = os.fork()
        if pid == 0:
            _run(_socket(args.host, args.port, reuse), announce=False)
            os._exit(0)
        children.append(pid)
    try:
        _run(_socket(args.host, args.port, reuse), announce=True)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
