"""RFC 9111 conformance of the cache, case by case, through the real gateway.

Every test names the section it covers in its name and the first line of its docstring;
docs/cache-conformance.md lists them by section (a test below keeps the two in step).
One gateway per front-end serves the whole module; a request header picks the route,
and so the cache configuration, a case runs against:

* no header: the defaults (no heuristic ttl, no configured stale windows);
* ``X-Profile: sie``: ``stale_if_error: 5m``;
* ``X-Profile: ttl``: ``ttl: 30s`` (heuristic freshness).

Each case runs twice per front-end: with the in-process tier (``stores: [memory]``) and
with the shared tier alone (``stores: [shared]``, a real redis-server), where every hit
is read from Redis and decoded from its stored format.
Each case uses fresh resource names, so cases never see each other's entries.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cache_helpers import cache_status, count, fail, resource, stats
from tests.integration.conftest import FRONTENDS
from tests.integration.harness import Gateway, Redis, Upstream, base_config

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "cache-conformance.md"
SIE = {"X-Profile": "sie"}
TTL = {"X-Profile": "ttl"}


TIERS = ["memory", "shared"]


def profile_route(name: str, cache: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"prefix": "/", "headers": {"X-Profile": name}},
        "upstream": "app",
        "policies": {"cache": cache},
    }


@pytest.fixture(scope="module", params=[(f, t) for f in FRONTENDS for t in TIERS],
                ids=lambda p: "-".join(p))  # fmt: skip
def gw(
    request: pytest.FixtureRequest,
    upstream: Upstream,
    redis_server: Redis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    frontend, tier = request.param
    config = base_config(upstream.url, frontend)
    stores = {"stores": [tier]}
    if tier == "shared":
        config["stores"] = {"shared": {"url": redis_server.url, "timeout": "500ms"}}
    config["routes"] = [
        profile_route("sie", {"stale_if_error": "5m", **stores}),
        profile_route("ttl", {"ttl": "30s", **stores}),
        {"name": "default", "match": {"prefix": "/"}, "upstream": "app",
         "policies": {"cache": stores}},
    ]  # fmt: skip
    gateway = Gateway(config, tmp_path_factory.mktemp(f"conformance-{frontend}-{tier}"))
    yield gateway
    gateway.stop()


def get(
    gw: Gateway, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes, dict[str, str]]:
    """(status, headers, body, Cache-Status parameters)."""
    status, out, body = gw.request(method, path, headers=headers)
    return status, out, body, cache_status(out.get("cache-status", "none"))[1]


def reused(gw: Gateway, upstream: Upstream, headers: dict[str, str] | None = None,
           **params: str) -> bool:  # fmt: skip
    """Whether a second identical request is answered without a new upstream request."""
    name, path = resource(**params)
    get(gw, path, headers)
    get(gw, path, headers)
    return int(stats(upstream, name)["requests"]) == 1


def http_date(offset: float) -> str:
    return email.utils.formatdate(time.time() + offset, usegmt=True)


# §3 Storing Responses in Caches --------------------------------------------------------


def test_s3_stores_a_get_response_with_explicit_freshness(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §3: a final response to GET with max-age is stored and reused."""
    _, path = resource(cc="max-age=60")
    status, _, _, first = get(gw, path)
    _, _, body, second = get(gw, path)
    assert status == 200 and "stored" in first and "hit" in second and count(body) == 1


def test_s3_stores_any_final_status_with_explicit_freshness(
    gw: Gateway, upstream: Upstream
) -> None:
    """RFC 9111 §3: any understood final status may be stored when explicitly fresh."""
    assert reused(gw, upstream, cc="max-age=60", status="404")
    assert reused(gw, upstream, cc="max-age=60", status="302")
    assert reused(gw, upstream, cc="max-age=60", status="410")


def test_s3_without_freshness_only_heuristically_cacheable_statuses(
    gw: Gateway, upstream: Upstream
) -> None:
    """RFC 9111 §3, §4.2.2: no explicit freshness: stored only for heuristic statuses."""
    assert reused(gw, upstream, TTL)
    assert reused(gw, upstream, TTL, status="404")
    assert not reused(gw, upstream, TTL, status="302")
    assert reused(gw, upstream, TTL, cc="public", status="302")


def test_s3_partial_content_is_not_stored(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §3.3: a 206 is not stored by a cache that does not combine ranges."""
    assert not reused(gw, upstream, cc="max-age=60", status="206")


def test_s3_must_understand_overrides_no_store(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §5.2.2.3: must-understand with an understood status ignores no-store."""
    assert reused(gw, upstream, cc="max-age=60, no-store, must-understand")
    assert not reused(gw, upstream, cc="max-age=60, no-store")


def test_s3_1_hop_by_hop_fields_are_not_stored(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §3.1: Connection-listed and hop-by-hop fields are not stored or sent."""
    _, path = resource(cc="max-age=60", hdr="Connection:X-Hop|X-Hop:1|X-Kept:1")
    get(gw, path)
    _, headers, _, params = get(gw, path)
    assert "hit" in params and "x-hop" not in headers and headers["x-kept"] == "1"


def test_s3_2_a_304_updates_the_stored_header_fields(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §3.2, §4.3.4: fields of a 304 replace the stored ones (not Content-Length)."""
    name, path = resource(cc="max-age=0", etag="1")
    fail(upstream, name, "none", header="X-Stamp:first")
    _, first, body, _ = get(gw, path)
    fail(upstream, name, "none", header="X-Stamp:second")
    _, headers, again, params = get(gw, path)
    assert first["x-stamp"] == "first" and headers["x-stamp"] == "second"
    assert params["fwd-status"] == "304" and again == body
    assert headers["content-length"] == str(len(body))
    assert get(gw, path)[1]["x-stamp"] == "second"


def test_s3_5_authorization(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §3.5: a response to an authorized request is stored only if public,
    s-maxage or must-revalidate allows it."""
    auth = {"Authorization": "Bearer secret"}
    assert not reused(gw, upstream, auth, cc="max-age=60")
    assert reused(gw, upstream, auth, cc="public, max-age=60")
    assert reused(gw, upstream, auth, cc="s-maxage=60")
    assert reused(gw, upstream, auth, cc="max-age=60, must-revalidate")


# §4 Constructing Responses from Caches --------------------------------------------------


def test_s4_unsafe_methods_are_not_answered_from_the_cache(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §4: a stored GET response is not used for another method."""
    name, path = resource(cc="max-age=60")
    get(gw, path)
    status, _, _, params = get(gw, path, method="POST")
    assert status == 204 and params["fwd"] == "method"
    assert stats(upstream, name)["version"] == 2


def test_s4_head_is_answered_from_a_stored_get(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §4 with RFC 9110 §9.3.2: HEAD uses the stored GET response, no body."""
    name, path = resource(cc="max-age=60")
    _, _, body, _ = get(gw, path)
    status, headers, head_body, params = get(gw, path, method="HEAD")
    assert status == 200 and head_body == b"" and "hit" in params
    assert headers["content-length"] == str(len(body))
    assert stats(upstream, name)["requests"] == 1


def test_s4_1_vary_selects_and_normalises(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §4.1: Vary'd fields must match, after combining lines and whitespace."""
    name, path = resource(cc="max-age=60", vary="Accept-Language")
    get(gw, path, {"Accept-Language": "fr, en"})
    assert "hit" in get(gw, path, {"Accept-Language": "fr,en"})[3]
    assert get(gw, path, {"Accept-Language": "de"})[3]["fwd"] == "vary-miss"
    assert get(gw, path)[3]["fwd"] == "vary-miss"  # absent does not match present
    assert "hit" in get(gw, path)[3]  # ... but absent matches absent
    assert stats(upstream, name)["requests"] == 3


def test_s4_1_vary_star_never_matches(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §4.1: a Vary of "*" always fails to match."""
    assert not reused(gw, upstream, cc="max-age=60", vary="*")
    assert not reused(gw, upstream, cc="max-age=60", vary="Accept, *")


def test_s4_2_1_s_maxage_wins_in_a_shared_cache(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §4.2.1, §5.2.2.10: s-maxage overrides max-age and Expires."""
    assert reused(gw, upstream, cc="max-age=0, s-maxage=60")
    assert not reused(gw, upstream, cc="max-age=60, s-maxage=0")


def test_s4_2_1_max_age_wins_over_expires(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §4.2.1, §5.3: max-age overrides Expires."""
    assert reused(gw, upstream, cc="max-age=60", expires=http_date(-3600))
    assert not reused(gw, upstream, cc="max-age=0", expires=http_date(3600))


def test_s4_2_1_expires_counts_from_date(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §4.2.1: without max-age, the lifetime is Expires minus Date."""
    _, path = resource(expires=http_date(60), date="1")
    get(gw, path)
    params = get(gw, path)[3]
    assert "hit" in params and 50 <= int(params["ttl"]) <= 60


def test_s4_2_1_conflicting_max_age_is_stale(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §4.2.1: repeated max-age directives: the response is treated as stale."""
    assert not reused(gw, upstream, cc="max-age=60", hdr="Cache-Control:max-age=120")


def test_s4_2_2_heuristic_freshness_from_last_modified(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §4.2.2: a Last-Modified allows a heuristic lifetime (capped by max_ttl)."""
    _, path = resource(lm="1")
    get(gw, path)
    params = get(gw, path)[3]
    assert "hit" in params and 0 < int(params["ttl"]) <= 3600


def test_s4_2_2_no_heuristic_without_a_basis(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §4.2.2: no explicit freshness, no Last-Modified, no ttl: not reused."""
    assert not reused(gw, upstream)
    assert not reused(gw, upstream, {**TTL, "Cookie": "session=1"})  # never with a Cookie


def test_s4_2_3_age_received_reduces_freshness(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §4.2.3: the Age received counts towards the current age."""
    _, path = resource(cc="max-age=60", age="30")
    get(gw, path)
    _, headers, _, params = get(gw, path)
    assert "hit" in params and int(params["ttl"]) <= 30 and int(headers["age"]) >= 30
    assert not reused(gw, upstream, cc="max-age=60", age="100")


def test_s4_2_4_stale_only_with_permission(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §4.2.4: a stale response is not served without revalidation by default."""
    name, path = resource(cc="max-age=0", etag="1")
    get(gw, path)
    params = get(gw, path)[3]
    assert params["fwd"] == "stale" and params["fwd-status"] == "304"
    assert stats(upstream, name)["requests"] == 2


@pytest.mark.parametrize(
    "cc", ["max-age=0, must-revalidate", "max-age=0, proxy-revalidate", "s-maxage=0"]
)
def test_s4_2_4_no_stale_on_error_when_revalidation_is_required(
    gw: Gateway, upstream: Upstream, cc: str
) -> None:
    """RFC 9111 §4.2.4, §5.2.2.2, §5.2.2.8, §5.2.2.10: must-revalidate, proxy-revalidate
    and s-maxage forbid serving stale, even when configured for errors."""
    name, path = resource(cc=cc, etag="1")
    get(gw, path, SIE)
    fail(upstream, name, "503")
    assert get(gw, path, SIE)[0] == 503


def test_s4_2_4_stale_on_error_by_configuration(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §4.2.4 (out-of-band configuration): stale served when the upstream fails."""
    name, path = resource(cc="max-age=0", etag="1")
    get(gw, path, SIE)
    fail(upstream, name, "503")
    status, _, body, params = get(gw, path, SIE)
    assert status == 200 and count(body) == 1
    assert params["fwd"] == "stale" and params["detail"] == "stale-if-error"


def test_s4_3_1_revalidation_sends_the_stored_validators(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §4.3.1: If-None-Match with the ETag, If-Modified-Since with Last-Modified."""
    name, path = resource(cc="max-age=0", etag="1", lm="1")
    get(gw, path)
    get(gw, path, {"If-None-Match": '"client-tag"'})
    assert stats(upstream, name)["conditionals"] == [['"v1"', "Mon, 01 Jan 2024 00:00:00 GMT"]]


def test_s4_3_2_conditional_requests_answered_from_the_cache(
    gw: Gateway, upstream: Upstream
) -> None:
    """RFC 9111 §4.3.2: If-None-Match, then If-Modified-Since, against the stored response."""
    name, path = resource(cc="max-age=60", etag="1", lm="1")
    get(gw, path)
    status, headers, body, _ = get(gw, path, {"If-None-Match": 'W/"v0", "v1"'})
    assert status == 304 and body == b"" and headers["etag"] == '"v1"'
    assert get(gw, path, {"If-None-Match": '"v9"'})[0] == 200
    assert get(gw, path, {"If-Modified-Since": "Tue, 02 Jan 2024 00:00:00 GMT"})[0] == 304
    assert get(gw, path, {"If-Modified-Since": "Sun, 31 Dec 2023 00:00:00 GMT"})[0] == 200
    both = {"If-None-Match": '"v9"', "If-Modified-Since": "Tue, 02 Jan 2024 00:00:00 GMT"}
    assert get(gw, path, both)[0] == 200  # If-None-Match takes precedence
    assert stats(upstream, name)["requests"] == 1


def test_s4_3_3_an_error_during_revalidation_is_forwarded(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §4.3.3: a 5xx to a validation request is forwarded unless stale is allowed."""
    name, path = resource(cc="max-age=0", etag="1")
    get(gw, path)
    fail(upstream, name, "503")
    status, _, body, params = get(gw, path)
    assert status == 503 and body == b"failing" and params["fwd"] == "stale"


def test_s4_4_unsafe_methods_invalidate(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §4.4: a successful unsafe method invalidates the target URI and a
    same-origin Location; an error response invalidates nothing."""
    name, path = resource(cc="max-age=60")
    _, moved = resource(cc="max-age=60")
    for p in (path, moved):
        get(gw, p)
    fail(upstream, name, "none", location=f"http://svc.example{moved}")
    get(gw, path, {"Host": "svc.example"}, method="PUT")
    assert get(gw, path)[3]["fwd"] == "uri-miss"
    assert get(gw, moved)[3]["fwd"] == "uri-miss"
    fail(upstream, name, "500")
    assert get(gw, path, method="DELETE")[0] == 500
    assert "hit" in get(gw, path)[3]


def test_s4_4_other_origins_are_not_invalidated(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §4.4: a Location on another origin is not invalidated."""
    name, path = resource(cc="max-age=60")
    _, elsewhere = resource(cc="max-age=60")
    get(gw, elsewhere)
    fail(upstream, name, "none", location=f"http://other.example{elsewhere}")
    get(gw, path, {"Host": "svc.example"}, method="POST")
    assert "hit" in get(gw, elsewhere)[3]


# §5 Field Definitions -------------------------------------------------------------------


def test_s5_1_age_is_sent_on_every_stored_response(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §5.1: Age on responses from the cache; an invalid Age received is ignored."""
    _, path = resource(cc="max-age=60", age="abc")
    _, first, _, _ = get(gw, path)
    _, headers, _, params = get(gw, path)
    assert "age" not in first or first["age"] == "abc"  # passed through on the miss
    assert re.fullmatch(r"\d+", headers["age"]) and int(headers["age"]) < 30
    assert "hit" in params


def test_s5_2_1_request_directives(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §5.2.1.1-§5.2.1.7: max-age, max-stale, min-fresh, no-cache, no-store,
    only-if-cached in requests."""
    name, path = resource(cc="max-age=60", etag="1")
    get(gw, path)
    assert "hit" in get(gw, path, {"Cache-Control": "max-age=30"})[3]
    assert get(gw, path, {"Cache-Control": "max-age=0"})[3]["fwd"] == "stale"
    assert get(gw, path, {"Cache-Control": "min-fresh=3600"})[3]["fwd"] == "stale"
    assert get(gw, path, {"Cache-Control": "no-cache"})[3]["fwd"] == "stale"
    assert stats(upstream, name)["not_modified"] == 3
    status, _, _, params = get(gw, resource()[1], {"Cache-Control": "only-if-cached"})
    assert status == 504 and params == {"detail": "only-if-cached"}
    other, other_path = resource(cc="max-age=60")
    get(gw, other_path, {"Cache-Control": "no-store"})
    get(gw, other_path)
    assert stats(upstream, other)["requests"] == 2
    _, stale_path = resource(cc="max-age=0", etag="1")
    get(gw, stale_path)
    assert "hit" in get(gw, stale_path, {"Cache-Control": "max-stale=60"})[3]


def test_s5_2_2_4_no_cache_responses_are_always_revalidated(
    gw: Gateway, upstream: Upstream
) -> None:
    """RFC 9111 §5.2.2.4: a stored no-cache response is validated on every use."""
    name, path = resource(cc="no-cache, max-age=60", etag="1")
    get(gw, path)
    get(gw, path)
    get(gw, path)
    assert stats(upstream, name)["not_modified"] == 2


def test_s5_2_2_7_private(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §5.2.2.7: private is not stored; private="field" is stored without it."""
    assert not reused(gw, upstream, cc="private, max-age=60")
    _, path = resource(cc='private="X-Secret", max-age=60', hdr="X-Secret:1")
    _, first, _, _ = get(gw, path)
    _, headers, _, params = get(gw, path)
    assert first["x-secret"] == "1" and "x-secret" not in headers and "hit" in params


def test_s5_3_invalid_expires_means_expired(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §5.3: an invalid Expires ("0") is a time in the past."""
    assert not reused(gw, upstream, expires="0", date="1")


def test_s5_4_pragma_no_cache(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9111 §5.4: Pragma: no-cache acts as no-cache when Cache-Control is absent."""
    _, path = resource(cc="max-age=60", etag="1")
    get(gw, path)
    assert get(gw, path, {"Pragma": "no-cache"})[3]["fwd"] == "stale"
    assert "hit" in get(gw, path, {"Pragma": "no-cache", "Cache-Control": "max-age=60"})[3]


# Extensions -----------------------------------------------------------------------------


def test_rfc5861_stale_while_revalidate(gw: Gateway, upstream: Upstream) -> None:
    """RFC 5861 §3: served stale at once, refreshed in the background."""
    _, path = resource(cc="max-age=0, stale-while-revalidate=60")
    get(gw, path)
    params = get(gw, path)[3]
    assert "hit" in params and params["detail"] == "stale-while-revalidate"


def test_rfc5861_stale_if_error_directive(gw: Gateway, upstream: Upstream) -> None:
    """RFC 5861 §4: the response's own stale-if-error, with no configuration."""
    name, path = resource(cc="max-age=0, stale-if-error=60", etag="1")
    get(gw, path)
    fail(upstream, name, "close")
    status, _, body, params = get(gw, path)
    assert status == 200 and count(body) == 1 and params["detail"] == "stale-if-error"


def test_rfc9211_cache_status_on_every_response(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9211 §2: hit with ttl, fwd with its reason, stored, fwd-status."""
    _, path = resource(cc="max-age=60")
    assert get(gw, path)[1]["cache-status"].startswith("gateway; fwd=uri-miss; ttl=")
    # A hit read from the shared tier says so (the Redis-only runs).
    assert re.fullmatch(r"gateway; hit; ttl=\d+(; detail=l2)?", get(gw, path)[1]["cache-status"])
    assert get(gw, path, method="DELETE")[1]["cache-status"] == "gateway; fwd=method"


def test_rfc9110_6_6_1_date_added_when_missing(gw: Gateway, upstream: Upstream) -> None:
    """RFC 9110 §6.6.1: a cache adds the Date it received a response without one."""
    _, path = resource(cc="max-age=60")
    get(gw, path)
    headers = get(gw, path)[1]
    assert email.utils.parsedate_to_datetime(headers["date"]).tzinfo is not None


def test_every_case_is_in_the_conformance_table() -> None:
    """The table in docs/cache-conformance.md lists every case of this module."""
    text = DOC.read_text(encoding="utf-8")
    this = "test_every_case_is_in_the_conformance_table"
    names = [n for n in globals() if n.startswith("test_") and n != this]
    missing = [n for n in names if f"`{n}`" not in text]
    assert not missing, f"docs/cache-conformance.md lacks {missing}"
