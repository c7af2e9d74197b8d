"""An HTTP/1.1 upstream written for the tests, on raw asyncio + httptools.

Paths (query parameters in brackets):

* ``/echo...``          JSON: method, target, headers as received (ordered pairs), body length
                        and sha256, the raw request head (base64)
* ``/status/N``         answers status N (body ``status N`` unless 204/304)
* ``/slow[?delay=s]``   waits, then answers 200
* ``/hang``             never answers
* ``/chunked[?n=&size=]``  a chunked body of n chunks
* ``/huge[?bytes=N]``   N bytes with Content-Length, in 64 KiB writes
* ``/drip[?n=&interval=]``  n chunks, one per interval (a long stream)
* ``/reset-mid-body``   promises 1 MB, sends 1000 bytes, then resets the connection
* ``/close-now``        closes the connection without answering
* ``/hop``              a response with hop-by-hop headers that a proxy must remove
* ``/ws``               WebSocket echo (text and binary frames)
* ``/cacheable...``     200 with ``Cache-Control: max-age=60`` and a counter in the body
* ``/cache/r/NAME``     a response shaped by its query, for the cache tests (see ``cache``):
                        ``cc``, ``etag``, ``lm``, ``vary``, ``tags``, ``cookie``, ``expires``,
                        ``age``, ``date``, ``status``, ``delay``, ``hdr`` (``Name:value|...``
                        extra header lines); answers If-None-Match /
                        If-Modified-Since with 304; any other method bumps the resource's
                        version (and is not counted in ``requests``)
* ``/cache/control/NAME?fail=503|close|none[&location=URL][&header=Name:value]``  make
                        ``/cache/r/NAME`` fail (or not); the Location its answers to unsafe
                        methods carry; a header added to all its answers (304s too)
* ``/cache/stats/NAME`` JSON: requests, 304s and conditional headers seen for NAME
* anything else         like ``/echo``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import email.utils
import hashlib
import json
import os
import socket
import struct
from urllib.parse import parse_qs, urlsplit

import httptools

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
COUNTER = {"n": 0}
LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"


class CacheResource:
    """State of one ``/cache/r/NAME`` resource."""

    def __init__(self) -> None:
        self.requests = 0
        self.not_modified = 0
        self.version = 1
        self.fail = "none"
        self.location: str | None = None
        self.extra: str | None = None
        self.conditionals: list[list[str | None]] = []


CACHE: dict[str, CacheResource] = {}


class Request:
    def __init__(self) -> None:
        self.method = ""
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.raw_head = b""
        self.version = "1.1"
        self.keep_alive = True
        self.upgrade = False


class Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.queue: asyncio.Queue[Request | None] = asyncio.Queue()
        self.current = Request()
        self.buffer = bytearray()
        self.head_done = False
        self.ws: WebSocketEcho | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.task = asyncio.get_running_loop().create_task(self.serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.queue.put_nowait(None)
        if self.ws is not None:
            self.ws.done.set()

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self.ws.feed(data)
            return
        if not self.head_done:
            self.buffer += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            self.pending_upgrade = data[offset:]
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.current = Request()
        self.head_done = False

    def on_url(self, url: bytes) -> None:
        self.current.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        req = self.current
        req.method = self.parser.get_method().decode()
        req.version = self.parser.get_http_version()
        req.keep_alive = self.parser.should_keep_alive()
        req.upgrade = self.parser.should_upgrade()
        end = self.buffer.find(b"\r\n\r\n")
        req.raw_head = bytes(self.buffer[: end + 4]) if end >= 0 else bytes(self.buffer)
        self.buffer = bytearray()
        self.head_done = True
        if req.upgrade:
            self.queue.put_nowait(req)

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        if not self.current.upgrade:
            self.queue.put_nowait(self.current)

    async def serve(self) -> None:
        while True:
            req = await self.queue.get()
            if req is None or self.transport.is_closing():
                return
            try:
                keep = await self.handle(req)
            except ConnectionError:
                return
            if not keep:
                self.transport.close()
                return

    def respond(
        self,
        status: int,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        reason: str = "OK",
    ) -> None:
        head = [f"HTTP/1.1 {status} {reason}"]
        for k, v in headers or []:
            head.append(f"{k}: {v}")
        if status not in (204, 304) and not any(
            k.lower() == "content-length" for k, _ in headers or []
        ):
            head.append(f"Content-Length: {len(body)}")
        if self.head_request:
            body = b""
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)

    async def handle(self, req: Request) -> bool:
        self.head_request = req.method == "HEAD"
        parts = urlsplit(req.target.decode("latin-1"))
        path = parts.path
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if path == "/ws" and req.upgrade:
            return await self.websocket(req)
        if path == "/switch":
            # Switches to h2c whatever the request asked for: a gateway must not relay
            # this to a request it did not forward as an upgrade.
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
            )
            return False
        if path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            body = b"" if code in (204, 304) else f"status {code}".encode()
            self.respond(code, body, [("Content-Type", "text/plain")], reason="Status")
            return req.keep_alive
        if path == "/slow":
            await asyncio.sleep(float(query.get("delay", "1")))
            self.respond(200, b"slow", [("Content-Type", "text/plain")])
            return req.keep_alive
        if path == "/hang":
            await asyncio.sleep(3600)
            return False
        if path == "/chunked":
            n, size = int(query.get("n", "5")), int(query.get("size", "10"))
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
            )
            if self.head_request:
                return req.keep_alive
            for i in range(n):
                chunk = bytes([ord("a") + i % 26]) * size
                self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await asyncio.sleep(0)
            self.transport.write(b"0\r\n\r\n")
            return req.keep_alive
        if path == "/huge":
            total = int(query.get("bytes", str(10 * 1024 * 1024)))
            self.transport.write(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
            if self.head_request:
                return req.keep_alive
            block = b"x" * 65536
            sent = 0
            while sent < total:
                if self.transport.is_closing():
                    return False
                piece = block[: min(65536, total - sent)]
                self.transport.write(piece)
                sent += len(piece)
                if self.transport.get_write_buffer_size() > 1 << 20:
                    await asyncio.sleep(0.001)
                    while self.transport.get_write_buffer_size() > 1 << 19:
                        if self.transport.is_closing():
                            return False
                        await asyncio.sleep(0.001)
            return req.keep_alive
        if path == "/drip":
            n, interval = int(query.get("n", "10")), float(query.get("interval", "0.1"))
            self.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(n):
                chunk = f"tick {i}\n".encode()
                self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await asyncio.sleep(interval)
            self.transport.write(b"0\r\n\r\n")
            return req.keep_alive
        if path == "/reset-mid-body":
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"y" * 1000
            )
            await asyncio.sleep(0.05)
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
            return False
        if path == "/close-now":
            self.transport.abort()
            return False
        if path == "/hop":
            self.respond(
                200,
                b"hop",
                [
                    ("Connection", "X-Secret-Hop, keep-alive"),
                    ("X-Secret-Hop", "1"),
                    ("Keep-Alive", "timeout=5"),
                    ("Proxy-Authenticate", "Basic"),
                    ("Trailer", "X-T"),
                    ("Upgrade", "h2c"),
                    ("X-End-To-End", "kept"),
                ],
            )
            return req.keep_alive
        if path.startswith("/cache/"):
            return await self.cache(req, path, query)
        if path.startswith("/cacheable"):
            COUNTER["n"] += 1
            self.respond(200, f"count {COUNTER['n']}".encode(), [("Cache-Control", "max-age=60")])
            return req.keep_alive
        doc = {
            "method": req.method,
            "target": req.target.decode("latin-1"),
            "version": req.version,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in req.headers],
            "body_length": len(req.body),
            "body_sha256": hashlib.sha256(req.body).hexdigest(),
            "raw_head": base64.b64encode(req.raw_head).decode(),
            "pid": os.getpid(),
        }
        self.respond(200, json.dumps(doc).encode(), [("Content-Type", "application/json")])
        return req.keep_alive

    async def cache(self, req: Request, path: str, query: dict[str, str]) -> bool:
        """Responses shaped for the cache tests; state per resource name."""
        kind, _, name = path[len("/cache/") :].partition("/")
        res = CACHE.setdefault(name, CacheResource())
        if kind == "control":
            res.fail = query.get("fail", "none")
            res.location = query.get("location")
            res.extra = query.get("header")
            self.respond(204)
            return req.keep_alive
        if kind == "stats":
            doc = {"requests": res.requests, "not_modified": res.not_modified,
                   "version": res.version, "conditionals": res.conditionals}  # fmt: skip
            self.respond(200, json.dumps(doc).encode(), [("Content-Type", "application/json")])
            return req.keep_alive
        if req.method not in ("GET", "HEAD"):
            if res.fail.isdigit():  # the unsafe request fails: nothing changes
                self.respond(int(res.fail), b"failing")
                return req.keep_alive
            res.version += 1
            headers = [("Location", res.location)] if res.location else []
            self.respond(int(query.get("status", "204")), b"", headers)
            return req.keep_alive
        res.requests += 1
        if "delay" in query:
            await asyncio.sleep(float(query["delay"]))
        if res.fail == "close":
            self.transport.abort()
            return False
        if res.fail != "none":
            self.respond(int(res.fail), b"failing", [("Cache-Control", "no-store")])
            return req.keep_alive
        received = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in req.headers}
        etag = f'"v{res.version}"'
        headers: list[tuple[str, str]] = []
        if "cc" in query:
            headers.append(("Cache-Control", query["cc"]))
        if query.get("etag") == "1":
            headers.append(("ETag", etag))
        if query.get("lm") == "1":
            headers.append(("Last-Modified", LAST_MODIFIED))
        if "vary" in query:
            headers.append(("Vary", query["vary"]))
        if "tags" in query:
            headers.append(("Surrogate-Key", query["tags"]))
        if query.get("cookie") == "1":
            headers.append(("Set-Cookie", f"session={res.requests}"))
        if "expires" in query:
            headers.append(("Expires", query["expires"]))
        if "age" in query:
            headers.append(("Age", query["age"]))
        if query.get("date") == "1":
            headers.append(("Date", email.utils.formatdate(usegmt=True)))
        for line in [*query.get("hdr", "").split("|"), res.extra or ""]:
            key, sep, value = line.partition(":")
            if sep:
                headers.append((key, value))
        inm, ims = received.get("if-none-match"), received.get("if-modified-since")
        if inm is not None or ims is not None:
            res.conditionals.append([inm, ims])
        matches = (inm is not None and query.get("etag") == "1" and etag in inm) or (
            inm is None and ims == LAST_MODIFIED and query.get("lm") == "1"
        )
        if matches:
            res.not_modified += 1
            self.respond(304, b"", headers, reason="Not Modified")
            return req.keep_alive
        shown = {h: received.get(h.lower()) for h in query.get("vary", "").split(",") if h}
        body = json.dumps({"name": name, "n": res.requests, "version": res.version,
                           "vary": shown}).encode()  # fmt: skip
        headers.append(("Content-Type", "application/json"))
        self.respond(int(query.get("status", "200")), body, headers)
        return req.keep_alive

    async def websocket(self, req: Request) -> bool:
        key = next((v for k, v in req.headers if k.lower() == b"sec-websocket-key"), b"")
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        self.transport.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        self.ws = WebSocketEcho(self.transport)
        leftover = getattr(self, "pending_upgrade", b"")
        if leftover:
            self.ws.feed(leftover)
        await self.ws.done.wait()
        return False


class WebSocketEcho:
    """Minimal RFC 6455 server side: unmask client frames, echo them unmasked."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.buffer = bytearray()
        self.done = asyncio.Event()

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            frame = self._parse()
            if frame is None:
                return
            opcode, payload = frame
            if opcode == 0x8:
                self._send(0x8, payload[:2] or b"\x03\xe8")
                self.transport.close()
                self.done.set()
                return
            if opcode == 0x9:
                self._send(0xA, payload)
            elif opcode in (0x1, 0x2):
                self._send(opcode, payload)

    def _parse(self) -> tuple[int, bytes] | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        opcode = buf[0] & 0x0F
        masked = buf[1] & 0x80
        length = buf[1] & 0x7F
        pos = 2
        if length == 126:
            if len(buf) < 4:
                return None
            length = struct.unpack(">H", buf[2:4])[0]
            pos = 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length = struct.unpack(">Q", buf[2:10])[0]
            pos = 10
        mask = b""
        if masked:
            if len(buf) < pos + 4:
                return None
            mask = bytes(buf[pos : pos + 4])
            pos += 4
        if len(buf) < pos + length:
            return None
        payload = bytes(buf[pos : pos + length])
        if masked:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        del buf[: pos + length]
        return opcode, payload

    def _send(self, opcode: int, payload: bytes) -> None:
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([n])
        elif n < 65536:
            head += bytes([126]) + struct.pack(">H", n)
        else:
            head += bytes([127]) + struct.pack(">Q", n)
        self.transport.write(head + payload)


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, host, port, reuse_address=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.host, args.port))
