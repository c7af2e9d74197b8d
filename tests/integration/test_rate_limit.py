"""rate_limit through the real gateway: 429s and header fields, shadow mode, JWT keys,
explain, and a Redis that is down, hanging, or killed and restarted."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import GatewayFactory
from tests.integration.harness import (
    ROOT,
    Gateway,
    Redis,
    Upstream,
    base_config,
    free_port,
    stop_process,
    wait_for_port,
    wait_until,
)
from tests.jwt_tokens import Keys, hs256

pytestmark = pytest.mark.integration

SECRET = "integration-secret-of-32-bytes-or-more"
POLICY_ITEM = re.compile(r'^"[A-Za-z0-9_.-]+";q=\d+;w=\d+$')
LIMIT_ITEM = re.compile(r'^"[A-Za-z0-9_.-]+";r=\d+;t=\d+$')


def config_with(
    upstream: Upstream, frontend: str, policies: dict[str, Any], **overrides: Any
) -> dict[str, Any]:
    config = base_config(upstream.url, frontend, **overrides)
    config["routes"][1]["policies"] = policies
    return config


def upstream_count(upstream: Upstream) -> int:
    """The upstream's /cacheable counter (reading it counts one request)."""
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    try:
        conn.request("GET", "/cacheable")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200
    return int(body.split()[1])


def decisions(gw: Gateway, policy: str, action: str, mode: str = "enforce") -> float:
    return gw.metric("gateway_policy_decisions_total", policy=policy, action=action, mode=mode)


def test_429_with_header_fields_and_the_upstream_never_sees_it(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    rule = {"name": "per-ip", "rate": "3/h", "algorithm": "fixed_window"}
    gw = start_gateway(config_with(upstream, frontend, {"rate_limit": [rule]}))
    before = upstream_count(upstream)
    answers = [gw.request("GET", "/cacheable/x") for _ in range(5)]
    assert upstream_count(upstream) == before + 3 + 1
    assert [status for status, _, _ in answers] == [200, 200, 200, 429, 429]
    for _, headers, _ in answers[:3]:
        assert POLICY_ITEM.match(headers["ratelimit-policy"])
        assert LIMIT_ITEM.match(headers["ratelimit"])
    assert [h["ratelimit"] for _, h, _ in answers[:3]] == [
        f'"per-ip";r={r};t={answers[i][1]["ratelimit"].rsplit("=", 1)[1]}'
        for i, r in enumerate([2, 1, 0])
    ]
    _, headers, body = answers[3]
    assert headers["content-type"] == "application/problem+json"
    assert headers["ratelimit-policy"] == '"per-ip";q=3;w=3600'
    retry_after = int(headers["retry-after"])
    assert 1 <= retry_after <= 3600
    assert headers["ratelimit"] == f'"per-ip";r=0;t={retry_after}'
    problem = json.loads(body)
    assert problem["type"].endswith("/quota-exceeded") and problem["violated-policies"] == [
        "per-ip"
    ]
    assert wait_until(lambda: decisions(gw, "rate_limit:per-ip", "reject") == 2)
    assert decisions(gw, "rate_limit:per-ip", "allow") == 3


def test_the_gateways_own_answer_to_an_admitted_request_carries_ratelimit(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    # Nothing listens on the upstream's port: the admitted request gets the gateway's 502,
    # and the client still learns how much of its quota is left.
    config = config_with(upstream, frontend, {})
    config["upstreams"]["gone"] = {"url": f"http://127.0.0.1:{free_port()}"}
    rule = {"name": "per-ip", "rate": "2/h", "algorithm": "fixed_window"}
    config["routes"].insert(0, {
        "name": "gone", "match": {"prefix": "/gone"}, "upstream": "gone",
        "policies": {"rate_limit": [rule]},
    })  # fmt: skip
    gw = start_gateway(config)
    answers = [gw.request("GET", "/gone") for _ in range(3)]
    assert [status for status, _, _ in answers] == [502, 502, 429]
    assert [h["ratelimit"].split(";")[1] for _, h, _ in answers] == ["r=1", "r=0", "r=0"]
    assert all(h["ratelimit-policy"] == '"per-ip";q=2;w=3600' for _, h, _ in answers)
    assert answers[0][1]["content-type"] == "application/problem+json"


def test_cache_hits_under_a_limiter_count_and_carry_its_fields(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    # Both decide without awaiting (a limiter and an L1 hit in memory): a hit is still
    # counted against the quota, carries RateLimit, and the fourth request is refused.
    rule = {"name": "per-ip", "rate": "3/h", "algorithm": "fixed_window"}
    policies = {"rate_limit": [rule], "cache": {"stores": ["memory"]}}
    gw = start_gateway(config_with(upstream, frontend, policies))
    before = upstream_count(upstream)
    answers = [gw.request("GET", "/cacheable/hit") for _ in range(4)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 429]
    assert upstream_count(upstream) == before + 1 + 1  # one fill, and this count
    assert [h["ratelimit"].split(";")[1] for _, h, _ in answers] == ["r=2", "r=1", "r=0", "r=0"]
    assert [h.get("cache-status", "").split(";")[1].strip() for _, h, _ in answers[1:3]] == [
        "hit",
        "hit",
    ]
    assert answers[1][2] == answers[0][2]
    assert wait_until(lambda: decisions(gw, "rate_limit:per-ip", "reject") == 1)
    assert decisions(gw, "cache", "hit") == 2


def test_shadow_records_the_decision_and_lets_the_request_pass(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    rule = {"name": "trial", "rate": "1/h", "mode": "shadow"}
    gw = start_gateway(config_with(upstream, frontend, {"rate_limit": [rule]}))
    answers = [gw.request("GET", "/echo") for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert all("ratelimit" not in headers for _, headers, _ in answers)
    assert wait_until(lambda: decisions(gw, "rate_limit:trial", "reject", "shadow") == 2)
    assert decisions(gw, "rate_limit:trial", "reject", "enforce") == 0


def test_jwt_claims_as_keys_with_hs256_rs256_and_es256(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str, tmp_path: Path
) -> None:
    keys = Keys()
    jwks = keys.write_jwks(tmp_path / "jwks.json")
    rule = {"name": "per-user", "key": "jwt:sub", "rate": "2/h",
            "jwt": {"secret": "${RL_JWT_SECRET}", "jwks_file": str(jwks)}}  # fmt: skip
    gw = start_gateway(
        config_with(upstream, frontend, {"rate_limit": [rule]}), env={"RL_JWT_SECRET": SECRET}
    )

    def get(token: str) -> tuple[int, dict[str, str], bytes]:
        return gw.request("GET", "/echo", headers={"Authorization": f"Bearer {token}"})

    alice = hs256(SECRET, {"sub": "alice"})
    assert [get(alice)[0] for _ in range(3)] == [200, 200, 429]
    assert get(keys.rs256({"sub": "bob"}))[0] == 200
    assert get(keys.es256({"sub": "bob"}))[0] == 200  # same claim, same bucket
    assert get(keys.rs256({"sub": "bob"}))[0] == 429
    status, headers, body = get(hs256("not-the-secret-not-the-secret-xx", {"sub": "eve"}))
    assert status == 401 and headers["content-type"] == "application/problem+json"
    assert headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert "signature" in json.loads(body)["detail"]
    assert gw.request("GET", "/echo")[0] == 200  # no token: the anonymous bucket


def test_explain_shows_each_limiter_and_its_key(tmp_path: Path, upstream: Upstream) -> None:
    config = config_with(upstream, "native", {"rate_limit": [
        {"name": "per-ip", "rate": "100/s", "burst": 200},
        {"name": "tenant", "key": "{ip}:{header:X-Tenant}", "algorithm": "sliding_window",
         "rate": "5000/h"},
    ], "concurrency": {"max_in_flight": 16}})  # fmt: skip
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "explain", "-c", str(path), "GET", "/orders",
         "-H", "X-Tenant: acme"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=True,
    ).stdout  # fmt: skip
    lines = out.splitlines()
    first = next(line for line in lines if "rate_limit:per-ip" in line)
    assert "token_bucket 100/1s burst 200" in first
    assert "key ip = '127.0.0.1' -> gw:rl:everything-else:per-ip:tb:127.0.0.1" in first
    second = next(line for line in lines if "rate_limit:tenant" in line)
    assert "key {ip}:{header:X-Tenant} = '127.0.0.1:h:" in second
    assert any("concurrency" in line and "at most 16 in flight" in line for line in lines)


def test_redis_down_allow_deny_and_local_share(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    config = base_config(upstream.url, frontend, stores={"shared": {"url": closed}})
    common = {"store": "shared", "rate": "4/h", "store_backoff": 0}
    config["routes"] = [
        {"name": f"r-{mode}", "match": {"prefix": f"/{mode}"}, "upstream": "app",
         "policies": {"rate_limit": [{"name": mode, "on_store_error": mode, **common}]}}
        for mode in ("allow", "deny", "local_share")
    ]  # fmt: skip
    gw = start_gateway(config, env={"GATEWAY_REPLICAS": "2"})
    allow = [gw.request("GET", "/allow/x")[0] for _ in range(5)]
    deny = [gw.request("GET", "/deny/x") for _ in range(2)]
    share = [gw.request("GET", "/local_share/x")[0] for _ in range(4)]
    assert allow == [200] * 5
    assert [status for status, _, _ in deny] == [429, 429]
    assert deny[0][1]["retry-after"] == "1"
    assert share == [200, 200, 429, 429]  # 4/h shared by 2 replicas: 2 here
    assert wait_until(lambda: decisions(gw, "rate_limit:local_share", "local_reject") == 2)
    assert decisions(gw, "rate_limit:allow", "fail_open") == 5
    assert gw.metric("gateway_store_errors_total", store="shared") == 11
    warnings = [line for line in gw.stderr().splitlines() if "store shared failed" in line]
    assert 1 <= len(warnings) <= 3  # logged once per interval, per limiter


def test_a_request_a_later_limiter_refuses_is_given_back_in_redis(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str, redis_server: Redis
) -> None:
    config = base_config(upstream.url, frontend, stores={"shared": redis_server.url})
    limiters = [
        {"name": "per-route", "key": "route", "algorithm": algorithm, "rate": "3/h",
         "store": "shared"}
        for algorithm in ("token_bucket", "fixed_window", "sliding_window")
    ]  # fmt: skip
    for limiter in limiters:  # one Redis serves both front-ends' runs: names of their own
        limiter["name"] = f"route-{limiter['algorithm']}-{frontend}"
    per_client = {"name": f"per-client-{frontend}", "key": "header:X-Client",
                  "algorithm": "fixed_window", "rate": "1/h", "store": "shared"}  # fmt: skip
    config["routes"][1]["policies"] = {"rate_limit": [*limiters, per_client]}
    gw = start_gateway(config)

    def status(client: str) -> tuple[int, str]:
        """The status and every RateLimit field line, joined."""
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        try:
            conn.request("GET", "/x", headers={"X-Client": client})
            response = conn.getresponse()
            response.read()
        finally:
            conn.close()
        return response.status, ", ".join(response.msg.get_all("ratelimit") or [])

    assert [status("abuser")[0] for _ in range(5)] == [200, 429, 429, 429, 429]
    answers = [status(f"client-{i}") for i in range(2)]
    assert [code for code, _ in answers] == [200, 200]
    # each route limiter counted the three admitted requests only: r=0 on the third
    for limiter in limiters:
        assert f'"{limiter["name"]}";r=0;' in answers[-1][1]
    assert status("client-3")[0] == 429


class HangingServer:
    """Accepts connections and never answers: a Redis that hangs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)
        for conn in self.conns:
            conn.close()


@pytest.fixture
def hanging_redis() -> Iterator[HangingServer]:
    server = HangingServer()
    yield server
    server.close()


def test_a_hanging_redis_costs_at_most_the_store_timeout(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str,
    hanging_redis: HangingServer,
) -> None:  # fmt: skip
    url = f"redis://127.0.0.1:{hanging_redis.port}/0"
    config = config_with(
        upstream, frontend,
        {"rate_limit": [{"store": "shared", "rate": "100/s", "on_store_error": "allow"}]},
        stores={"shared": {"url": url, "timeout": "50ms"}},
    )  # fmt: skip
    gw = start_gateway(config)
    assert [gw.request("GET", "/echo")[0] for _ in range(3)] == [200, 200, 200]
    assert wait_until(lambda: "timed out after 0.05s" in gw.stderr())


def start_redis_on(port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    assert binary is not None
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    wait_for_port(port, proc)
    return proc


def test_redis_killed_then_back(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    port = free_port()
    redis = start_redis_on(port)
    try:
        stores = {"shared": {"url": f"redis://127.0.0.1:{port}/0", "timeout": "50ms"}}
        rule = {"name": "g", "store": "shared", "rate": "1000/h", "store_backoff": 0}
        gw = start_gateway(config_with(upstream, frontend, {"rate_limit": [rule]}, stores=stores))
        assert gw.request("GET", "/echo")[0] == 200
        stop_process(redis)
        assert [gw.request("GET", "/echo")[0] for _ in range(3)] == [200, 200, 200]
        assert wait_until(lambda: decisions(gw, "rate_limit:g", "local_allow") == 3)
        redis = start_redis_on(port)

        def back() -> bool:
            gw.request("GET", "/echo")
            return decisions(gw, "rate_limit:g", "allow") >= 2

        assert wait_until(back, timeout=15, interval=0.2)
    finally:
        stop_process(redis)


def test_one_redis_shared_by_several_processes_is_exact(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str, redis_server: Redis
) -> None:
    config = base_config(upstream.url, frontend, stores={"shared": redis_server.url})
    config["routes"] = [
        {"name": f"exact-{alg}-{frontend}", "match": {"prefix": f"/{alg}"}, "upstream": "app",
         "policies": {"rate_limit": [{"key": "route", "algorithm": alg, "rate": "30/h",
                                      "store": "shared"}]}}
        for alg in ("token_bucket", "sliding_window", "fixed_window")
    ]  # fmt: skip
    gateways = [start_gateway(config) for _ in range(3)]
    lock = threading.Lock()

    def hammer(gw: Gateway, path: str, statuses: list[int]) -> None:
        for _ in range(30):
            status = gw.request("GET", path)[0]
            with lock:
                statuses.append(status)

    for alg in ("token_bucket", "sliding_window", "fixed_window"):
        statuses: list[int] = []
        threads = [
            threading.Thread(target=hammer, args=(gw, f"/{alg}/x", statuses)) for gw in gateways
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(set(statuses)) == [200, 429]
        assert statuses.count(200) == 30, alg
