"""Client limits for the ASGI mode: uvicorn's httptools protocol with the gateway's limits.

uvicorn bounds neither the request line, nor the header block, nor the time a client
takes to send its head. This subclass adds ``limits.max_request_line`` (414),
``max_header_size`` and ``max_headers`` (431) and ``header_timeout`` (408, slowloris),
answered as problem+json before the request reaches the app. It also refuses a
Transfer-Encoding the native front-end refuses (400/501) before the app is called,
answers a refusal in a pipeline only after the earlier responses, and frames an
HTTP/1.0 response of unknown length by closing the connection, never with chunks.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from gateway.config.models import Limits
from gateway.edge import status_phrase
from gateway.errors import problem_body
from gateway.exchange import Response
from gateway.frontends.native_request import bad_request, transfer_coding_refusal


class _LimitExceeded(Exception):
    pass


def error_bytes(status: int, kind: str, detail: str) -> bytes:
    body = problem_body(status, kind, status_phrase(status).decode(), detail)
    return answer_bytes(status, body)


def answer_bytes(status: int, body: bytes) -> bytes:
    """A whole problem+json answer after which the connection is closed."""
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/problem+json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, status_phrase(status), len(body), body)
    )


def response_bytes(response: Response) -> bytes:
    return answer_bytes(response.status, response.body)


class CloseDelimitedCycle(RequestResponseCycle):
    """An HTTP/1.0 exchange: a response body of unknown length ends when the connection closes.

    uvicorn adds ``transfer-encoding: chunked`` to any response without a Content-Length,
    whatever the request's version; an HTTP/1.0 client cannot read chunks (RFC 9112 6.1).
    Here such a response gets no framing header at all: uvicorn is told the body is
    "not chunked" and each piece is announced to its length accounting just before it is
    written, so it writes the bytes as they are; an HTTP/1.0 exchange is never kept alive
    by uvicorn, so the connection closes after the last piece (close-delimited, RFC 9112
    6.3 rule 8). Nothing is buffered, so no bound is needed.
    """

    close_delimited = False

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] == "http.response.start":
            if (
                not self.response_started
                and self.chunked_encoding is None
                and self.scope["method"] != "HEAD"
                and message["status"] not in (204, 304)
                and not any(
                    name.lower() in (b"content-length", b"transfer-encoding")
                    for name, _ in message.get("headers", [])
                )
            ):
                self.chunked_encoding = False
                self.close_delimited = True
        elif (
            self.close_delimited
            and message["type"] == "http.response.body"
            and not self.response_complete  # else uvicorn raises: a body after the end
        ):
            self.expected_content_length += len(message.get("body", b""))
        await super().send(message)


def limited_protocol(limits: Limits) -> type[HttpToolsProtocol]:
    # The most a request head may hold: past it, an unfinished head is refused (431)
    # even though no header line has completed yet.
    head_bound = limits.max_request_line + limits.max_header_size

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_timer: asyncio.TimerHandle | None = None
            self._head_size = 0  # bytes of the complete header lines
            self._head_bytes = 0  # bytes fed while the head is unfinished
            self._header_count = 0
            self._chunked = False
            self._in_head = False  # between on_message_begin and on_headers_complete
            self._in_message = False  # between on_message_begin and on_message_complete
            self._begins = 0  # messages begun on this connection
            self._reject: bytes | None = None  # the answer a parser callback chose
            self._refusal: bytes | None = None  # the answer owed; nothing more is read
            self._serving: RequestResponseCycle | None = None  # the cycle the app runs
            self._body_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._body_done()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(limits.header_timeout, self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if self._busy():
                return  # a request is being served; its head was complete
            self._refuse(error_bytes(408, "request-timeout", "the request head took too long"))

        # -- refusals ---------------------------------------------------------------------

        def _busy(self) -> bool:
            """Whether an earlier request still has a response to write."""
            serving = self._serving
            return bool(self.pipeline) or (serving is not None and not serving.response_complete)

        def _refuse(self, answer: bytes) -> None:
            """Answer ``answer`` and close, after the responses owed to earlier requests."""
            if self._refusal is not None:
                return
            self._refusal = answer
            self._disarm()
            self._body_done()
            cycle = self.cycle
            if cycle is not None and self._in_message and not self._in_head:
                # The body of a request whose head was accepted broke: the app must not
                # serve (or go on serving) it.
                for entry in self.pipeline:
                    if entry[0] is cycle:
                        self.pipeline.remove(entry)  # queued, never started
                        break
                else:
                    if cycle is self._serving and not cycle.response_complete:
                        started = cycle.response_started
                        cycle.disconnected = True  # its later sends are dropped
                        cycle.message_event.set()
                        if started:  # too late for an answer: cut the response
                            self.transport.close()
                        else:
                            self._answer()
                        return
            if self._busy():
                self.flow.pause_reading()
                return  # on_response_complete answers once the earlier responses are out
            self._answer()

        def _answer(self) -> None:
            if self._refusal is not None and not self.transport.is_closing():
                self.transport.write(self._refusal)
                self.transport.close()

        def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
            self._serving = cycle
            super()._start_asgi_task(cycle, app)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._refusal is not None and not self._busy():
                self._answer()

        # -- reading ----------------------------------------------------------------------

        def data_received(self, data: bytes) -> None:
            self._unset_keepalive_if_required()
            if self._refusal is not None:
                return  # the connection is refused: what follows is never parsed
            was_head, was_idle, begins = self._in_head, not self._in_message, self._begins
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            except httptools.HttpParserError:
                reject = self._reject or error_bytes(
                    400, "bad-request", "the request is not valid HTTP/1.1"
                )
                self._refuse(reject)
                return
            if self._in_head:
                # on_header runs only once a line is complete: bound the unfinished head.
                if (was_head and self._begins == begins) or (
                    was_idle and self._begins == begins + 1
                ):
                    self._head_bytes += len(data)  # all of this read is the head
                else:
                    # The head began after another message in this read: count what is
                    # known of it (the unfinished line follows the read's last LF once a
                    # header line has completed); later reads are counted whole.
                    tail = len(data) - data.rfind(b"\n") - 1 if self._header_count else 0
                    self._head_bytes = len(self.url) + self._head_size + tail
                if self._head_bytes > head_bound:
                    self._refuse(
                        error_bytes(
                            431,
                            "request-header-fields-too-large",
                            "the request head is too large",
                        )
                    )

        def _raise(self, answer: bytes) -> None:
            self._reject = answer
            raise _LimitExceeded

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_size = 0
            self._head_bytes = 0
            self._header_count = 0
            self._chunked = False
            self._in_head = self._in_message = True
            self._begins += 1
            self._arm()

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            if len(self.url) > limits.max_request_line:
                self._raise(error_bytes(414, "uri-too-long", "the request line is too long"))

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_size += len(name) + len(value) + 4
            self._header_count += 1
            if self._head_size > limits.max_header_size or self._header_count > limits.max_headers:
                self._raise(
                    error_bytes(
                        431, "request-header-fields-too-large", "the request headers are too large"
                    )
                )
            if len(name) == 17 and name.lower() == b"transfer-encoding":
                # As the native front-end: refused before the app (and the upstream)
                # ever sees a body whose length cannot be known.
                refusal = transfer_coding_refusal(value)
                if refusal is not None:
                    self._raise(response_bytes(refusal))
                self._chunked = True
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._disarm()
            self._in_head = False
            version = self.parser.get_http_version()
            if self._chunked and version != "1.1":
                # RFC 9112 6.1: the framing of such a message is faulty.
                refusal = bad_request("Transfer-Encoding is not allowed in an HTTP/1.0 request")
                self._raise(response_bytes(refusal))
            existing = self.cycle
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not existing and version == "1.0":
                # Its task has not run yet: it sends through the subclass's ``send``.
                cycle.__class__ = CloseDelimitedCycle
            self._body_wait()

        # body_timeout: the longest pause between two pieces of a request body. Time the
        # app itself holds reading paused (backpressure) is not the client's fault.
        def _body_wait(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
            self._body_timer = self.loop.call_later(limits.body_timeout, self._body_late)

        def _body_done(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def _body_late(self) -> None:
            self._body_timer = None
            if self.flow is not None and self.flow.read_paused:
                self._body_wait()
                return
            self.transport.close()  # the client stalled mid-body: nothing sensible to answer

        def on_body(self, body: bytes) -> None:
            self._body_wait()
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._in_message = False
            self._body_done()
            super().on_message_complete()

    return LimitedHttpToolsProtocol
