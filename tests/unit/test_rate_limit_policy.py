"""The rate_limit policy on its own: decisions, 429s, header fields, store failures, shadow,
JWT, explain and config errors. Memory store with an injected clock; Redis is faked only
where it fails (real Redis: tests/integration)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.chain import build_chain
from gateway.cli import main
from gateway.config.loader import load_text
from gateway.config.models import StoreSpec
from gateway.errors import ConfigError, StoreError
from gateway.exchange import Exchange, Response
from gateway.observability.metrics import Metrics
from gateway.policies import REGISTRY
from gateway.policies.base import BuildContext, Policy
from gateway.policies.rate_limit import fields as rate_limit_fields
from gateway.policies.rate_limit.config import RateLimitConfig
from gateway.policies.rate_limit.policy import RateLimitPolicy
from gateway.stores import ScriptArg, Stores
from gateway.stores.memory import MemoryStore
from gateway.stores.redis import RedisStore
from gateway.types import Handler
from tests.jwt_tokens import hs256

SECRET = "a-test-secret-that-is-32-bytes-long!"
# draft-ietf-httpapi-ratelimit-headers: Lists of String items with Integer parameters.
POLICY_ITEM = re.compile(r'^"(?P<name>[A-Za-z0-9_.-]+)";q=(?P<q>\d+);w=(?P<w>\d+)$')
LIMIT_ITEM = re.compile(r'^"(?P<name>[A-Za-z0-9_.-]+)";r=(?P<r>\d+);t=(?P<t>\d+)$')


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


class BrokenStore:
    """A shared store that is down: every script call fails like a Redis timeout."""

    kind = "redis"
    prefix = "gw:"

    def __init__(self, name: str = "shared") -> None:
        self.name = name
        self.calls = 0

    def key(self, *parts: str) -> str:
        return self.prefix + "{" + parts[0] + "}"

    async def run(self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]) -> object:
        self.calls += 1
        raise StoreError(f"store {self.name!r}: script {name} timed out after 0.05s")

    async def ping(self) -> bool:
        return False

    async def close(self) -> None:
        return None


class Harness:
    def __init__(self, *stores: Any, replicas: int = 1) -> None:
        self.clock = Clock()
        self.memory = MemoryStore("memory", StoreSpec(url="memory://"), self.clock)
        named: dict[str, Any] = {"memory": self.memory}
        named.update({s.name: s for s in stores})
        self.metrics = Metrics()
        self.ctx = BuildContext(
            "api", "app", Stores(named), self.metrics, self.clock, Path("."), replicas
        )
        self.upstream_calls = 0

    def build(self, config: Any) -> list[Policy[Any]]:
        return RateLimitPolicy.build(RateLimitConfig.model_validate(config), self.ctx)

    def chain(self, config: Any) -> Handler:
        async def upstream(exchange: Exchange) -> Response:
            self.upstream_calls += 1
            return Response(200, [(b"content-type", b"text/plain")], b"upstream")

        return build_chain(self.build(config), upstream)

    def send(self, handler: Handler, n: int = 1, **headers: str) -> list[tuple[Response, Exchange]]:
        async def go() -> list[tuple[Response, Exchange]]:
            out = []
            for _ in range(n):
                raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
                exchange = Exchange("GET", b"/x", raw, "198.51.100.4")
                # What a front-end sends: the chain's answer plus the fields policies added.
                out.append((exchange.answered(await handler(exchange)), exchange))
            return out

        return asyncio.run(go())


def fields(response: Response, name: bytes) -> list[str]:
    return [v.decode() for k, v in response.headers if k.lower() == name]


def test_each_entry_is_its_own_chain_element() -> None:
    h = Harness()
    policies = h.build([{"name": "per-ip", "rate": "10/s"}, {"name": "hourly", "rate": "100/h"}])
    assert [p.label for p in policies] == ["rate_limit:per-ip", "rate_limit:hourly"]
    (single,) = h.build({"rate": "10/s"})  # a mapping is a list of one
    assert single.label == "rate_limit:default"


def test_a_rejected_request_gets_429_problem_json_and_never_reaches_the_upstream() -> None:
    h = Harness()
    chain = h.chain([{"name": "per-ip", "rate": "3/h", "algorithm": "fixed_window"}])
    results = h.send(chain, 5)
    assert [r.status for r, _ in results] == [200, 200, 200, 429, 429]
    assert h.upstream_calls == 3
    rejected, exchange = results[3]
    body = json.loads(rejected.body)
    assert rejected.header(b"content-type") == b"application/problem+json"
    assert body["type"].endswith("/quota-exceeded") and body["status"] == 429
    assert body["violated-policies"] == ["per-ip"]
    assert body["detail"].startswith("rate limit 'per-ip' (3/3600s) exceeded; retry in ")
    assert [(d.policy, d.action) for d in exchange.decisions] == [("rate_limit:per-ip", "reject")]


def test_header_fields_follow_the_current_draft_syntax() -> None:
    h = Harness()
    chain = h.chain([{"name": "per-ip", "rate": "2/s", "burst": 2}])
    (ok, _), (ok2, _), (rejected, _) = h.send(chain, 3)
    for response in (ok, ok2, rejected):
        (policy,) = fields(response, b"ratelimit-policy")
        m = POLICY_ITEM.match(policy)
        assert m and m["name"] == "per-ip" and (m["q"], m["w"]) == ("2", "1")
    remaining = [LIMIT_ITEM.match(fields(r, b"ratelimit")[0]) for r in (ok, ok2)]
    assert [m and m["r"] for m in remaining] == ["1", "0"]
    (limit,) = fields(rejected, b"ratelimit")
    m = LIMIT_ITEM.match(limit)
    assert m and m["r"] == "0"
    (retry_after,) = fields(rejected, b"retry-after")
    assert retry_after.isdigit() and int(retry_after) >= 1
    assert m["t"] == retry_after  # the same point in time, as the draft asks


@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window", "fixed_window"])
def test_the_ratelimit_field_follows_every_state(
    monkeypatch: pytest.MonkeyPatch, algorithm: str
) -> None:
    monkeypatch.setattr(rate_limit_fields, "LIMIT_FIELDS_KEPT", 3)  # a token bucket's memo
    h = Harness()
    chain = h.chain([{"name": "n", "rate": "10/h", "algorithm": algorithm}])
    seen = []
    for response, _ in h.send(chain, 10):
        m = LIMIT_ITEM.match(fields(response, b"ratelimit")[0])
        assert m is not None
        seen.append((m["r"], m["t"]))
    assert [r for r, _ in seen] == [str(n) for n in range(9, -1, -1)]
    if algorithm == "token_bucket":  # full again one emission interval (360 s) per request
        assert [t for _, t in seen] == [str(360 * n) for n in range(1, 11)]
    else:  # the end of the window that began with the first request
        assert {t for _, t in seen[:-1]} == {"3600"}


def test_several_limiters_each_add_their_item() -> None:
    h = Harness()
    chain = h.chain([{"name": "burst", "rate": "5/s"}, {"name": "daily", "rate": "1000/d"}])
    ((response, exchange),) = h.send(chain)
    policies = fields(response, b"ratelimit-policy")
    assert sorted(policies) == ['"burst";q=5;w=1', '"daily";q=1000;w=86400']
    assert len(fields(response, b"ratelimit")) == 2
    assert [d.action for d in exchange.decisions] == ["allow", "allow"]


@pytest.mark.parametrize(
    ("mode", "on_admit", "on_reject"),
    [("all", True, True), ("rejected", False, True), ("none", False, False)],
)
def test_headers_option(mode: str, on_admit: bool, on_reject: bool) -> None:
    h = Harness()
    chain = h.chain([{"rate": "1/h", "headers": mode}])
    (ok, _), (rejected, _) = h.send(chain, 2)
    assert bool(fields(ok, b"ratelimit")) is on_admit
    assert bool(fields(rejected, b"ratelimit")) is on_reject
    assert bool(fields(rejected, b"ratelimit-policy")) is on_reject
    assert fields(rejected, b"retry-after")


def test_shadow_decides_and_records_but_changes_nothing() -> None:
    h = Harness()
    chain = h.chain([{"name": "trial", "rate": "1/h", "mode": "shadow"}])
    results = h.send(chain, 3)
    assert [r.status for r, _ in results] == [200, 200, 200]
    assert h.upstream_calls == 3
    assert all(not fields(r, b"ratelimit") for r, _ in results)
    decisions = [(d.action, d.shadow) for _, e in results for d in e.decisions]
    assert decisions == [("allow", True), ("reject", True), ("reject", True)]


def test_anonymous_requests_share_one_bucket() -> None:
    h = Harness()
    chain = h.chain([{"key": "header:X-API-Key", "rate": "2/h"}])
    assert [r.status for r, _ in h.send(chain, 3)] == [200, 200, 429]
    assert [r.status for r, _ in h.send(chain, 2, X_API_Key="k1")] == [200, 200]


def test_an_invalid_token_is_401_and_not_a_key() -> None:
    h = Harness()
    chain = h.chain([{"key": "jwt:sub", "rate": "5/s", "jwt": {"secret": SECRET}}])
    token = hs256("wrong-secret-wrong-secret-wrong!!", {"sub": "a"})
    ((response, exchange),) = h.send(chain, Authorization=f"Bearer {token}")
    assert response.status == 401 and h.upstream_calls == 0
    assert response.header(b"www-authenticate") == b'Bearer error="invalid_token"'
    assert json.loads(response.body)["type"].endswith("/invalid-token")
    assert exchange.decisions[0].action == "invalid_token"
    good = hs256(SECRET, {"sub": "a"})
    assert h.send(chain, Authorization=f"Bearer {good}")[0][0].status == 200


@pytest.mark.parametrize(
    ("on_error", "statuses", "action"),
    [("allow", [200, 200, 200], "fail_open"), ("deny", [429, 429, 429], "fail_closed"),
     ("local_share", [200, 200, 429], "local_reject")],
)  # fmt: skip
def test_store_failure_follows_on_store_error(
    on_error: str, statuses: list[int], action: str
) -> None:
    broken = BrokenStore()
    h = Harness(broken, replicas=2)
    rule = {"name": "g", "rate": "4/h", "store": "shared", "on_store_error": on_error}
    results = h.send(h.chain([rule]), 3)
    assert [r.status for r, _ in results] == statuses
    assert results[-1][1].decisions[0].action == action
    assert all(r.status < 500 for r, _ in results)
    if on_error == "deny":
        assert fields(results[0][0], b"retry-after") == ["1"]
    if on_error == "allow":
        assert not fields(results[0][0], b"ratelimit")  # nothing known: nothing claimed
    # one failed call, then the store is skipped for store_backoff (no request waits on it)
    assert broken.calls == 1
    assert h.metrics.store_errors.labels("shared", "rate_limit:g")._value.get() == 1


def test_local_share_uses_the_configured_replicas_over_the_environment() -> None:
    h = Harness(BrokenStore(), replicas=10)
    rule = {"rate": "6/h", "store": "shared", "replicas": 3}
    assert [r.status for r, _ in h.send(h.chain([rule]), 3)] == [200, 200, 429]


@pytest.mark.parametrize(
    ("rule", "policy_item", "limit_items"),
    [({"algorithm": "fixed_window", "rate": "10/m"}, '"g";q=5;w=60',
      ['"g";r=4;t=60', '"g";r=3;t=60', '"g";r=2;t=60', '"g";r=1;t=60', '"g";r=0;t=60']),
     ({"rate": "4/h"}, '"g";q=2;w=3600', ['"g";r=1;t=1800', '"g";r=0;t=3600']),
     ({"rate": "2/s", "burst": 4}, '"g";q=2;w=2', ['"g";r=1;t=1', '"g";r=0;t=2'])],
)  # fmt: skip
def test_local_share_fields_state_the_share_this_process_enforces(
    rule: dict[str, Any], policy_item: str, limit_items: list[str]
) -> None:
    h = Harness(BrokenStore(), replicas=2)
    rule = {"name": "g", "store": "shared", "on_store_error": "local_share", **rule}
    results = h.send(h.chain([rule]), len(limit_items) + 1)
    for (response, _), limit in zip(results, limit_items, strict=False):
        assert response.status == 200
        assert fields(response, b"ratelimit-policy") == [policy_item]
        assert fields(response, b"ratelimit") == [limit]
    refused = results[-1][0]
    assert refused.status == 429
    assert fields(refused, b"ratelimit-policy") == [policy_item]
    assert "this process's share" in json.loads(refused.body)["detail"]
    assert fields(refused, b"ratelimit")[0].startswith('"g";r=0;t=')


@pytest.mark.parametrize("algorithm", ["token_bucket", "fixed_window", "sliding_window"])
def test_a_request_a_later_limiter_refuses_counts_against_no_limit(algorithm: str) -> None:
    h = Harness()
    chain = h.chain(
        [{"name": "per-route", "key": "route", "algorithm": algorithm, "rate": "5/m"},
         {"name": "per-client", "key": "header:X-Client", "algorithm": "fixed_window",
          "rate": "1/m"}]
    )  # fmt: skip
    abuser = h.send(chain, 6, x_client="abuser")
    assert [r.status for r, _ in abuser] == [200] + [429] * 5
    assert all(json.loads(r.body)["violated-policies"] == ["per-client"] for r, _ in abuser[1:])
    # The five refusals took nothing from the route's limit: four more clients pass.
    others = [h.send(chain, 1, x_client=f"client-{i}")[0][0] for i in range(4)]
    assert [r.status for r in others] == [200] * 4
    assert fields(others[-1], b"ratelimit")[0].startswith('"per-route";r=0;')
    # and the route's limit still holds
    refused = h.send(chain, 1, x_client="client-5")[0][0]
    assert json.loads(refused.body)["violated-policies"] == ["per-route"]
    assert h.upstream_calls == 5


def test_a_shadow_limiter_neither_gives_back_nor_makes_others_give_back() -> None:
    h = Harness()
    chain = h.chain(
        [{"name": "a", "key": "route", "algorithm": "fixed_window", "rate": "3/m"},
         {"name": "b", "key": "route", "algorithm": "fixed_window", "rate": "1/m",
          "mode": "shadow"},
         {"name": "c", "key": "header:X-Client", "algorithm": "fixed_window", "rate": "1/m"}]
    )  # fmt: skip
    # b (shadow) refuses from the second request on: a keeps counting
    statuses = [h.send(chain, 1, x_client=f"c{i}")[0][0].status for i in range(4)]
    assert statuses == [200, 200, 200, 429]
    # c refuses: a gives back, the shadow b does not (its count is what would have been)
    h2 = Harness()
    chain = h2.chain(
        [{"name": "a", "key": "route", "algorithm": "fixed_window", "rate": "2/m"},
         {"name": "b", "key": "route", "algorithm": "fixed_window", "rate": "2/m",
          "mode": "shadow"},
         {"name": "c", "key": "header:X-Client", "algorithm": "fixed_window", "rate": "1/m"}]
    )  # fmt: skip
    first = [r for r, _ in h2.send(chain, 3, x_client="abuser")]
    assert [r.status for r in first] == [200, 429, 429]
    second = h2.send(chain, 1, x_client="other")[0]
    assert second[0].status == 200
    assert [d.action for d in second[1].decisions] == ["allow", "reject", "allow"]


def test_an_invalid_token_at_a_later_limiter_gives_back_the_earlier_ones() -> None:
    h = Harness()
    chain = h.chain(
        [{"name": "route", "key": "route", "algorithm": "fixed_window", "rate": "2/m"},
         {"name": "user", "key": "jwt:sub", "rate": "5/s", "jwt": {"secret": SECRET}}]
    )  # fmt: skip
    bad = hs256("wrong-secret-wrong-secret-wrong!!", {"sub": "a"})
    assert [r.status for r, _ in h.send(chain, 3, Authorization=f"Bearer {bad}")] == [401] * 3
    good = hs256(SECRET, {"sub": "a"})
    assert [r.status for r, _ in h.send(chain, 3, Authorization=f"Bearer {good}")] == [
        200, 200, 429
    ]  # fmt: skip


def test_a_local_share_admission_is_given_back_in_its_share() -> None:
    h = Harness(BrokenStore(), replicas=2)
    chain = h.chain(
        [{"name": "g", "key": "route", "algorithm": "fixed_window", "rate": "4/m",
          "store": "shared", "on_store_error": "local_share", "store_backoff": "1h"},
         {"name": "c", "key": "header:X-Client", "algorithm": "fixed_window", "rate": "1/m"}]
    )  # fmt: skip
    assert [r.status for r, _ in h.send(chain, 4, x_client="abuser")] == [200, 429, 429, 429]
    # the share is 2: the refusals gave their places back, one is left
    assert h.send(chain, 1, x_client="other")[0][0].status == 200
    assert h.send(chain, 1, x_client="third")[0][0].status == 429


def test_local_share_counts_every_worker_process() -> None:
    h = Harness(BrokenStore(), replicas=2)
    h.ctx.workers = 3  # `workers: 3`: six processes hold a share each
    (policy,) = h.build({"rate": "12/h", "store": "shared"})
    assert "(÷2 replicas x 3 workers)" in policy.explain(Exchange("GET", b"/", [], "::1"))
    chain = h.chain({"rate": "12/h", "store": "shared"})
    assert [r.status for r, _ in h.send(chain, 3)] == [200, 200, 429]


def test_the_store_is_tried_again_after_the_backoff() -> None:
    broken = BrokenStore()
    h = Harness(broken)
    chain = h.chain([{"rate": "100/s", "store": "shared", "store_backoff": "2s"}])
    h.send(chain, 3)
    assert broken.calls == 1
    h.clock.now += 2.5
    h.send(chain, 1)
    assert broken.calls == 2
    chain = h.chain([{"rate": "100/s", "store": "shared", "store_backoff": 0}])
    h.send(chain, 3)
    assert broken.calls == 5


def test_explain_shows_the_bucket_key() -> None:
    h = Harness(BrokenStore())
    rule = {"name": "tenant", "key": "{ip}:{header:X-Tenant}", "algorithm": "sliding_window",
            "rate": "50/m", "store": "shared"}  # fmt: skip
    (policy,) = h.build([rule])
    text = policy.explain(Exchange("GET", b"/", [], "203.0.113.9"))
    assert "sliding_window 50/60s" in text
    assert "'203.0.113.9:anonymous'" in text
    assert "gw:{rl:api:tenant:sw:203.0.113.9:anonymous}" in text
    assert "on_store_error local_share (÷1 replicas)" in text


def test_one_key_holds_one_entry_in_memory() -> None:
    h = Harness()
    chain = h.chain([{"rate": "1000000/s"}])
    h.send(chain, 100)
    assert len(h.memory) == 1


# --- configuration errors, reported at the policy's position ---------------------------

BASE = """\
version: 1
stores:
  shared: redis://127.0.0.1:1/0
upstreams:
  app: {url: "http://127.0.0.1:9"}
routes:
  - name: api
    match: {prefix: /}
    upstream: app
    policies:
      rate_limit:
"""


def load_errors(entries: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(BASE + entries, "gw.yaml")
    return [str(issue) for issue in info.value.issues]


def test_burst_on_a_window_algorithm_is_an_error_at_the_entry() -> None:
    (error,) = load_errors(
        "        - {name: a, rate: 10/s}\n"
        "        - {name: b, rate: 10/s, algorithm: fixed_window, burst: 5}\n"
    )
    assert error.startswith("gw.yaml:13:11:")
    assert "`burst` applies to algorithm: token_bucket only" in error


@pytest.mark.parametrize(
    ("entry", "message"),
    [("{rate: 10/s, key: 'cookie:x'}", "not a key source"),
     ("{rate: 10/s, key: 'jwt:sub'}", "add `jwt`"),
     ("{rate: 10/s, jwt: {secret: x}}", "reads no jwt:CLAIM"),
     ("{rate: 10/s, key: 'jwt:sub', jwt: {}}", "jwt needs `secret`"),
     ("{rate: 2.5/s, algorithm: sliding_window}", "whole number"),
     ("{rate: 10/s, name: 'bad name'}", "limiter name"),
     ("{rate: 10/s, on_store_error: retry}", "expected 'allow', 'deny' or 'local_share'"),
     ("{rate: fast}", "not a rate"),
     ("{rate: 10/s, brust: 3}", "unknown key 'brust'")],
)  # fmt: skip
def test_config_errors_say_what_was_expected(entry: str, message: str) -> None:
    errors = load_errors(f"        - {entry}\n")
    assert any(message in e and e.startswith("gw.yaml:12:") for e in errors), errors


def test_duplicate_limiter_names_are_an_error() -> None:
    (error,) = load_errors("        - {rate: 10/s}\n        - {rate: 20/s}\n")
    assert "two limiters are named 'default'" in error


@pytest.mark.parametrize(
    ("entry", "message"),
    [("{rate: 10/s, store: nowhere}", "store 'nowhere' is not defined in `stores` "
                                      "(have: memory, shared)"),
     ("{rate: 10/s, key: 'jwt:sub', jwt: {jwks_file: missing.json}}", "cannot be read")],
)  # fmt: skip
def test_build_errors_are_reported_by_check_at_the_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], entry: str, message: str
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(BASE + f"        - {{name: ok, rate: 1/s}}\n        - {entry}\n")
    assert main(["check", str(path)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"{path}:12:9: routes[0].policies.rate_limit: [1] (default): ")
    assert message in line


def test_a_store_without_scripts_is_refused_at_build() -> None:
    class KeyValueOnly:
        name, kind, prefix = "kv", "kv", "gw:"

        def key(self, *parts: str) -> str:
            return ":".join(parts)

    h = Harness(KeyValueOnly())
    with pytest.raises(ValueError, match=r"\[0\] \(default\): store 'kv' \(kv\) lacks Scripts"):
        h.build({"rate": "1/s", "store": "kv"})


@pytest.mark.parametrize(
    ("url", "early"),
    [("redis://127.0.0.1:1/0", True), ("redis://127.0.0.1:1/0?health_check_interval=5", False)],
)
def test_only_a_store_that_can_send_at_once_decides_in_the_read_callback(
    url: str, early: bool
) -> None:
    # A URL with options is served by redis-py, which only awaits: its limiter runs in
    # the chain's coroutine instead of asking a start() that would answer None.
    store = RedisStore("shared", StoreSpec(url=url))
    (policy,) = Harness(store).build({"rate": "1/s", "store": "shared"})
    assert store.starts_now is early
    assert policy.decides_now is early


def test_the_three_policies_are_registered() -> None:
    assert {"rate_limit", "concurrency", "adaptive"} <= set(REGISTRY)
