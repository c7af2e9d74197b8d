"""The body of an upgrade request that is served as a plain one, read past httptools' stop.

llhttp ends an upgrade request at its head, body or not, and reports the upgrade. Only a
WebSocket upgrade is tunnelled; any other (``h2c``: ``curl --http2`` sends it with a
POST) is served as a plain request, so the bytes after its head are its body. Both
front-ends then parse on with a fresh parser, fed first a head of the same framing
(:func:`framing_head`) whose callbacks :class:`BodyAfterUpgrade` swallows, then the
bytes that followed the real head: the body reaches the request being served, and
every later request reaches the connection as usual.
"""

from __future__ import annotations

from typing import Protocol


class ParserCallbacks(Protocol):
    """What a connection gives httptools' request parser."""

    def on_message_begin(self) -> None: ...

    def on_url(self, url: bytes) -> None: ...

    def on_header(self, name: bytes, value: bytes) -> None: ...

    def on_headers_complete(self) -> None: ...

    def on_body(self, body: bytes) -> None: ...

    def on_message_complete(self) -> None: ...

    def on_chunk_header(self) -> None: ...

    def on_chunk_complete(self) -> None: ...


def framing_head(length: int | None) -> bytes:
    """A request head framing a body as ``Content-Length: length`` (None: chunked)."""
    if length is None:
        return b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
    return b"POST / HTTP/1.1\r\ncontent-length: %d\r\n\r\n" % length


class BodyAfterUpgrade:
    """Parser callbacks: the framing head's are dropped, every later one is the target's."""

    def __init__(self, target: ParserCallbacks) -> None:
        self.target = target
        self.head = True  # the framing head is being parsed

    def on_message_begin(self) -> None:
        if not self.head:
            self.target.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self.head:
            self.target.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head:
            self.target.on_header(name, value)  # a later head's, or a trailer field

    def on_headers_complete(self) -> None:
        if self.head:
            self.head = False
            return
        self.target.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.target.on_body(body)

    def on_message_complete(self) -> None:
        self.target.on_message_complete()

    def on_chunk_header(self) -> None:
        self.target.on_chunk_header()

    def on_chunk_complete(self) -> None:
        self.target.on_chunk_complete()
