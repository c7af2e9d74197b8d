"""Cache keys: the primary key (method class, optional host, path and normalised query)
and the request header values that select one stored variant under it.

Configured key headers act like a ``Vary`` the upstream always sends, so every variant
of a URL lives under one primary key: purging or invalidating a URL is one delete.
"""

from __future__ import annotations

import re

from gateway.exchange import Exchange
from gateway.policies.cache.config import CacheKey
from gateway.policies.cache.fields import normalize_field
from gateway.types import Headers

#: ``?`` as an int: ``int in bytes`` is a memchr, ``bytes in bytes`` costs ten times more.
_QMARK = ord("?")


def glob_regex(patterns: list[str]) -> re.Pattern[str] | None:
    """One anchored regex for ``*`` globs (any run of characters); None when empty."""
    if not patterns:
        return None
    parts = ["".join(".*" if c == "*" else re.escape(c) for c in p) for p in patterns]
    return re.compile("(?:" + "|".join(parts) + r")\Z", re.DOTALL)


def _param_name(param: str) -> str:
    return param.partition("=")[0]


class KeyBuilder:
    """Compiled once from ``key:``; every method is a pure function of the request."""

    def __init__(self, config: CacheKey) -> None:
        self.mode = config.query
        self.use_host = config.host
        spelled = {h.lower().encode("latin-1"): h.encode("latin-1") for h in config.headers}
        self.headers: tuple[bytes, ...] = tuple(spelled)
        #: The key headers as ``Vary`` names them, spelled as configured.
        self._vary = spelled
        self._ignore = glob_regex(config.ignore_query)

    def url(self, raw_target: bytes) -> str:
        """``path?query`` as the key sees it: the raw path, the query normalised."""
        qpos = raw_target.find(b"?")
        if qpos < 0:
            return raw_target.decode("latin-1")
        path = raw_target[:qpos].decode("latin-1")
        query = raw_target[qpos + 1 :].decode("latin-1")
        if self.mode == "ignore":
            return path
        if self.mode == "as_is" and self._ignore is None:
            return f"{path}?{query}" if query else path
        params = [p for p in query.split("&") if p]
        ignore = self._ignore
        if ignore is not None:
            params = [p for p in params if not ignore.match(p.partition("=")[0])]
        if self.mode == "sorted":
            # By name only, and stable: the values of a repeated name keep their order
            # (``?id=1&id=2`` is a list an origin may read in order, not a set).
            params.sort(key=_param_name)
        return f"{path}?{'&'.join(params)}" if params else path

    def primary(self, url: str, host: str) -> str:
        """The key under which all variants of ``url`` are stored."""
        return f"{host}{url}" if self.use_host else url

    def key_of(self, exchange: Exchange) -> str:
        """The primary key of a request (the first of :meth:`of`), without the rest."""
        raw = exchange.raw_target
        url = raw.decode("latin-1") if _QMARK not in raw else self.url(raw)
        if not self.use_host:
            return url
        host = exchange.host
        return (host.decode("latin-1").lower() if host else "") + url

    def of(self, exchange: Exchange) -> tuple[str, str, str]:
        """(primary key, url, host) of a request."""
        url = self.url(exchange.raw_target)
        host = exchange.host.decode("latin-1").lower() if exchange.host else ""
        return (f"{host}{url}" if self.use_host else url), url, host

    def selection(self, vary: tuple[bytes, ...]) -> tuple[bytes, ...]:
        """The request fields that select a variant: configured key headers plus Vary."""
        if not vary:
            return self.headers
        return tuple(dict.fromkeys((*self.headers, *vary)))

    def with_vary(self, headers: Headers) -> Headers:
        """``headers`` with every key header named in ``Vary``, so that a cache downstream
        keeps the variants apart too: the missing names are appended to the ``Vary``
        the response has (one line), or make one. The same list when nothing is missing.
        """
        if not self.headers:
            return headers
        listed: list[bytes] = []
        for key, value in headers:
            if key.lower() == b"vary":
                listed.extend(p for p in (v.strip() for v in value.split(b",")) if p)
        have = {name.lower() for name in listed}
        missing = [spelled for name, spelled in self._vary.items() if name not in have]
        if not missing or b"*" in have:
            return headers
        out = [(k, v) for k, v in headers if k.lower() != b"vary"]
        out.append((b"vary", b", ".join([*listed, *missing])))
        return out


def selected_values(headers: Headers, names: tuple[bytes, ...]) -> tuple[bytes | None, ...]:
    """The normalised values of ``names`` in a request (None where absent)."""
    return tuple(normalize_field(headers, name) for name in names)
