"""adaptive through the real gateway: when the upstream slows down, the limit falls and
the gateway sheds load (503 at once) instead of queueing it."""

from __future__ import annotations

import json
import threading

import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.harness import Upstream, base_config, wait_until

pytestmark = pytest.mark.integration


def test_the_limit_falls_when_the_upstream_slows_and_load_is_shed(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    config = base_config(upstream.url, frontend)
    config["routes"][1]["policies"] = {
        "adaptive": {"min": 1, "max": 20, "initial": 8, "target_latency": "150ms"}
    }
    gw = start_gateway(config)

    def limit() -> float:
        return gw.metric("gateway_adaptive_limit", route="everything-else")

    assert limit() == 8
    assert [gw.request("GET", "/echo")[0] for _ in range(3)] == [200, 200, 200]
    assert limit() == 8  # fast answers at low use: the limit holds

    statuses: list[int] = []
    bodies: list[bytes] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(4):
            status, _, body = gw.request("GET", "/slow?delay=0.4")
            with lock:
                statuses.append(status)
                if status == 503:
                    bodies.append(body)

    threads = [threading.Thread(target=client) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert limit() < 8
    assert set(statuses) == {200, 503}
    assert all(json.loads(b)["type"].endswith("/temporary-reduced-capacity") for b in bodies)
    assert statuses.count(503) > 0
    assert wait_until(
        lambda: (
            gw.metric("gateway_policy_decisions_total", policy="adaptive", action="shed")
            == statuses.count(503)
        )
    )
