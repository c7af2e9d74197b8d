"""``workers: 2``: the supervisor's admin port speaks for the workers that serve traffic.

* a cache purge through the admin API reaches every worker's memory tier, and the
  cache status reports the workers' tiers, not the supervisor's;
* the supervisor's own Runtime (for ``/admin/config``, ``/admin/routes`` and reload
  validation) starts no policy background work: cache warming is the workers' job;
* a reload the supervisor refused shows in the merged ``/metrics``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from gateway.frontends import workers_admin
from gateway.frontends.workers_admin import combine_cache_status, combine_purge
from gateway.frontends.workers_protocol import AdminAnswer
from tests.integration.cache_helpers import cache_config, purge, resource, stats
from tests.integration.conftest import GatewayFactory
from tests.integration.harness import BROKEN_CONFIG, Gateway, Upstream, per_worker, wait_until

pytestmark = pytest.mark.integration

BROKEN = BROKEN_CONFIG


@pytest.fixture
def frontend() -> str:
    """Several workers exist for the native front-end only (overrides the conftest one)."""
    return "native"


def started(gw: Gateway) -> Gateway:
    assert wait_until(lambda: "gateway listening on" in gw.stderr(), timeout=10), gw.stderr()
    return gw


def promtool_check(text: str) -> None:
    done = subprocess.run(
        ["/usr/bin/promtool", "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


def test_purge_reaches_every_worker(start_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = started(start_gateway(cache_config(upstream, "native", workers=2)))
    name, path = resource(cc="max-age=60", tags="purge-me")

    def both_stored() -> bool:
        held = per_worker(gw, "gateway_cache_memory_entries")
        return set(held) == {"0", "1"} and all(v == 1 for v in held.values())

    for i in range(200):  # each request on a fresh connection: the kernel picks a worker
        assert gw.request("GET", path)[0] == 200, i
        if both_stored():
            break
    assert both_stored(), per_worker(gw, "gateway_cache_memory_entries")
    assert stats(upstream, name)["requests"] == 2  # one miss per worker

    # The status is the workers': their in-process tiers summed, each one's own listed.
    status, _, body = gw.admin("/admin/cache")
    cache = json.loads(body)
    assert status == 200, cache
    assert [p["memory"]["urls"] for p in cache["policies"]] == [2], cache
    assert sorted(cache["workers"]) == ["0", "1"], cache
    assert [w["policies"][0]["memory"]["urls"] for w in cache["workers"].values()] == [1, 1]
    assert (
        cache["policies"][0]["memory"]["max_bytes"]
        == 2 * (cache["workers"]["0"]["policies"][0]["memory"]["max_bytes"])
    )
    assert gw.admin("/admin/cache", token="wrong")[0] == 401
    status, headers, head_body = gw.admin("/admin/cache", method="HEAD")
    assert status == 200 and head_body == b""
    assert headers["content-length"] == str(len(body))  # the GET's, without its body

    status, doc = purge(gw, {"tag": "purge-me"})
    assert status == 200, doc
    assert doc["removed_here"] == 2, doc  # one entry in each worker
    assert doc["purged"] == {"kind": "tag", "value": "purge-me", "host": None}
    assert sorted(doc["workers"]) == ["0", "1"], doc
    assert per_worker(gw, "gateway_cache_memory_entries") == {"0": 0.0, "1": 0.0}
    cache = json.loads(gw.admin("/admin/cache")[2])
    assert [p["memory"]["urls"] for p in cache["policies"]] == [0], cache
    assert per_worker(gw, "gateway_cache_invalidations_total", source="admin") == {
        "0": 1.0,
        "1": 1.0,
    }
    # Errors are the workers' own answers, given once.
    status, doc = purge(gw, {"all": False})
    assert status == 400 and doc["status"] == 400, doc
    assert purge(gw, {"all": True}, token="wrong")[0] == 401
    assert "Traceback" not in gw.stderr()


def test_supervisor_does_not_warm_the_cache(
    start_gateway: GatewayFactory, upstream: Upstream
) -> None:
    first_name, first = resource(cc="max-age=60")
    config = cache_config(upstream, "native", {"warm": [first]}, workers=2)
    config["reload"] = {"watch": False}
    gw = started(start_gateway(config))

    def warmed(count: float) -> bool:
        done = per_worker(gw, "gateway_cache_background_total", kind="warm", result="ok")
        return done == {"0": count, "1": count}

    assert wait_until(lambda: warmed(1.0)), per_worker(gw, "gateway_cache_background_total")
    # The supervisor started before its admin port answered; a fetch of its own would
    # long be counted: settle a little all the same.
    time.sleep(0.3)
    assert stats(upstream, first_name)["requests"] == 2  # one per worker, none for the supervisor

    second_name, second = resource(cc="max-age=60")
    gw.write(cache_config(upstream, "native", {"warm": [first, second]}, workers=2))
    gw.send_signal(signal.SIGHUP)  # the supervisor reloads first, then signals the workers
    assert wait_until(lambda: warmed(2.0)), per_worker(gw, "gateway_cache_background_total")
    time.sleep(0.3)
    assert stats(upstream, second_name)["requests"] == 2
    assert stats(upstream, first_name)["requests"] == 2  # still fresh in every worker
    assert gw.admin("/admin/routes")[0] == 200
    assert gw.admin("/admin/config")[0] == 200


def test_refused_reload_shows_in_metrics(start_gateway: GatewayFactory) -> None:
    gw = started(start_gateway(workers=2, reload={"watch": False}))
    promtool_check(gw.metrics())
    assert gw.metric("gateway_config_reloads_total", result="failure") == 0
    info = per_worker(gw, "gateway_config_info")
    assert info == {"0": 1.0, "1": 1.0, "supervisor": 1.0}, info

    gw.write(BROKEN)
    gw.send_signal(signal.SIGHUP)
    assert wait_until(
        lambda: gw.metric("gateway_config_reloads_total", result="failure") == 1, timeout=10
    ), gw.metrics()
    failures = per_worker(gw, "gateway_config_reloads_total", result="failure")
    assert failures == {"0": 0.0, "1": 0.0, "supervisor": 1.0}, failures
    # Successes are counted by the workers that applied a reload, not once more.
    assert per_worker(gw, "gateway_config_reloads_total", result="success") == {
        "0": 0.0,
        "1": 0.0,
    }
    promtool_check(gw.metrics())

    changed = dict(gw.config)
    changed["routes"] = changed["routes"][:1]
    gw.write(changed)
    gw.send_signal(signal.SIGHUP)
    assert wait_until(
        lambda: (
            per_worker(gw, "gateway_config_reloads_total", result="success") == {"0": 1.0, "1": 1.0}
        ),
        timeout=10,
    ), gw.metrics()
    assert gw.metric("gateway_config_reloads_total", result="failure") == 1
    assert len(per_worker(gw, "gateway_config_info")) == 3
    promtool_check(gw.metrics())


def test_a_worker_that_does_not_answer_turns_a_purge_into_a_504() -> None:
    doc = {"id": "a", "purged": {"kind": "all", "value": "", "host": None}, "removed_here": 3,
           "replicated": False, "shared_stores": []}  # fmt: skip
    ok = AdminAnswer(200, [("content-type", "application/json")], json.dumps(doc).encode())
    answer = combine_purge([0, 1], [ok, None])
    body = json.loads(answer.body)
    assert answer.status == 504 and body["removed_here"] == 3 and "[1]" in body["detail"]
    assert combine_purge([0, 1], [None, None]).status == 504
    bad = AdminAnswer(400, [], b"{}")
    assert combine_purge([0, 1], [ok, bad]) is bad
    both = combine_purge([0, 1], [ok, ok])
    assert both.status == 200 and json.loads(both.body)["removed_here"] == 6


def test_the_cache_status_sums_the_workers_and_survives_a_silent_one() -> None:
    def status(*policies: tuple[str, int, int], bans: int = 0) -> AdminAnswer:
        doc = {
            "policies": [
                {"route": route, "mode": "enforce", "stores": ["memory"], "background": background,
                 "memory": {"bytes": 100 * urls, "max_bytes": 1000, "urls": urls}}
                for route, urls, background in policies
            ],
            "bans": bans,
            "shared_stores": [],
        }  # fmt: skip
        return AdminAnswer(200, [("content-type", "application/json")], json.dumps(doc).encode())

    both = combine_cache_status([0, 1], [status(("api", 2, 1)), status(("api", 3, 0), bans=1)])
    body = json.loads(both.body)
    assert both.status == 200 and body["consistent"] is True
    assert body["policies"][0]["memory"] == {"bytes": 500, "max_bytes": 2000, "urls": 5}
    assert body["policies"][0]["background"] == 1 and body["bans"] == 1
    assert body["workers"]["1"]["policies"][0]["memory"]["urls"] == 3

    # Mid-reload the workers' routes differ: matched by route, every route listed.
    mixed = combine_cache_status(
        [0, 1], [status(("api", 2, 0), ("old", 4, 0)), status(("new", 1, 0), ("api", 3, 0))]
    )
    body = json.loads(mixed.body)
    urls = {p["route"]: p["memory"]["urls"] for p in body["policies"]}
    assert mixed.status == 200 and body["consistent"] is False
    assert urls == {"api": 5, "old": 4, "new": 1}

    partial = combine_cache_status([0, 1], [None, status(("api", 3, 0))])
    body = json.loads(partial.body)
    assert partial.status == 504 and "[0]" in body["detail"]
    assert body["policies"][0]["memory"]["urls"] == 3 and list(body["workers"]) == ["1"]
    assert combine_cache_status([0, 1], [None, None]).status == 504
    empty = combine_cache_status([0, 1], [status(), status()])
    assert json.loads(empty.body)["policies"] == []


@pytest.mark.parametrize(
    ("value", "forwarded"),
    [(b"Bearer s3cret", True), (b"bearer s3cret", True), (b"BEARER  s3cret", True),
     (b"Bearer wrong", False), (b"Basic s3cret", False), (b"", False)],
)  # fmt: skip
def test_a_call_is_forwarded_to_the_workers_whatever_the_scheme_case(
    value: bytes, forwarded: bool
) -> None:
    scope = {"headers": [(b"host", b"h"), (b"authorization", value)]}
    assert workers_admin._authorized(scope, "s3cret") is forwarded
