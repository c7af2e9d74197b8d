"""The connection deadlines of both front-ends, seen from the socket.

The ASGI mode keeps one deadline per connection (head, body, keep-alive) on one timer;
these are the cases where a deadline of one kind must not outlive its purpose: an
upgraded connection has no head or body deadline left, a keep-alive connection gets its
idle deadline back once a late request body ends, and a client that keeps a connection
busy with requests is never cut by a stale deadline.
"""

from __future__ import annotations

import base64
import os
import time

import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.harness import raw_connection
from tests.integration.test_frontend_sockets import (
    Wire,
    keeps_serving,
    request,
    ws_frame,
    ws_handshake,
    ws_read,
    ws_switched,
)

pytestmark = pytest.mark.integration

SHORT = {"header_timeout": "500ms", "body_timeout": "500ms", "keepalive_timeout": "1s"}


def test_websocket_outlives_the_head_and_body_timeouts(start_gateway: GatewayFactory) -> None:
    gw = start_gateway(limits=SHORT)
    key = base64.b64encode(os.urandom(16))
    with raw_connection(gw.port, timeout=5) as sock:
        wire = Wire(sock)
        wire.send(ws_handshake(key))
        ws_switched(wire, key)
        time.sleep(1.5)  # past every HTTP deadline the connection had
        wire.send(ws_frame(0x1, b"still here"))
        assert ws_read(wire) == (0x1, b"still here")
        wire.send(ws_frame(0x8, b"\x03\xe8"))
        assert ws_read(wire) == (0x8, b"\x03\xe8")


def test_busy_keep_alive_connection_is_not_cut(start_gateway: GatewayFactory) -> None:
    """Requests for longer than every timeout, each well within them."""
    gw = start_gateway(limits=SHORT)
    with raw_connection(gw.port, timeout=5) as sock:
        wire = Wire(sock)
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < 2.5:
            wire.send(request("GET", f"/echo?n={n}"))
            assert wire.read().json()["target"] == f"/echo?n={n}"
            n += 1
            time.sleep(0.2)


def test_idle_after_a_body_that_ends_after_the_response(start_gateway: GatewayFactory) -> None:
    """The answer leaves before the body ends; once it ends, the connection is idle."""
    echo_only = [{"name": "echo", "match": {"prefix": "/echo"}, "upstream": "app"}]
    gw = start_gateway(limits=SHORT, routes=echo_only)
    with raw_connection(gw.port, timeout=5) as sock:
        wire = Wire(sock)
        # No route: the gateway answers 404 without reading the body.
        wire.send(request("POST", "/nowhere", "Content-Length: 10", body=b"12345"))
        assert wire.read().status == 404
        time.sleep(0.2)
        wire.send(b"67890")  # the body's end
        wire.send(request("GET", "/echo?after=1"))
        assert wire.read().json()["target"] == "/echo?after=1"
        started = time.monotonic()
        assert wire.closed(timeout=4), "an idle keep-alive connection must be closed"
        assert 0.5 < time.monotonic() - started < 3.5
    keeps_serving(gw, 1)
