"""The proxy through real processes: routing, bodies, headers, failures. Both front-ends."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.harness import (
    Gateway,
    base_config,
    free_port,
    raw_connection,
    read_until_close,
)

pytestmark = pytest.mark.integration


def echo(gw: Gateway, method: str = "GET", path: str = "/echo", **kw: Any) -> dict[str, Any]:
    status, _, body = gw.request(method, path, **kw)
    assert status == 200, body
    return json.loads(body)


def header(doc: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in doc["headers"] if k.lower() == name]


def assert_problem(
    status: int, headers: dict[str, str], body: bytes, code: int, kind: str
) -> dict[str, Any]:
    assert status == code, body
    assert headers["content-type"] == "application/problem+json"
    doc = json.loads(body)
    assert doc["status"] == code and doc["type"].endswith("/" + kind)
    assert doc["title"] and doc["detail"] and len(doc["trace_id"]) == 32
    assert "Traceback" not in body.decode()
    return doc


def test_get_is_proxied_with_path_and_query_intact(gateway: Gateway) -> None:
    doc = echo(gateway, path="/users/42?b=2&a=%2F")
    assert doc["target"] == "/users/42?b=2&a=%2F"
    doc = echo(gateway, path="/files/a%2Fb/c")
    assert doc["target"] == "/files/a%2Fb/c"


def test_unmatched_is_404_and_wrong_method_is_405(
    start_gateway: GatewayFactory, upstream: Any, frontend: str
) -> None:
    config = base_config(upstream.url, frontend)
    config["routes"] = config["routes"][:1]
    gw = start_gateway(config)
    status, headers, body = gw.request("GET", "/nothing")
    assert_problem(status, headers, body, 404, "no-route")
    status, headers, body = gw.request("POST", "/users/1", body=b"x")
    assert_problem(status, headers, body, 405, "method-not-allowed")
    assert headers["allow"] == "GET, HEAD"
    # RFC 9110 6.6.1: the gateway is the origin of its own answers, which carry Date.
    assert parsedate_to_datetime(headers["date"]).year >= 2024


def test_request_bodies_fixed_and_chunked(gateway: Gateway) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    doc = echo(gateway, "POST", "/echo", body=payload)
    assert doc["body_length"] == len(payload)
    assert doc["body_sha256"] == hashlib.sha256(payload).hexdigest()
    # chunked upload of unknown length
    doc = echo(
        gateway,
        "PUT",
        "/echo",
        body=iter([b"a" * 1000, b"b" * 5000, b"c"]),
        headers={"Transfer-Encoding": "chunked"},
    )
    assert doc["body_length"] == 6001


def test_large_streamed_response(gateway: Gateway) -> None:
    size = 20 * 1024 * 1024
    status, headers, body = gateway.request("GET", f"/huge?bytes={size}", timeout=30)
    assert status == 200 and len(body) == size and headers["content-length"] == str(size)


def test_chunked_response_passes_through(gateway: Gateway) -> None:
    status, headers, body = gateway.request("GET", "/chunked?n=50&size=100")
    assert status == 200 and len(body) == 5000
    assert "content-length" not in headers


def test_head_has_no_body(gateway: Gateway) -> None:
    status, _, body = gateway.request("HEAD", "/users/1")
    assert status == 200 and body == b""


def test_forwarding_headers_added_and_untrusted_ones_dropped(gateway: Gateway) -> None:
    doc = echo(
        gateway,
        headers={
            "X-Forwarded-For": "6.6.6.6",
            "Forwarded": "for=6.6.6.6",
            "Host": "public.example",
        },
    )
    assert header(doc, "x-forwarded-for") == ["127.0.0.1"]
    assert header(doc, "x-forwarded-proto") == ["http"]
    assert header(doc, "x-forwarded-host") == ["public.example"]
    assert header(doc, "host") == ["public.example"]
    assert header(doc, "via") == ["1.1 gateway"]
    assert header(doc, "forwarded") == []


def test_trusted_proxy_chain(start_gateway: GatewayFactory) -> None:
    gw = start_gateway(trusted_proxies=["127.0.0.0/8"])
    doc = echo(gw, headers={"X-Forwarded-For": "203.0.113.7"})
    assert header(doc, "x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]
    time.sleep(0.3)
    assert gw.access_lines()[-1]["client_ip"] == "203.0.113.7"


def test_hop_by_hop_removed_both_ways(gateway: Gateway) -> None:
    doc = echo(
        gateway,
        headers={
            "Connection": "X-Private",
            "X-Private": "secret",
            "Keep-Alive": "timeout=1",
            "TE": "trailers",
            "X-Kept": "1",
        },
    )
    names = {k.lower() for k, _ in doc["headers"]}
    assert "x-private" not in names and "keep-alive" not in names and "te" not in names
    assert "x-kept" in names
    status, headers, _ = gateway.request("GET", "/hop")
    assert status == 200
    for hop in ("x-secret-hop", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert hop not in headers
    assert headers["x-end-to-end"] == "kept"


def test_host_header_upstream_mode(
    start_gateway: GatewayFactory, upstream: Any, frontend: str
) -> None:
    config = base_config(upstream.url, frontend)
    config["upstreams"]["app"]["host_header"] = "upstream"
    gw = start_gateway(config)
    doc = echo(gw, headers={"Host": "public.example"})
    assert header(doc, "host") == [f"127.0.0.1:{upstream.port}"]
    assert header(doc, "x-forwarded-host") == ["public.example"]


def test_connect_refused_is_502(start_gateway: GatewayFactory, frontend: str) -> None:
    gw = start_gateway(base_config(f"http://127.0.0.1:{free_port()}", frontend))
    status, headers, body = gw.request("GET", "/x")
    assert_problem(status, headers, body, 502, "upstream-connect")
    assert gw.metric("gateway_upstream_errors_total", kind="connect") >= 1


def test_upstream_timeout_is_504(
    start_gateway: GatewayFactory, upstream: Any, frontend: str
) -> None:
    config = base_config(upstream.url, frontend)
    config["upstreams"]["app"]["timeouts"] = {"connect": "1s", "read": "300ms"}
    gw = start_gateway(config)
    started = time.monotonic()
    status, headers, body = gw.request("GET", "/hang")
    assert time.monotonic() - started < 3
    assert_problem(status, headers, body, 504, "upstream-timeout")


def test_upstream_closing_without_answer_is_502(gateway: Gateway) -> None:
    status, headers, body = gateway.request("GET", "/close-now")
    assert_problem(status, headers, body, 502, "upstream-connect")


def test_upstream_reset_mid_body_cuts_the_client_cleanly(gateway: Gateway) -> None:
    with raw_connection(gateway.port, timeout=5) as sock:
        sock.sendall(b"GET /reset-mid-body HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        data = read_until_close(sock)
        assert time.monotonic() - started < 4, "the client connection must not hang"
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length: 1000000" in head.lower()
    assert len(body) < 1_000_000  # truncated, never presented as complete
    # the gateway keeps serving
    assert gateway.request("GET", "/echo")[0] == 200


def test_websocket_echo(gateway: Gateway) -> None:
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{gateway.port}/ws", open_timeout=5) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=5) == b"\x00\x01binary"


H2C_UPGRADE = (
    "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
)


def test_h2c_upgrade_is_a_plain_request(
    start_gateway: GatewayFactory, upstream: Any, frontend: str
) -> None:
    # h2c smuggling: relayed after a 101, the connection would carry requests to the
    # upstream that no route or policy saw. Only WebSocket is tunnelled.
    config = base_config(upstream.url, frontend)
    config["routes"] = [
        {"name": "public", "match": {"prefix": "/echo"}, "upstream": "app"},
        {"name": "switch", "match": {"prefix": "/switch"}, "upstream": "app"},
    ]
    gw = start_gateway(config)
    with raw_connection(gw.port) as sock:
        sock.sendall(f"GET /echo HTTP/1.1\r\nHost: h\r\n{H2C_UPGRADE}\r\n".encode())
        head, _, rest = read_until_close(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    doc = json.loads(rest)
    names = {k.lower() for k, _ in doc["headers"]}
    assert not names & {"upgrade", "connection", "http2-settings"}, doc["headers"]

    with raw_connection(gw.port) as sock:
        sock.sendall(
            f"GET /switch HTTP/1.1\r\nHost: h\r\n{H2C_UPGRADE}\r\n".encode()
            + b"GET /private HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        data = read_until_close(sock)
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 502"), data
    assert b"application/problem+json" in first.lower()
    assert b"101" not in first.split(b"\r\n")[0]
    # What followed the upgrade request is the next request: routed (no route: 404).
    assert b"HTTP/1.1 101" not in rest, data
    assert rest.count(b"HTTP/1.1 404") == 1, data

    # An h2c upgrade and a pipelined request in one write: both are answered.
    with raw_connection(gw.port) as sock:
        sock.sendall(
            f"GET /echo/one HTTP/1.1\r\nHost: h\r\n{H2C_UPGRADE}\r\n".encode()
            + b"GET /echo/two HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        data = read_until_close(sock)
    assert data.count(b"HTTP/1.1 200") == 2, data
    assert b'"/echo/one"' in data and b'"/echo/two"' in data, data


@pytest.mark.parametrize("later", [False, True], ids=["same-packet", "later-packet"])
def test_h2c_upgrade_with_a_body_is_a_plain_request(gateway: Gateway, later: bool) -> None:
    # curl --http2 sends a POST with Upgrade: h2c: served as a plain POST, its body read.
    head = f"POST /echo/up HTTP/1.1\r\nHost: h\r\n{H2C_UPGRADE}Content-Length: 5\r\n\r\n"
    after = b"GET /echo/next HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    with raw_connection(gateway.port) as sock:
        if later:
            sock.sendall(head.encode())
            time.sleep(0.2)
            sock.sendall(b"hello" + after)
        else:
            sock.sendall(head.encode() + b"hello" + after)
        data = read_until_close(sock)
    assert data.count(b"HTTP/1.1 200") == 2, data
    first = json.loads(data.split(b"\r\n\r\n")[1].rpartition(b"}")[0] + b"}")
    assert (first["method"], first["target"], first["body_length"]) == ("POST", "/echo/up", 5)
    assert b'"/echo/next"' in data, data


def test_websocket_upgrade_with_a_body_is_400(gateway: Gateway) -> None:
    with raw_connection(gateway.port) as sock:
        sock.sendall(
            b"POST /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Content-Length: 3\r\n\r\nabc"
        )
        data = read_until_close(sock)
    assert data.startswith(b"HTTP/1.1 400"), data


def test_host_with_a_trailing_dot_takes_its_host_route(
    start_gateway: GatewayFactory, upstream: Any, frontend: str
) -> None:
    config = base_config(upstream.url, frontend)
    config["routes"].insert(
        0,
        {
            "name": "secret-denied",
            "match": {"prefix": "/", "host": "secret.example"},
            "upstream": "app",
            "policies": {"noop": {"respond": 403}},
        },
    )
    gw = start_gateway(config)
    for host in ("secret.example", "secret.example.", "SECRET.example.:8080"):
        status, _, body = gw.request("GET", "/echo", headers={"Host": host})
        assert status == 403, (host, body)
    assert echo(gw, headers={"Host": "public.example"})["target"] == "/echo"


def test_keepalive_reuses_client_connection(gateway: Gateway) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
    try:
        for _ in range(5):
            conn.request("GET", "/echo")
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
    finally:
        conn.close()


def test_raw_head_reaches_upstream_intact(gateway: Gateway) -> None:
    with raw_connection(gateway.port) as sock:
        sock.sendall(
            b"GET /echo?q=%20 HTTP/1.1\r\nHost: h.example\r\nX-Case-Kept: Value\r\n"
            b"Connection: close\r\n\r\n"
        )
        data = read_until_close(sock)
    doc = json.loads(data.partition(b"\r\n\r\n")[2])
    raw = base64.b64decode(doc["raw_head"])
    assert raw.startswith(b"GET /echo?q=%20 HTTP/1.1\r\n")
    assert b"\r\nx-case-kept: Value\r\n" in raw.lower().replace(b"value", b"Value")


def test_slow_client_head_is_cut(start_gateway: GatewayFactory) -> None:
    gw = start_gateway(limits={"header_timeout": "500ms"})
    with raw_connection(gw.port, timeout=5) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        data = read_until_close(sock)
        assert time.monotonic() - started < 4
    assert data == b"" or data.startswith(b"HTTP/1.1 408")


def test_oversized_headers_rejected(start_gateway: GatewayFactory) -> None:
    gw = start_gateway(limits={"max_header_size": "4KiB"})
    status = None
    try:
        status, _, _ = gw.request("GET", "/echo", headers={"X-Big": "a" * 20000})
    except (ConnectionError, OSError):
        status = 431  # some servers just close: acceptable, nothing reached upstream
    assert status in (400, 431)
    assert gw.request("GET", "/echo")[0] == 200


def test_client_stalling_mid_body_is_cut(start_gateway: GatewayFactory) -> None:
    gw = start_gateway(limits={"body_timeout": "500ms"})
    with raw_connection(gw.port, timeout=8) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        started = time.monotonic()
        read_until_close(sock)
        assert time.monotonic() - started < 6, "a stalled upload must not hold the connection"
    assert gw.request("GET", "/echo")[0] == 200
