"""A stored response: what is kept (and serialised for the shared tier) and what is
derived from it once, so a hit never parses a stored header again.

The wire format of the shared tier is ``GWC1``, a 4-byte big-endian length, a JSON list
of variant records, then the variants' bodies back to back. It holds only what was
received (headers, times, the request's selecting values, tags); freshness is derived
again by each reader from its own configuration.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.policies.cache.fields import format_http_date
from gateway.policies.cache.rules import (
    ResponseFacts,
    corrected_initial_age,
    current_age,
    forbids_stale,
    freshness_lifetime,
    response_facts,
    stale_windows,
    stripped_fields,
)
from gateway.types import Headers

MAGIC = b"GWC1"
#: Fields never stored: recomputed per hit (age, framing) or about this hop only.
_NOT_STORED = frozenset(
    {b"age", b"content-length", b"transfer-encoding", b"connection", b"keep-alive"}
)
#: Fields a 304 never replaces in a stored response (RFC 9111 §3.2).
_NOT_UPDATED = frozenset(
    {
        b"content-length",
        b"content-type",
        b"content-encoding",
        b"content-range",
        b"transfer-encoding",
        b"age",
        b"cache-status",
        b"connection",
        b"keep-alive",
    }
)
#: Fields a 304 sent to a client carries (RFC 9110 §15.4.5), plus Last-Modified.
_NOT_MODIFIED_FIELDS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary",
     b"last-modified", b"via"}
)  # fmt: skip
#: Bytes counted per entry besides body and headers (objects, dict slots).
ENTRY_OVERHEAD = 400


@dataclass(frozen=True, slots=True)
class Settings:
    """The configuration the derived fields depend on."""

    heuristic_ttl: float | None
    max_ttl: float
    default_swr: float
    default_sie: float

    @property
    def stale_cap(self) -> float:
        return max(self.max_ttl, self.default_swr, self.default_sie)

    @property
    def horizon(self) -> float:
        """Longest any entry is kept: freshness plus the longest stale or revalidation window."""
        return self.max_ttl + self.stale_cap


class Entry:
    """One stored variant, ready to send."""

    __slots__ = (
        "age_value",
        "body",
        "etag",
        "headers",
        "heuristics",
        "host",
        "initial_age",
        "keep",
        "last_modified",
        "lifetime",
        "max_stale_ok",
        "no_cache",
        "not_modified_headers",
        "reason",
        "request_time",
        "response_time",
        "select_names",
        "select_values",
        "send_headers",
        "sie",
        "size",
        "stale_ok",
        "status",
        "swr",
        "tags",
        "url",
        "validator_time",
    )

    def __init__(
        self,
        *,
        url: str,
        host: str,
        status: int,
        reason: bytes,
        headers: Headers,
        body: bytes,
        request_time: float,
        response_time: float,
        age_value: float,
        select_names: tuple[bytes, ...],
        select_values: tuple[bytes | None, ...],
        tags: tuple[str, ...],
        heuristics: bool,
        settings: Settings,
        facts: ResponseFacts | None = None,
    ) -> None:
        self.url = url
        self.host = host
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.request_time = request_time
        self.response_time = response_time
        self.age_value = age_value
        self.select_names = select_names
        self.select_values = select_values
        self.tags = tags
        self.heuristics = heuristics
        if facts is None:
            facts = response_facts(status, headers)
        self.lifetime = freshness_lifetime(
            facts,
            response_time,
            heuristic_ttl=settings.heuristic_ttl,
            max_ttl=settings.max_ttl,
            heuristics=heuristics,
        )
        self.initial_age = corrected_initial_age(facts.date, age_value, request_time, response_time)
        cc = facts.cc
        self.no_cache = "no-cache" in cc and not cc["no-cache"]
        self.swr, self.sie, self.max_stale_ok = stale_windows(
            facts,
            default_swr=settings.default_swr,
            default_sie=settings.default_sie,
            cap=settings.stale_cap,
        )
        self.stale_ok = not forbids_stale(facts)
        self.etag = facts.etag
        self.last_modified = facts.last_modified_raw
        # RFC 9111 §4.3.2: If-Modified-Since compares with Last-Modified, else Date, else
        # the time the response was received.
        reference = facts.last_modified if facts.last_modified is not None else facts.date
        self.validator_time = reference if reference is not None else response_time
        extra = max(self.swr, self.sie, settings.max_ttl if facts.validators else 0.0)
        self.keep = min(self.lifetime + extra, settings.horizon)
        self.send_headers: Headers = [*headers, (b"content-length", str(len(body)).encode())]
        self.not_modified_headers: Headers = [
            (k, v) for k, v in headers if k.lower() in _NOT_MODIFIED_FIELDS
        ]
        self.size = (
            len(body) + sum(len(k) + len(v) + 16 for k, v in headers) + len(url) + ENTRY_OVERHEAD
        )

    @property
    def worth_keeping(self) -> bool:
        """Whether storing helps at all: fresh for a while, revalidatable, or usable stale."""
        return (
            self.lifetime > 0
            or self.etag is not None
            or self.last_modified is not None
            or (self.swr > 0 or self.sie > 0)
        )

    def age(self, now: float) -> float:
        return current_age(self.initial_age, self.response_time, now)

    def ttl(self, now: float) -> float:
        """Remaining freshness in seconds (negative when stale)."""
        return self.lifetime - self.age(now)

    def expires_at(self) -> float:
        """When this entry may be dropped from every tier."""
        return self.response_time + self.keep

    def freshened(self, received: Headers, request_time: float, response_time: float,
                  settings: Settings) -> Entry:  # fmt: skip
        """This entry updated by a 304 (RFC 9111 §4.3.4): the 304's fields replace ours."""
        facts304 = response_facts(304, received)
        if facts304.date is None:  # RFC 9110 §6.6.1: stamp it with the time it arrived
            received = [*received, (b"date", format_http_date(response_time))]
        replace = {k.lower() for k, _ in received if k.lower() not in _NOT_UPDATED}
        headers = [(k, v) for k, v in self.headers if k.lower() not in replace]
        headers.extend((k, v) for k, v in received if k.lower() in replace)
        return Entry(
            url=self.url,
            host=self.host,
            status=self.status,
            reason=self.reason,
            headers=headers,
            body=self.body,
            request_time=request_time,
            response_time=response_time,
            age_value=facts304.age,
            select_names=self.select_names,
            select_values=self.select_values,
            tags=self.tags,
            heuristics=self.heuristics,
            settings=settings,
        )

    def record(self) -> dict[str, Any]:
        return {
            "u": self.url,
            "h": self.host,
            "s": self.status,
            "r": self.reason.decode("latin-1"),
            "H": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.headers],
            "q": self.request_time,
            "p": self.response_time,
            "a": self.age_value,
            "n": [n.decode("latin-1") for n in self.select_names],
            "v": [None if v is None else v.decode("latin-1") for v in self.select_values],
            "t": list(self.tags),
            "e": self.heuristics,
            "b": len(self.body),
        }


def stored_headers(
    headers: Headers,
    facts: ResponseFacts,
    tags_header: bytes | None,
    response_time: float,
) -> Headers:
    """The header section as stored: no per-hop, qualified-private or tag fields; a Date."""
    drop = _NOT_STORED | stripped_fields(facts)
    if tags_header is not None:
        drop = drop | {tags_header}
    out = [(k, v) for k, v in headers if k.lower() not in drop]
    if facts.date is None:
        # RFC 9110 §6.6.1: a recipient with a clock adds the Date it received it at.
        out.append((b"date", format_http_date(response_time)))
    return out


def parse_tags(headers: Headers, tags_header: bytes | None) -> tuple[str, ...]:
    if tags_header is None:
        return ()
    tags: list[str] = []
    for key, value in headers:
        if key.lower() == tags_header:
            tags.extend(t for t in value.decode("latin-1").replace(",", " ").split() if t)
    return tuple(dict.fromkeys(tags))


def dump(variants: list[Entry] | tuple[Entry, ...]) -> bytes:
    meta = orjson.dumps([v.record() for v in variants])
    return MAGIC + struct.pack(">I", len(meta)) + meta + b"".join(v.body for v in variants)


def load(blob: bytes, settings: Settings) -> list[Entry]:
    """The variants in a shared-tier value; [] for anything unreadable (a miss, not a fault)."""
    if len(blob) < 8 or blob[:4] != MAGIC:
        return []
    (size,) = struct.unpack(">I", blob[4:8])
    try:
        records = orjson.loads(blob[8 : 8 + size])
        offset = 8 + size
        out: list[Entry] = []
        for rec in records:
            length = int(rec["b"])
            body = blob[offset : offset + length]
            if len(body) != length:
                return []
            offset += length
            out.append(
                Entry(
                    url=str(rec["u"]),
                    host=str(rec["h"]),
                    status=int(rec["s"]),
                    reason=str(rec["r"]).encode("latin-1"),
                    headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in rec["H"]],
                    body=body,
                    request_time=float(rec["q"]),
                    response_time=float(rec["p"]),
                    age_value=float(rec["a"]),
                    select_names=tuple(n.encode("latin-1") for n in rec["n"]),
                    select_values=tuple(
                        None if v is None else v.encode("latin-1") for v in rec["v"]
                    ),
                    tags=tuple(str(t) for t in rec["t"]),
                    heuristics=bool(rec["e"]),
                    settings=settings,
                )
            )
        return out
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeError):
        return []
