"""What a limiter counts by: key parsing, resolution, anonymous, and JWT verification."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.exchange import Exchange
from gateway.policies.rate_limit.config import JwtConfig
from gateway.policies.rate_limit.jwt import JwtVerifier
from gateway.policies.rate_limit.keys import (
    ANONYMOUS,
    InvalidToken,
    KeyResolver,
    parse_key,
    uses_jwt,
)
from tests.jwt_tokens import Keys, hs256

SECRET = "a-test-secret-that-is-32-bytes-long!"


def exchange(headers: dict[str, str] | None = None, ip: str = "192.0.2.7") -> Exchange:
    raw = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    return Exchange("GET", b"/x", raw, ip)


def test_parse_sources_and_templates() -> None:
    assert parse_key("ip") == [("ip", "")]
    assert parse_key("route") == [("route", "")]
    assert parse_key("header:X-API-Key") == [("header", "x-api-key")]
    assert parse_key("jwt:org.id") == [("jwt", "org.id")]
    assert parse_key("{ip}:{header:X-Tenant}") == [("ip", ""), ":", ("header", "x-tenant")]
    assert uses_jwt("t-{jwt:sub}") and not uses_jwt("{ip}")


@pytest.mark.parametrize(
    "bad", ["cookie:x", "header:", "header:bad name", "jwt:", "{ip", "ip}", "{nope}", "plain",
            "{ip}{", "static-only"],
)  # fmt: skip
def test_malformed_keys_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_key(bad)


def test_ip_route_and_template_values() -> None:
    assert KeyResolver("ip", "users", None)(exchange()) == "192.0.2.7"
    assert KeyResolver("route", "users", None)(exchange()) == "users"
    template = KeyResolver("{route}/{ip}", "users", None)
    assert template(exchange()) == "users/192.0.2.7"


def test_header_values_are_stored_hashed_and_missing_ones_are_anonymous() -> None:
    resolve = KeyResolver("header:X-API-Key", "r", None)
    first = resolve(exchange({"X-API-Key": "secret-key-1"}))
    assert isinstance(first, str) and first.startswith("h:") and "secret" not in first
    assert resolve(exchange({"x-api-key": "secret-key-1"})) == first  # names: any case
    assert resolve(exchange({"X-API-Key": "secret-key-2"})) != first
    assert resolve(exchange()) == ANONYMOUS
    assert resolve(exchange({"X-API-Key": ""})) == ANONYMOUS


def test_a_template_with_a_missing_part_names_it_anonymous() -> None:
    resolve = KeyResolver("{ip}:{header:X-Tenant}", "r", None)
    assert resolve(exchange()) == "192.0.2.7:anonymous"
    tenant = resolve(exchange({"X-Tenant": "acme"}))
    assert isinstance(tenant, str) and tenant.startswith("192.0.2.7:h:")


def test_long_values_are_bounded() -> None:
    resolve = KeyResolver("{route}:{ip}", "r" * 100, None)
    value = resolve(exchange())
    assert isinstance(value, str) and len(value) < 40


@pytest.mark.parametrize(
    "spec", ["ip", "route", "header:X-Tenant", "{ip}:{header:X-Tenant}", "{route}/{ip}"]
)
def test_a_key_that_reads_no_token_is_one_plain_function(spec: str) -> None:
    resolve = KeyResolver(spec, "users", None)
    assert resolve.plain is not None
    for request in (exchange(), exchange({"X-Tenant": "acme"}), exchange(ip="")):
        assert resolve.plain(request) == resolve(request)
    assert KeyResolver("ip", "users", None).plain(exchange(ip="")) == ANONYMOUS


def test_a_key_that_reads_a_token_has_no_plain_function(tmp_path: Path) -> None:
    check = verifier(tmp_path, secret=SECRET)
    assert KeyResolver("jwt:sub", "r", check).plain is None
    assert KeyResolver("{ip}:{jwt:sub}", "r", check).plain is None


def verifier(tmp_path: Path, **options: object) -> JwtVerifier:
    return JwtVerifier(JwtConfig.model_validate(options), tmp_path)


def bearer(token: str) -> Exchange:
    return exchange({"Authorization": f"Bearer {token}"})


def test_hs256_claims_become_the_key(tmp_path: Path) -> None:
    resolve = KeyResolver("jwt:sub", "r", verifier(tmp_path, secret=SECRET))
    assert resolve(bearer(hs256(SECRET, {"sub": "alice"}))) == "alice"
    assert resolve(bearer(hs256(SECRET, {"sub": 42}))) == "42"
    assert resolve(bearer(hs256(SECRET, {"name": "no sub"}))) == ANONYMOUS
    assert resolve(exchange()) == ANONYMOUS  # no token
    assert resolve(exchange({"Authorization": "Basic YTpi"})) == ANONYMOUS  # not a bearer


def test_nested_claims(tmp_path: Path) -> None:
    resolve = KeyResolver("jwt:org.id", "r", verifier(tmp_path, secret=SECRET))
    assert resolve(bearer(hs256(SECRET, {"org": {"id": "o-1"}}))) == "o-1"
    assert resolve(bearer(hs256(SECRET, {"org": "flat"}))) == ANONYMOUS


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (hs256("another-secret-another-secret-xx", {"sub": "a"}), "signature"),
        ("not-a-jwt", "compact"),
        ("a.b.c", "base64url"),
        (hs256(SECRET, {"sub": "a", "exp": time.time() - 3600}), "expired"),
        (hs256(SECRET, {"sub": "a", "nbf": time.time() + 3600}), "not valid yet"),
    ],
)
def test_invalid_tokens_are_not_keys(tmp_path: Path, token: str, reason: str) -> None:
    resolve = KeyResolver("jwt:sub", "r", verifier(tmp_path, secret=SECRET))
    result = resolve(bearer(token))
    assert isinstance(result, InvalidToken) and reason in result.reason


def test_alg_none_and_unconfigured_algorithms_are_refused(tmp_path: Path) -> None:
    check = verifier(tmp_path, secret=SECRET)
    unsigned = hs256(SECRET, {"sub": "a"}).rsplit(".", 2)
    header = "eyJhbGciOiJub25lIn0"  # {"alg":"none"}
    result = check.verify(f"{header}.{unsigned[1]}.".encode())
    assert isinstance(result, InvalidToken) and "not accepted" in result.reason
    rs = Keys().rs256({"sub": "a"})
    result = check.verify(rs.encode())
    assert isinstance(result, InvalidToken) and "RS256" in result.reason


def test_issuer_audience_and_leeway(tmp_path: Path) -> None:
    check = verifier(tmp_path, secret=SECRET, issuer="https://idp", audience="api", leeway=60)
    good = {"sub": "a", "iss": "https://idp", "aud": ["web", "api"], "exp": time.time() - 30}
    assert isinstance(check.verify(hs256(SECRET, good).encode()), dict)
    for bad in ({**good, "iss": "https://other"}, {**good, "aud": "web"}):
        assert isinstance(check.verify(hs256(SECRET, bad).encode()), InvalidToken)


def test_rs256_and_es256_from_a_jwks_file(tmp_path: Path) -> None:
    keys = Keys()
    keys.write_jwks(tmp_path / "jwks.json")
    check = verifier(tmp_path, jwks_file="jwks.json")  # relative to the policy file
    assert check.algorithms == ["ES256", "RS256"]
    resolve = KeyResolver("jwt:sub", "r", check)
    assert resolve(bearer(keys.rs256({"sub": "rsa-user"}))) == "rsa-user"
    assert resolve(bearer(keys.es256({"sub": "ec-user"}))) == "ec-user"
    assert resolve(bearer(keys.rs256({"sub": "no-kid"}, kid=None))) == "no-kid"
    other = Keys()
    for token in (other.rs256({"sub": "x"}), other.es256({"sub": "x"}),
                  keys.rs256({"sub": "x"}, kid="unknown-kid")):  # fmt: skip
        assert isinstance(resolve(bearer(token)), InvalidToken)


def test_a_custom_header_may_carry_the_bare_token(tmp_path: Path) -> None:
    check = verifier(tmp_path, secret=SECRET, header="X-Token")
    resolve = KeyResolver("jwt:sub", "r", check)
    assert resolve(exchange({"X-Token": hs256(SECRET, {"sub": "bare"})})) == "bare"
    assert resolve(exchange({"X-Token": "Bearer " + hs256(SECRET, {"sub": "b"})})) == "b"


def test_one_verification_per_request_for_equal_settings(tmp_path: Path) -> None:
    first = verifier(tmp_path, secret=SECRET)
    second = verifier(tmp_path, secret=SECRET)
    ex = bearer(hs256(SECRET, {"sub": "a"}))
    claims = first.claims(ex)
    assert isinstance(claims, dict)
    assert second.claims(ex) is claims  # from exchange.scratch, not verified again


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot be read"), ("{", "not JSON"), ('{"keys": 1}', "`keys` list"),
     ('{"keys": [{"kty": "oct", "k": "x"}]}', "no RS256"),
     ('{"keys": [{"kty": "RSA", "n": 5, "e": "AQAB"}]}', "key 0 is invalid")],
)  # fmt: skip
def test_bad_jwks_files_fail_at_build(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "jwks.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        verifier(tmp_path, jwks_file="jwks.json")
