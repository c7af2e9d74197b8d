"""The benchmark's direct upstream: a tiny, fast HTTP/1.1 server with one fixed answer.

Every request (any method, any path) gets the same small ``200`` with ``Content-Length``
and keep-alive, so the upstream costs as little CPU as Python allows and is never the
bottleneck of a proxy measurement. Request bodies are read and dropped; pipelined
requests are answered in order with one write per read; ``Connection: close`` and
HTTP/1.0 without keep-alive are honoured.

    python bench/upstream.py --port 8000 [--host 127.0.0.1] [--workers N]

With ``--workers N`` (N > 1) that many processes share the port with ``SO_REUSEPORT``.
Prints ``ready`` on stdout once the first listener is bound.
"""

from __future__ import annotations

import argparse
import asyncio
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
RESPONSE_CLOSE = RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parse with httptools, answer each complete message."""

    __slots__ = ("_close", "_done", "_parser", "_transport")

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._done = 0
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
        done = self._done
        if not done:
            return
        self._done = 0
        if self._close:
            transport.write(RESPONSE * (done - 1) + RESPONSE_CLOSE)
            transport.close()
        else:
            transport.write(RESPONSE * done if done > 1 else RESPONSE)

    def on_message_complete(self) -> None:
        self._done += 1
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
