"""What both front-ends share: response framing and the end-of-request bookkeeping."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from gateway.exchange import Exchange, Response

if TYPE_CHECKING:
    from gateway.config.snapshot import Snapshot

log = logging.getLogger("gateway")

_background: set[asyncio.Task[None]] = set()


def body_allowed(method: str, status: int) -> bool:
    return not (method == "HEAD" or status in (204, 304) or 100 <= status < 200)


def framed_headers(
    exchange: Exchange, response: Response
) -> tuple[list[tuple[bytes, bytes]], int | None]:
    """Response headers with framing decided here, and the declared length (None: unknown).

    A whole body gets its own Content-Length; a streamed one keeps the upstream's
    Content-Length or none (then chunked, or close-delimited for HTTP/1.0). HEAD, 204
    and 304 keep their headers as they are.
    """
    if not body_allowed(exchange.method, response.status):
        return response.headers, 0
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    whole = response.stream is None
    for key, value in response.headers:
        size = len(key)
        if size == 14 or size == 17:  # only these can be framing: lower-case just them
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
    return headers, length


def finish(snapshot: Snapshot, exchange: Exchange, status: int, bytes_out: int) -> None:
    """Metrics, access log, then the exchange's after-response callbacks."""
    try:
        snapshot.finish(exchange, status, bytes_out)
    except Exception:
        log.exception("request bookkeeping failed")
    callbacks = exchange.pending_callbacks
    if callbacks is None:
        return
    for callback in callbacks:
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
