"""The request side of the cache: what a request asks (:class:`Ask`) and how a stored
entry is judged for it (selection, freshness, stale-on-error, conditionals). Pure
functions of the request, the entry and the time.
"""

from __future__ import annotations

from gateway.exchange import Exchange
from gateway.policies.cache.entry import Entry
from gateway.policies.cache.fields import etag_matches, not_modified_since
from gateway.policies.cache.keys import KeyBuilder, selected_values
from gateway.policies.cache.rules import NO_RULES, RequestRules, rules_from
from gateway.types import Handler, Headers

#: A client's own validators and ranges, replaced by the cache's when it revalidates.
CLIENT_CONDITIONALS = frozenset({b"if-none-match", b"if-modified-since", b"if-range", b"range"})
#: Request fields that change which stored response may answer, or how: directives and
#: conditions (a Range alone does not: a hit answers it with the whole response).
_ASKING = frozenset(
    {b"cache-control", b"pragma", b"if-none-match", b"if-modified-since", b"if-match",
     b"if-unmodified-since"}
)  # fmt: skip
#: The first bytes of those names (an int set: ``key[0] in`` it is the cheapest filter).
_ASKING_FIRST = frozenset(b"cCpPiI")
#: The first bytes of every name :class:`Ask` reads.
_ASK_FIRST = frozenset(b"cCpPiIrR")


def asks_nothing(headers: Headers) -> bool:
    """True when the request carries none of those fields: its rules are ``NO_RULES`` and
    it is neither conditional nor a precondition, so a fresh hit needs no :class:`Ask`."""
    for key, _ in headers:
        if key and key[0] in _ASKING_FIRST and key.lower() in _ASKING:
            break
    else:
        return True
    return False


class Ask:
    """One request as the cache sees it (per request; never kept on the policy)."""

    __slots__ = (
        "call_next",
        "exchange",
        "failed",
        "host",
        "ims",
        "inm",
        "precondition",
        "primary",
        "ranged",
        "rules",
        "url",
    )

    def __init__(self, exchange: Exchange, call_next: Handler, keys: KeyBuilder, honor: bool):
        cache_control: list[bytes] = []
        pragma: list[bytes] = []
        inm: list[bytes] = []
        self.ims: bytes | None = None
        self.precondition = self.ranged = self.failed = False
        for key, value in exchange.headers:
            if not key or key[0] not in _ASK_FIRST:
                continue
            name = key.lower()
            if name == b"cache-control":
                cache_control.append(value)
            elif name == b"pragma":
                pragma.append(value)
            elif name == b"if-none-match":
                inm.append(value)
            elif name == b"if-modified-since":
                self.ims = value
            elif name == b"if-match" or name == b"if-unmodified-since":
                self.precondition = True
            elif name == b"range":
                self.ranged = True
        self.inm = b",".join(inm) if inm else None
        self.rules = rules_from(cache_control, pragma, honor)
        self.exchange = exchange
        self.call_next = call_next
        self.primary, self.url, self.host = keys.of(exchange)

    @property
    def conditional(self) -> bool:
        return self.inm is not None or self.ims is not None


def select(variants: tuple[Entry, ...], headers: Headers) -> Entry | None:
    """The most recent variant whose selecting fields match (RFC 9111 §4.1)."""
    for entry in variants:
        names = entry.select_names
        if not names or entry.select_values == selected_values(headers, names):
            return entry
    return None


def fresh_for(entry: Entry, rules: RequestRules, now: float) -> bool:
    """Fresh (RFC 9111 §4.2), as this request's directives see it (§5.2.1)."""
    if entry.no_cache or entry.ttl(now) <= 0:
        return False
    if rules is NO_RULES:
        return True
    if rules.no_cache:
        return False
    if rules.max_age is not None and entry.age(now) > rules.max_age:
        return False
    return not (rules.min_fresh is not None and entry.ttl(now) < rules.min_fresh)


def stale_on_error(entry: Entry, rules: RequestRules, now: float) -> bool:
    """May ``entry`` stand in for a failed upstream (RFC 5861 §4, RFC 9111 §4.2.4)?"""
    if not entry.stale_ok:
        return False
    window = entry.sie
    if rules.stale_if_error is not None and entry.max_stale_ok:
        window = max(window, rules.stale_if_error)
    return -entry.ttl(now) <= window


def not_modified(ask: Ask, entry: Entry) -> bool:
    """RFC 9111 §4.3.2: If-None-Match first, else If-Modified-Since."""
    if ask.inm is not None:
        return etag_matches(ask.inm, entry.etag)
    if ask.ims is not None and ask.exchange.method in ("GET", "HEAD"):
        return not_modified_since(ask.ims, entry.validator_time)
    return False


def validating_headers(headers: Headers, entry: Entry) -> Headers:
    """The request's headers for revalidating ``entry`` (RFC 9111 §4.3.1): the client's
    validators and range out, the entry's ETag and Last-Modified in."""
    out = [(k, v) for k, v in headers if k.lower() not in CLIENT_CONDITIONALS]
    if entry.etag is not None:
        out.append((b"if-none-match", entry.etag))
    if entry.last_modified is not None:
        out.append((b"if-modified-since", entry.last_modified))
    return out
