"""Cache key computation: query normalisation, ignored parameters, host, key headers."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.exchange import Exchange
from gateway.policies.cache.config import CacheKey
from gateway.policies.cache.keys import KeyBuilder, glob_regex, selected_values


def keys(**config: Any) -> KeyBuilder:
    return KeyBuilder(CacheKey.model_validate(config))


def test_sorted_query_is_the_default() -> None:
    k = keys()
    assert k.url(b"/p?b=2&a=1") == k.url(b"/p?a=1&b=2") == "/p?a=1&b=2"
    assert k.url(b"/p?a=1&&b=2&") == "/p?a=1&b=2"  # empty segments dropped
    assert k.url(b"/p?a=&b=1") == "/p?a=&b=1" != k.url(b"/p?b=1")  # an empty value is kept
    assert k.url(b"/p") == "/p" and k.url(b"/p?") == "/p"


def test_sorted_query_keeps_the_order_of_a_repeated_name() -> None:
    k = keys()
    assert k.url(b"/p?id=2&b=1&id=1") == "/p?b=1&id=2&id=1"
    assert k.url(b"/p?id=1&id=2") != k.url(b"/p?id=2&id=1")
    assert k.url(b"/p?a&a=1") == "/p?a&a=1" and k.url(b"/p?a=1&a") == "/p?a=1&a"


def test_as_is_keeps_order_and_ignore_drops_the_query() -> None:
    assert keys(query="as_is").url(b"/p?b=2&a=1") == "/p?b=2&a=1"
    assert keys(query="ignore").url(b"/p?b=2&a=1") == "/p"


def test_ignored_parameters_with_globs() -> None:
    k = keys(ignore_query=["utm_*", "fbclid"])
    assert k.url(b"/p?utm_source=x&id=3&fbclid=9&utm_medium=y") == "/p?id=3"
    assert k.url(b"/p?utm_source=x") == "/p"
    assert k.url(b"/p?fbclidx=1") == "/p?fbclidx=1"  # a glob matches whole names only
    as_is = keys(query="as_is", ignore_query=["utm_*"])
    assert as_is.url(b"/p?z=1&utm_a=2&a=1") == "/p?z=1&a=1"


def test_the_raw_path_is_kept() -> None:
    assert keys().url(b"/a%2Fb?x=1") == "/a%2Fb?x=1"  # %2F is not a slash upstream


def test_host_only_when_asked() -> None:
    ex = Exchange("GET", b"/p?x=1", [(b"Host", b"Shop.Example")], "127.0.0.1")
    assert keys().of(ex) == ("/p?x=1", "/p?x=1", "shop.example")
    assert keys(host=True).of(ex) == ("shop.example/p?x=1", "/p?x=1", "shop.example")
    assert keys(host=True).primary("/p", "a.example") == "a.example/p"


@pytest.mark.parametrize(
    "config",
    [{}, {"host": True}, {"query": "as_is"}, {"query": "ignore"}, {"ignore_query": ["utm_*"]}],
)
@pytest.mark.parametrize(
    ("target", "host"),
    [(b"/p", b"A.example"), (b"/p?", b""), (b"/p?b=1&a=2&utm_x=3", b"a.example"), (b"/%C3?x", b"")],
)
def test_key_of_is_the_primary_key_of(config: dict[str, Any], target: bytes, host: bytes) -> None:
    k = keys(**config)
    ex = Exchange("GET", target, [(b"Host", host)] if host else [], "127.0.0.1")
    assert k.key_of(ex) == k.of(ex)[0]


def test_key_headers_and_vary_select_variants() -> None:
    k = keys(headers=["Accept-Language", "accept-language"])
    assert k.headers == (b"accept-language",)
    assert k.selection(()) == (b"accept-language",)
    assert k.selection((b"accept", b"accept-language")) == (b"accept-language", b"accept")
    request = [(b"Accept-Language", b"fr"), (b"accept", b"text/html, */*"), (b"Accept", b"x/y")]
    assert selected_values(request, (b"accept-language", b"accept", b"cookie")) == (
        b"fr",
        b"text/html,*/*,x/y",  # lines combined, whitespace around commas dropped
        None,  # absent is not the same as empty
    )


def test_glob_regex() -> None:
    regex = glob_regex(["/a/*/c", "/x*"])
    assert regex is not None
    assert regex.match("/a/b/c") and regex.match("/a/b/b/c") and regex.match("/xyz")
    assert not regex.match("/a/b/cd") and not regex.match("/y")
    assert glob_regex([]) is None


@pytest.mark.parametrize(
    "raw",
    [b"/plain?q=/../", b"/public/%2e%2E/admin?x=1", b"/public/..%2Fadmin", b"/a//b", b"/a%20b"],
)
def test_an_invalidated_url_is_routed_as_its_request_was(raw: bytes) -> None:
    from gateway.policies.cache.invalidation import routed_path

    exchange = Exchange("POST", raw, [], "127.0.0.1")
    assert routed_path(exchange.raw_target.decode("latin-1")) == exchange.path
