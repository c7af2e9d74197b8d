"""The one narrow seam between the chain and the network.

A transport owns its connection pools and timeouts, sends exactly the headers it is
given (the forwarding step in :mod:`gateway.transport.forward` prepares them, so every
transport puts the same bytes on the wire), and maps every failure to the typed errors
in :mod:`gateway.errors`. Tests fake this seam instead of patching the network.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from gateway.config.models import Timeouts
from gateway.exchange import ByteStream, Response
from gateway.types import Headers


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream server: where to connect and what to prepend to paths."""

    scheme: str
    host: str
    port: int
    base_path: bytes
    authority: bytes  # host[:port] as the Host header would name it

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        assert parts.hostname is not None
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        default = (tls and port == 443) or (not tls and port == 80)
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        authority = shown if default else f"{shown}:{port}"
        return cls(
            scheme=parts.scheme,
            host=host,
            port=port,
            base_path=parts.path.rstrip("/").encode("latin-1"),
            authority=authority.encode("latin-1"),
        )

    @property
    def key(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(slots=True)
class UpstreamRequest:
    """A request ready for the wire. ``path`` is the raw request target (path?query)."""

    method: str
    target: Target
    path: bytes
    headers: Headers
    body: bytes | ByteStream | None
    timeouts: Timeouts
    upgrade: bool = False


class Transport(Protocol):
    name: str

    def send(self, request: UpstreamRequest) -> Awaitable[Response]:
        """Send ``request``; the response with its body streaming (an ``async def`` will
        do).

        Raises UpstreamConnectError, UpstreamTimeout or UpstreamProtocolError when no
        response head arrived. A body that breaks later raises UpstreamBodyError from
        the response stream. A 101 answer carries ``response.upgraded``.
        """
        ...

    async def close(self) -> None: ...
