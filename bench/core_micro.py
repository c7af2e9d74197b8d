"""The gateway's own CPU per proxied request, without sockets: a repeatable micro-benchmark.

The native front-end's connection protocol and the native transport's upstream
connection are driven in one process over fake transports: a client "sends" a request
by calling ``data_received``, the upstream answers the moment the request is written
(on the next loop turn), and the client sends its next request when the response is
written. Everything the gateway does per request runs (parsing, routing, the chain,
forwarding headers, the pool, response framing, metrics, the access log to a discarded
buffer); only the system calls and epoll are missing, which is what makes the figure
stable enough to compare two versions of the code on a busy machine.

    .venv/bin/python bench/core_micro.py [--requests 100000] [--connections 16]
        [--policies '{"rate_limit": {"rate": "10000000/s", "key": "ip"}}'] [--path /]
        [--repeat 3] [--profile] [--no-access-log] [--cacheable]

Prints the CPU (process time) per request, best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.frontends.native import NativeFrontend
from gateway.frontends.native_conn import HttpConnection
from gateway.observability.logs import AccessLog
from gateway.runtime import Runtime
from gateway.transport.native import NativeTransport
from gateway.transport.native_conn import Connection

UPSTREAM_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\nHello, world!\n"
)
CACHEABLE_RESPONSE = UPSTREAM_RESPONSE.replace(
    b"\r\n\r\n", b"\r\nCache-Control: public, max-age=3600\r\n\r\n"
)


class _Sink(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)


class UpstreamSide:
    """A fake socket under one upstream Connection: answers each request on the next turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop, response: bytes) -> None:
        self.loop = loop
        self.conn: Connection | None = None
        self.response = response

    def write(self, data: bytes) -> None:
        assert self.conn is not None
        self.loop.call_soon(self.conn.data_received, self.response)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class ClientSide:
    """A fake socket under one front-end connection: a closed-loop client."""

    def __init__(self, bench: Bench, request: bytes) -> None:
        self.bench = bench
        self.request = request
        self.conn: HttpConnection | None = None

    def write(self, data: bytes) -> None:
        bench = self.bench
        bench.done += 1
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        if bench.sent < bench.total:
            bench.sent += 1
            assert self.conn is not None
            bench.loop.call_soon(self.conn.data_received, self.request)
        elif bench.done >= bench.total and not bench.finished.done():
            bench.finished.set_result(None)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class Bench:
    def __init__(self, loop: asyncio.AbstractEventLoop, total: int) -> None:
        self.loop = loop
        self.total = total
        self.sent = 0
        self.done = 0
        self.finished: asyncio.Future[None] = loop.create_future()


def write_config(directory: Path, policies: dict[str, Any], access_log: bool) -> Path:
    config = {
        "version": 1,
        "listen": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "logging": {"level": "warning", "format": "json", "access_log": access_log},
        "reload": {"watch": False},
        "upstreams": {"app": {"url": "http://127.0.0.1:9", "pool": {"max_connections": 256}}},
        "routes": [{"name": "all", "upstream": "app", "match": {"prefix": "/"},
                    "policies": policies}],
    }  # fmt: skip
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def runtime_log_enabled(config_path: Path) -> bool:
    return bool(yaml.safe_load(config_path.read_text())["logging"]["access_log"])


async def run_once(
    config_path: Path, requests: int, connections: int, path: str, response: bytes
) -> float:
    loop = asyncio.get_running_loop()
    access_log = AccessLog(
        runtime_log_enabled(config_path), "json", stream=io.BufferedWriter(_Sink())
    )
    runtime = Runtime.from_file(config_path, access_log=access_log)
    await runtime.start()
    frontend = NativeFrontend(runtime, runtime.config)
    frontend.loop = loop
    # One idle upstream connection per client connection, on fake sockets.
    transport = runtime.pools["app"].transport
    assert isinstance(transport, NativeTransport)
    target = runtime.pools["app"].targets[0]
    pool = transport._pool(target)
    for _ in range(connections):
        conn = Connection(pool, loop)
        side = UpstreamSide(loop, response)
        side.conn = conn
        conn.connection_made(side)  # type: ignore[arg-type]
        conn.in_pool = True
        conn.last_io = loop.time()
        pool.size += 1
        pool.conns.add(conn)
        pool.release(conn)
    bench = Bench(loop, requests)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n".encode()
    clients = []
    for _ in range(connections):
        client = ClientSide(bench, request)
        http = HttpConnection(frontend)
        client.conn = http
        http.connection_made(client)  # type: ignore[arg-type]
        clients.append(http)
    started = time.process_time()
    for http in clients:
        bench.sent += 1
        loop.call_soon(http.data_received, request)
    await bench.finished
    elapsed = time.process_time() - started
    for http in clients:
        if http.task is not None:
            http.task.cancel()
    await runtime.close()
    return elapsed / requests * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--policies", default="{}", help="the route's policies, as JSON")
    parser.add_argument("--path", default="/")
    parser.add_argument(
        "--cacheable",
        action="store_true",
        help="the upstream answers with Cache-Control: public, max-age=3600",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-access-log", action="store_true", help="logging.access_log: false")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one run")
    args = parser.parse_args()
    policies = json.loads(args.policies)
    response = CACHEABLE_RESPONSE if args.cacheable else UPSTREAM_RESPONSE
    uvloop.install()
    with tempfile.TemporaryDirectory() as tmp:
        config_path = write_config(Path(tmp), policies, not args.no_access_log)
        if args.profile:
            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
            asyncio.run(run_once(config_path, args.requests, args.connections, args.path, response))
            profiler.disable()
            stats = pstats.Stats(profiler)
            stats.sort_stats("tottime").print_stats(30)
            return 0
        figures = [
            asyncio.run(run_once(config_path, args.requests, args.connections, args.path, response))
            for _ in range(args.repeat)
        ]
    print(
        f"{min(figures):.2f} us CPU per request (best of {args.repeat}; all: "
        + ", ".join(f"{f:.2f}" for f in figures)
        + f"); {args.requests} requests over {args.connections} connections"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
