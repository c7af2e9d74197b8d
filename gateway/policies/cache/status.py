"""The ``Cache-Status`` response header (RFC 9211): one list member per cache.

``gateway; hit; ttl=42`` for a hit; ``gateway; fwd=uri-miss; stored; ttl=60`` for a miss
that was stored; ``gateway; fwd=stale; fwd-status=503; ttl=-7; detail=stale-if-error``
for a stale response served because the upstream failed. ``ttl`` is the remaining
freshness in whole seconds (negative when stale), rounded down.
"""

from __future__ import annotations

import math
import re

_TOKEN = re.compile(r"^[A-Za-z*][A-Za-z0-9_.:/%*!#$&'+^`|~-]*$")

#: RFC 9211 §2.2 ``fwd`` values used here.
FWD_URI_MISS = "uri-miss"
FWD_VARY_MISS = "vary-miss"
FWD_STALE = "stale"
FWD_METHOD = "method"
FWD_REQUEST = "request"


def cache_status(
    name: bytes,
    *,
    hit: bool = False,
    fwd: str | None = None,
    fwd_status: int | None = None,
    ttl: float | None = None,
    stored: bool = False,
    collapsed: bool = False,
    detail: str | None = None,
) -> bytes:
    parts = [name]
    if hit:
        parts.append(b"hit")
    if fwd is not None:
        parts.append(b"fwd=" + fwd.encode())
        if fwd_status is not None:
            parts.append(b"fwd-status=%d" % fwd_status)
    if ttl is not None:
        parts.append(b"ttl=%d" % max(math.floor(ttl), -(2**31)))
    if stored:
        parts.append(b"stored")
    if collapsed:
        parts.append(b"collapsed")
    if detail:
        shown = detail if _TOKEN.match(detail) else '"' + detail.replace('"', "'") + '"'
        parts.append(b"detail=" + shown.encode("latin-1", "replace"))
    return b"; ".join(parts)
