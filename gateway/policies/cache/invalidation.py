"""Invalidations: what to drop (a URL, a prefix, a glob, a tag, everything) and bans.

A URL is invalidated by deleting its primary key in every tier. A prefix, glob, tag or
"all" cannot be listed in a key-value store, so it becomes a *ban*: the in-process tier
drops matching entries at once, and an entry read later from the shared tier is refused
when it was stored before a ban that matches it. Bans are kept as long as an entry
stored before them can live (the longest ``keep`` horizon), and at most ``MAX_BANS``;
beyond that the oldest collapse into one "all" ban, which only over-invalidates.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urljoin, urlsplit

import orjson

from gateway.exchange import Exchange, Response, normalize_target
from gateway.policies.cache.entry import Entry
from gateway.policies.cache.keys import glob_regex

Kind = Literal["url", "prefix", "glob", "tag", "all"]
KINDS: tuple[Kind, ...] = ("url", "prefix", "glob", "tag", "all")
MAX_BANS = 1000
#: Entries stored up to this long after a ban (by another replica's clock) still match it.
CLOCK_SKEW = 1.0


@dataclass(frozen=True, slots=True)
class Invalidation:
    """One purge, as sent between replicas. ``value`` is a URL, prefix, glob or tag."""

    kind: Kind
    value: str
    host: str | None
    time: float
    id: str

    @classmethod
    def new(cls, kind: Kind, value: str, host: str | None, time: float) -> Invalidation:
        if kind not in KINDS:
            raise ValueError(f"unknown invalidation kind {kind!r}")
        return cls(kind, value, host.lower() if host else None, time, os.urandom(8).hex())

    def encode(self) -> bytes:
        return orjson.dumps(
            {"k": self.kind, "v": self.value, "h": self.host, "t": self.time, "i": self.id}
        )

    @classmethod
    def decode(cls, raw: bytes) -> Invalidation | None:
        try:
            doc = orjson.loads(raw)
            kind = doc["k"]
            if kind not in KINDS:
                return None
            host = doc.get("h")
            return cls(kind, str(doc["v"]), str(host) if host else None, float(doc["t"]),
                       str(doc["i"]))  # fmt: skip
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


class Matcher:
    """An invalidation compiled for matching entries (the URL normalised by the caller)."""

    __slots__ = ("host", "kind", "regex", "time", "value")

    def __init__(self, inv: Invalidation, url: str | None = None) -> None:
        self.kind = inv.kind
        self.value = url if url is not None else inv.value
        self.host = inv.host
        self.time = inv.time
        self.regex = glob_regex([inv.value]) if inv.kind == "glob" else None

    def __call__(self, entry: Entry) -> bool:
        if self.host is not None and entry.host and entry.host != self.host:
            return False
        kind = self.kind
        if kind == "all":
            return True
        if kind == "url":
            return entry.url == self.value
        if kind == "prefix":
            return entry.url.startswith(self.value)
        if kind == "tag":
            return self.value in entry.tags
        assert self.regex is not None
        return self.regex.match(entry.url) is not None


class BanList:
    """Bans in time order, bounded by age and count; shared by every cache of a process."""

    def __init__(self, max_bans: int = MAX_BANS) -> None:
        self.max_bans = max_bans
        self._bans: list[tuple[float, Invalidation]] = []  # (until, ban), oldest first

    def __len__(self) -> int:
        return len(self._bans)

    def add(self, ban: Invalidation, until: float, now: float) -> None:
        bans = [b for b in self._bans if b[0] > now]
        bans.append((until, ban))
        bans.sort(key=lambda b: b[1].time)
        if len(bans) > self.max_bans:
            dropped = bans[: len(bans) - self.max_bans + 1]
            newest = dropped[-1][1]
            everything = Invalidation("all", "", None, newest.time, f"collapsed-{newest.id}")
            bans = [(max(b[0] for b in dropped), everything), *bans[len(dropped) :]]
        self._bans = bans

    def blocks(self, entry: Entry, now: float, matcher: Callable[[Invalidation], Matcher]) -> bool:
        """True when a ban issued after ``entry`` was stored matches it."""
        stored = entry.response_time
        for until, ban in reversed(self._bans):
            if ban.time + CLOCK_SKEW < stored:
                return False
            if until > now and matcher(ban)(entry):
                return True
        return False


def same_origin_path(value: bytes, scheme: str, host: bytes, base_path: str) -> str | None:
    """The path?query a Location / Content-Location names, if on the request's origin
    (RFC 9111 §4.4: only those are invalidated after an unsafe request)."""
    text = value.strip().decode("latin-1")
    if not text:
        return None
    origin = f"{scheme}://{host.decode('latin-1').lower()}"
    absolute = urljoin(origin + base_path, text)
    parts = urlsplit(absolute)
    if f"{parts.scheme}://{parts.netloc.lower()}" != origin:
        return None
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def unsafe_targets(exchange: Exchange, response: Response) -> list[str]:
    """What a non-error answer to an unsafe request invalidates (RFC 9111 §4.4): its
    target URI and the same-origin ``Location`` / ``Content-Location``, as path?query."""
    raw = exchange.raw_target
    qpos = raw.find(b"?")
    path = (raw if qpos < 0 else raw[:qpos]).decode("latin-1")
    urls = [raw.decode("latin-1")]
    for name in (b"location", b"content-location"):
        value = response.header(name)
        if value is not None:
            other = same_origin_path(value, exchange.scheme, exchange.host, path)
            if other is not None:
                urls.append(other)
    return list(dict.fromkeys(urls))


def routed_path(url: str) -> str:
    """The path a router matches for ``url`` (``path?query`` as an invalidation names
    it): percent-decoded, dot segments resolved and slashes merged, as for a request
    (:func:`gateway.exchange.normalize_target`)."""
    path = url.partition("?")[0].encode("latin-1")
    if path[:1] == b"/" and (b"%" in path or b"/." in path or b"//" in path):
        return normalize_target(path)[1]
    return path.decode("latin-1")
