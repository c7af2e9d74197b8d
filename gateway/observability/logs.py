"""Structured logs: JSON lines on stdout, one per request (access log) and per event.

Access lines never contain bodies, and header values of Authorization/Cookie never
appear anywhere. Writes are buffered and flushed every 100 ms and at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import IO, Any

import orjson

from gateway.exchange import Exchange

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}  # fmt: skip


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


_second: list[object] = [-1, ""]  # the last whole second formatted, and its text


def _iso(ts: float) -> str:
    """RFC 3339 UTC with milliseconds; the seconds part is formatted once per second."""
    whole = int(ts)
    if _second[0] != whole:
        _second[0], _second[1] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{int((ts - whole) * 1000):03d}Z"


def setup_logging(level: str, fmt: str, stream: IO[str] | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("gateway")
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    root.propagate = False


class AccessLog:
    """Buffered JSON-lines access log."""

    def __init__(self, enabled: bool, fmt: str = "json", stream: IO[bytes] | None = None) -> None:
        self.enabled = enabled
        self.text = fmt == "text"
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._buffer: list[bytes] = []
        self._scheduled = False

    def write(
        self, exchange: Exchange, status: int, bytes_out: int, duration: float, route: str
    ) -> None:
        if not self.enabled:
            return
        if self.text:
            path = exchange.path
            if not path.isprintable():  # a decoded %0A must not forge a log line
                path = path.encode("unicode_escape").decode("ascii")
            line = (
                f'{exchange.client_ip} "{exchange.method} {path}" {status} '
                f"{bytes_out} {duration * 1000:.2f}ms route={route} trace={exchange.trace_id}\n"
            ).encode()
        else:
            doc = {
                "time": _iso(time.time()),
                "type": "access",
                "route": route,
                "method": exchange.method,
                "path": exchange.path,
                "status": status,
                "bytes_in": exchange.bytes_in,
                "bytes_out": bytes_out,
                "duration_ms": round(duration * 1000, 3),
                "upstream_ms": round(exchange.upstream_duration * 1000, 3),
                "client_ip": exchange.client_ip,
                "trace_id": exchange.trace_id,
            }
            if exchange.decisions:
                doc["decisions"] = [
                    f"{d.policy}:{d.action}{':shadow' if d.shadow else ''}"
                    for d in exchange.decisions
                ]
            line = orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE)
        self._buffer.append(line)
        if not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_later(0.1, self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError):
            pass  # stdout closed: logging must never break serving
