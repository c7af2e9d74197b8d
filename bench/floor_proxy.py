"""The floor under a Redis rate limiter: the least a Python proxy can do around one call.

A control for bench/run.py, not a gateway: per client connection, one upstream
connection and (``--redis``) one Redis connection. Each request head read from the
client is sent to Redis as the ``ratelimit-redis`` variant's own ``EVALSHA`` (same
script, arguments and key shape), and forwarded upstream byte for byte once the reply
is in; the upstream's answer goes back as it came. No parsing beyond finding the end of
a head and of a ``Content-Length`` body, no routing, no headers added, no task per
request: protocol callbacks on uvloop, as little work as the path allows.

So ``floor-redis`` minus ``floor-pass`` (same round, c=1 p50) is what one Redis call
costs a proxy on this machine when the proxy itself costs next to nothing, and its
ratio to ``bench/redis_rtt.py``'s round trip is the best a limiter can reach here. It
serves wrk and the bench upstream only (``Content-Length`` answers, no pipelining, GET
without a body).

    python bench/floor_proxy.py --port 8081 --upstream 127.0.0.1:8000 [--redis URL]

Prints ``ready`` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

LUA = Path(__file__).resolve().parent.parent / "gateway" / "stores" / "lua"
#: The ``ratelimit-redis`` variant's limiter: token bucket, 10,000,000/s, burst 10,000,000,
#: its arguments as the gateway encodes them, and its key (route ``bench``, limiter
#: ``per-ip``, client 127.0.0.1).
INTERVAL_US, BURST = b"0.1", b"10000000.0"
KEY = b"gw:{rl:bench:per-ip:tb:127.0.0.1}"


def command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class Peer(asyncio.Protocol):
    """A connection a client connection opened (upstream or Redis); closed with it."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class Upstream(Peer):
    """The connection to the upstream: relays each whole answer to its client."""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        at = self.buf.lower().find(b"content-length:")
        length = int(self.buf[at + 15 : self.buf.find(b"\r\n", at)]) if 0 <= at < end else 0
        size = end + 4 + length
        if len(self.buf) >= size:
            answer, self.buf = self.buf[:size], self.buf[size:]
            self.client.answer(answer)


class Redis(Peer):
    """The connection to Redis: one call in flight; its reply releases the request."""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        # The script answers an array of integers: its count's line, then one per item.
        head = self.buf.find(b"\r\n")
        if head < 0 or self.buf.count(b"\r\n") < int(self.buf[1:head]) + 1:
            return
        reply, self.buf = self.buf, b""
        if not reply.startswith(b"*") or reply[head + 2 : head + 5] != b":1\r":
            sys.exit(f"floor proxy: unexpected reply {reply[:60]!r}")
        self.client.forward()


class Client(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.ready = False  # what arrives before the peers are connected waits in buf
        self.buf = b""
        self.head = b""
        self.transport: asyncio.Transport | None = None
        self.upstream: Upstream | None = None
        self.redis: Redis | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.server.upstream
        _, self.upstream = await loop.create_connection(lambda: Upstream(self), host, port)
        if self.server.redis is not None:
            host, port = self.server.redis
            _, self.redis = await loop.create_connection(lambda: Redis(self), host, port)
        self.ready = True
        self.data_received(b"")

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.ready:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        self.head, self.buf = self.buf[: end + 4], self.buf[end + 4 :]
        redis = self.redis
        if redis is None:
            self.forward()
        else:
            assert redis.transport is not None
            redis.transport.write(self.server.call)

    def forward(self) -> None:
        assert self.upstream is not None and self.upstream.transport is not None
        self.upstream.transport.write(self.head)

    def answer(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        for peer in (self.upstream, self.redis):
            if peer is not None and peer.transport is not None:
                peer.transport.close()


class Server:
    def __init__(self, upstream: tuple[str, int], redis: tuple[str, int] | None) -> None:
        self.upstream = upstream
        self.redis = redis
        self.call = b""

    async def load_script(self) -> None:
        """SCRIPT LOAD the limiter's token bucket; its EVALSHA is then one fixed command."""
        assert self.redis is not None
        reader, writer = await asyncio.open_connection(*self.redis)
        script = (LUA / "rl_token_bucket.lua").read_bytes()
        writer.write(command(b"SCRIPT", b"LOAD", script))
        await reader.readline()  # $40
        sha = (await reader.readline()).strip()
        writer.close()
        self.call = command(b"EVALSHA", sha, b"1", KEY, INTERVAL_US, BURST)


def _address(text: str, default_port: int) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port or default_port)


async def serve(args: argparse.Namespace) -> None:
    redis = None
    if args.redis:
        rest = args.redis.split("://", 1)[-1].split("/", 1)[0]
        redis = _address(rest, 6379)
    server = Server(_address(args.upstream, 80), redis)
    if redis is not None:
        await server.load_script()
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: Client(server), args.host, args.port, backlog=1024)
    print("ready", flush=True)
    await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="host:port of the upstream")
    p.add_argument("--redis", help="redis://host:port/db: one EVALSHA before each forward")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
