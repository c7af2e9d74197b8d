"""What both front-ends share: response framing and the end-of-request bookkeeping."""

from __future__ import annotations

import asyncio
import logging
import time
from email.utils import formatdate
from typing import TYPE_CHECKING

from gateway.exchange import Exchange, Response

if TYPE_CHECKING:
    from gateway.config.snapshot import Snapshot

log = logging.getLogger("gateway")

_background: set[asyncio.Task[None]] = set()

#: The status logged for a request still unanswered when the drain deadline cuts its
#: connection: the gateway closed it (no answer is sent), not the client (499).
DRAIN_CUT = 503


def body_allowed(method: str, status: int) -> bool:
    return not (method == "HEAD" or status in (204, 304) or 100 <= status < 200)


def framed_headers(
    exchange: Exchange, response: Response
) -> tuple[list[tuple[bytes, bytes]], int | None]:
    """Response headers with framing decided here, and the declared length (None: unknown).

    A whole body gets its own Content-Length; a streamed one keeps the upstream's
    Content-Length or none (then chunked, or close-delimited for HTTP/1.0). HEAD, 204
    and 304 keep their headers as they are. ``Date`` is added when missing.
    """
    dated = False
    if not body_allowed(exchange.method, response.status):
        for key, _ in response.headers:
            if len(key) == 4 and key.lower() == b"date":
                return response.headers, 0
        return [*response.headers, (b"date", http_date())], 0
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    whole = response.stream is None
    for key, value in response.headers:
        size = len(key)
        if size == 4:
            if not dated and key.lower() == b"date":
                dated = True
        elif size == 14 or size == 17:  # only these can be framing: lower-case just them
            lk = key.lower()
            if lk == b"content-length":
                if whole or length is not None:
                    continue
                try:
                    length = int(value)
                except ValueError:
                    continue
            elif lk == b"transfer-encoding":
                continue
        headers.append((key, value))
    if whole:
        length = len(response.body)
        headers.append((b"content-length", b"%d" % length))
    if not dated:
        headers.append((b"date", http_date()))
    return headers, length


_date = (-1, b"")  # the last whole second formatted, and its text


def http_date() -> bytes:
    """The current time as an HTTP ``Date`` value, formatted once per second.

    RFC 9110 6.6.1: a proxy adds ``Date`` to a response that lacks one, and the gateway
    is the origin of its own answers (problem+json, cache hits).
    """
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True).encode())
    return _date[1]


def finish(snapshot: Snapshot, exchange: Exchange, status: int, bytes_out: int) -> None:
    """Metrics, access log, then the exchange's after-response callbacks."""
    try:
        snapshot.finish(exchange, status, bytes_out)
    except Exception:
        log.exception("request bookkeeping failed")
    for callback in exchange.complete_callbacks:
        try:
            result = callback(exchange, status)
        except Exception:
            log.exception("on_complete callback failed")
            continue
        if result is not None:
            task = asyncio.ensure_future(result)
            _background.add(task)
            task.add_done_callback(_done)


def _done(task: asyncio.Task[None]) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("on_complete callback failed", exc_info=task.exception())
