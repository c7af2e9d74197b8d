"""Hop-by-hop removal and forwarding headers (X-Forwarded-*, Via), both directions."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from gateway.exchange import find_all
from gateway.types import Headers

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
FORWARDING = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"x-real-ip"}
)
# Framing is recomputed by the forwarding step; these never pass through as received.
FRAMING = frozenset({b"content-length", b"host"})


def connection_tokens(headers: Headers) -> frozenset[bytes]:
    """Header names listed in ``Connection`` (which are hop-by-hop too)."""
    tokens: set[bytes] = set()
    for value in find_all(headers, b"connection"):
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return frozenset(tokens)


def is_websocket(upgrade: bytes | None) -> bool:
    """Whether an ``Upgrade`` field value asks for WebSocket and nothing else.

    The only protocol the gateway tunnels after a ``101``: any other upgrade (``h2c``,
    ``TLS/1.0``...) would turn the connection into a pipe that later requests cross
    without routing or policies, so it is proxied as a plain request without its
    ``Upgrade`` field. ``None`` (no field, or several) is not WebSocket.
    """
    if upgrade is None or len(upgrade) < 9:
        return False
    return upgrade.strip(b" \t").lower() == b"websocket"


def upgrade_value(headers: Headers) -> bytes | None:
    """The one ``Upgrade`` field value, or None when there is none or more than one."""
    values = find_all(headers, b"upgrade")
    return values[0] if len(values) == 1 else None


def strip_hop_by_hop(
    headers: Headers,
    extra_drop: frozenset[bytes] = frozenset(),
    keep: frozenset[bytes] = frozenset(),
) -> Headers:
    """``headers`` without hop-by-hop fields, those named in Connection, and ``extra_drop``."""
    listed = connection_tokens(headers) - keep
    drop = (HOP_BY_HOP - keep) | listed | extra_drop
    return [(k, v) for k, v in headers if k.lower() not in drop]


def parse_networks(cidrs: Sequence[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def parse_ip(text: str) -> IPAddress | None:
    """The address ``text`` spells (an IPv4-mapped IPv6 address as its IPv4 address), or
    None when it is not one."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_trusted(ip: str, networks: tuple[IPNetwork, ...]) -> bool:
    if not networks:
        return False
    addr = parse_ip(ip)
    return addr is not None and any(addr in net for net in networks)


def _forwarded_for(headers: Headers) -> list[str]:
    """Addresses from X-Forwarded-For, or else from RFC 7239 Forwarded ``for=``, in order."""
    xff = find_all(headers, b"x-forwarded-for")
    if xff:
        return [a.strip() for v in xff for a in v.decode("latin-1").split(",") if a.strip()]
    chain: list[str] = []
    for value in find_all(headers, b"forwarded"):
        for element in value.decode("latin-1").split(","):
            for pair in element.split(";"):
                name, _, val = pair.strip().partition("=")
                if name.lower() == "for" and val:
                    val = val.strip('"')
                    if val.startswith("["):
                        val = val[1 : val.find("]")]
                    elif val.count(":") == 1:
                        val = val.split(":")[0]
                    chain.append(val)
    return chain


def resolve_client_ip(peer: str, headers: Headers, trusted: tuple[IPNetwork, ...]) -> str:
    """The client address: walk forwarding addresses right to left past trusted proxies.

    An address taken from a header is given in one spelling (RFC 5952 for IPv6, an
    IPv4-mapped address as IPv4), so that a client is one rate limit key however a
    proxy wrote its address."""
    addr = parse_ip(peer)
    if addr is None or not any(addr in net for net in trusted):
        return peer
    client = peer
    for text in reversed(_forwarded_for(headers)):
        addr = parse_ip(text)
        if addr is None:
            break
        client = str(addr)
        if not any(addr in net for net in trusted):
            break
    return client
