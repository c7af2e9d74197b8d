"""Client limits for the ASGI mode: uvicorn's httptools protocol with the gateway's limits.

uvicorn bounds neither the request line, nor the header block, nor the time a client
takes to send its head. This subclass adds ``limits.max_request_line`` (414),
``max_header_size`` and ``max_headers`` (431) and ``header_timeout`` (408, slowloris),
answered as problem+json before the request reaches the app.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.config.models import Limits
from gateway.edge import status_phrase
from gateway.errors import problem_body


class _LimitExceeded(Exception):
    pass


def error_bytes(status: int, kind: str, detail: str) -> bytes:
    body = problem_body(status, kind, status_phrase(status).decode(), detail)
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/problem+json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, status_phrase(status), len(body), body)
    )


def limited_protocol(limits: Limits) -> type[HttpToolsProtocol]:
    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_timer: asyncio.TimerHandle | None = None
            self._head_size = 0
            self._header_count = 0
            self._reject: tuple[int, str, str] | None = None
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
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being served; its head was complete
            if not self.transport.is_closing():
                self.transport.write(
                    error_bytes(408, "request-timeout", "the request head took too long")
                )
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            self._unset_keepalive_if_required()
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
            except httptools.HttpParserError:
                reject = self._reject or (400, "bad-request", "the request is not valid HTTP/1.1")
                self._disarm()
                self.transport.write(error_bytes(*reject))
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_size = 0
            self._header_count = 0
            self._arm()

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            if len(self.url) > limits.max_request_line:
                self._reject = (414, "uri-too-long", "the request line is too long")
                raise _LimitExceeded

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_size += len(name) + len(value) + 4
            self._header_count += 1
            if self._head_size > limits.max_header_size or self._header_count > limits.max_headers:
                self._reject = (
                    431,
                    "request-header-fields-too-large",
                    "the request headers are too large",
                )
                raise _LimitExceeded
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()
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
            self._body_done()
            super().on_message_complete()

    return LimitedHttpToolsProtocol
