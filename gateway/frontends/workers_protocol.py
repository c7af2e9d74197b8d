"""The supervisor-worker socketpair protocol: frames, admin calls and answers.

See :mod:`gateway.frontends.native_workers` for the design."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from typing import Any

import orjson

_FRAME = struct.Struct("!cII")  # kind, sequence number, payload length
_READY, _METRICS, _ADMIN, _CONFIG = b"R", b"M", b"A", b"C"
#: How long a worker gets to answer a forwarded admin call.
ADMIN_TIMEOUT = 5.0
_HEAD = struct.Struct("!I")  # an admin frame's payload: JSON head length, head, body


@dataclasses.dataclass
class AdminCall:
    """An admin HTTP request, as the supervisor forwards it to a worker."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclasses.dataclass
class AdminAnswer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


#: ``answers[i]`` is worker ``indices[i]``'s answer, None if it did not answer in time.
Combiner = Callable[[list[int], list[AdminAnswer | None]], AdminAnswer]


def _pack(head: dict[str, Any], body: bytes) -> bytes:
    encoded = orjson.dumps(head)
    return _HEAD.pack(len(encoded)) + encoded + body


def _unpack(payload: bytes) -> tuple[dict[str, Any], bytes]:
    (size,) = _HEAD.unpack_from(payload)
    end = _HEAD.size + size
    head: dict[str, Any] = orjson.loads(payload[_HEAD.size : end])
    return head, payload[end:]
