"""Shared type aliases. Headers travel as raw ``(name, value)`` byte pairs end to end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from gateway.exchange import Exchange, Response

Header: TypeAlias = tuple[bytes, bytes]
Headers: TypeAlias = list[Header]
BodyStream: TypeAlias = AsyncIterator[bytes]
Handler: TypeAlias = "Callable[[Exchange], Awaitable[Response]]"
Clock: TypeAlias = Callable[[], float]
