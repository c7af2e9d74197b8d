"""The access log's lines are valid JSON whatever the request, and the buffer stays bounded."""

from __future__ import annotations

import asyncio
import io
import json

from gateway.exchange import Exchange
from gateway.observability.logs import BATCH, AccessLog


def _exchange(target: bytes, method: str = "GET") -> Exchange:
    exchange = Exchange(method, target, [(b"Host", b"example.com")], "10.0.0.7")
    exchange.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    return exchange


def _lines(stream: io.BytesIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_has_every_field_with_its_type() -> None:
    stream = io.BytesIO()
    log = AccessLog(True, stream=stream)
    exchange = _exchange(b"/users/7?q=1", "POST")
    exchange.bytes_in = 5
    exchange.upstream_duration = 0.0012345
    log.write(exchange, 201, 42, 0.0025, "users")
    log.flush()
    (line,) = _lines(stream)
    assert line["type"] == "access"
    assert isinstance(line["time"], str)
    assert str(line["time"]).endswith("Z") and len(str(line["time"])) == 24
    assert line["route"] == "users" and line["method"] == "POST" and line["path"] == "/users/7"
    assert line["status"] == 201 and line["bytes_in"] == 5 and line["bytes_out"] == 42
    assert line["duration_ms"] == 2.5 and line["upstream_ms"] == 1.234
    assert line["client_ip"] == "10.0.0.7"
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert "decisions" not in line


def test_hostile_paths_and_names_stay_one_json_line() -> None:
    stream = io.BytesIO()
    log = AccessLog(True, stream=stream)
    exchange = _exchange(b'/a%22b%0A%5C%00"}', "M\\X")  # quote, newline, backslash, NUL
    exchange.decide("rate_limit", "deny")
    exchange.decide("cache", "miss")
    exchange.decisions[-1].shadow = True
    log.write(exchange, 429, 0, 0.0001, 'route "x"')
    log.flush()
    (line,) = _lines(stream)
    assert line["path"] == exchange.path and "\n" in str(line["path"])
    assert line["method"] == "M\\X" and line["route"] == 'route "x"'
    assert line["decisions"] == ["rate_limit:deny", "cache:miss:shadow"]


def test_the_buffer_is_written_out_at_its_bound() -> None:
    async def scenario() -> None:
        stream = io.BytesIO()
        log = AccessLog(True, stream=stream)
        exchange = _exchange(b"/" + b"p" * 200)
        log.write(exchange, 200, 1, 0.001, "r")
        assert stream.getvalue() == b"", "one line is buffered, not written at once"
        written = 1
        while not stream.getvalue():
            log.write(exchange, 200, 1, 0.001, "r")
            written += 1
            assert written <= BATCH, "the buffer grew past its bound"
        assert written == BATCH
        log.flush()
        assert len(_lines(stream)) == written

    asyncio.run(scenario())


def test_text_format() -> None:
    stream = io.BytesIO()
    log = AccessLog(True, "text", stream=stream)
    log.write(_exchange(b"/a%0Ab"), 200, 3, 0.0015, "r")
    log.flush()
    (line,) = stream.getvalue().splitlines()
    assert line == (
        b'10.0.0.7 "GET /a\\nb" 200 3 1.50ms route=r trace=4bf92f3577b34da6a3ce929d0e0e4736'
    )


def test_text_format_quoted_field_cannot_be_forged() -> None:
    # A decoded %22 closed the quoted field: the rest looked like another request's fields.
    stream = io.BytesIO()
    log = AccessLog(True, "text", stream=stream)
    log.write(_exchange(b"/x%22%20200%200%201.00ms%20route=admin%20%5C%22"), 404, 3, 0.0015, "r")
    log.write(_exchange(b"/a", 'G"\\\x01'), 400, 0, 0.0015, "r")
    log.flush()
    first, second = stream.getvalue().decode().splitlines()
    assert first == (
        '10.0.0.7 "GET /x\\" 200 0 1.00ms route=admin \\\\\\"" 404 3 1.50ms route=r '
        "trace=4bf92f3577b34da6a3ce929d0e0e4736"
    )
    assert second.startswith('10.0.0.7 "G\\"\\\\\\x01 /a" 400 ')
    for line in (first, second):  # one quoted field, then fields without quotes
        assert line.replace("\\\\", "").replace('\\"', "").count('"') == 2


def test_disabled_writes_nothing() -> None:
    stream = io.BytesIO()
    log = AccessLog(False, stream=stream)
    log.write(_exchange(b"/"), 200, 1, 0.001, "r")
    log.flush()
    assert stream.getvalue() == b""
