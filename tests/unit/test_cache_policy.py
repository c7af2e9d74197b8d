"""The cache policy against a fake upstream (the ``call_next`` seam) and a moved clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from gateway.config.models import StoreSpec
from gateway.errors import UpstreamConnectError, UpstreamTimeout
from gateway.exchange import Exchange, Response
from gateway.observability.metrics import Metrics
from gateway.policies.cache.fields import format_http_date
from gateway.policies.cache.policy import CachePolicy
from gateway.stores import Stores
from gateway.stores.memory import MemoryStore
from tests.unit.cache_support import (
    Chunks,
    Clock,
    Upstream,
    build,
    header,
    ok,
    request,
    shared_store,
    stores,
)

MAX_AGE = ("Cache-Control", "max-age=60")


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


async def started(config: dict[str, Any] | None = None, **kw: Any) -> CachePolicy:
    policy = build(config, **kw)
    await policy.start()
    return policy


def test_miss_then_hit_with_age_and_cache_status() -> None:
    async def go() -> None:
        clock = Clock()
        policy = await started(clock=clock)
        up = Upstream(ok(MAX_AGE, ("ETag", '"v1"')))
        first = await policy(request(), up)
        assert first.body == b"response 1"
        assert header(first, "cache-status") == "gateway; fwd=uri-miss; ttl=60; stored"
        assert header(first, "age") is None  # straight from the upstream
        clock.advance(10)
        ex = request()
        second = await policy(ex, up)
        assert up.calls == 1 and second.body == b"response 1"
        assert header(second, "age") == "10"
        assert header(second, "cache-status") == "gateway; hit; ttl=50"
        assert header(second, "content-length") == "10"
        assert [(d.action, d.detail) for d in ex.decisions] == [("hit", "l1")]
        await policy.stop()

    run(go)


def answer(response: Response) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
    return response.status, response.reason, response.headers, response.body


@pytest.mark.parametrize(
    ("config", "method", "extra"),
    [
        ({}, "GET", ()),
        ({}, "HEAD", ()),
        ({}, "GET", (("Range", "bytes=0-1"),)),  # a hit answers a range with the whole body
        ({"cache_status": None}, "GET", ()),
        ({"key": {"headers": ["X-Tenant"]}}, "GET", (("X-Tenant", "t1"),)),
        ({"key": {"host": True}}, "GET", ()),
    ],
)
def test_the_hot_path_answers_as_the_full_lookup_does(
    config: dict[str, Any], method: str, extra: tuple[tuple[str, str], ...]
) -> None:
    """A request that asks nothing of the cache is answered without an Ask; a Pragma
    without no-cache asks nothing either, but takes the full lookup."""

    async def go() -> None:
        clock = Clock()
        policy = await started(config, clock=clock)
        up = Upstream(ok(MAX_AGE, ("ETag", '"v1"'), ("Vary", "Accept-Language")))
        await policy(request("GET", "/a?b=2&a=1", ("Accept-Language", "fr"), *extra), up)
        clock.advance(12.5)
        fast = request(method, "/a?a=1&b=2", ("Accept-Language", "fr"), *extra)
        full = request(method, "/a?a=1&b=2", ("Accept-Language", "fr"), ("Pragma", "x"), *extra)
        fast_answer, full_answer = await policy(fast, up), await policy(full, up)
        assert answer(fast_answer) == answer(full_answer) and up.calls == 1
        assert header(fast_answer, "age") == "12"
        if config.get("cache_status", "gateway") is not None:
            assert header(fast_answer, "cache-status") == "gateway; hit; ttl=47"
        assert [(d.action, d.detail) for d in fast.decisions] == [("hit", "l1")]
        assert [(d.action, d.detail) for d in full.decisions] == [("hit", "l1")]
        # Another variant, or a stale entry: the full lookup decides.
        stored = "stored" if method == "GET" else "method"
        other = request(method, "/a?a=1&b=2", ("Accept-Language", "en"), *extra)
        await policy(other, up)
        assert up.calls == 2 and [(d.action, d.detail) for d in other.decisions] == [
            ("miss", stored)
        ]
        clock.advance(60)
        stale = request(method, "/a?a=1&b=2", ("Accept-Language", "fr"), *extra)
        await policy(stale, up)
        assert up.calls == 3 and [(d.action, d.detail) for d in stale.decisions] == [
            ("miss", stored)
        ]
        assert up.header(2, b"if-none-match") == b'"v1"'  # revalidated, answered in full
        await policy.stop()

    run(go)


def test_head_is_served_from_the_stored_get() -> None:
    async def go() -> None:
        policy = await started()
        up = Upstream(ok(MAX_AGE))
        await policy(request(), up)
        head = await policy(request("HEAD"), up)
        assert up.calls == 1 and head.status == 200 and head.body == b""
        assert header(head, "content-length") == "10"
        # A HEAD miss goes upstream as HEAD and stores nothing.
        await policy(request("HEAD", "/other"), up)
        assert up.requests[-1][0] == "HEAD"
        miss = await policy(request("HEAD", "/x"), up)
        assert "detail=method" in (header(miss, "cache-status") or "")

    run(go)


def test_conditional_client_requests_get_304_from_the_cache() -> None:
    async def go() -> None:
        clock = Clock()
        lm = format_http_date(clock.now - 100).decode()
        policy = await started(clock=clock)
        up = Upstream(ok(MAX_AGE, ("ETag", 'W/"v1"'), ("Last-Modified", lm), ("X-Other", "1")))
        # A conditional miss: the upstream is asked for the full response (to store it),
        # and the client still gets its 304.
        first = await policy(request("GET", "/a", ("If-None-Match", '"v1"')), up)
        assert up.header(0, b"if-none-match") is None
        assert first.status == 304 and header(first, "etag") == 'W/"v1"'
        assert "fwd-status=200" in (header(first, "cache-status") or "")
        hit = await policy(request("GET", "/a", ("If-None-Match", '"v0", "v1"')), up)
        assert hit.status == 304 and hit.body == b"" and header(hit, "x-other") is None
        assert header(hit, "age") == "0" and header(hit, "cache-status") == "gateway; hit; ttl=60"
        changed = await policy(request("GET", "/a", ("If-None-Match", '"v2"')), up)
        assert changed.status == 200 and changed.body == b"response 1"
        ims = await policy(request("GET", "/a", ("If-Modified-Since", lm)), up)
        assert ims.status == 304
        older = format_http_date(clock.now - 200).decode()
        assert (await policy(request("GET", "/a", ("If-Modified-Since", older)), up)).status == 200
        assert up.calls == 1

    run(go)


def test_revalidation_with_validators_and_freshening_from_304() -> None:
    async def go() -> None:
        clock = Clock()
        policy = await started(clock=clock)
        lm = format_http_date(clock.now - 100).decode()

        def answer(exchange: Exchange, n: int) -> Response:
            if n == 1:
                return ok(("Cache-Control", "max-age=10"), ("ETag", '"v1"'),
                          ("Last-Modified", lm), ("X-Version", "1"))(exchange, n)  # fmt: skip
            return Response(304, [(b"cache-control", b"max-age=30"), (b"x-version", b"2"),
                                  (b"content-length", b"999")])  # fmt: skip

        up = Upstream(answer)
        await policy(request(), up)
        clock.advance(11)
        stale = await policy(request("GET", "/a", ("If-None-Match", '"client"')), up)
        assert up.calls == 2
        assert up.header(1, b"if-none-match") == b'"v1"'  # the cache's validator ...
        assert up.header(1, b"if-modified-since") == lm.encode()  # ... both of them
        assert stale.status == 200 and stale.body == b"response 1"
        assert header(stale, "x-version") == "2"  # freshened from the 304
        assert header(stale, "content-length") == "10"  # but never Content-Length
        assert header(stale, "cache-status") == (
            "gateway; fwd=stale; fwd-status=304; ttl=30; stored"
        )
        clock.advance(20)
        again = await policy(request(), up)
        assert up.calls == 2 and header(again, "x-version") == "2"

    run(go)


def test_revalidation_answered_with_a_new_response_replaces_the_entry() -> None:
    async def go() -> None:
        clock = Clock()
        policy = await started(clock=clock)
        up = Upstream(ok(("Cache-Control", "max-age=10"), ("ETag", '"v"')))
        await policy(request(), up)
        clock.advance(11)
        new = await policy(request(), up)
        assert new.body == b"response 2" and "fwd=stale" in (header(new, "cache-status") or "")
        assert (await policy(request(), up)).body == b"response 2" and up.calls == 2

    run(go)


def test_stale_while_revalidate_serves_at_once_and_refreshes_once() -> None:
    async def go() -> None:
        clock = Clock()
        policy = await started({"stale_while_revalidate": "30s"}, clock=clock)
        up = Upstream(ok(("Cache-Control", "max-age=10"), ("ETag", '"v"')))
        await policy(request(), up)
        clock.advance(15)
        up.gate = asyncio.Event()  # hold the refresh in flight
        answers = [await policy(request(), up) for _ in range(5)]
        assert all(a.body == b"response 1" for a in answers)
        assert header(answers[0], "cache-status") == (
            "gateway; hit; ttl=-5; detail=stale-while-revalidate"
        )
        await asyncio.sleep(0)
        assert up.calls == 2  # one background refresh for five stale hits
        assert up.header(1, b"if-none-match") == b'"v"'
        up.gate.set()
        await policy.background.join()
        fresh = await policy(request(), up)
        assert fresh.body == b"response 2" and header(fresh, "cache-status") == (
            "gateway; hit; ttl=10"
        )
        # Beyond the window the request waits for revalidation.
        clock.advance(45)
        late = await policy(request(), up)
        assert late.body == b"response 3" and up.calls == 3

    run(go)


def test_swr_never_for_must_revalidate_or_client_max_age() -> None:
    async def go() -> None:
        clock = Clock()
        policy = await started({"stale_while_revalidate": "30s"}, clock=clock)
        up = Upstream(ok(("Cache-Control", "max-age=10, must-revalidate")))
        await policy(request(), up)
        clock.advance(15)
        assert (await policy(request(), up)).body == b"response 2"
        clock.advance(15)
        up2 = Upstream(ok(("Cache-Control", "max-age=10")))
        await policy(request("GET", "/b"), up2)
        clock.advance(15)
        forced = await policy(request("GET", "/b", ("Cache-Control", "max-age=0")), up2)
        assert forced.body == b"response 2"

    run(go)


@pytest.mark.parametrize("failure", ["connect", "timeout", "500", "503"])
def test_stale_if_error(failure: str) -> None:
    async def go() -> None:
        clock = Clock()
        policy = await started({"stale_if_error": "5m"}, clock=clock)

        def answer(exchange: Exchange, n: int) -> Response:
            if n == 1:
                return ok(("Cache-Control", "max-age=10"))(exchange, n)
            if failure == "connect":
                raise UpstreamConnectError("refused")
            if failure == "timeout":
                raise UpstreamTimeout("slow")
            return Response(int(failure), [], b"boom")

        up = Upstream(answer)
        await policy(request(), up)
        clock.advance(100)
        ex = request()
        stale = await policy(ex, up)
        assert stale.status == 200 and stale.body == b"response 1"
        status = header(stale, "cache-status") or ""
        assert status.startswith("gateway; fwd=stale") and "detail=stale-if-error" in status
        assert ("fwd-status=" + failure in status) == failure.isdigit()
        assert header(stale, "age") == "100"
        assert ex.decisions[-1].action == "stale"
        clock.advance(300)  # beyond the window: the failure shows
        if failure.isdigit():
            assert (await policy(request(), up)).status == int(failure)
        else:
            with pytest.raises((UpstreamConnectError, UpstreamTimeout)):
                await policy(request(), up)

    run(go)


def test_stale_if_error_forbidden_by_must_revalidate_and_s_maxage() -> None:
    async def go() -> None:
        clock = Clock()
        policy = await started({"stale_if_error": "5m"}, clock=clock)
        for path, cc in (("/m", "max-age=1, must-revalidate"), ("/s", "s-maxage=1")):

            def answer(exchange: Exchange, n: int, cc: str = cc) -> Response:
                if n == 1:
                    return ok(("Cache-Control", cc))(exchange, n)
                raise UpstreamConnectError("down")

            up = Upstream(answer)
            await policy(request("GET", path), up)
            clock.advance(5)
            with pytest.raises(UpstreamConnectError):
                await policy(request("GET", path), up)
        # The response's own directive applies even with s-maxage.
        up = Upstream(ok(("Cache-Control", "s-maxage=1, stale-if-error=60")))
        await policy(request("GET", "/x"), up)
        clock.advance(5)
        up.answer = lambda ex, n: Response(502, [], b"bad")
        assert (await policy(request("GET", "/x"), up)).status == 200

    run(go)


def test_vary_selects_variants_and_vary_star_is_never_stored() -> None:
    async def go() -> None:
        policy = await started()
        up = Upstream(ok(MAX_AGE, ("Vary", "Accept-Language")))
        fr = await policy(request("GET", "/a", ("Accept-Language", "fr")), up)
        en = await policy(request("GET", "/a", ("Accept-Language", "en")), up)
        assert "fwd=vary-miss" in (header(en, "cache-status") or "")
        again_fr = await policy(request("GET", "/a", ("Accept-Language", "fr")), up)
        none = await policy(request("GET", "/a"), up)
        assert (fr.body, en.body, again_fr.body) == (b"response 1", b"response 2", b"response 1")
        assert none.body == b"response 3" and up.calls == 3
        star = Upstream(ok(MAX_AGE, ("Vary", "*")))
        await policy(request("GET", "/s"), star)
        second = await policy(request("GET", "/s"), star)
        assert star.calls == 2 and "detail=vary-star" in (header(second, "cache-status") or "")

    run(go)


def test_key_headers_and_query_normalisation() -> None:
    async def go() -> None:
        policy = await started({"key": {"headers": ["X-Tenant"], "ignore_query": ["utm_*"]}})
        up = Upstream(ok(MAX_AGE))
        await policy(request("GET", "/a?b=1&a=2&utm_source=x", ("X-Tenant", "t1")), up)
        hit = await policy(request("GET", "/a?a=2&b=1", ("X-Tenant", "t1")), up)
        other = await policy(request("GET", "/a?a=2&b=1", ("X-Tenant", "t2")), up)
        assert hit.body == b"response 1" and other.body == b"response 2"
        assert up.requests[0][1] == b"/a?b=1&a=2&utm_source=x"  # the upstream sees it all

    run(go)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ((("Cache-Control", "no-store"),), "no-store"),
        ((("Cache-Control", "private, max-age=60"),), "private"),
        ((MAX_AGE, ("Set-Cookie", "s=1")), "set-cookie"),
        ((("Cache-Control", "max-age=0"),), "no-freshness"),
    ],
)
def test_responses_that_are_not_stored(headers: tuple[tuple[str, str], ...], reason: str) -> None:
    async def go() -> None:
        policy = await started()
        up = Upstream(ok(*headers))
        first = await policy(request(), up)
        assert header(first, "cache-status") == f"gateway; fwd=uri-miss; detail={reason}"
        await policy(request(), up)
        assert up.calls == 2

    run(go)


def test_authorization_and_cookies() -> None:
    async def go() -> None:
        policy = await started({"ttl": "30s"})
        auth = ("Authorization", "Bearer x")
        up = Upstream(ok(MAX_AGE))
        await policy(request("GET", "/p", auth), up)
        await policy(request("GET", "/p", auth), up)
        assert up.calls == 2  # max-age alone does not allow storing an authorized response
        shared = Upstream(ok(("Cache-Control", "public, max-age=60")))
        await policy(request("GET", "/q", auth), shared)
        assert (await policy(request("GET", "/q"), shared)).body == b"response 1"
        # No explicit freshness: the configured ttl never applies with a Cookie.
        plain = Upstream(ok())
        await policy(request("GET", "/c", ("Cookie", "session=1")), plain)
        await policy(request("GET", "/c", ("Cookie", "session=2")), plain)
        assert plain.calls == 2
        await policy(request("GET", "/h"), plain)
        assert (await policy(request("GET", "/h"), plain)).body == b"response 3"

    run(go)


def test_request_directives() -> None:
    async def go() -> None:
        clock = Clock()
        policy = await started(clock=clock)
        up = Upstream(ok(MAX_AGE, ("ETag", '"e"')))  # a validator: kept after it turns stale
        await policy(request(), up)
        clock.advance(30)
        assert (await policy(request("GET", "/a", ("Cache-Control", "max-age=40")), up)).body == (
            b"response 1"
        )
        no_cache = await policy(request("GET", "/a", ("Cache-Control", "no-cache")), up)
        assert no_cache.body == b"response 2"
        assert (await policy(request("GET", "/a", ("Pragma", "no-cache")), up)).body == (
            b"response 3"
        )
        clock.advance(30)
        fresh_enough = ("Cache-Control", "min-fresh=40")
        assert (await policy(request("GET", "/a", fresh_enough), up)).body == b"response 4"
        clock.advance(70)
        stale_ok = await policy(request("GET", "/a", ("Cache-Control", "max-stale=60")), up)
        assert stale_ok.body == b"response 4" and "detail=max-stale" in (
            header(stale_ok, "cache-status") or ""
        )
        only = await policy(request("GET", "/none", ("Cache-Control", "only-if-cached")), up)
        assert only.status == 504 and up.calls == 4
        assert header(only, "cache-status") == "gateway; detail=only-if-cached"

    run(go)


def test_ignored_request_directives_protect_the_upstream() -> None:
    async def go() -> None:
        policy = await started({"request_cache_control": "ignore"})
        up = Upstream(ok(MAX_AGE))
        await policy(request(), up)
        await policy(request("GET", "/a", ("Cache-Control", "no-cache")), up)
        assert up.calls == 1
        await policy(request("GET", "/b", ("Cache-Control", "no-store")), up)
        await policy(request("GET", "/b"), up)
        assert up.calls == 3  # no-store is still honoured

    run(go)


def test_preconditions_for_the_origin_bypass_the_cache() -> None:
    async def go() -> None:
        policy = await started()
        up = Upstream(ok(MAX_AGE))
        await policy(request(), up)
        out = await policy(request("GET", "/a", ("If-Match", '"x"')), up)
        assert up.calls == 2 and "fwd=request" in (header(out, "cache-status") or "")

    run(go)


def test_unsafe_methods_invalidate_target_and_same_origin_locations() -> None:
    async def go() -> None:
        policy = await started()
        up = Upstream(ok(MAX_AGE))
        for path in ("/a", "/b", "/c", "/d"):
            await policy(request("GET", path), up)
        post = Upstream(
            ok(("Location", "/b"), ("Content-Location", "http://other.example/c"), status=201)
        )
        created = await policy(request("POST", "/a"), post)
        assert header(created, "cache-status") == "gateway; fwd=method"
        for path, expected in (("/a", b"response 5"), ("/b", b"response 6"),
                               ("/c", b"response 3"), ("/d", b"response 4")):  # fmt: skip
            assert (await policy(request("GET", path), up)).body == expected
        failed = Upstream(ok(status=500))
        await policy(request("DELETE", "/d"), failed)
        assert (await policy(request("GET", "/d"), up)).body == b"response 4"  # kept

    run(go)


def test_too_large_responses_stream_through_unstored() -> None:
    async def go() -> None:
        policy = await started({"memory": {"max_bytes": "1MiB", "max_object": "1KiB"}})
        chunks = [b"x" * 600, b"y" * 600, b"z" * 600]

        def answer(exchange: Exchange, n: int) -> Response:
            return Response(200, [(b"cache-control", b"max-age=60")], stream=Chunks(chunks))

        up = Upstream(answer)
        response = await policy(request(), up)
        assert response.stream is not None
        assert b"".join([c async for c in response.stream]) == b"".join(chunks)
        assert "detail=too-large" in (header(response, "cache-status") or "")
        await policy(request(), up)
        assert up.calls == 2
        small = Upstream(lambda ex, n: Response(200, [(b"cache-control", b"max-age=60")],
                                                stream=Chunks([b"ab", b"cd"])))  # fmt: skip
        stored = await policy(request("GET", "/s"), small)
        assert stored.stream is None and stored.body == b"abcd"
        assert (await policy(request("GET", "/s"), small)).body == b"abcd" and small.calls == 1

    run(go)


def test_tags_header_is_kept_out_of_responses_and_used_for_purges() -> None:
    async def go() -> None:
        policy = await started()
        up = Upstream(ok(MAX_AGE, ("Surrogate-Key", "product-1 catalog")))
        first = await policy(request("GET", "/p1"), up)
        assert header(first, "surrogate-key") is None
        hit = await policy(request("GET", "/p1"), up)
        assert header(hit, "surrogate-key") is None
        await policy(request("GET", "/p2"), Upstream(ok(MAX_AGE)))
        from gateway.policies.cache.invalidation import Invalidation

        result = await policy.hub.invalidate(
            Invalidation.new("tag", "catalog", None, policy.wall()), source="admin", ban=True
        )
        assert result.removed == 1 and not result.replicated
        assert (await policy(request("GET", "/p1"), up)).body == b"response 2"
        assert policy.tiers.l1 is not None and "/p2" in policy.tiers.l1

    run(go)


def test_shadow_mode_looks_up_and_stores_but_never_changes_anything() -> None:
    async def go() -> None:
        policy = await started({"mode": "shadow"})
        up = Upstream(ok(MAX_AGE, ("Surrogate-Key", "t")))
        ex = request()
        first = await policy(ex, up)
        assert header(first, "cache-status") is None and header(first, "surrogate-key") == "t"
        assert [d.action for d in ex.decisions] == ["miss"]
        ex = request()
        second = await policy(ex, up)
        assert up.calls == 2 and second.body == b"response 2"  # never served from cache
        assert [d.action for d in ex.decisions] == ["hit"]
        post = await policy(request("POST", "/a"), Upstream(ok(status=204)))
        assert header(post, "cache-status") is None

    run(go)


def test_config_errors_fail_at_build() -> None:
    with pytest.raises(ValueError, match="not defined"):
        build({"stores": ["memory", "nowhere"]})
    clock = Clock()
    shared = stores(shared_store(clock), clock)
    with pytest.raises(ValueError, match="comes first"):
        build({"stores": ["shared", "memory"]}, store_set=shared)

    class NoPubSub:
        kind = "redis"
        name = "bare"
        prefix = "x:"

        async def get(self, key: str) -> bytes | None:
            return None

        async def set(self, key: str, value: bytes, ttl: float) -> None:
            return None

        async def delete(self, *keys: str) -> int:
            return 0

    memory = MemoryStore("memory", StoreSpec(url="memory://"), clock)
    bare = Stores({"memory": memory, "bare": NoPubSub()})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="lacks Counters, PubSub"):
        build({"stores": ["memory", "bare"]}, store_set=bare)


def test_explain_names_the_key_and_tiers() -> None:
    policy = build({"key": {"headers": ["Accept-Language"]}})
    assert policy.explain(request("GET", "/a?b=1&a=2")) == (
        "key /a?a=2&b=1 + Accept-Language; tiers memory"
    )
    assert "invalidates" in policy.explain(request("DELETE", "/a"))


def test_metrics_count_stores_and_memory() -> None:
    async def go() -> None:
        metrics = Metrics()
        policy = await started(metrics=metrics)
        await policy(request(), Upstream(ok(MAX_AGE)))
        await policy(request("GET", "/n"), Upstream(ok(("Cache-Control", "no-store"))))
        text = metrics.render().decode()
        assert 'gateway_cache_stores_total{outcome="stored",route="r"} 1.0' in text
        assert 'gateway_cache_stores_total{outcome="no-store",route="r"} 1.0' in text
        assert 'gateway_cache_memory_entries{route="r"} 1.0' in text

    run(go)


def test_warming_fetches_what_is_not_fresh() -> None:
    async def go() -> None:
        policy = build({"warm": ["/w1", "http://svc.example/w2?x=1"]})
        up = Upstream(ok(MAX_AGE))
        policy.bind_next(up)
        await policy.start()
        await policy.background.join()
        assert sorted(r[1] for r in up.requests) == [b"/w1", b"/w2?x=1"]
        assert (await policy(request("GET", "/w1"), up)).body in (b"response 1", b"response 2")
        assert up.calls == 2
        await policy.stop()

    run(go)


def test_a_reload_with_the_same_config_keeps_the_memory_tier() -> None:
    async def go() -> None:
        clock = Clock()
        shared_stores = stores(clock=clock)
        old = build(store_set=shared_stores, clock=clock)
        await old.start()
        up = Upstream(ok(MAX_AGE))
        await old(request(), up)
        new = build(store_set=shared_stores, clock=clock)
        await new.start()
        await old.stop()
        assert (await new(request(), up)).body == b"response 1" and up.calls == 1
        changed = build({"max_ttl": "2h"}, store_set=shared_stores, clock=clock)
        await changed.start()
        await new.stop()
        assert (await changed(request(), up)).body == b"response 2"

    run(go)


def test_gateway_check_points_at_cache_config_errors(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    head = (
        "version: 1\n"
        "stores: {plain: memory://}\n"
        "upstreams: {app: {url: 'http://127.0.0.1:1'}}\n"
        "routes:\n"
        "  - name: a\n"
        "    match: {prefix: /}\n"
        "    upstream: app\n"
        "    policies:\n"
    )
    models = tmp_path / "models.yaml"
    models.write_text(
        head + "      cache: {memory: {max_bytes: 1KiB, max_object: 1MiB}, key: {query: x}}\n"
    )
    assert main(["check", str(models)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert any(line.startswith(f"{models}:9:23:") and "max_object cannot" in line for line in err)
    assert any(line.startswith(f"{models}:9:") and "key.query" in line for line in err)
    for tiers, message in (
        ("[memory, nowhere]", "store 'nowhere' is not defined"),
        ("[memory, plain]", "only one in-process"),
    ):
        stores_file = tmp_path / "stores.yaml"
        stores_file.write_text(head + f"      cache: {{stores: {tiers}}}\n")
        assert main(["check", str(stores_file)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"{stores_file}:9:") and message in err[0]
