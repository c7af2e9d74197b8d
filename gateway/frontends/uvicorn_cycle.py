"""The response side of the ASGI mode: a cheaper uvicorn ``RequestResponseCycle``.

It serves any ASGI app exactly as uvicorn's cycle does (same checks, same errors, same
framing decisions), at a fraction of the cost per response:

- the head is checked as uvicorn's two per-header patterns check it, but in one pass
  over the whole head (one ``bytes.translate``), with names already seen by the
  server not searched again (uvicorn's patterns run only to name an offender);
- header names go out as the app spelled them (uvicorn lower-cases each one; names are
  case-insensitive, and a proxy keeps its upstream's spelling, as the native front-end
  does); only names of a framing header's length are lower-cased, to be recognised;
- the head waits for the first body message and leaves in the same write (one send
  system call per response, not two). If the app awaits anything in between (a streamed
  body's first chunk), the head is written at the next turn of the loop, so it is never
  held back;
- an HTTP/1.0 response of unknown length is close-delimited, never chunked (RFC 9112
  6.1: an HTTP/1.0 client cannot read chunks); HTTP/1.0 is never kept alive here, so the
  connection's end is the body's end;
- a response to HEAD, or with status 1xx, 204 or 304, has no body whatever its
  ``Content-Length`` says (RFC 9110 8.6, 9.3.2, 15.4.5): the header goes out as given
  and the connection stays open, where uvicorn's cycle reports a body shorter than
  announced and closes;
- a status with no phrase of its own (any three digits) gets an empty reason phrase
  (RFC 9112 4 allows it), where uvicorn's table has only 100-599;
- an upstream body that breaks after the head (``UpstreamBodyError``, which the app
  has already logged in one line) cuts the connection without a traceback;
- no closure is built per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

from uvicorn._types import ASGI3Application, ASGISendEvent, HTTPScope
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from gateway.errors import UpstreamBodyError

# Every byte uvicorn's value pattern allows (tab, printable ASCII, 0x80-0xff); the
# bytes its name pattern allows are a subset. Deleting them from a head leaves exactly
# one CR LF per line when every value is clean; a control byte, a lone CR or LF, or a
# CR LF smuggled inside a value leaves something else.
_CLEAN = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
#: Header names known to pass uvicorn's name pattern, per server (bounded).
MAX_KNOWN_NAMES = 1024
_CHUNKED_LINE = b"transfer-encoding: chunked\r\n"
_CLOSE_LINE = b"connection: close\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
#: A body up to this size is copied behind the head for one write; larger ones are not.
_JOIN_LIMIT = 16384

#: An ASGI app as called here: what it returns is checked, not assumed to be None.
_AnyApp = Callable[..., Awaitable[object]]


def _nothing() -> None:
    return None


class Connection:
    """What a cycle needs from its connection, shared by all of that connection's cycles."""

    __slots__ = (
        "access_log",
        "access_logger",
        "flow",
        "logger",
        "loop",
        "names",
        "server_state",
        "transport",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.Transport,
        flow: FlowControl,
        server_state: Any,
        logger: Any,
        access_logger: Any,
        access_log: bool,
        names: set[bytes],
    ) -> None:
        self.loop = loop
        self.transport = transport
        self.flow = flow
        self.server_state = server_state  # its default headers change while it runs
        self.logger = logger
        self.access_logger = access_logger
        self.access_log = access_log
        self.names = names  # header names already checked, shared by the server's connections


class FastCycle(RequestResponseCycle):
    """One request and its response; the attributes uvicorn's protocol reads are kept."""

    # Every cycle starts so; assigning an attribute later shadows these.
    disconnected = False
    more_body = True
    response_started = False
    response_complete = False
    chunked_encoding: bool | None = None
    expected_content_length = 0
    close_delimited = False
    bodiless = False  # HEAD, 1xx, 204, 304: whatever is sent as a body is dropped
    task: asyncio.Task[None] | None = None  # set by the protocol that starts it
    _head: bytes | None = None  # written with the first body message, or at the next turn

    def __init__(
        self,
        scope: HTTPScope,
        conn: Connection,
        keep_alive: bool,
        expect_100_continue: bool,
        http10: bool,
        on_response: Callable[[], None],
    ) -> None:
        # No super().__init__(): everything it sets is set here or on the class.
        self.scope = scope
        self.conn = conn
        self.transport = conn.transport
        self.flow = conn.flow
        self.logger = conn.logger
        self.message_event = asyncio.Event()
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect_100_continue
        self.http10 = http10
        self.on_response = on_response
        self.body = bytearray()

    async def run_asgi(self, app: ASGI3Application) -> None:
        try:
            # typed as returning None, which is what this checks at run time
            result: object = await cast(_AnyApp, app)(self.scope, self.receive, self.send)
        except BaseException as exc:
            if self.response_started and isinstance(exc, UpstreamBodyError):
                # The app logged it in one line; a started response can only be cut.
                self.transport.close()
                return
            if isinstance(exc, asyncio.CancelledError):
                # Cancelled by the server's shutdown at the drain deadline: the request is
                # cut as the native front-end cuts it, without an answer or a traceback.
                self.transport.abort()
                return
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started:
                await self.send_500_response()
            else:
                self.transport.close()
        else:
            if result is not None:
                msg = "ASGI callable should return None, but returned '%s'."
                self.logger.error(msg, result)
                self.transport.close()
            elif not self.response_started and not self.disconnected:
                self.logger.error("ASGI callable returned without starting response.")
                await self.send_500_response()
            elif not self.response_complete and not self.disconnected:
                self.logger.error("ASGI callable returned without completing response.")
                self.transport.close()
        finally:
            self.on_response = _nothing
            # Here rather than a done callback on the task: one callback less per request.
            self.conn.server_state.tasks.discard(self.task)

    async def send(self, message: ASGISendEvent) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{kind}'."
                )
            self._start(message["status"], message.get("headers", ()))  # type: ignore[typeddict-item,arg-type]
        elif not self.response_complete:
            if kind != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{kind}'.")
            self._body(message.get("body", b""), message.get("more_body", False))  # type: ignore[arg-type]
        else:
            raise RuntimeError(
                f"Unexpected ASGI message '{kind}' sent, after response already completed."
            )

    def _start(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        status_line = STATUS_LINE.get(status)
        if status_line is None:
            if not 100 <= status <= 999:  # before the response starts: the client gets a 500
                raise RuntimeError(f"Invalid HTTP status code {status!r}.")
            status_line = b"HTTP/1.1 %d \r\n" % status  # no phrase known: an empty one
        self.response_started = True
        self.waiting_for_100_continue = False
        conn = self.conn
        defaults = conn.server_state.default_headers
        if defaults:
            headers = [*defaults, *headers]
        if conn.access_log:
            scope = self.scope
            conn.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(scope),
                scope["method"],
                get_path_with_query_string(scope),
                scope["http_version"],
                status,
            )
        parts = [status_line]
        close = False
        known = conn.names
        clean = True
        for name, value in headers:
            if name not in known:
                if HEADER_RE.search(name) is not None:
                    clean = False
                elif len(known) < MAX_KNOWN_NAMES:
                    known.add(name)
            size = len(name)
            if size == 14 or size == 17 or size == 10:
                lowered = name.lower()
                if lowered == b"content-length":
                    if self.chunked_encoding is None:
                        self.expected_content_length = int(value)
                        self.chunked_encoding = False
                elif lowered == b"transfer-encoding":
                    if value.lower() == b"chunked":
                        self.expected_content_length = 0
                        self.chunked_encoding = True
                elif lowered == b"connection" and b"close" in [
                    token.lower().strip() for token in value.split(b",")
                ]:
                    self.keep_alive = False
                    close = True
            parts += (name, b": ", value, b"\r\n")
        given = len(parts)
        if not self.keep_alive and not close:
            parts.append(_CLOSE_LINE)
        if self.scope["method"] == "HEAD" or status == 204 or status == 304 or status < 200:
            # No body whatever Content-Length says: the header is passed on as given.
            self.bodiless = True
            self.expected_content_length = 0
            self.chunked_encoding = False
        elif self.chunked_encoding is None:
            if self.http10:
                self.chunked_encoding = False
                self.close_delimited = True
            else:
                self.chunked_encoding = True
                parts.append(_CHUNKED_LINE)
        parts.append(b"\r\n")
        head = b"".join(parts)
        lines = (given - 1) // 4 + len(parts) - given + 1  # each part after ``given`` is one
        if not clean or head.translate(None, _CLEAN) != b"\r\n" * lines:
            _invalid(parts[1:given:4], parts[3:given:4])
        self._head = head
        conn.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write a head still waiting for its body: the app is waiting on something else."""
        head = self._head
        if head is not None:
            self._head = None
            if not self.disconnected and not self.transport.is_closing():
                self.transport.write(head)

    def _body(self, body: bytes, more_body: bool) -> None:
        if self.bodiless:
            data = b""
        elif self.chunked_encoding:
            if body:
                data = b"%x\r\n%b\r\n" % (len(body), body)
                if not more_body:
                    data += _LAST_CHUNK
            else:
                data = b"" if more_body else _LAST_CHUNK
        elif self.close_delimited:
            data = body
        else:
            size = len(body)
            if size > self.expected_content_length:
                self._flush()  # uvicorn's head is out before this error: so is this one's
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= size
            data = body
        head = self._head
        if head is not None:
            self._head = None
            if not data:
                self.transport.write(head)
            elif len(data) <= _JOIN_LIMIT:
                self.transport.write(head + data)
            else:
                self.transport.writelines((head, data))
        elif data:
            self.transport.write(data)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()


def _invalid(names: list[bytes], values: list[bytes]) -> None:
    """Raise uvicorn's error for the first header its patterns refuse."""
    for name, value in zip(names, values, strict=True):
        if HEADER_RE.search(name):
            raise RuntimeError("Invalid HTTP header name.")
        if HEADER_VALUE_RE.search(value):
            raise RuntimeError("Invalid HTTP header value.")
    raise RuntimeError("Invalid HTTP header value.")


__all__ = ["Connection", "FastCycle"]
