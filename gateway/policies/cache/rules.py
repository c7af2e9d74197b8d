"""RFC 9111 as pure functions: what a request asks (§5.2.1), what a response allows
(§3, §5.2.2), freshness (§4.2) and age (§4.2.3).

Nothing here reads a clock: every time is passed in (seconds since the epoch), so tests
move time instead of sleeping. Header values are the raw bytes the gateway received;
their syntax (directives, dates, validators) is in :mod:`gateway.policies.cache.fields`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.exchange import find_all
from gateway.policies.cache.fields import (
    DELTA_MAX,
    Directives,
    delta_seconds,
    field_names,
    parse_directives,
    parse_http_date,
)
from gateway.types import Headers

#: RFC 9111 §4.2.2: status codes a cache may give a heuristic freshness lifetime.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
#: Final statuses whose caching semantics this cache implements (for ``must-understand``).
#: 206 is missing on purpose: partial responses are never stored.
UNDERSTOOD_STATUSES = frozenset(
    {200, 203, 204, 300, 301, 302, 303, 307, 308, 400, 403, 404, 405, 410, 414, 451, 501}
)
#: Safe methods: RFC 9110 §9.2.1's, QUERY (draft-ietf-httpbis-safe-method-w-body) and
#: WebDAV's PROPFIND and REPORT (RFC 4918 §9.1, RFC 3253 §3.6), which only read; every
#: other method invalidates on success (RFC 9111 §4.4).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "QUERY", "PROPFIND", "REPORT"})
#: The RFC's suggested heuristic: a fraction of the time since Last-Modified.
HEURISTIC_FRACTION = 0.1


@dataclass(frozen=True, slots=True)
class RequestRules:
    """What a request's Cache-Control (and Pragma) asks of the cache (RFC 9111 §5.2.1)."""

    no_store: bool = False
    no_cache: bool = False
    max_age: float | None = None
    min_fresh: float | None = None
    max_stale: float | None = None  # inf: any staleness
    only_if_cached: bool = False
    stale_if_error: float | None = None


NO_RULES = RequestRules()


def request_rules(headers: Headers, honor: bool = True) -> RequestRules:
    """The request's directives; with ``honor=False`` only ``no-store`` counts."""
    return rules_from(find_all(headers, b"cache-control"), find_all(headers, b"pragma"), honor)


def rules_from(cache_control: list[bytes], pragma: list[bytes], honor: bool) -> RequestRules:
    """:func:`request_rules` from the field lines already picked out of the request."""
    if not cache_control:
        # RFC 7234 §5.4 (kept for HTTP/1.0 clients): Pragma: no-cache without Cache-Control
        if honor and pragma and b"no-cache" in b",".join(pragma).lower():
            return RequestRules(no_cache=True)
        return NO_RULES
    cc, _ = parse_directives(cache_control)
    if not cc:
        return NO_RULES
    if not honor:
        return RequestRules(no_store=True) if "no-store" in cc else NO_RULES
    max_stale: float | None = None
    if "max-stale" in cc:
        arg = cc["max-stale"]
        stale = delta_seconds(arg)
        max_stale = float("inf") if arg is None else (float(stale) if stale is not None else 0.0)
    return RequestRules(
        no_store="no-store" in cc,
        no_cache="no-cache" in cc,
        max_age=_seconds(cc, "max-age", invalid=0.0),
        min_fresh=_seconds(cc, "min-fresh", invalid=None),
        max_stale=max_stale,
        only_if_cached="only-if-cached" in cc,
        stale_if_error=_seconds(cc, "stale-if-error", invalid=None),
    )


def _seconds(cc: Directives, name: str, invalid: float | None) -> float | None:
    if name not in cc:
        return None
    value = delta_seconds(cc[name])
    return float(value) if value is not None else invalid


@dataclass(frozen=True, slots=True)
class ResponseFacts:
    """Everything the caching rules need from a response's header section, parsed once."""

    status: int
    cc: Directives
    repeated: frozenset[str]
    date: float | None
    expires: float | None
    has_expires: bool
    last_modified: float | None
    age: float
    etag: bytes | None
    last_modified_raw: bytes | None
    vary: tuple[bytes, ...]
    vary_star: bool
    set_cookie: bool

    @property
    def validators(self) -> bool:
        return self.etag is not None or self.last_modified_raw is not None


def response_facts(status: int, headers: Headers) -> ResponseFacts:
    cc_values: list[bytes] = []
    vary_values: list[bytes] = []
    date = expires = last_modified = etag = age = None
    has_expires = set_cookie = False
    for key, value in headers:
        name = key.lower()
        if name == b"cache-control":
            cc_values.append(value)
        elif name == b"date" and date is None:
            date = value
        elif name == b"expires":
            has_expires = True
            if expires is None:
                expires = value
        elif name == b"last-modified" and last_modified is None:
            last_modified = value
        elif name == b"etag" and etag is None:
            etag = value.strip()
        elif name == b"age" and age is None:
            age = value
        elif name == b"vary":
            vary_values.append(value)
        elif name == b"set-cookie":
            set_cookie = True
    cc, repeated = parse_directives(cc_values)
    names = sorted({p.strip().lower() for v in vary_values for p in v.split(b",") if p.strip()})
    expires_at = parse_http_date(expires) if has_expires else None
    return ResponseFacts(
        status=status,
        cc=cc,
        repeated=repeated,
        date=parse_http_date(date),
        # RFC 9111 §5.3: an invalid Expires ("0") means already expired.
        expires=expires_at if expires_at is not None or not has_expires else float("-inf"),
        has_expires=has_expires,
        last_modified=parse_http_date(last_modified),
        age=_age_value(age),
        etag=etag or None,
        last_modified_raw=last_modified,
        vary=tuple(n for n in names if n != b"*"),
        vary_star=b"*" in names,
        set_cookie=set_cookie,
    )


def _age_value(raw: bytes | None) -> float:
    """RFC 9111 §5.1: a non-negative integer; anything else is ignored (taken as 0)."""
    if raw is None:
        return 0.0
    text = raw.strip()
    if b"," in text:  # a list: use the first member, as for other singleton fields
        text = text.split(b",", 1)[0].strip()
    if not text.isdigit():
        return 0.0
    return float(min(int(text), DELTA_MAX))


def explicit_lifetime(facts: ResponseFacts, response_time: float) -> float | None:
    """RFC 9111 §4.2.1 for a shared cache: s-maxage, then max-age, then Expires - Date."""
    cc = facts.cc
    for name in ("s-maxage", "max-age"):
        if name in cc:
            if name in facts.repeated:  # conflicting copies: treat as stale
                return 0.0
            value = delta_seconds(cc[name])
            return float(value) if value is not None else 0.0
    if facts.has_expires:
        assert facts.expires is not None
        if facts.expires == float("-inf"):
            return 0.0
        date = facts.date if facts.date is not None else response_time
        return max(facts.expires - date, 0.0)
    return None


def heuristic_allowed(facts: ResponseFacts) -> bool:
    return facts.status in HEURISTIC_STATUSES or "public" in facts.cc


def freshness_lifetime(
    facts: ResponseFacts,
    response_time: float,
    *,
    heuristic_ttl: float | None,
    max_ttl: float,
    heuristics: bool = True,
) -> float:
    """Seconds the response stays fresh, capped by ``max_ttl``.

    Without explicit freshness, a heuristically cacheable response gets ``heuristic_ttl``
    when set, else 10% of the time between Last-Modified and Date (RFC 9111 §4.2.2).
    """
    lifetime = explicit_lifetime(facts, response_time)
    if lifetime is None:
        lifetime = 0.0
        if heuristics and heuristic_allowed(facts):
            if heuristic_ttl is not None:
                lifetime = heuristic_ttl
            elif facts.last_modified is not None:
                date = facts.date if facts.date is not None else response_time
                lifetime = max(date - facts.last_modified, 0.0) * HEURISTIC_FRACTION
    return min(lifetime, max_ttl)


def corrected_initial_age(
    date: float | None, age_value: float, request_time: float, response_time: float
) -> float:
    """RFC 9111 §4.2.3: the age the response already had when it arrived."""
    apparent_age = max(0.0, response_time - (date if date is not None else response_time))
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = age_value + response_delay
    return max(apparent_age, corrected_age_value)


def current_age(initial_age: float, response_time: float, now: float) -> float:
    """RFC 9111 §4.2.3: initial age plus the time spent in this cache."""
    return initial_age + max(0.0, now - response_time)


def age_header(age: float) -> bytes:
    """The ``Age`` value: whole seconds, capped at 2^31 (RFC 9111 §5.1)."""
    return str(min(int(age), DELTA_MAX)).encode()


def not_storable(
    method: str,
    facts: ResponseFacts,
    request: RequestRules,
    *,
    authorization: bool,
    heuristics: bool,
    store_set_cookie: bool,
) -> str | None:
    """Why a shared cache must not store this response (RFC 9111 §3), or None if it may.

    The reason is a short token, used in ``Cache-Status: ...; detail=<reason>``.
    """
    if method != "GET":
        return "method"
    status = facts.status
    if status < 200 or status in (206, 304):
        return "status"
    cc = facts.cc
    if "must-understand" in cc:
        if status not in UNDERSTOOD_STATUSES:
            return "status"
    elif "no-store" in cc:
        return "no-store"
    if request.no_store:
        return "request-no-store"
    if "private" in cc and not cc["private"]:
        return "private"
    if authorization and not ("public" in cc or "s-maxage" in cc or "must-revalidate" in cc):
        return "authorization"
    if facts.vary_star:
        return "vary-star"
    if facts.set_cookie and not store_set_cookie:
        return "set-cookie"
    explicit = "public" in cc or "max-age" in cc or "s-maxage" in cc or facts.has_expires
    if not explicit and not (heuristics and facts.status in HEURISTIC_STATUSES):
        return "no-freshness"
    return None


def stripped_fields(facts: ResponseFacts) -> frozenset[bytes]:
    """Fields a shared cache must not store: ``private="..."``, ``no-cache="..."`` (§5.2.2)."""
    cc = facts.cc
    names: frozenset[bytes] = frozenset()
    if cc.get("private"):
        names |= field_names(cc["private"])
    if cc.get("no-cache"):
        names |= field_names(cc["no-cache"])
    return names


def forbids_stale(facts: ResponseFacts) -> bool:
    """``must-revalidate``, ``proxy-revalidate`` and unqualified ``no-cache`` (§4.2.4)."""
    cc = facts.cc
    return (
        "must-revalidate" in cc
        or "proxy-revalidate" in cc
        or ("no-cache" in cc and not cc["no-cache"])
    )


def stale_windows(
    facts: ResponseFacts, *, default_swr: float, default_sie: float, cap: float
) -> tuple[float, float, bool]:
    """(stale-while-revalidate, stale-if-error, max-stale allowed) for a stored response.

    The response's own RFC 5861 directives win over the configured defaults; nothing
    stale is allowed under must-revalidate, proxy-revalidate or no-cache; with
    ``s-maxage`` (which implies proxy-revalidate for a shared cache) only the response's
    own explicit directives apply, as CDNs do for ``s-maxage=60, stale-while-revalidate=30``.
    """
    if forbids_stale(facts):
        return 0.0, 0.0, False
    cc = facts.cc
    shared_only = "s-maxage" in cc
    swr = _window(cc, "stale-while-revalidate", 0.0 if shared_only else default_swr)
    sie = _window(cc, "stale-if-error", 0.0 if shared_only else default_sie)
    return min(swr, cap), min(sie, cap), not shared_only


def _window(cc: Directives, name: str, default: float) -> float:
    if name in cc:
        value = delta_seconds(cc[name])
        return float(value) if value is not None else 0.0
    return default


def is_failure(status: int) -> bool:
    """A response that counts as the upstream failing, for stale-if-error (RFC 5861 §4)."""
    return status >= 500
