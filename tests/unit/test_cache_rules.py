"""RFC 9111 arithmetic and rules of the cache, as pure functions with times passed in."""

from __future__ import annotations

import pytest

from gateway.policies.cache.entry import Entry, Settings
from gateway.policies.cache.fields import (
    DELTA_MAX,
    etag_matches,
    format_http_date,
    not_modified_since,
    parse_directives,
    parse_http_date,
)
from gateway.policies.cache.invalidation import same_origin_path
from gateway.policies.cache.request import asks_nothing
from gateway.policies.cache.rules import (
    NO_RULES,
    RequestRules,
    age_header,
    corrected_initial_age,
    current_age,
    freshness_lifetime,
    not_storable,
    request_rules,
    response_facts,
    stale_windows,
    stripped_fields,
)
from gateway.types import Headers

T0 = 1_700_000_000.0  # a fixed "now" for every test
DATE = format_http_date(T0)


def lifetime(*headers: tuple[str, str], status: int = 200, ttl: float | None = None,
             max_ttl: float = 1e9, heuristics: bool = True) -> float:  # fmt: skip
    f = response_facts(status, [(k.encode(), v.encode()) for k, v in headers])
    return freshness_lifetime(f, T0, heuristic_ttl=ttl, max_ttl=max_ttl, heuristics=heuristics)


def storable(*headers: tuple[str, str], status: int = 200, method: str = "GET",
             request: RequestRules = NO_RULES, authorization: bool = False,
             heuristics: bool = True, set_cookie: bool = False) -> str | None:  # fmt: skip
    f = response_facts(status, [(k.encode(), v.encode()) for k, v in headers])
    return not_storable(method, f, request, authorization=authorization,
                        heuristics=heuristics, store_set_cookie=set_cookie)  # fmt: skip


# Cache-Control parsing -------------------------------------------------------------------


def test_directives_tokens_quoted_strings_and_repeats() -> None:
    cc, repeated = parse_directives(
        [b'Max-Age=60, private="Set-Cookie, X-A", no-cache', b'max-age="30", community="UCI"']
    )
    assert cc["max-age"] == "60"  # the first occurrence wins ...
    assert repeated == {"max-age"}  # ... and the repeat is reported
    assert cc["private"] == "Set-Cookie, X-A"  # the comma inside quotes is kept
    assert cc["no-cache"] is None and cc["community"] == "UCI"


def test_directives_empty_and_odd_spacing() -> None:
    assert parse_directives([]) == ({}, frozenset())
    cc, _ = parse_directives([b" , public ,, s-maxage = 5 ,"])
    assert cc == {"public": None, "s-maxage": "5"}


@pytest.mark.parametrize(
    "value",
    [b"public, max-age=3600", b"PUBLIC,Max-Age=60,max-age=5", b"no-cache, private=", b"=5, a=b=c",
     b" \t, s-maxage=5 ,\t", b"max-age = 60, public", b"a b, c", b"max-age=60 junk, x", b",,",
     b"no-store\tpublic"],
)  # fmt: skip
def test_directives_without_quotes_parse_as_with_them(value: bytes) -> None:
    """The common shape has its own quicker parse; a quoted member anywhere sends the whole
    field through the character-by-character one. Both read the same directives."""
    plain, plain_repeated = parse_directives([value])
    full, full_repeated = parse_directives([value, b'zz="1"'])
    assert full.pop("zz") == "1"
    assert (plain, plain_repeated) == (full, full_repeated)


# Dates ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [b"Sun, 06 Nov 1994 08:49:37 GMT", b"Sunday, 06-Nov-94 08:49:37 GMT",
     b"Sun Nov  6 08:49:37 1994"],
)  # fmt: skip
def test_the_three_date_formats(text: bytes) -> None:
    """RFC 9110 §5.6.7: a recipient accepts IMF-fixdate, RFC 850 and asctime."""
    assert parse_http_date(text) == 784111777.0


@pytest.mark.parametrize(
    "text", [b"0", b"-1", b"yesterday", b"", b"Sun, 06 Nov 1994 08:49:37 +0100"]
)
def test_invalid_dates(text: bytes) -> None:
    assert parse_http_date(text) is None


def test_date_round_trip() -> None:
    assert parse_http_date(format_http_date(T0)) == T0


# Freshness (RFC 9111 §4.2.1, §4.2.2) ----------------------------------------------------


def test_s_maxage_beats_max_age_beats_expires() -> None:
    expires = ("Expires", format_http_date(T0 + 500).decode())
    date = ("Date", DATE.decode())
    assert lifetime(("Cache-Control", "max-age=60, s-maxage=10"), expires, date) == 10
    assert lifetime(("Cache-Control", "max-age=60"), expires, date) == 60
    assert lifetime(expires, date) == 500


def test_expires_relative_to_date_not_to_the_local_clock() -> None:
    date = ("Date", format_http_date(T0 - 100).decode())
    expires = ("Expires", format_http_date(T0 + 100).decode())
    assert lifetime(date, expires) == 200


def test_invalid_expires_means_already_expired() -> None:
    """RFC 9111 §5.3: an invalid Expires, especially "0", is in the past."""
    assert lifetime(("Expires", "0"), ("Date", DATE.decode())) == 0


def test_invalid_or_repeated_max_age_is_stale() -> None:
    assert lifetime(("Cache-Control", "max-age=abc")) == 0
    assert lifetime(("Cache-Control", "max-age=-5")) == 0
    assert lifetime(("Cache-Control", "max-age=10"), ("Cache-Control", "max-age=20")) == 0


def test_quoted_max_age_and_overflow() -> None:
    assert lifetime(("Cache-Control", 'max-age="30"')) == 30
    assert lifetime(("Cache-Control", "max-age=99999999999999"), max_ttl=1e12) == DELTA_MAX


def test_max_ttl_caps_everything() -> None:
    assert lifetime(("Cache-Control", "max-age=86400"), max_ttl=3600) == 3600


def test_heuristic_freshness_rules() -> None:
    last_modified = ("Last-Modified", format_http_date(T0 - 1000).decode())
    date = ("Date", DATE.decode())
    assert lifetime(last_modified, date) == pytest.approx(100)  # 10% of the time since
    assert lifetime(date) == 0  # no Last-Modified, no ttl: nothing
    assert lifetime(date, ttl=30) == 30  # the configured ttl
    assert lifetime(date, ttl=30, status=302) == 0  # 302 is not heuristically cacheable
    assert lifetime(("Cache-Control", "public"), date, ttl=30, status=302) == 30
    assert lifetime(date, ttl=30, heuristics=False) == 0  # request had Cookie/Authorization


# Age (RFC 9111 §4.2.3, §5.1) ------------------------------------------------------------


def test_corrected_initial_age() -> None:
    # Age 10 from upstream, a 2 s round trip, Date 5 s behind the response time.
    assert corrected_initial_age(T0 - 5, 10, T0 - 2, T0) == 12
    # A Date far behind (upstream clock slow) dominates: apparent age 40.
    assert corrected_initial_age(T0 - 40, 10, T0 - 2, T0) == 40
    # A Date in the future never makes the age negative.
    assert corrected_initial_age(T0 + 30, 0, T0, T0) == 0


def test_current_age_grows_with_resident_time_and_never_shrinks() -> None:
    assert current_age(12, T0, T0 + 8) == 20
    assert current_age(12, T0, T0 - 100) == 12  # the clock stepped back


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("30", 30.0), (" 7 ", 7.0), ("abc", 0.0), ("-5", 0.0), ("1.5", 0.0), ("10, 20", 10.0),
     ("99999999999999", float(DELTA_MAX))],
)  # fmt: skip
def test_age_field_parsing(raw: str, expected: float) -> None:
    assert response_facts(200, [(b"age", raw.encode())]).age == expected


def test_age_header_whole_seconds_capped() -> None:
    assert age_header(12.9) == b"12"
    assert age_header(1e12) == str(DELTA_MAX).encode()


# Storing (RFC 9111 §3, §3.5) ------------------------------------------------------------

MAX_AGE = ("Cache-Control", "max-age=60")


def test_storable_basics() -> None:
    assert storable(MAX_AGE) is None
    assert storable(MAX_AGE, method="HEAD") == "method"
    assert storable(MAX_AGE, status=206) == "status"
    assert storable(MAX_AGE, status=304) == "status"
    assert storable(("Cache-Control", "max-age=60, no-store")) == "no-store"
    assert storable(MAX_AGE, request=RequestRules(no_store=True)) == "request-no-store"
    assert storable(("Cache-Control", "private, max-age=60")) == "private"
    assert storable(MAX_AGE, ("Vary", "Accept, *")) == "vary-star"


def test_qualified_private_is_stored_without_the_named_fields() -> None:
    assert storable(("Cache-Control", 'private="Set-Cookie", max-age=60')) is None
    f = response_facts(200, [(b"cache-control", b'private="X-User", no-cache="X-Debug"')])
    assert stripped_fields(f) == {b"x-user", b"x-debug"}


def test_must_understand_overrides_no_store_for_known_statuses() -> None:
    cc = ("Cache-Control", "max-age=60, no-store, must-understand")
    assert storable(cc) is None
    assert storable(cc, status=299) == "status"


def test_authorization_needs_public_s_maxage_or_must_revalidate() -> None:
    assert storable(MAX_AGE, authorization=True) == "authorization"
    for cc in ("public, max-age=60", "s-maxage=60", "max-age=60, must-revalidate"):
        assert storable(("Cache-Control", cc), authorization=True) is None


def test_without_explicit_freshness_only_heuristic_statuses() -> None:
    assert storable() is None  # 200: heuristically cacheable
    assert storable(status=302) == "no-freshness"
    assert storable(("Cache-Control", "public"), status=302) is None
    assert storable(heuristics=False) == "no-freshness"


def test_set_cookie_is_a_config_choice() -> None:
    assert storable(MAX_AGE, ("Set-Cookie", "a=1")) == "set-cookie"
    assert storable(MAX_AGE, ("Set-Cookie", "a=1"), set_cookie=True) is None


# Stale windows (RFC 9111 §4.2.4, RFC 5861) ------------------------------------------------


def windows(cc: str) -> tuple[float, float, bool]:
    f = response_facts(200, [(b"cache-control", cc.encode())])
    return stale_windows(f, default_swr=30, default_sie=300, cap=3600)


def test_stale_windows() -> None:
    assert windows("max-age=60") == (30, 300, True)  # configured defaults
    assert windows("max-age=60, stale-while-revalidate=5, stale-if-error=7") == (5, 7, True)
    for forbidding in ("must-revalidate", "proxy-revalidate", "no-cache"):
        assert windows(f"max-age=60, stale-if-error=7, {forbidding}") == (0, 0, False)
    # s-maxage implies proxy-revalidate: only the response's own extensions apply.
    assert windows("s-maxage=60") == (0, 0, False)
    assert windows("s-maxage=60, stale-while-revalidate=9") == (9, 0, False)
    assert windows("max-age=60, stale-if-error=999999") == (30, 3600, True)  # capped


# Request directives (RFC 9111 §5.2.1) ---------------------------------------------------


def rules(*values: str, honor: bool = True, pragma: str | None = None) -> RequestRules:
    headers: Headers = [(b"cache-control", v.encode()) for v in values]
    if pragma is not None:
        headers.append((b"pragma", pragma.encode()))
    return request_rules(headers, honor)


def test_request_directives() -> None:
    assert rules() is NO_RULES
    r = rules("max-age=5, min-fresh=2, max-stale, only-if-cached, no-store, stale-if-error=9")
    assert (r.max_age, r.min_fresh, r.max_stale) == (5, 2, float("inf"))
    assert r.only_if_cached and r.no_store and r.stale_if_error == 9
    assert rules("max-stale=10").max_stale == 10
    assert rules("max-age=abc").max_age == 0  # invalid: ask for a validated response


@pytest.mark.parametrize(
    ("name", "plain"),
    [("Host", True), ("Range", True), ("Cookie", True), ("Connection", True), ("If-Range", True),
     ("Cache-Control", False), ("cache-control", False), ("PRAGMA", False),
     ("If-None-Match", False), ("If-Modified-Since", False), ("If-Match", False),
     ("If-Unmodified-Since", False)],
)  # fmt: skip
def test_requests_that_ask_nothing_of_the_cache(name: str, plain: bool) -> None:
    headers: Headers = [(b"Host", b"a"), (b"", b""), (name.encode(), b"x")]
    assert asks_nothing(headers) is plain
    assert asks_nothing([]) and asks_nothing([(b"Accept", b"*/*")])


def test_pragma_no_cache_only_without_cache_control() -> None:
    assert rules(pragma="no-cache").no_cache
    assert not rules("max-age=10", pragma="no-cache").no_cache


def test_ignoring_request_directives_keeps_no_store() -> None:
    assert rules("no-cache, max-age=0", honor=False) is NO_RULES
    assert rules("no-store, no-cache", honor=False) == RequestRules(no_store=True)
    assert rules(pragma="no-cache", honor=False) is NO_RULES


# Validators (RFC 9110 §13.1, RFC 9111 §4.3.2) -------------------------------------------


def test_if_none_match_weak_comparison() -> None:
    assert etag_matches(b'"a"', b'"a"')
    assert etag_matches(b'W/"a"', b'"a"') and etag_matches(b'"a"', b'W/"a"')
    assert etag_matches(b'"x", "y" ,W/"a"', b'"a"')
    assert not etag_matches(b'"b"', b'"a"')
    assert etag_matches(b"*", b'"a"') and not etag_matches(b"*", None)
    assert not etag_matches(b'"a"', None)


def test_if_modified_since() -> None:
    assert not_modified_since(DATE, T0)
    assert not_modified_since(DATE, T0 - 1)
    assert not not_modified_since(DATE, T0 + 1)
    assert not not_modified_since(b"garbage", T0)


def test_if_modified_since_reference_falls_back_to_date_then_receipt() -> None:
    settings = Settings(heuristic_ttl=None, max_ttl=3600, default_swr=0, default_sie=0)

    def entry(headers: Headers) -> Entry:
        return Entry(url="/", host="", status=200, reason=b"", headers=headers, body=b"",
                     request_time=T0, response_time=T0 + 1, age_value=0, select_names=(),
                     select_values=(), tags=(), heuristics=True, settings=settings)  # fmt: skip

    lm = format_http_date(T0 - 50)
    assert entry([(b"last-modified", lm), (b"date", DATE)]).validator_time == T0 - 50
    assert entry([(b"date", DATE)]).validator_time == T0
    assert entry([]).validator_time == T0 + 1


# Location / Content-Location (RFC 9111 §4.4) ---------------------------------------------


def test_same_origin_locations() -> None:
    host = b"shop.example"
    assert same_origin_path(b"/b?x=1", "http", host, "/a") == "/b?x=1"
    assert same_origin_path(b"c", "http", host, "/a/b") == "/a/c"
    assert same_origin_path(b"http://SHOP.example/d", "http", host, "/a") == "/d"
    assert same_origin_path(b"http://other.example/d", "http", host, "/a") is None
    assert same_origin_path(b"https://shop.example/d", "http", host, "/a") is None
    assert same_origin_path(b"", "http", host, "/a") is None
