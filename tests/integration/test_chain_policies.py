"""The chain through the real gateway: answering, shadow mode, body buffering, decisions."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from typing import Any

import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.harness import (
    ROOT,
    base_config,
    free_port,
    stop_process,
    wait_for_port,
    wait_until,
)

pytestmark = pytest.mark.integration


def with_policies(upstream: Any, frontend: str, policies: dict[str, Any]) -> dict[str, Any]:
    config = base_config(upstream.url, frontend)
    config["routes"][1]["policies"] = policies
    return config


def test_enforced_policy_answers_and_upstream_never_sees_it(
    start_gateway: GatewayFactory, upstream: Any, frontend: str
) -> None:
    gw = start_gateway(with_policies(upstream, frontend, {"noop": {"respond": 429}}))
    status, headers, body = gw.request("GET", "/echo")
    assert status == 429 and headers["content-type"] == "application/problem+json"
    assert json.loads(body)["status"] == 429
    assert (
        gw.metric("gateway_policy_decisions_total", policy="noop", action="respond", mode="enforce")
        == 1
    )


def test_shadow_policy_decides_but_changes_nothing(
    start_gateway: GatewayFactory, upstream: Any, frontend: str
) -> None:
    gw = start_gateway(
        with_policies(
            upstream,
            frontend,
            {"noop": {"mode": "shadow", "respond": 429, "response_header": "X-Noop: 1"}},
        )
    )
    status, headers, body = gw.request("GET", "/echo")
    assert status == 200 and "x-noop" not in headers
    assert json.loads(body)["target"] == "/echo"
    assert (
        gw.metric("gateway_policy_decisions_total", policy="noop", action="respond", mode="shadow")
        == 1
    )
    assert wait_until(
        lambda: any(
            "noop:respond:shadow" in line.get("decisions", []) for line in gw.access_lines()
        )
    )


def test_response_changed_on_the_way_out(
    start_gateway: GatewayFactory, upstream: Any, frontend: str
) -> None:
    gw = start_gateway(
        with_policies(upstream, frontend, {"noop": {"response_header": "X-Noop: yes"}})
    )
    status, headers, _ = gw.request("GET", "/echo")
    assert status == 200 and headers["x-noop"] == "yes"


def test_body_buffered_only_where_asked_and_never_lost(
    start_gateway: GatewayFactory, upstream: Any, frontend: str
) -> None:
    gw = start_gateway(with_policies(upstream, frontend, {"noop": {"buffer_body": "1KiB"}}))
    small = b"x" * 100
    status, _, body = gw.request("POST", "/echo", body=small)
    assert status == 200 and json.loads(body)["body_length"] == 100
    big = bytes(range(256)) * 8192  # 2 MiB: over the limit, streams on untouched
    status, _, body = gw.request("POST", "/echo", body=big)
    doc = json.loads(body)
    assert doc["body_length"] == len(big) and doc["body_sha256"] == hashlib.sha256(big).hexdigest()
    chunked = gw.request(
        "POST",
        "/echo",
        body=iter([b"a" * 600, b"b" * 600]),
        headers={"Transfer-Encoding": "chunked"},
    )
    assert json.loads(chunked[2])["body_length"] == 1200
    assert wait_until(lambda: len(gw.access_lines()) >= 3)
    decisions = [line.get("decisions") for line in gw.access_lines()]
    assert ["noop:buffered", "noop:pass"] in decisions


def test_asgi_entry_point_under_uvicorn(tmp_path: Any, upstream: Any) -> None:
    import yaml

    config = base_config(upstream.url, "asgi")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "gateway.asgi:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env={**__import__("os").environ, "GATEWAY_CONFIG": str(path)},
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for_port(port, proc)
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/users/5")
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["target"] == "/users/5"
        conn.close()
    finally:
        # uvicorn re-raises the signal after its graceful shutdown
        assert stop_process(proc) in (0, -15)


def test_websocket_handshake_runs_the_route_policies(
    start_gateway: GatewayFactory, upstream: Any, frontend: str
) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    gw = start_gateway(with_policies(upstream, frontend, {"noop": {"respond": 429}}))
    with pytest.raises(InvalidStatus) as info:
        connect(f"ws://127.0.0.1:{gw.port}/ws", open_timeout=5)
    assert info.value.response.status_code == 429
    assert wait_until(lambda: any(line["status"] == 429 for line in gw.access_lines()))
    # shadow: the policy decides, the relay goes ahead
    gw2 = start_gateway(
        with_policies(upstream, frontend, {"noop": {"mode": "shadow", "respond": 429}})
    )
    with connect(f"ws://127.0.0.1:{gw2.port}/ws", open_timeout=5) as ws:
        ws.send("still here")
        assert ws.recv(timeout=5) == "still here"
    assert gw2.metric("gateway_policy_decisions_total", policy="noop", mode="shadow") >= 1
