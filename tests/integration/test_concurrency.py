"""concurrency through the real gateway: an in-flight limit per route, a FIFO queue, 503s."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.harness import Gateway, Upstream, base_config, wait_until

pytestmark = pytest.mark.integration


def config_with(upstream: Upstream, frontend: str, policies: dict[str, Any]) -> dict[str, Any]:
    config = base_config(upstream.url, frontend)
    config["routes"][1]["policies"] = policies
    return config


def concurrently(gw: Gateway, path: str, n: int) -> list[tuple[int, dict[str, str], bytes]]:
    answers: list[tuple[int, dict[str, str], bytes]] = []
    lock = threading.Lock()

    def one() -> None:
        answer = gw.request("GET", path)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_beyond_max_in_flight_is_503(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    gw = start_gateway(config_with(upstream, frontend, {"concurrency": {"max_in_flight": 2}}))
    answers = concurrently(gw, "/slow?delay=1", 5)
    assert sorted(status for status, _, _ in answers) == [200, 200, 503, 503, 503]
    for status, headers, body in answers:
        if status == 503:
            assert headers["content-type"] == "application/problem+json"
            assert headers["retry-after"] == "1"
            assert json.loads(body)["type"].endswith("/temporary-reduced-capacity")
    # every slot came back: the next requests pass
    assert [gw.request("GET", "/echo")[0] for _ in range(3)] == [200, 200, 200]
    assert wait_until(
        lambda: gw.metric("gateway_concurrency_in_flight", route="everything-else") == 0
    )
    assert gw.metric("gateway_policy_decisions_total", policy="concurrency", action="reject") == 3


def test_a_small_queue_waits_for_a_slot(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    policy = {"concurrency": {"max_in_flight": 1, "queue": 1, "queue_timeout": "10s"}}
    gw = start_gateway(config_with(upstream, frontend, policy))
    answers = concurrently(gw, "/slow?delay=1", 3)
    assert sorted(status for status, _, _ in answers) == [200, 200, 503]
    assert wait_until(
        lambda: gw.metric(
            "gateway_policy_decisions_total", policy="concurrency", action="queued"
        ) == 1
    )  # fmt: skip
