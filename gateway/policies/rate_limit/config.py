"""Config of ``rate_limit``: a list of limiters; a request must pass every one."""

from __future__ import annotations

import inspect
import re
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    RootModel,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from gateway.config.models import Model
from gateway.config.units import Duration, RateValue
from gateway.policies.base import PolicyConfig
from gateway.policies.rate_limit.keys import parse_key, uses_jwt

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class JwtConfig(Model):
    """How to verify the bearer token whose claims a `jwt:CLAIM` key reads."""

    secret: str | None = Field(
        None,
        description="HS256 shared secret (write `${ENV_VAR}` to keep it out of the file); "
        "at least 32 bytes are recommended.",
    )
    jwks_file: str | None = Field(
        None,
        description="JWKS file (JSON) with the RS256 (RSA) and ES256 (EC P-256) public keys "
        "to accept, relative to the policy file; read at load and at every reload.",
    )
    header: str = Field(
        "Authorization",
        description="Request header holding the token. `Authorization` takes only the "
        "`Bearer` scheme (another scheme counts as no token); in another header an "
        "optional `Bearer ` prefix is removed.",
    )
    issuer: str | None = Field(None, description="Required `iss` claim, if set.")
    audience: str | None = Field(
        None, description="Required `aud` claim (or member of the `aud` list), if set."
    )
    leeway: Duration = Field(
        30.0, description="Clock skew allowed when checking the `exp` and `nbf` claims."
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtConfig:
        if self.secret is None and self.jwks_file is None:
            raise ValueError("jwt needs `secret` (HS256) or `jwks_file` (RS256/ES256), or both")
        if self.secret is not None and not self.secret:
            raise ValueError("jwt.secret is empty")
        return self


class RateLimitRule(PolicyConfig):
    """One limiter: a key, an algorithm and a rate, counted in a store."""

    name: str = Field(
        "default",
        description="Limiter name, unique on the route: shown as `rate_limit:NAME` in "
        "metrics, logs and explain, and as the policy name in the RateLimit header fields. "
        "Letters, digits, `_`, `.` and `-`.",
    )
    key: str = Field(
        "ip",
        description="What to count by: `ip` (client address after trusted_proxies), "
        "`route`, `header:NAME`, `jwt:CLAIM`, or a template of them such as "
        "`{ip}:{header:X-Tenant}`. A request without a value counts in the `anonymous` "
        "bucket.",
    )
    algorithm: Literal["token_bucket", "sliding_window", "fixed_window"] = Field(
        "token_bucket",
        description="`token_bucket` (GCRA: `rate` refills a bucket of `burst`), "
        "`sliding_window` (counter approximation over the last period) or `fixed_window` "
        "(a counter per period, starting at the key's first request).",
    )
    rate: RateValue = Field(
        description="Allowed requests per period: `100/s`, `5000/h`, `10/30s`. Window "
        "algorithms need a whole number of requests."
    )
    burst: int | None = Field(
        None,
        ge=1,
        description="token_bucket only: bucket size, the most requests admitted at once "
        "(default: the count of `rate`, at least 1).",
    )
    store: str = Field(
        "memory",
        description="Name of the store that holds the counters: `memory` (this process "
        "only) or a Redis store from `stores` (shared by every replica: exact global limits).",
    )
    on_store_error: Literal["allow", "deny", "local_share"] = Field(
        "local_share",
        description="When the store fails or times out: `allow` the request, `deny` it "
        "(429), or `local_share`: limit in this process's memory at `rate ÷ replicas` until "
        "the store answers again.",
    )
    replicas: int | None = Field(
        None,
        ge=1,
        description="Number of gateway replicas sharing this limit, for `local_share` "
        "(default: the GATEWAY_REPLICAS environment variable, else 1).",
    )
    store_backoff: Duration = Field(
        1.0,
        description="After a store failure, skip the store for this long and apply "
        "`on_store_error` at once (no request waits for a store known to be down); 0 tries "
        "the store on every request.",
    )
    headers: Literal["all", "rejected", "none"] = Field(
        "all",
        description="RateLimit-Policy and RateLimit response fields: on `all` responses, "
        "only on `rejected` (429) ones, or `none` (429 still carries Retry-After).",
    )
    jwt: JwtConfig | None = Field(
        None, description="Token verification, required when `key` uses `jwt:CLAIM`."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r}: a limiter name is 1-64 letters, digits, _ . or -")
        return value

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        parse_key(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RateLimitRule:
        if self.burst is not None and self.algorithm != "token_bucket":
            raise ValueError(
                f"`burst` applies to algorithm: token_bucket only, not {self.algorithm}"
            )
        if self.algorithm != "token_bucket" and not float(self.rate.limit).is_integer():
            raise ValueError(
                f"{self.algorithm} counts whole requests: write the rate as a whole number "
                f"per period (e.g. 5/2s instead of 2.5/s), not {self.rate}"
            )
        jwt_key = uses_jwt(self.key)
        if jwt_key and self.jwt is None:
            raise ValueError(f"key {self.key!r} reads a JWT claim: add `jwt` (secret or jwks_file)")
        if self.jwt is not None and not jwt_key:
            raise ValueError(f"`jwt` is set but key {self.key!r} reads no jwt:CLAIM")
        return self


class RateLimitConfig(RootModel[list[RateLimitRule]]):
    """`rate_limit`: a list of limiters (a single mapping is a list of one); a request
    must pass every limiter, in order."""

    model_config = ConfigDict(frozen=True)
    root: list[RateLimitRule] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _unique_names(self) -> RateLimitConfig:
        seen: set[str] = set()
        for rule in self.root:
            if rule.name in seen:
                raise ValueError(
                    f"two limiters are named {rule.name!r}; give each entry its own `name`"
                )
            seen.add(rule.name)
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        items = handler.resolve_ref_schema(schema).get("items", {})
        return {
            "description": inspect.cleandoc(cls.__doc__ or ""),
            "anyOf": [schema, items],
        }
