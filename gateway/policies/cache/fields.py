"""Header field syntax the cache reads and writes (RFC 9110, RFC 9111 §1.2 and §5.2):
``Cache-Control`` directives, delta-seconds, HTTP dates, combined field lines, and the
validators (entity-tags, dates) that conditional requests compare.

Pure functions of raw field bytes; nothing here knows about freshness or storage.
"""

from __future__ import annotations

import calendar
import email.utils
from collections.abc import Mapping

from gateway.exchange import find_all
from gateway.types import Headers

#: RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2^31.
DELTA_MAX = 2147483648
#: ``,`` as an int: ``int in bytes`` is a memchr, ``bytes in bytes`` is ten times slower.
_COMMA = ord(",")

Directives = Mapping[str, str | None]
_EMPTY: dict[str, str | None] = {}
_MONTHS = {
    b"jan": 1, b"feb": 2, b"mar": 3, b"apr": 4, b"may": 5, b"jun": 6,
    b"jul": 7, b"aug": 8, b"sep": 9, b"oct": 10, b"nov": 11, b"dec": 12,
}  # fmt: skip


def parse_directives(values: list[bytes]) -> tuple[dict[str, str | None], frozenset[str]]:
    """``Cache-Control`` field lines -> (directives by lower-case name, names seen twice).

    Arguments may be tokens or quoted strings (commas inside quotes are kept); the first
    occurrence of a directive wins and repeated names are reported for the caller.
    """
    if not values:
        return _EMPTY, frozenset()
    text = b",".join(values).decode("latin-1")
    return _plain_directives(text) or _directives(text)


def _plain_directives(text: str) -> tuple[dict[str, str | None], frozenset[str]] | None:
    """:func:`parse_directives` for the usual shape (``public, max-age=60``): no quoted
    strings and no blanks inside a member; None for anything else."""
    if '"' in text:
        return None
    out: dict[str, str | None] = {}
    repeated: set[str] = set()
    for member in text.split(","):
        member = member.strip(" \t")
        if not member:
            continue
        if " " in member or "\t" in member:
            return None
        name, eq, arg = member.partition("=")
        if not name:
            continue
        name = name.lower()
        if name in out:
            repeated.add(name)
        else:
            out[name] = arg if eq else None
    return out, frozenset(repeated)


def _directives(text: str) -> tuple[dict[str, str | None], frozenset[str]]:
    """:func:`parse_directives` character by character: quoted strings, blanks anywhere."""
    out: dict[str, str | None] = {}
    repeated: set[str] = set()
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        start = i
        while i < n and text[i] not in "=, \t":
            i += 1
        name = text[start:i].lower()
        while i < n and text[i] in " \t":
            i += 1
        arg: str | None = None
        if i < n and text[i] == "=":
            i += 1
            while i < n and text[i] in " \t":
                i += 1
            if i < n and text[i] == '"':
                i += 1
                chars: list[str] = []
                while i < n and text[i] != '"':
                    if text[i] == "\\" and i + 1 < n:
                        i += 1
                    chars.append(text[i])
                    i += 1
                i += 1
                arg = "".join(chars)
            else:
                start = i
                while i < n and text[i] not in ", \t":
                    i += 1
                arg = text[start:i]
        while i < n and text[i] != ",":
            i += 1
        if not name:
            continue
        if name in out:
            repeated.add(name)
        else:
            out[name] = arg
    return out, frozenset(repeated)


def delta_seconds(arg: str | None) -> int | None:
    """A delta-seconds argument; None when missing or not a non-negative integer."""
    if arg is None or not arg.isascii() or not arg.isdigit():
        return None
    value = int(arg)
    return DELTA_MAX if value > DELTA_MAX else value


def field_names(arg: str | None) -> frozenset[bytes]:
    """The lower-case field names of a qualified ``private="..."`` / ``no-cache="..."``."""
    if not arg:
        return frozenset()
    return frozenset(n.strip().lower().encode("latin-1") for n in arg.split(",") if n.strip())


def parse_http_date(value: bytes | None) -> float | None:
    """IMF-fixdate, RFC 850 or asctime (RFC 9110 §5.6.7) -> epoch seconds; None if invalid."""
    if value is None:
        return None
    text = value.strip()
    if len(text) == 29 and text[3:5] == b", " and text[25:] == b" GMT":
        try:
            month = _MONTHS[text[8:11].lower()]
            parts = (int(text[12:16]), month, int(text[5:7]))
            clock = (int(text[17:19]), int(text[20:22]), int(text[23:25]))
            if text[19:20] == b":" == text[22:23]:
                return float(calendar.timegm((*parts, *clock, 0, 0, 0)))
        except (KeyError, ValueError):
            return None
        return None
    if not text or text[:1].isdigit():
        return None
    try:
        parsed = email.utils.parsedate_tz(text.decode("latin-1"))
    except (ValueError, IndexError):
        return None
    if parsed is None or (parsed[9] or 0) != 0:
        return None
    year = parsed[0]
    if b"-" in text and year < 100:  # RFC 850 two-digit year: never more than 50y ahead
        year += 1900 if year >= 70 else 2000
    try:
        return float(calendar.timegm((year, *parsed[1:6], 0, 0, 0)))
    except (ValueError, OverflowError):
        return None


def format_http_date(when: float) -> bytes:
    return email.utils.formatdate(when, usegmt=True).encode("latin-1")


def normalize_field(headers: Headers, name: bytes) -> bytes | None:
    """A request field's lines combined for comparison (RFC 9111 §4.1); None when absent."""
    values = find_all(headers, name)
    if not values:
        return None
    if len(values) == 1 and _COMMA not in values[0]:
        return values[0].strip()
    return b",".join(p.strip() for v in values for p in v.split(b","))


def etag_matches(if_none_match: bytes, etag: bytes | None) -> bool:
    """Weak comparison of an If-None-Match list against a stored ETag (RFC 9110 §13.1.2)."""
    value = if_none_match.strip()
    if value == b"*":
        return etag is not None
    if etag is None:
        return False
    if value == etag:  # the client's one tag, as it got it from us
        return True
    mine = etag[2:] if etag.startswith(b"W/") else etag
    return any((tag[2:] if tag.startswith(b"W/") else tag) == mine for tag in _etags(value))


def _etags(value: bytes) -> list[bytes]:
    tags: list[bytes] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i : i + 1] in (b" ", b"\t", b","):
            i += 1
        start = i
        if value[i : i + 2] == b"W/":
            i += 2
        if value[i : i + 1] == b'"':
            end = value.find(b'"', i + 1)
            if end < 0:
                break
            i = end + 1
            tags.append(value[start:i])
        else:
            while i < n and value[i : i + 1] != b",":
                i += 1
            if value[start:i].strip():
                tags.append(value[start:i].strip())
    return tags


def not_modified_since(if_modified_since: bytes, reference: float | None) -> bool:
    """True when the stored representation is no newer than the If-Modified-Since date."""
    when = parse_http_date(if_modified_since)
    return when is not None and reference is not None and reference <= when
