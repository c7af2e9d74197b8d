import pytest

from gateway.config.models import Upstream
from gateway.exchange import Exchange, Response
from gateway.transport.base import Target
from gateway.transport.forward import request_headers, response_headers
from gateway.transport.headers import parse_networks, resolve_client_ip

TARGET = Target.parse("http://10.0.0.5:8000")


def exchange(
    headers: list[tuple[bytes, bytes]], peer: str = "192.0.2.1", body: bytes = b""
) -> Exchange:
    return Exchange("GET", b"/a%2Fb?x=1", headers, peer, body=body)


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [k.lower() for k, _ in headers]


def test_hop_by_hop_and_connection_listed_are_removed() -> None:
    ex = exchange(
        [
            (b"Host", b"example.com"),
            (b"Connection", b"keep-alive, X-Private"),
            (b"X-Private", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"TE", b"trailers"),
            (b"Proxy-Authorization", b"x"),
            (b"Transfer-Encoding", b"chunked"),
            (b"X-Kept", b"yes"),
            (b"Upgrade", b"h2c"),
        ]
    )
    out, upgrade = request_headers(ex, TARGET, "preserve", ())
    assert not upgrade
    assert names(out) == [
        b"host",
        b"x-kept",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"via",
    ]
    assert dict(out)[b"host"] == b"example.com"
    assert dict(out)[b"via"] == b"1.1 gateway"


def test_untrusted_forwarding_headers_are_replaced() -> None:
    ex = exchange(
        [
            (b"Host", b"h"),
            (b"X-Forwarded-For", b"6.6.6.6"),
            (b"Forwarded", b"for=6.6.6.6"),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Real-IP", b"6.6.6.6"),
        ]
    )
    out = dict(request_headers(ex, TARGET, "preserve", ())[0])
    assert out[b"x-forwarded-for"] == b"192.0.2.1"
    assert out[b"x-forwarded-proto"] == b"http"
    assert b"forwarded" not in out and b"x-real-ip" not in out


def test_trusted_proxy_chain_is_extended() -> None:
    trusted = parse_networks(["192.0.2.0/24"])
    ex = exchange(
        [
            (b"Host", b"h"),
            (b"X-Forwarded-For", b"203.0.113.9, 192.0.2.7"),
            (b"X-Forwarded-Proto", b"https"),
        ]
    )
    out = dict(request_headers(ex, TARGET, "preserve", trusted)[0])
    assert out[b"x-forwarded-for"] == b"203.0.113.9, 192.0.2.7, 192.0.2.1"
    assert out[b"x-forwarded-proto"] == b"https"
    assert resolve_client_ip("192.0.2.1", ex.headers, trusted) == "203.0.113.9"
    assert resolve_client_ip("198.51.100.1", ex.headers, trusted) == "198.51.100.1"


def test_forwarded_header_for_client_ip() -> None:
    trusted = parse_networks(["10.0.0.0/8"])
    headers = [(b"Forwarded", b'for="[2001:db8::1]:4711";proto=https, for=10.1.1.1')]
    assert resolve_client_ip("10.0.0.1", headers, trusted) == "2001:db8::1"


@pytest.mark.parametrize(
    "spelling",
    ["2001:db8::1", "2001:DB8::1", "2001:db8:0:0:0:0:0:1", "2001:0db8::0001"],
)
def test_a_forwarded_ipv6_address_has_one_spelling(spelling: str) -> None:
    trusted = parse_networks(["10.0.0.0/8"])
    headers = [(b"X-Forwarded-For", spelling.encode())]
    assert resolve_client_ip("10.0.0.1", headers, trusted) == "2001:db8::1"
    forwarded = [(b"Forwarded", f'for="[{spelling}]"'.encode())]
    assert resolve_client_ip("10.0.0.1", forwarded, trusted) == "2001:db8::1"


def test_an_ipv4_mapped_address_is_its_ipv4_address() -> None:
    trusted = parse_networks(["10.0.0.0/8"])
    headers = [(b"X-Forwarded-For", b"::ffff:198.51.100.9")]
    assert resolve_client_ip("10.0.0.1", headers, trusted) == "198.51.100.9"
    # a proxy that reaches a dual-stack listener is still recognised as trusted
    assert resolve_client_ip("::ffff:10.0.0.1", headers, trusted) == "198.51.100.9"
    # an untrusted peer is taken as the kernel gave it; the header is not read
    assert resolve_client_ip("::ffff:192.0.2.1", headers, trusted) == "::ffff:192.0.2.1"


def test_host_modes() -> None:
    ex = exchange([(b"Host", b"client.example")])
    assert dict(request_headers(ex, TARGET, "upstream", ())[0])[b"host"] == b"10.0.0.5:8000"
    assert dict(request_headers(ex, TARGET, "svc.local", ())[0])[b"host"] == b"svc.local"
    assert Target.parse("https://api.example.com").authority == b"api.example.com"


def test_websocket_upgrade_keeps_upgrade() -> None:
    ex = exchange([(b"Host", b"h"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")])
    out, upgrade = request_headers(ex, TARGET, "preserve", ())
    assert upgrade
    assert (b"Upgrade", b"websocket") in out and (b"connection", b"upgrade") in out


@pytest.mark.parametrize(
    "upgrades",
    [
        [b"h2c"],
        [b"websocket, h2c"],
        [b"TLS/1.0"],
        [b"websocket", b"h2c"],  # two fields: which one the upstream picks is unknown
    ],
)
def test_only_websocket_is_forwarded_as_an_upgrade(upgrades: list[bytes]) -> None:
    # h2c smuggling: an upgrade the gateway relays turns the connection into a tunnel
    # past routing and policies. Anything but WebSocket goes up as a plain request.
    ex = exchange(
        [(b"Host", b"h"), (b"Connection", b"Upgrade, HTTP2-Settings")]
        + [(b"Upgrade", value) for value in upgrades]
        + [(b"HTTP2-Settings", b"AAMAAABkAARAAAAAAAIAAAAA"), (b"X-Kept", b"1")]
    )
    out, upgrade = request_headers(ex, TARGET, "preserve", ())
    assert not upgrade
    assert b"upgrade" not in names(out) and b"connection" not in names(out)
    assert b"http2-settings" not in names(out) and b"x-kept" in names(out)


@pytest.mark.parametrize("value", [b"websocket", b"WebSocket", b" websocket "])
def test_websocket_token_is_case_insensitive(value: bytes) -> None:
    ex = exchange([(b"Host", b"h"), (b"Connection", b"keep-alive, Upgrade"), (b"Upgrade", value)])
    out, upgrade = request_headers(ex, TARGET, "preserve", ())
    assert upgrade
    assert (b"connection", b"upgrade") in out


def test_content_length_recomputed_from_body() -> None:
    ex = Exchange("POST", b"/", [(b"Content-Length", b"999")], "1.2.3.4", body=b"hello")
    out = dict(request_headers(ex, TARGET, "preserve", ())[0])
    assert out[b"content-length"] == b"5"


def test_response_hop_by_hop_removed() -> None:
    resp = Response(
        200,
        [
            (b"Connection", b"close, X-Hop"),
            (b"X-Hop", b"1"),
            (b"Keep-Alive", b"5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"X-End", b"1"),
        ],
    )
    response_headers(resp)
    assert resp.headers == [(b"X-End", b"1"), (b"via", b"1.1 gateway")]


@pytest.mark.parametrize(("status", "kept"), [(204, False), (304, True), (200, True)])
def test_a_204_loses_its_content_length(status: int, kept: bool) -> None:
    # RFC 9110 8.6: no Content-Length in a 204; a 304 keeps the one its 200 would have
    resp = Response(status, [(b"Content-Length", b"5"), (b"X-End", b"1")])
    response_headers(resp)
    assert ((b"Content-Length", b"5") in resp.headers) is kept
    assert (b"X-End", b"1") in resp.headers


def test_upstream_model_rejects_bad_urls() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Upstream(url="ftp://x")
    with pytest.raises(ValidationError):
        Upstream(url="http://x/?q=1")
