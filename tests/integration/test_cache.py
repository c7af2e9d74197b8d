"""The cache policy through the real gateway, a real upstream and a real redis-server."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import pytest

from tests.integration.cache_helpers import (
    cache_config,
    cache_status,
    count,
    fail,
    purge,
    request_without_host,
    resource,
    stats,
)
from tests.integration.conftest import GatewayFactory
from tests.integration.harness import Redis, Upstream, base_config, free_port, wait_until

pytestmark = pytest.mark.integration


def test_miss_then_hit(start_gateway: GatewayFactory, upstream: Upstream, frontend: str) -> None:
    gw = start_gateway(cache_config(upstream, frontend))
    name, path = resource(cc="max-age=60", tags="shelf")
    status, headers, body = gw.request("GET", path)
    assert status == 200 and count(body) == 1
    name_, params = cache_status(headers["cache-status"])
    assert name_ == "gateway" and params["fwd"] == "uri-miss" and "stored" in params
    assert 55 <= int(params["ttl"]) <= 60
    assert "surrogate-key" not in headers  # the tags header stays inside the cache
    status, headers, body = gw.request("GET", path)
    assert status == 200 and count(body) == 1
    assert headers["cache-status"].startswith("gateway; hit; ttl=")
    assert headers["age"].isdigit() and headers["content-length"] == str(len(body))
    status, headers, body = gw.request("HEAD", path)
    assert status == 200 and body == b"" and headers["content-length"] != "0"
    assert stats(upstream, name)["requests"] == 1
    assert gw.metric("gateway_policy_decisions_total", policy="cache", action="hit") == 2


def test_revalidation_and_not_modified(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    gw = start_gateway(cache_config(upstream, frontend))
    name, path = resource(cc="max-age=0", etag="1", lm="1")
    gw.request("GET", path)
    status, headers, body = gw.request("GET", path)
    assert status == 200 and count(body) == 1  # the stored body, validated upstream
    assert headers["cache-status"].startswith("gateway; fwd=stale; fwd-status=304")
    seen = stats(upstream, name)
    assert seen["not_modified"] == 1
    assert seen["conditionals"] == [['"v1"', "Mon, 01 Jan 2024 00:00:00 GMT"]]
    status, headers, body = gw.request("GET", path, headers={"If-None-Match": '"v1"'})
    assert status == 304 and body == b"" and headers["etag"] == '"v1"'


def test_stale_if_error_on_5xx_and_connection_failure(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    gw = start_gateway(cache_config(upstream, frontend, {"stale_if_error": "5m"}))
    name, path = resource(cc="max-age=0", etag="1")
    gw.request("GET", path)
    fail(upstream, name, "503")
    status, headers, body = gw.request("GET", path)
    assert status == 200 and count(body) == 1
    assert headers["cache-status"].startswith("gateway; fwd=stale; fwd-status=503; ttl=")
    assert headers["cache-status"].endswith("; detail=stale-if-error")
    fail(upstream, name, "close")
    status, headers, body = gw.request("GET", path)
    assert status == 200 and count(body) == 1
    assert "detail=stale-if-error" in headers["cache-status"]
    fail(upstream, name, "none")
    assert gw.request("GET", path)[0] == 200


def test_stale_while_revalidate_refreshes_in_the_background(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    gw = start_gateway(cache_config(upstream, frontend))
    name, path = resource(cc="max-age=0, stale-while-revalidate=60")
    gw.request("GET", path)
    status, headers, body = gw.request("GET", path)
    assert status == 200 and count(body) == 1
    assert headers["cache-status"].endswith("detail=stale-while-revalidate")
    assert wait_until(lambda: stats(upstream, name)["requests"] == 2)
    assert wait_until(
        lambda: gw.metric("gateway_cache_background_total", kind="refresh", result="ok") == 1
    )
    assert count(gw.request("GET", path)[2]) == 2


def test_vary_cookies_and_private(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    gw = start_gateway(cache_config(upstream, frontend))
    _, path = resource(cc="max-age=60", vary="Accept-Language")
    fr = gw.request("GET", path, headers={"Accept-Language": "fr"})[2]
    en = gw.request("GET", path, headers={"Accept-Language": "en"})
    assert en[1]["cache-status"].startswith("gateway; fwd=vary-miss")
    assert gw.request("GET", path, headers={"Accept-Language": "fr"})[2] == fr
    assert count(en[2]) == 2
    for params, reason in (
        ({"cc": "max-age=60", "vary": "*"}, "vary-star"),
        ({"cc": "max-age=60", "cookie": "1"}, "set-cookie"),
        ({"cc": "private, max-age=60"}, "private"),
        ({"cc": "no-store"}, "no-store"),
    ):
        name, path = resource(**params)
        gw.request("GET", path)
        headers = gw.request("GET", path)[1]
        assert headers["cache-status"] == f"gateway; fwd=uri-miss; detail={reason}"
        assert stats(upstream, name)["requests"] == 2


def test_unsafe_methods_invalidate(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    gw = start_gateway(cache_config(upstream, frontend))
    name, path = resource(cc="max-age=60")
    _, other = resource(cc="max-age=60")
    _, kept = resource(cc="max-age=60")
    for p in (path, other, kept):
        gw.request("GET", p)
    fail(upstream, name, "none", location=other)
    status, headers, _ = gw.request("POST", path)
    assert status == 204 and headers["cache-status"] == "gateway; fwd=method"
    assert count(gw.request("GET", path)[2]) == 2  # the target URI (§4.4)
    assert count(gw.request("GET", other)[2]) == 2  # the same-origin Location
    assert count(gw.request("GET", kept)[2]) == 1
    assert gw.metric("gateway_cache_invalidations_total", kind="url", source="unsafe") == 2


def reads_config(
    upstream: Upstream, frontend: str, cache: dict[str, Any] | None = None, **overrides: Any
) -> dict[str, Any]:
    """The README's layout: a GET/HEAD route with the cache, then a catch-all without."""
    config = base_config(upstream.url, frontend, **overrides)
    config["routes"][0] = {
        "name": "reads",
        "match": {"prefix": "/cache/r", "methods": ["GET", "HEAD"]},
        "upstream": "app",
        "policies": {"cache": cache or {}},
    }
    return config


def test_unsafe_methods_invalidate_through_a_route_without_a_cache(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    gw = start_gateway(reads_config(upstream, frontend))
    name, path = resource(cc="max-age=60")
    _, other = resource(cc="max-age=60")
    _, kept = resource(cc="max-age=60")
    for p in (path, other, kept):
        gw.request("GET", p)
    fail(upstream, name, "503")
    assert gw.request("PUT", path, body=b"{}")[0] == 503  # an error invalidates nothing
    fail(upstream, name, "none", location=other)
    assert count(gw.request("GET", path)[2]) == 1
    status, headers, _ = gw.request("PUT", path, body=b"{}")
    assert status == 204 and "cache-status" not in headers  # the catch-all answered
    assert count(gw.request("GET", path)[2]) == 2  # the target URI (§4.4)
    assert count(gw.request("GET", other)[2]) == 2  # the same-origin Location
    assert count(gw.request("GET", kept)[2]) == 1
    assert gw.metric("gateway_cache_invalidations_total", kind="url", source="unsafe") == 2
    assert (
        gw.metric(
            "gateway_policy_decisions_total",
            route="everything-else",
            policy="cache",
            action="invalidate",
        )
        == 1
    )


def tenants_config(upstream: Upstream, frontend: str) -> dict[str, Any]:
    """Two hosts' routes with a cache each (keyed without the host, the default), the
    first for reads only, then a catch-all without a cache for every host."""
    config = base_config(upstream.url, frontend)
    config["routes"] = [
        {
            "name": "tenant-a",
            "match": {"prefix": "/cache/r", "host": "a.example", "methods": ["GET", "HEAD"]},
            "upstream": "app",
            "policies": {"cache": {}},
        },
        {
            "name": "tenant-b",
            "match": {"prefix": "/cache/r", "host": "b.example"},
            "upstream": "app",
            "policies": {"cache": {}},
        },
        {"name": "everything-else", "match": {"prefix": "/"}, "upstream": "app"},
    ]
    return config


def test_an_unsafe_request_invalidates_only_caches_whose_route_could_serve_it(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    """A write to one host must not empty the cache of another host's route."""
    gw = start_gateway(tenants_config(upstream, frontend))
    name, path = resource(cc="max-age=60")
    _, other = resource(cc="max-age=60")
    a = {"Host": "a.example"}
    for p in (path, other):
        assert count(gw.request("GET", p, headers=a)[2]) == 1
    fail(upstream, name, "none", location=other)
    # Through b.example's cached route, and through the catch-all for another host.
    assert gw.request("POST", path, headers={"Host": "b.example"})[0] == 204
    assert gw.request("POST", path, headers={"Host": "c.example"})[0] == 204
    for p in (path, other):
        headers, body = gw.request("GET", p, headers=a)[1:]
        assert headers["cache-status"].startswith("gateway; hit") and count(body) == 1
    # c.example's request could reach no cache: it paid for no invalidation.
    decisions = gw.metric("gateway_policy_decisions_total", route="everything-else")
    assert decisions == 0
    # a.example's own write (its route takes reads only) drops both.
    assert gw.request("POST", path, headers=a)[0] == 204
    assert count(gw.request("GET", path, headers=a)[2]) == 2
    assert count(gw.request("GET", other, headers=a)[2]) == 2


def test_a_request_without_host_invalidates_no_hosts_entries(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    """Only an admin purge drops a URL under every host of a cache keyed by host."""
    gw = start_gateway(reads_config(upstream, frontend, {"key": {"host": True}}))
    _, path = resource(cc="max-age=60")
    a = {"Host": "a.example"}
    assert count(gw.request("GET", path, headers=a)[2]) == 1
    assert count(request_without_host(gw, "GET", path)[1]) == 2  # stored without a host
    assert request_without_host(gw, "POST", path)[0] == 204
    headers, body = gw.request("GET", path, headers=a)[1:]
    assert headers["cache-status"].startswith("gateway; hit") and count(body) == 1
    assert count(request_without_host(gw, "GET", path)[1]) == 3  # its own entry went


def test_safe_methods_beyond_rfc_9110_do_not_invalidate(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    """QUERY, PROPFIND and REPORT only read: a 2xx to them drops nothing, through a route
    with a cache (b.example: its cache policy) or without (a.example: the catch-all)."""
    gw = start_gateway(tenants_config(upstream, frontend))
    _, path = resource(cc="max-age=60")
    hosts = ({"Host": "a.example"}, {"Host": "b.example"})
    for n, host in enumerate(hosts, 1):
        assert count(gw.request("GET", path, headers=host)[2]) == n
    for method in ("QUERY", "PROPFIND", "REPORT"):
        for host in hosts:
            assert gw.request(method, path, headers=host)[0] == 204
    for n, host in enumerate(hosts, 1):
        assert count(gw.request("GET", path, headers=host)[2]) == n
    assert gw.metric("gateway_cache_invalidations_total", source="unsafe") == 0


def test_a_304_may_make_the_entry_unstorable(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    """RFC 9111 §3, §5.2.2.5, §5.2.2.7: the response a 304 merges into is judged again."""
    gw = start_gateway(cache_config(upstream, frontend))
    for directive in ("private", "no-store"):
        name, path = resource(cc="max-age=60", etag="1")
        gw.request("GET", path)
        fail(upstream, name, "none", header=f"Cache-Control:{directive}")
        status, headers, body = gw.request("GET", path, headers={"Cache-Control": "no-cache"})
        assert status == 200 and count(body) == 1  # the merged response, for this client
        _, params = cache_status(headers["cache-status"])
        assert params["fwd-status"] == "304" and params["detail"] == directive
        assert "stored" not in params
        headers = gw.request("GET", path)[1]  # dropped: not a hit
        assert headers["cache-status"] == f"gateway; fwd=uri-miss; detail={directive}"
        assert stats(upstream, name)["requests"] == 3


def test_a_request_that_revalidates_cannot_remove_the_entry(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    """RFC 9111 §5.2.1.5: a request's no-store does not apply to the stored response; nor
    does its Authorization. Its 304 is merged for it alone and the entry stays as it was."""
    gw = start_gateway(cache_config(upstream, frontend))
    for asked, reason in (
        ({"Cache-Control": "no-cache, no-store"}, "request-no-store"),
        ({"Cache-Control": "no-cache", "Authorization": "Bearer x"}, "authorization"),
    ):
        name, path = resource(cc="max-age=60", etag="1")
        gw.request("GET", path)
        status, headers, body = gw.request("GET", path, headers=asked)
        assert status == 200 and count(body) == 1
        _, params = cache_status(headers["cache-status"])
        assert params["fwd-status"] == "304" and params["detail"] == reason
        assert "stored" not in params
        headers, body = gw.request("GET", path)[1:]
        assert headers["cache-status"].startswith("gateway; hit") and count(body) == 1
        seen = stats(upstream, name)
        assert seen["requests"] == 2 and seen["not_modified"] == 1


def test_a_304_that_changes_vary_selects_the_variant_anew(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    gw = start_gateway(cache_config(upstream, frontend))
    name, path = resource(cc="max-age=60", etag="1")
    gw.request("GET", path)
    fail(upstream, name, "none", header="Vary:X-User")
    revalidated = gw.request("GET", path, headers={"Cache-Control": "no-cache", "X-User": "a"})
    assert cache_status(revalidated[1]["cache-status"])[1]["fwd-status"] == "304"
    hit = gw.request("GET", path, headers={"X-User": "a"})
    assert hit[1]["cache-status"].startswith("gateway; hit") and count(hit[2]) == 1
    other = gw.request("GET", path, headers={"X-User": "b"})
    assert other[1]["cache-status"].startswith("gateway; fwd=vary-miss")
    assert count(other[2]) == 3


def test_a_cookie_in_a_304_goes_to_its_client_only(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    """With store_set_cookie false a cookie is never stored, whatever brings it."""
    gw = start_gateway(cache_config(upstream, frontend))
    name, path = resource(cc="max-age=60", etag="1")
    gw.request("GET", path)
    fail(upstream, name, "none", header="Set-Cookie:session=alice")
    status, headers, body = gw.request("GET", path, headers={"Cache-Control": "no-cache"})
    assert status == 200 and count(body) == 1 and headers["set-cookie"] == "session=alice"
    _, params = cache_status(headers["cache-status"])
    assert params["fwd-status"] == "304" and "stored" in params
    status, headers, body = gw.request("GET", path)
    assert headers["cache-status"].startswith("gateway; hit") and "set-cookie" not in headers
    # The same from a stale-while-revalidate refresh: the cookie is nobody's.
    name, path = resource(cc="max-age=0, stale-while-revalidate=60", etag="1")
    gw.request("GET", path)
    fail(upstream, name, "none", header="Set-Cookie:session=bob")
    headers = gw.request("GET", path)[1]
    assert headers["cache-status"].endswith("detail=stale-while-revalidate")
    assert "set-cookie" not in headers
    assert wait_until(
        lambda: gw.metric("gateway_cache_background_total", kind="refresh", result="ok") == 1
    )
    assert stats(upstream, name)["not_modified"] == 1
    headers = gw.request("GET", path)[1]
    assert headers["cache-status"].endswith("detail=stale-while-revalidate")
    assert "set-cookie" not in headers


def test_key_headers_are_named_in_vary(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    gw = start_gateway(cache_config(upstream, frontend, {"key": {"headers": ["Accept-Language"]}}))
    for vary, expected in (
        (None, "Accept-Language"),
        ("Accept-Encoding", "Accept-Encoding, Accept-Language"),
        ("accept-language", "accept-language"),
    ):
        _, path = resource(cc="max-age=60", **({"vary": vary} if vary else {}))
        miss = gw.request("GET", path, headers={"Accept-Language": "fr"})[1]
        hit = gw.request("GET", path, headers={"Accept-Language": "fr"})[1]
        assert "stored" in miss["cache-status"] and hit["cache-status"].startswith("gateway; hit")
        assert miss["vary"] == hit["vary"] == expected


def test_key_headers_are_named_in_the_vary_of_what_is_not_stored(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    """A cache downstream may store what this one passes through: it must keep the
    variants of the key headers apart too."""
    gw = start_gateway(cache_config(upstream, frontend, {"key": {"headers": ["Accept-Language"]}}))
    for params, method, expected in (
        ({"cc": "no-store"}, "GET", "Accept-Language"),
        ({"cc": "max-age=60, private", "vary": "Accept-Encoding"}, "GET",
         "Accept-Encoding, Accept-Language"),
        ({"cc": "no-store", "vary": "accept-language"}, "GET", "accept-language"),
        ({}, "GET", "Accept-Language"),  # no freshness
        ({"cc": "max-age=60"}, "HEAD", "Accept-Language"),  # only GETs are stored
    ):  # fmt: skip
        _, path = resource(**params)
        headers = gw.request(method, path, headers={"Accept-Language": "fr"})[1]
        assert "stored" not in headers["cache-status"] and headers["vary"] == expected


def test_admin_purges(start_gateway: GatewayFactory, upstream: Upstream, frontend: str) -> None:
    gw = start_gateway(cache_config(upstream, frontend))
    paths = {}
    for tag in ("red", "blue"):
        name, path = resource(cc="max-age=60", tags=f"{tag} all")
        gw.request("GET", path)
        paths[tag] = (name, path)
    status, doc = purge(gw, {"tag": "red"})
    assert status == 200 and doc["removed_here"] == 1 and doc["replicated"] is False
    assert count(gw.request("GET", paths["red"][1])[2]) == 2
    assert count(gw.request("GET", paths["blue"][1])[2]) == 1
    status, doc = purge(gw, {"prefix": "/cache/r/" + paths["blue"][0]})
    assert status == 200 and doc["removed_here"] == 1
    assert count(gw.request("GET", paths["blue"][1])[2]) == 2
    status, doc = purge(gw, {"glob": "/cache/r/*"})
    assert status == 200 and doc["removed_here"] >= 2
    status, doc = purge(gw, {"url": f"http://any.example{paths['red'][1]}"})
    assert status == 200 and doc["purged"]["kind"] == "url"
    assert purge(gw, {"tag": "x", "url": "/y"})[0] == 400
    assert purge(gw, {"all": False})[0] == 400
    assert purge(gw, {"all": True}, token="wrong")[0] == 401
    status, _, body = gw.admin("/admin/cache")
    assert status == 200 and b'"route":"everything-else"' in body
    assert gw.metric("gateway_cache_invalidations_total", source="admin") == 4


def test_shadow_mode_never_serves(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    gw = start_gateway(cache_config(upstream, frontend, {"mode": "shadow"}))
    name, path = resource(cc="max-age=60", tags="t")
    for _ in range(3):
        status, headers, _ = gw.request("GET", path)
        assert status == 200 and "cache-status" not in headers and headers["surrogate-key"] == "t"
    assert stats(upstream, name)["requests"] == 3
    assert (
        gw.metric("gateway_policy_decisions_total", policy="cache", action="hit", mode="shadow")
        == 2
    )


def test_concurrent_misses_are_coalesced(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    gw = start_gateway(cache_config(upstream, frontend))
    name, path = resource(cc="max-age=60", delay="0.5")
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: gw.request("GET", path), range(6)))
    assert {r[0] for r in results} == {200} and {count(r[2]) for r in results} == {1}
    assert stats(upstream, name)["requests"] == 1
    # One went upstream; the others waited for it (or, arriving later, found it stored).
    statuses = [r[1]["cache-status"] for r in results]
    assert sum("stored" in s for s in statuses) == 1
    assert all("collapsed" in s or "hit" in s for s in statuses if "stored" not in s)


def test_warm_list_is_fetched_at_start_and_on_reload(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    first_name, first = resource(cc="max-age=60")
    config = cache_config(upstream, frontend, {"warm": [first]})
    gw = start_gateway(config)
    assert wait_until(lambda: stats(upstream, first_name)["requests"] == 1)
    assert gw.request("GET", first)[1]["cache-status"].startswith("gateway; hit")
    second_name, second = resource(cc="max-age=60")
    changed = cache_config(upstream, frontend, {"warm": [first, second]})
    gw.write({**changed, "listen": gw.config["listen"], "admin": gw.config["admin"]})
    assert gw.admin("/admin/reload", method="POST")[0] == 200
    assert wait_until(lambda: stats(upstream, second_name)["requests"] == 1)
    assert gw.request("GET", second)[1]["cache-status"].startswith("gateway; hit")
    # The memory tier survived the reload: the first URL was fresh, not fetched again.
    assert stats(upstream, first_name)["requests"] == 1


def redis_config(upstream: Upstream, frontend: str, url: str, **cache: Any) -> dict[str, Any]:
    return cache_config(
        upstream,
        frontend,
        {"stores": ["memory", "shared"], **cache},
        stores={"shared": {"url": url, "timeout": "200ms"}},
    )


def test_two_gateways_share_redis(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str, redis_server: Redis
) -> None:
    config = redis_config(upstream, frontend, redis_server.url)
    one, two = start_gateway(config), start_gateway(config)
    name, path = resource(cc="max-age=60", tags="shared-tag")
    assert count(one.request("GET", path)[2]) == 1
    status, headers, body = two.request("GET", path)
    assert status == 200 and count(body) == 1
    assert headers["cache-status"].startswith("gateway; hit; ttl=")
    assert headers["cache-status"].endswith("; detail=l2")
    assert two.request("GET", path)[1]["cache-status"].startswith("gateway; hit")
    status, doc = purge(one, {"tag": "shared-tag"})
    assert status == 200 and doc["replicated"] is True and doc["shared_stores"] == ["shared"]
    assert wait_until(
        lambda: two.metric("gateway_cache_invalidations_total", kind="tag", source="remote") >= 1
    )
    assert count(two.request("GET", path)[2]) == 2  # purged from both tiers
    assert stats(upstream, name)["requests"] == 2
    # An unsafe method through one replica drops the URL everywhere.
    _, other = resource(cc="max-age=60")
    one.request("GET", other)
    two.request("GET", other)
    assert two.request("DELETE", other)[0] == 204
    assert wait_until(
        lambda: one.metric("gateway_cache_invalidations_total", kind="url", source="remote") >= 1
    )
    assert count(one.request("GET", other)[2]) == 2


def test_an_unsafe_method_through_a_route_without_a_cache_reaches_every_replica(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str, redis_server: Redis
) -> None:
    stores = {"shared": {"url": redis_server.url, "timeout": "200ms"}}
    config = reads_config(upstream, frontend, {"stores": ["memory", "shared"]}, stores=stores)
    one, two = start_gateway(config), start_gateway(config)
    _, path = resource(cc="max-age=60")
    assert count(one.request("GET", path)[2]) == 1
    assert two.request("GET", path)[1]["cache-status"].endswith("; detail=l2")
    assert two.request("DELETE", path)[0] == 204
    assert wait_until(
        lambda: one.metric("gateway_cache_invalidations_total", kind="url", source="remote") >= 1
    )
    assert count(one.request("GET", path)[2]) == 2  # gone from both tiers and both memories
    assert count(two.request("GET", path)[2]) == 2


def test_redis_down_degrades_to_memory(
    start_gateway: GatewayFactory, upstream: Upstream, frontend: str
) -> None:
    config = redis_config(upstream, frontend, f"redis://127.0.0.1:{free_port()}/0")
    gw = start_gateway(config)
    name, path = resource(cc="max-age=60")
    statuses = [gw.request("GET", path)[0] for _ in range(5)]
    assert statuses == [200] * 5
    assert stats(upstream, name)["requests"] == 1  # L1 kept serving
    assert gw.metric("gateway_store_errors_total", store="shared") >= 1
    status, doc = purge(gw, {"url": path})
    assert status == 200 and doc["replicated"] is False
