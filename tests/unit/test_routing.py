import pytest

from gateway.config.models import Match
from gateway.routing import Route, Router


def route(name: str, **match: object) -> Route:
    return Route.compile(name, "app", Match.model_validate(match))


ROUTER = Router(
    [
        route("user", path="/users/{id}", methods=["GET", "HEAD"]),
        route("user-write", path="/users/{id}", methods=["PUT"]),
        route("files", path="/files/{rest:path}"),
        route("exact", path="/health"),
        route("tenant", prefix="/t", headers={"X-Tenant": "acme"}),
        route("any-tenant", prefix="/t", headers={"X-Tenant": "*"}),
        route("host", prefix="/h", host="*.example.com"),
        route("api", prefix="/api/"),
    ]
)


def m(method: str, path: str, host: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None):
    return ROUTER.match(method, path, host, headers or [])


def test_template_params() -> None:
    result = m("GET", "/users/42")
    assert result.route is not None and result.route.name == "user"
    assert result.params == {"id": "42"}
    assert m("GET", "/users/42/x").route is None
    assert m("GET", "/users/").route is None


def test_rest_path() -> None:
    result = m("GET", "/files/a/b/c.txt")
    assert result.route is not None and result.params == {"rest": "a/b/c.txt"}


def test_method_tried_across_routes_then_405() -> None:
    put = m("PUT", "/users/1")
    assert put.route is not None and put.route.name == "user-write"
    result = m("DELETE", "/users/1")
    assert result.route is None
    assert result.allowed == frozenset({"GET", "HEAD", "PUT"})


def test_exact_and_404() -> None:
    assert m("GET", "/health").route.name == "exact"  # type: ignore[union-attr]
    result = m("GET", "/healthz")
    assert result.route is None and result.allowed is None


def test_prefix_on_segment_boundaries() -> None:
    assert m("GET", "/api").route.name == "api"  # type: ignore[union-attr]
    assert m("GET", "/api/v1").route.name == "api"  # type: ignore[union-attr]
    assert m("GET", "/apis").route is None


@pytest.mark.parametrize(
    ("headers", "name"),
    [([(b"X-Tenant", b"acme")], "tenant"), ([(b"x-tenant", b"other")], "any-tenant"), ([], None)],
)
def test_header_matching(headers: list[tuple[bytes, bytes]], name: str | None) -> None:
    result = m("GET", "/t/x", headers=headers)
    assert (result.route.name if result.route else None) == name


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        (b"a.example.com", True),
        (b"A.EXAMPLE.COM:8080", True),
        (b"a.example.com.", True),  # the absolute (FQDN) spelling
        (b"a.example.com.:8080", True),
        (b"a.example.com..", False),
        (b"example.com", False),
        (b"evil.com", False),
        (b"", False),
    ],
)
def test_host_wildcard(host: bytes, ok: bool) -> None:
    assert (m("GET", "/h", host=host).route is not None) is ok


@pytest.mark.parametrize(
    ("target", "forwarded", "routed"),
    [
        (b"/public/../admin", b"/admin", "/admin"),
        (b"/public/%2e%2E/admin?x=1", b"/admin?x=1", "/admin"),
        (b"/public/..%2Fadmin", b"/public/..%2Fadmin", "/admin"),
        (b"/a%2Fb/c", b"/a%2Fb/c", "/a/b/c"),
        (b"/a//b", b"/a//b", "/a/b"),
        (b"/a/./b/", b"/a/b/", "/a/b/"),
        (b"/../../x", b"/x", "/x"),
        (b"/files/a%20b", b"/files/a%20b", "/files/a b"),
        (b"/plain?q=/../", b"/plain?q=/../", "/plain"),
    ],
)
def test_paths_are_normalized_for_routing(target: bytes, forwarded: bytes, routed: str) -> None:
    from gateway.exchange import Exchange

    exchange = Exchange("GET", target, [], "127.0.0.1")
    assert exchange.raw_target == forwarded
    assert exchange.path == routed


@pytest.mark.parametrize("host", [b"secret.example", b"secret.example.", b"SECRET.example.:443"])
def test_exact_host_matches_its_fqdn_spelling(host: bytes) -> None:
    # A trailing dot must not walk around a host-matched route (and its policies).
    router = Router([route("secret", prefix="/", host="secret.example"), route("rest", prefix="/")])
    result = router.match("GET", "/x", host, [])
    assert result.route is not None and result.route.name == "secret"


def test_configured_host_with_a_trailing_dot() -> None:
    router = Router([route("secret", prefix="/", host="secret.example.")])
    assert router.match("GET", "/x", b"secret.example", []).route is not None


def test_host_condition_alone() -> None:
    """What an invalidation after an unsafe request asks of a cached route's host."""
    anywhere = route("anywhere", prefix="/")
    one = route("one", prefix="/", host="a.example")
    wildcard = route("wildcard", prefix="/", host="*.example")
    assert anywhere.match_host(b"") and anywhere.match_host(b"b.example")
    assert one.match_host(b"A.example.:8080") and not one.match_host(b"b.example")
    assert wildcard.match_host(b"x.example") and not wildcard.match_host(b"example")
    assert not one.match_host(b"") and not wildcard.match_host(b"")  # no Host: no host route
