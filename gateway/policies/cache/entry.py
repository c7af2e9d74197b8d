"""A stored response: what is kept (and serialised for the shared tier) and what is
derived from it once, so a hit never parses a stored header again.

The shared tier's value is ``GWC2``: a fixed head (magic, variant count, the separator
byte, and the four settings the derived facts depend on), then per variant a fixed
record of numbers (status, flags, counts, lengths, the size, the times and every derived
fact: lifetime, initial age, stale windows, validator time, keep), its byte fields
joined by the separator (a byte that occurs in none of them), and its body. A reader
whose settings equal the writer's takes the facts as stored: a load parses no header,
one ``struct`` unpack and one ``split`` per variant. A reader configured otherwise
derives them again from the stored headers, as :class:`Entry` does for a new response.
Anything else (``GWC1``, written before this format, included) reads as a miss.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

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

MAGIC = b"GWC2"
#: magic, variant count, separator byte, the writer's :attr:`Settings.packed`.
_HEAD = struct.Struct(">4sBB4d")
#: status, flags, header / 304-header / selecting-field / tag counts, block and body
#: lengths, size; request time, response time, Age received, then the derived facts:
#: lifetime, initial age, stale-while-revalidate, stale-if-error, validator time, keep.
_VARIANT = struct.Struct(">HBHHHHIIQ9d")
_NO_CACHE, _MAX_STALE_OK, _STALE_OK, _HEURISTICS, _ETAG, _LAST_MODIFIED = 1, 2, 4, 8, 16, 32
_SEPARATORS = [bytes((i,)) for i in range(256)]
_TEXT = "surrogatepass"  # str fields (URL, host, tags) as UTF-8, whatever they hold
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
    #: The four as stored with the derived facts (no heuristic ttl: -1).
    packed: tuple[float, float, float, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ttl = -1.0 if self.heuristic_ttl is None else float(self.heuristic_ttl)
        packed = (ttl, float(self.max_ttl), float(self.default_swr), float(self.default_sie))
        object.__setattr__(self, "packed", packed)

    @property
    def stale_cap(self) -> float:
        return max(self.max_ttl, self.default_swr, self.default_sie)

    @property
    def horizon(self) -> float:
        """Longest any entry is kept: freshness plus the longest stale or revalidation window."""
        return self.max_ttl + self.stale_cap


#: Every attribute of an :class:`Entry` (the compiled build's classes have no
#: ``__slots__`` to read).
FIELDS = (
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


class Stored(NamedTuple):
    """The facts a shared-tier value keeps beside the response (see :func:`load`): with
    the writer's settings they are taken as stored instead of derived again."""

    lifetime: float
    initial_age: float
    no_cache: bool
    swr: float
    sie: float
    max_stale_ok: bool
    stale_ok: bool
    etag: bytes | None
    last_modified: bytes | None
    validator_time: float
    keep: float
    not_modified_headers: Headers
    size: int


class Entry:
    """One stored variant, ready to send."""

    __slots__ = FIELDS

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
        stored: Stored | None = None,
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
        self.send_headers: Headers = [*headers, (b"content-length", b"%d" % len(body))]
        if stored is not None:
            (
                self.lifetime,
                self.initial_age,
                self.no_cache,
                self.swr,
                self.sie,
                self.max_stale_ok,
                self.stale_ok,
                self.etag,
                self.last_modified,
                self.validator_time,
                self.keep,
                self.not_modified_headers,
                self.size,
            ) = stored
            return
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
        self.not_modified_headers = [
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


def merged_headers(stored: Headers, received: Headers, response_time: float) -> Headers:
    """A stored header section updated by a 304's (RFC 9111 §4.3.4): the 304's fields
    replace ours, except ``Content-Length`` and the content fields. The result is a new
    response to judge and shape again (storable? which variant? see
    :func:`stored_headers`), not one to store as it is."""
    if not any(k.lower() == b"date" for k, _ in received):
        # RFC 9110 §6.6.1: stamp the 304 with the time it arrived.
        received = [*received, (b"date", format_http_date(response_time))]
    replace = {k.lower() for k, _ in received if k.lower() not in _NOT_UPDATED}
    headers = [(k, v) for k, v in stored if k.lower() not in replace]
    headers.extend((k, v) for k, v in received if k.lower() in replace)
    return headers


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


def dump(variants: list[Entry] | tuple[Entry, ...], settings: Settings) -> bytes | None:
    """The shared tier's value for ``variants``, whose facts were derived with ``settings``
    (see the module docstring); None when the format cannot hold them (no variant, more
    than 255, a count or length too large, byte fields holding every byte value)."""
    fields = [_fields(v) for v in variants]
    sep = _separator(b"".join(b"".join(items) for items in fields))
    if sep is None or not 0 < len(variants) < 256:
        return None
    separator = _SEPARATORS[sep]
    out = [_HEAD.pack(MAGIC, len(variants), sep, *settings.packed)]
    for v, items in zip(variants, fields, strict=True):
        flags = (
            (_NO_CACHE if v.no_cache else 0)
            | (_MAX_STALE_OK if v.max_stale_ok else 0)
            | (_STALE_OK if v.stale_ok else 0)
            | (_HEURISTICS if v.heuristics else 0)
            | (_ETAG if v.etag is not None else 0)
            | (_LAST_MODIFIED if v.last_modified is not None else 0)
        )
        block = separator.join(items)
        try:
            record = _VARIANT.pack(
                v.status, flags, len(v.headers), len(v.not_modified_headers),
                len(v.select_names), len(v.tags), len(block), len(v.body), v.size,
                v.request_time, v.response_time, v.age_value, v.lifetime, v.initial_age,
                v.swr, v.sie, v.validator_time, v.keep,
            )  # fmt: skip
        except struct.error:
            return None
        out += (record, block, v.body)
    return b"".join(out)


def _fields(v: Entry) -> list[bytes]:
    """The byte fields of a variant, in the order :func:`load` reads them."""
    items = [v.reason, v.url.encode("utf-8", _TEXT), v.host.encode("utf-8", _TEXT)]
    if v.etag is not None:
        items.append(v.etag)
    if v.last_modified is not None:
        items.append(v.last_modified)
    items.extend(v.select_names)
    # A present value gets a mark, so an empty one differs from an absent one (b"").
    items.extend(b"" if value is None else b"=" + value for value in v.select_values)
    items.extend(t.encode("utf-8", _TEXT) for t in v.tags)
    for pair in v.headers:
        items += pair
    for pair in v.not_modified_headers:
        items += pair
    return items


def _separator(data: bytes) -> int | None:
    """A byte value that does not occur in ``data`` (NUL, in practice)."""
    for byte in range(256):
        if byte not in data:
            return byte
    return None


def load(blob: bytes, settings: Settings) -> list[Entry]:
    """The variants in a shared-tier value; [] for anything unreadable (a miss, not a fault).

    The hot half of a shared-tier hit: everything but the byte fields comes out of one
    unpack, and with the writer's settings the derived facts are taken as stored.
    """
    try:
        head = _HEAD.unpack_from(blob)
        if head[0] != MAGIC:
            return []
        same = head[3:] == settings.packed
        separator = _SEPARATORS[head[2]]
        offset = _HEAD.size
        out: list[Entry] = []
        for _ in range(head[1]):
            (status, flags, n_headers, n_not_modified, n_names, n_tags, block_len, body_len,
             size, request_time, response_time, age_value, lifetime, initial_age, swr, sie,
             validator_time, keep) = _VARIANT.unpack_from(blob, offset)  # fmt: skip
            start = offset + _VARIANT.size
            end = start + block_len
            offset = end + body_len
            body = blob[end:offset]
            parts = blob[start:end].split(separator)
            i = 3
            etag = last_modified = None
            if flags & _ETAG:
                etag = parts[i]
                i += 1
            if flags & _LAST_MODIFIED:
                last_modified = parts[i]
                i += 1
            names: tuple[bytes, ...] = ()
            values: tuple[bytes | None, ...] = ()
            if n_names:
                names = tuple(parts[i : i + n_names])
                i += n_names
                values = tuple(v[1:] if v else None for v in parts[i : i + n_names])
                i += n_names
            tags: tuple[str, ...] = ()
            if n_tags:
                tags = tuple(t.decode("utf-8", _TEXT) for t in parts[i : i + n_tags])
                i += n_tags
            stop = i + 2 * n_headers
            if stop + 2 * n_not_modified != len(parts) or len(body) != body_len:
                return []
            pairs = iter(parts[i:stop])
            headers: Headers = list(zip(pairs, pairs, strict=True))
            pairs = iter(parts[stop:])
            not_modified: Headers = list(zip(pairs, pairs, strict=True))
            url = parts[1].decode("utf-8", _TEXT)
            host = parts[2].decode("utf-8", _TEXT)
            # Written under other settings: derive the facts again; else take them.
            stored = None
            if same:
                stored = Stored(
                    lifetime,
                    initial_age,
                    (flags & _NO_CACHE) != 0,
                    swr,
                    sie,
                    (flags & _MAX_STALE_OK) != 0,
                    (flags & _STALE_OK) != 0,
                    etag,
                    last_modified,
                    validator_time,
                    keep,
                    not_modified,
                    size,
                )
            out.append(
                Entry(url=url, host=host, status=status, reason=parts[0], headers=headers,
                      body=body, request_time=request_time, response_time=response_time,
                      age_value=age_value, select_names=names, select_values=values,
                      tags=tags, heuristics=(flags & _HEURISTICS) != 0, settings=settings,
                      stored=stored)
            )  # fmt: skip
        if offset != len(blob):
            return []
        return out
    except (struct.error, IndexError, ValueError, UnicodeError):
        return []
