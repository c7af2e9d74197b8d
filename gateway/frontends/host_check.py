"""Whether a request's ``Host`` value is well-formed (RFC 9110 7.2, RFC 3986 3.2.2).

``Host = uri-host [ ":" port ]``: an IP literal in brackets, an IPv4 address or a
registered name (unreserved characters, percent-encodings and sub-delims), then an
optional port of digits. No userinfo, path, space or other delimiter may appear: RFC
9112 3.2 makes a server answer 400 to a Host it cannot use. An empty value is allowed
(a target URI without an authority, RFC 9110 7.2).

A pure function shared by the front-ends; the pattern is compiled once, at import.
"""

from __future__ import annotations

import re

__all__ = ["usable_host", "valid_host"]

_SUB_DELIMS = rb"!$&'()*+,;="
_UNRESERVED = rb"A-Za-z0-9\-._~"
_PCT = rb"%[0-9A-Fa-f]{2}"
# IP-literal: IPv6address or IPvFuture in brackets, checked for its alphabet only.
_IP_LITERAL = rb"\[[0-9A-Za-z:.\-_~" + _SUB_DELIMS + rb"]+\]"
_REG_NAME = rb"(?:" + _PCT + rb"|[" + _UNRESERVED + _SUB_DELIMS + rb"])*"
_HOST = re.compile(rb"(?:" + _IP_LITERAL + rb"|" + _REG_NAME + rb")(?::[0-9]*)?")


def valid_host(value: bytes) -> bool:
    """Whether ``value`` (a Host field value or an absolute-form authority) is usable."""
    return _HOST.fullmatch(value) is not None


#: Hosts already judged: a server sees few distinct ones, and a lookup is cheaper than
#: the pattern. Started over when full.
_JUDGED: dict[bytes, bool] = {}
JUDGED_KEPT = 256


def usable_host(value: bytes) -> bool:
    """:func:`valid_host`, remembered per value (the native front-end asks it per request)."""
    known = _JUDGED.get(value)
    if known is None:
        if len(_JUDGED) >= JUDGED_KEPT:
            _JUDGED.clear()
        known = _JUDGED[value] = valid_host(value)
    return known
