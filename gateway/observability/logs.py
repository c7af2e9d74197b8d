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

from gateway.exchange import Decision, Exchange

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


#: Requests whose access lines wait to be formatted and written together, at most; they
#: are also written 100 ms after the first of them.
BATCH = 256
_ACCESS = (
    b'{"time":"%s.%03dZ","type":"access","route":%s,"method":%s,"path":%s,"status":%d,'
    b'"bytes_in":%d,"bytes_out":%d,"duration_ms":%.3f,"upstream_ms":%.3f,'
    b'"client_ip":%s,"trace_id":"%s"'
)
_json_text: dict[str, bytes] = {}  # JSON-encoded route names, methods and addresses


def _json(text: str) -> bytes:
    """``text`` as a JSON string, memoised for the few values that repeat (bounded)."""
    encoded = _json_text.get(text)
    if encoded is None:
        encoded = orjson.dumps(text)
        if len(_json_text) < 4096:
            _json_text[text] = encoded
    return encoded


_decisions: dict[tuple[str, str, bool], bytes] = {}  # "policy:action[:shadow]" as JSON


def _decision(policy: str, action: str, shadow: bool) -> bytes:
    key = (policy, action, shadow)
    encoded = _decisions.get(key)
    if encoded is None:
        encoded = orjson.dumps(f"{policy}:{action}{':shadow' if shadow else ''}")
        if len(_decisions) < 4096:
            _decisions[key] = encoded
    return encoded


# What a request leaves for its access line: every field is an immutable value read when
# the request ended, so the line can be formatted later.
_Record = tuple[
    float, str, str, str, int, int, int, float, float, str, str, "list[Decision]"
]  # time, route, method, path, status, bytes in, bytes out, duration, upstream, ip, trace


class AccessLog:
    """Buffered JSON-lines access log.

    A request only records its fields (one tuple); the lines are formatted and written
    together, :data:`BATCH` at a time or 100 ms after the first, whichever comes first.
    Formatting in a batch costs a few microseconds less per request than formatting
    between two requests' network work, and keeps it off the response path. A line is
    formatted straight into bytes: only the path, the one free-form field, is
    JSON-escaped per line.
    """

    def __init__(self, enabled: bool, fmt: str = "json", stream: IO[bytes] | None = None) -> None:
        self.enabled = enabled
        self.text = fmt == "text"
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._records: list[_Record] = []
        self._scheduled = False
        self._second = -1
        self._stamp = b""

    def write(
        self, exchange: Exchange, status: int, bytes_out: int, duration: float, route: str
    ) -> None:
        if not self.enabled:
            return
        records = self._records
        records.append((
            time.time(), route, exchange.method, exchange.path, status, exchange.bytes_in,
            bytes_out, duration, exchange.upstream_duration, exchange.client_ip,
            exchange.trace_id, exchange.decisions,
        ))  # fmt: skip
        if len(records) >= BATCH:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_later(0.1, self._tick)
            except RuntimeError:
                self.flush()

    def _tick(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        records = self._records
        if not records:
            return
        self._records = []
        lines = [self._text(r) for r in records] if self.text else self._json_lines(records)
        try:
            self._stream.write(b"".join(lines))
            self._stream.flush()
        except (OSError, ValueError):
            pass  # stdout closed: logging must never break serving

    def _json_lines(self, records: list[_Record]) -> list[bytes]:
        lines = []
        dumps = orjson.dumps
        for now, route, method, path, status, bytes_in, bytes_out, duration, upstream, ip, \
                trace, decisions in records:  # fmt: skip
            whole = int(now)
            if whole != self._second:
                self._second = whole
                self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)).encode()
            line = _ACCESS % (
                self._stamp,
                int((now - whole) * 1000),
                _json(route),
                _json(method),
                dumps(path),
                status,
                bytes_in,
                bytes_out,
                duration * 1000,
                upstream * 1000,
                _json(ip),
                trace.encode(),
            )
            if decisions:
                listed = b",".join([_decision(d.policy, d.action, d.shadow) for d in decisions])
                line += b',"decisions":[' + listed + b"]}\n"
            else:
                line += b"}\n"
            lines.append(line)
        return lines

    @staticmethod
    def _text(record: _Record) -> bytes:
        _, route, method, path, status, _, bytes_out, duration, _, ip, trace, _ = record
        return (
            f'{ip} "{_quoted(method)} {_quoted(path)}" {status} '
            f"{bytes_out} {duration * 1000:.2f}ms route={route} trace={trace}\n"
        ).encode()


def _quoted(text: str) -> str:
    """``text`` made safe inside a quoted field of a text line.

    A decoded ``%0A`` must not start a forged line, nor a ``%22`` end the field early: a
    text with ``\\``, ``"`` or a control character is escaped (with ``unicode_escape``,
    which escapes any non-ASCII character too, then ``"`` as ``\\"``).
    """
    if '"' in text or "\\" in text or not text.isprintable():
        return text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return text
