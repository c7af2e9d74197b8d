"""Client limits for the ASGI mode: uvicorn's httptools protocol with the gateway's limits.

uvicorn bounds neither the request line, nor the header block, nor the time a client
takes to send its head. This subclass adds ``limits.max_request_line`` (414),
``max_header_size`` and ``max_headers`` (431) and ``header_timeout`` (408, slowloris),
answered as problem+json before the request reaches the app. It also refuses, before
the app is called, what the native front-end refuses: a Transfer-Encoding other than
chunked (400/501), a version other than HTTP/1.0 and 1.1 (505), an HTTP/1.1 request
without exactly one Host, a malformed Host, a target that is neither a path nor an
absolute URL (``*`` only for OPTIONS) (400). An absolute-form target becomes
origin-form and its authority replaces Host (RFC 9112 3.2.2). Trailer fields of a
chunked request are read and dropped, never merged into the headers (RFC 9110 6.5.1),
and an HTTP/1.0 client never gets ``100 Continue`` (RFC 9110 10.1.1). Refusals are
problem+json with ``Cache-Control: no-store``, answered in a pipeline only after the
earlier responses. An HTTP/1.0 response of unknown length is framed by closing the
connection, never with chunks.

The per-request path is uvicorn's, made cheaper for any ASGI app: the scope is built in
one go once the head is complete, responses go through :class:`FastCycle`, and the
connection's timers (head, body, keep-alive) are deadlines on one timer per connection,
re-armed only when a deadline comes closer, not three timer objects per request. The
keep-alive deadline is ``limits.keepalive_timeout`` as given (uvicorn's own
``timeout_keep_alive`` is whole seconds and unused here).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any, NoReturn

import httptools
from uvicorn._types import HTTPScope
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from gateway.config.models import Limits
from gateway.edge import problem_response, status_phrase
from gateway.exchange import Response
from gateway.frontends.common import http_date
from gateway.frontends.host_check import valid_host
from gateway.frontends.native_request import (
    BadTarget,
    bad_request,
    connect_refusal,
    head_refusal,
    origin_form,
    too_large,
    transfer_coding_refusal,
    unknown_method_refusal,
)
from gateway.frontends.trailers import TrailerBound
from gateway.frontends.upgrade_body import BodyAfterUpgrade, framing_head
from gateway.frontends.uvicorn_cycle import Connection, FastCycle

# What the connection's one deadline is for.
IDLE, HEAD, BODY = 1, 2, 3
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


class _LimitExceeded(Exception):
    pass


def error_bytes(status: int, kind: str, title: str, detail: str) -> bytes:
    """The front-end's own problem+json refusal, worded as the native front-end's."""
    return response_bytes(problem_response(None, status, kind, title, detail))


def response_bytes(response: Response) -> bytes:
    """A whole answer (its headers, ``Date``, ``Connection: close``), then the connection closes.

    The headers are the problem's own (``Content-Type``, ``Content-Length``,
    ``Cache-Control: no-store``): a refusal is about one connection, never to be stored.
    """
    status = response.status
    lines = b"".join(b"%s: %s\r\n" % pair for pair in response.headers)
    return b"HTTP/1.1 %d %s\r\n%sdate: %s\r\nconnection: close\r\n\r\n%s" % (
        status,
        status_phrase(status),
        lines,
        http_date(),
        response.body,
    )


def limited_protocol(limits: Limits) -> type[HttpToolsProtocol]:
    # The most a request head may hold: past it, an unfinished head is refused (431)
    # even though no header line has completed yet.
    head_bound = limits.max_request_line + limits.max_header_size
    max_line = limits.max_request_line
    max_header_size = limits.max_header_size
    max_headers = limits.max_headers
    header_timeout = limits.header_timeout
    body_timeout = limits.body_timeout
    # Exact, where uvicorn's own ``timeout_keep_alive`` is whole seconds.
    keepalive_timeout = limits.keepalive_timeout
    known_names: set[bytes] = set()  # response header names that passed uvicorn's check

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._conn: Connection | None = None
            self._deadline = 0.0
            self._deadline_kind = 0  # IDLE, HEAD, BODY, or 0: none
            self._timer: asyncio.TimerHandle | None = None
            self._timer_at = 0.0
            self._head_size = 0  # bytes of the complete header lines
            self._head_bytes = 0  # bytes fed while the head is unfinished
            self._header_count = 0
            self._chunked = False
            self._has_body = False
            self._content_length = 0
            # The trailer section of a chunked body, bounded as the native front-end
            # bounds it (gateway.frontends.trailers).
            self._trailers = TrailerBound(max_header_size)
            self._hosts = 0  # Host lines in the head
            self._splice = False  # a non-WebSocket upgrade with a body: read it on
            self._host = b""  # the last one's value
            self._in_head = False  # between on_message_begin and on_headers_complete
            self._in_message = False  # between on_message_begin and on_message_complete
            self._begins = 0  # messages begun on this connection
            self._reject: bytes | None = None  # the answer a parser callback chose
            self._refusal: bytes | None = None  # the answer owed; nothing more is read
            self._serving: RequestResponseCycle | None = None  # the cycle the app runs
            self._reset_contextvars = self.config.reset_contextvars

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._conn = Connection(
                self.loop,
                transport,
                self.flow,
                self.server_state,
                self.logger,
                self.access_logger,
                self.access_log,
                known_names,
            )
            # A fresh connection has header_timeout to send its first head.
            self._set_deadline(HEAD, header_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self._deadline_kind = 0
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)

        # -- deadlines: one timer, fired at the earliest deadline, re-armed if moved on ---

        def _set_deadline(self, kind: int, seconds: float) -> None:
            at = self.loop.time() + seconds
            self._deadline_kind = kind
            self._deadline = at
            timer = self._timer
            if timer is None or self._timer_at > at:
                if timer is not None:
                    timer.cancel()
                self._timer = self.loop.call_at(at, self._on_deadline)
                self._timer_at = at

        def _on_deadline(self) -> None:
            self._timer = None
            kind = self._deadline_kind
            if not kind:
                return
            if self.loop.time() < self._deadline:  # it moved on since the timer was set
                self._timer = self.loop.call_at(self._deadline, self._on_deadline)
                self._timer_at = self._deadline
                return
            self._deadline_kind = 0
            if kind == IDLE:
                self.timeout_keep_alive_handler()
            elif kind == HEAD:
                self._head_late()
            else:
                self._body_late()

        def _head_late(self) -> None:
            if self._busy():  # an earlier response is still owed: the client waits on us
                self._set_deadline(HEAD, header_timeout)
                return
            detail = f"the request head did not arrive within {header_timeout}s"
            self._refuse(error_bytes(408, "request-timeout", "Request Timeout", detail))

        def _body_late(self) -> None:
            # The longest pause between two pieces of a request body. Time the app itself
            # holds reading paused (backpressure) is not the client's fault.
            if self.flow is not None and self.flow.read_paused:
                self._set_deadline(BODY, body_timeout)
                return
            self.transport.close()  # the client stalled mid-body: nothing sensible to answer

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
            self._deadline_kind = 0
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
            if self._reset_contextvars or not isinstance(cycle, FastCycle):
                super()._start_asgi_task(cycle, app)
                return
            # The cycle leaves ``tasks`` itself when it ends (no done callback).
            cycle.task = task = self.loop.create_task(cycle.run_asgi(app))
            self.tasks.add(task)

        def on_response_complete(self) -> None:
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            self.flow.resume_reading()
            if self.pipeline:
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
            elif self._refusal is not None:
                self._answer()
            elif not self._in_message:
                self._set_deadline(IDLE, keepalive_timeout)

        # -- reading ----------------------------------------------------------------------

        def data_received(self, data: bytes) -> None:
            if self._refusal is not None:
                return  # the connection is refused: what follows is never parsed
            if self._deadline_kind == IDLE:  # the client talks: its head is due in time
                self._set_deadline(HEAD, header_timeout)
            while True:
                was_head, was_idle, begins = self._in_head, not self._in_message, self._begins
                try:
                    self.parser.feed_data(data)
                except httptools.HttpParserUpgrade as exc:
                    if self._should_upgrade():
                        self.handle_websocket_upgrade()
                        return
                    # Not a WebSocket upgrade: the request is served as a plain one (the
                    # forwarding step drops its Upgrade), so what follows it is its body,
                    # then the next request, as on the native front-end.
                    data = data[exc.args[0] :]
                    if self._splice:
                        self._splice = False
                        length = None if self._chunked else self._content_length
                        parser = httptools.HttpRequestParser(BodyAfterUpgrade(self))
                        parser.feed_data(framing_head(length))
                        self.parser = parser
                    if data and self._refusal is None:
                        continue
                    return
                except httptools.HttpParserError as exc:
                    # As the native front-end: the parser's own reason is the detail, and
                    # a well-formed method it does not know is 501.
                    detail = str(exc) or "the request is not valid HTTP/1.1"
                    if isinstance(exc, httptools.HttpParserInvalidMethodError):
                        first = was_idle and self._begins == begins + 1
                        refusal = unknown_method_refusal(data if first else None, detail)
                    else:
                        refusal = bad_request(detail)
                    self._refuse(self._reject or response_bytes(refusal))
                    return
                break
            trailers = self._trailers
            if trailers.open:
                if trailers.fed(data):
                    self._refuse(response_bytes(too_large(trailers.detail())))
            elif self._in_head:
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
                    detail = f"the request head is larger than {head_bound} bytes"
                    self._refuse(response_bytes(too_large(detail)))

        def on_chunk_header(self) -> None:
            self._trailers.chunk_header()

        def on_chunk_complete(self) -> None:
            self._trailers.open = False

        def _raise(self, answer: bytes) -> NoReturn:
            self._reject = answer
            raise _LimitExceeded

        def on_message_begin(self) -> None:
            self.url = b""
            self.headers = []
            self.expect_100_continue = False
            self._head_size = 0
            self._head_bytes = 0
            self._header_count = 0
            self._chunked = False
            self._has_body = False
            self._content_length = 0
            self._hosts = 0
            self._host = b""
            self._in_head = self._in_message = True
            self._begins += 1
            if self._deadline_kind != HEAD:
                self._set_deadline(HEAD, header_timeout)

        def on_url(self, url: bytes) -> None:
            self.url += url
            if len(self.url) > max_line:
                detail = f"the request line is longer than {max_line} bytes"
                self._raise(error_bytes(414, "uri-too-long", "URI Too Long", detail))

        def on_header(self, name: bytes, value: bytes) -> None:
            if not self._in_head:
                # A trailer field of a chunked body: counted against its own bound, then
                # dropped. It is never merged into the header section (RFC 9110 6.5.1),
                # where it could pose as Host, Authorization or X-Forwarded-For.
                trailers = self._trailers
                if trailers.field(name, value):
                    self._raise(response_bytes(too_large(trailers.detail())))
                return
            self._head_size += len(name) + len(value) + 4
            self._header_count += 1
            if self._head_size > max_header_size:
                detail = f"the header fields exceed {max_header_size} bytes"
                self._raise(response_bytes(too_large(detail)))
            if self._header_count > max_headers:
                self._raise(response_bytes(too_large(f"more than {max_headers} header fields")))
            name = name.lower()
            size = len(name)
            if size == 4:
                if name == b"host":
                    self._hosts += 1
                    self._host = value
            elif size == 14:
                if name == b"content-length":
                    self._content_length = int(value)  # httptools checked the digits
                    self._has_body = self._content_length > 0
            elif size == 17:
                if name == b"transfer-encoding":
                    # As the native front-end: refused before the app (and the upstream)
                    # ever sees a body whose length cannot be known.
                    refusal = transfer_coding_refusal(value)
                    if refusal is not None:
                        self._raise(response_bytes(refusal))
                    self._chunked = self._has_body = True
            elif size == 6 and name == b"expect" and value.lower() == b"100-continue":
                self.expect_100_continue = True
            self.headers.append((name, value))

        def on_headers_complete(self) -> None:
            parser = self.parser
            version = parser.get_http_version()
            raw_method = parser.get_method()
            method = _METHODS.get(raw_method) or raw_method.decode("ascii")
            url = self._check_head(version, method)
            self._in_head = False  # after the checks: a refusal here is not a broken body
            if url[:1] == b"/" and b"#" not in url:
                raw_path, _, query = url.partition(b"?")
            else:
                parsed = httptools.parse_url(url)
                raw_path, query = parsed.path, parsed.query or b""
            path = raw_path.decode("ascii")
            if "%" in path:
                path = urllib.parse.unquote(path)
            root_path = self.root_path
            if root_path:
                path = root_path + path
                raw_path = root_path.encode("ascii") + raw_path
            scope: HTTPScope = {
                "type": "http",
                "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
                "http_version": version,
                "server": self.server,
                "client": self.client,
                "scheme": self.scheme,  # type: ignore[typeddict-item]
                "root_path": root_path,
                "headers": self.headers,
                "state": self.app_state.copy(),
                "method": method,
                "path": path,
                "raw_path": raw_path,
                "query_string": query,
            }
            self.scope = scope
            if parser.should_upgrade() and self._should_upgrade():
                self._deadline_kind = 0  # the connection leaves this protocol
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                return
            if self._has_body:
                self._set_deadline(BODY, body_timeout)
            else:
                self._deadline_kind = 0
            app = self.app
            limit = self.limit_concurrency
            if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
                app = service_unavailable
                self.logger.warning("Exceeded concurrency limit.")
            existing = self.cycle
            assert self._conn is not None
            self.cycle = cycle = FastCycle(
                scope,
                self._conn,
                version != "1.0" and parser.should_keep_alive(),
                # RFC 9110 10.1.1: an HTTP/1.0 client's expectation is ignored.
                self.expect_100_continue and version == "1.1",
                version == "1.0",
                self.on_response_complete,
            )
            if existing is None or existing.response_complete:
                self._start_asgi_task(cycle, app)
            else:  # pipelined: it waits for the earlier responses
                self.flow.pause_reading()
                self.pipeline.appendleft((cycle, app))

        def _check_head(self, version: str, method: str) -> bytes:
            """The request target in origin-form, or raise the refusal (as native's)."""
            if method == "CONNECT":
                self._raise(response_bytes(connect_refusal()))
            upgrade = self._has_body and bool(self.parser.should_upgrade())
            websocket = upgrade and self._should_upgrade()
            refusal = head_refusal(version, self._hosts, self._chunked, websocket)
            if refusal is not None:
                self._raise(response_bytes(refusal))
            # Another upgrade is served as a plain request: its body follows the point
            # where httptools stops (see data_received).
            self._splice = upgrade and not websocket
            url = self.url
            host: bytes | None = self._host if self._hosts else None
            if url[:1] != b"/":
                try:
                    url, authority = origin_form(url, method)
                except BadTarget as exc:
                    self._raise(response_bytes(bad_request(str(exc))))
                if authority is not None:
                    # RFC 9112 3.2.2: the target's authority replaces Host, for routing
                    # and upstream alike.
                    headers = [(k, v) for k, v in self.headers if k != b"host"]
                    headers.insert(0, (b"host", authority))
                    self.headers = headers
                    host = authority
            if host is not None and not valid_host(host):
                self._raise(response_bytes(bad_request("the Host header is not a valid host")))
            return url

        def on_body(self, body: bytes) -> None:
            self._trailers.open = False
            if self._deadline_kind == BODY:  # the next piece is due within body_timeout
                self._deadline = self.loop.time() + body_timeout
            if self.parser.should_upgrade() and self._should_upgrade():
                return
            cycle = self.cycle
            if cycle.response_complete:
                return
            cycle.body += body
            if len(cycle.body) > HIGH_WATER_LIMIT:
                self.flow.pause_reading()
            cycle.message_event.set()

        def on_message_complete(self) -> None:
            if self._splice:
                return  # llhttp ends an upgrade at its head: the body is still to come
            self._in_message = self._trailers.open = False
            if self._deadline_kind == BODY:
                self._deadline_kind = 0
            if self.parser.should_upgrade() and self._should_upgrade():
                return
            cycle = self.cycle
            if cycle.response_complete:  # answered before its body ended: now it is idle
                self._set_deadline(IDLE, keepalive_timeout)
                return
            cycle.more_body = False
            cycle.message_event.set()

    return LimitedHttpToolsProtocol
