"""The ``RateLimit-Policy`` and ``RateLimit`` fields of a limiter, prepared at build,
and its 429.

draft-ietf-httpapi-ratelimit-headers: both are structured-field Lists of String items
with parameters, one item per limiter::

    RateLimit-Policy: "per-ip";q=100;w=1
    RateLimit: "per-ip";r=42;t=1

``RateLimit-Policy`` is constant; a token bucket's ``RateLimit`` is formatted once per
state (a bounded memo), a window's each time.
"""

from __future__ import annotations

from gateway.edge import problem_response
from gateway.exchange import Exchange, Response
from gateway.policies.rate_limit.algorithms import Algorithm, Verdict
from gateway.types import Header, Headers

RETRY_AFTER = b"retry-after"
RATELIMIT_POLICY = b"ratelimit-policy"
RATELIMIT = b"ratelimit"
#: Formatted ``RateLimit`` fields kept per limiter, by (remaining, seconds to reset).
LIMIT_FIELDS_KEPT = 1024


class LimitFields(dict[tuple[int, int], tuple[Header, Header]]):
    """``RateLimit-Policy`` and ``RateLimit`` by (remaining, seconds to reset), formatted
    on first use.

    A bounded memo of a pure function (at most ``LIMIT_FIELDS_KEPT``, started over when
    full): the only thing a request may add to the policy.
    """

    __slots__ = ("policy_field", "prefix")

    def __init__(self, policy_field: Header, prefix: bytes) -> None:
        super().__init__()
        self.policy_field = policy_field
        self.prefix = prefix

    def __missing__(self, state: tuple[int, int]) -> tuple[Header, Header]:
        fields = (self.policy_field, (RATELIMIT, b"%s%d;t=%d" % (self.prefix, *state)))
        if len(self) >= LIMIT_FIELDS_KEPT:
            self.clear()
        self[state] = fields
        return fields


class Fields:
    """One algorithm's ``RateLimit-Policy`` item, and its ``RateLimit`` items."""

    __slots__ = ("detail", "memo", "policy", "prefix")

    def __init__(self, item: bytes, algorithm: Algorithm, detail: str) -> None:
        #: What a refusal's problem detail says was exceeded.
        self.detail = detail
        self.policy: Header = (
            RATELIMIT_POLICY,
            b"%s;q=%d;w=%d" % (item, algorithm.quota, algorithm.window),
        )
        self.prefix = item + b";r="
        # A token bucket under its limit answers in the same state request after request
        # (a full bucket), so its RateLimit field is formatted once per state; a window
        # counts down, so its field is formatted each time.
        self.memo = (
            LimitFields(self.policy, self.prefix) if algorithm.name == "token_bucket" else None
        )

    def admitted(self, verdict: Verdict) -> tuple[Header, Header]:
        """The fields of an admitted request."""
        remaining, reset = verdict[1], -(-verdict[2] // 1000)  # reset: ms, rounded up
        memo = self.memo
        if memo is not None:
            return memo[remaining, reset]
        return self.policy, (RATELIMIT, b"%s%d;t=%d" % (self.prefix, remaining, reset))

    def rejected(self, retry: int) -> tuple[Header, Header]:
        """The fields of a request refused for ``retry`` seconds."""
        return self.policy, (RATELIMIT, b"%s0;t=%d" % (self.prefix, retry))

    def too_many(
        self, exchange: Exchange, retry_ms: int, with_fields: bool, extra: dict[str, object]
    ) -> Response:
        """The 429: problem+json with ``Retry-After`` in whole seconds (at least 1) and,
        ``with_fields``, these fields; ``extra``: more members of the problem."""
        retry = max(1, -(-int(retry_ms) // 1000))
        headers: Headers = [(RETRY_AFTER, str(retry).encode())]
        if with_fields:
            headers.extend(self.rejected(retry))
        return problem_response(
            exchange, 429, "quota-exceeded", "Too Many Requests",
            f"{self.detail} exceeded; retry in {retry}s", headers, **extra,
        )  # fmt: skip


def sf_string(text: str) -> bytes:
    """``text`` as a structured-field String (RFC 8941 3.3.3)."""
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode("ascii") + b'"'
