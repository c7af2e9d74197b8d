"""JWT verification for ``jwt:CLAIM`` keys: HS256 with a secret, RS256/ES256 from a JWKS file.

Built once per snapshot (the JWKS file is read then; a reload re-reads it). A request
without a bearer token has no claims (its key is ``anonymous``); a token that fails any
check is :class:`InvalidToken`, which the policy answers with 401. The verdict is kept
in ``exchange.scratch`` so several limiters with the same ``jwt`` settings verify once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256

from gateway.exchange import Exchange
from gateway.policies.rate_limit.config import JwtConfig
from gateway.policies.rate_limit.keys import InvalidToken

Claims = dict[str, Any]
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def _b64(data: bytes | str) -> bytes:
    raw = data.encode("ascii") if isinstance(data, str) else data
    return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))


def _b64_int(value: object) -> int:
    if not isinstance(value, str):
        raise ValueError("expected a base64url string")
    return int.from_bytes(_b64(value), "big")


def load_jwks(path: Path) -> list[tuple[str | None, str, PublicKey]]:
    """``(kid, alg, public key)`` for the RSA and P-256 EC signing keys of a JWKS file."""
    try:
        document = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"jwks_file {str(path)!r} cannot be read: {exc.strerror}") from exc
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"jwks_file {str(path)!r} is not JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError(f"jwks_file {str(path)!r}: expected an object with a `keys` list")
    keys: list[tuple[str | None, str, PublicKey]] = []
    for i, jwk in enumerate(document["keys"]):
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kty = jwk.get("kty")
        kid = jwk["kid"] if isinstance(jwk.get("kid"), str) else None
        try:
            if kty == "RSA" and jwk.get("alg", "RS256") == "RS256":
                numbers = rsa.RSAPublicNumbers(_b64_int(jwk.get("e")), _b64_int(jwk.get("n")))
                keys.append((kid, "RS256", numbers.public_key()))
            elif kty == "EC" and jwk.get("crv") == "P-256" and jwk.get("alg", "ES256") == "ES256":
                point = ec.EllipticCurvePublicNumbers(
                    _b64_int(jwk.get("x")), _b64_int(jwk.get("y")), ec.SECP256R1()
                )
                keys.append((kid, "ES256", point.public_key()))
        except (ValueError, binascii.Error) as exc:
            raise ValueError(f"jwks_file {str(path)!r}: key {i} is invalid: {exc}") from exc
    if not keys:
        raise ValueError(f"jwks_file {str(path)!r} has no RS256 or ES256 (P-256) signing key")
    return keys


class JwtVerifier:
    """Finds the bearer token of a request and verifies it (signature, exp, nbf, iss, aud)."""

    def __init__(
        self, config: JwtConfig, base_dir: Path, now: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self._header = config.header.lower().encode("latin-1")
        self._bearer_only = self._header == b"authorization"
        self._secret = config.secret.encode() if config.secret is not None else None
        keys: list[tuple[str | None, str, PublicKey]] = []
        if config.jwks_file is not None:
            path = Path(config.jwks_file)
            keys = load_jwks(path if path.is_absolute() else base_dir / path)
        self._by_kid = {kid: (alg, key) for kid, alg, key in keys if kid is not None}
        self._all = [(alg, key) for _, alg, key in keys]
        self._unnamed = [(alg, key) for kid, alg, key in keys if kid is None]
        self._algorithms = {alg for _, alg, _ in keys}
        if self._secret is not None:
            self._algorithms.add("HS256")
        self._now = now
        # Limiters with equal jwt settings share one verification per request.
        self._scratch = "jwt:" + config.model_dump_json()

    @property
    def algorithms(self) -> list[str]:
        return sorted(self._algorithms)

    def claims(self, exchange: Exchange) -> Claims | InvalidToken | None:
        """The verified claims, InvalidToken, or None when the request carries no token."""
        scratch = exchange.scratch
        if self._scratch in scratch:
            cached: Claims | InvalidToken | None = scratch[self._scratch]
            return cached
        result = self._claims(exchange)
        scratch[self._scratch] = result
        return result

    def _claims(self, exchange: Exchange) -> Claims | InvalidToken | None:
        value = exchange.header(self._header)
        if value is None:
            return None
        value = value.strip()
        if value[:7].lower() == b"bearer ":
            value = value[7:].strip()
        elif self._bearer_only:
            return None  # another scheme (Basic, ...) is not a JWT: anonymous
        if not value:
            return None
        return self.verify(value)

    def verify(self, token: bytes) -> Claims | InvalidToken:
        parts = token.split(b".")
        if len(parts) != 3:
            return InvalidToken("the token is not a JWS compact serialization")
        try:
            header = orjson.loads(_b64(parts[0]))
            payload = orjson.loads(_b64(parts[1]))
            signature = _b64(parts[2])
        except (ValueError, binascii.Error):
            return InvalidToken("the token is not valid base64url JSON")
        if not isinstance(header, dict) or not isinstance(payload, dict):
            return InvalidToken("the token header and payload must be JSON objects")
        alg = header.get("alg")
        if alg not in self._algorithms:
            return InvalidToken(f"algorithm {alg!r} is not accepted")
        signed = parts[0] + b"." + parts[1]
        if not self._signature_ok(alg, header.get("kid"), signed, signature):
            return InvalidToken("the signature does not verify")
        return self._check_claims(payload)

    def _signature_ok(self, alg: str, kid: object, signed: bytes, signature: bytes) -> bool:
        if alg == "HS256":
            assert self._secret is not None
            expected = hmac.new(self._secret, signed, hashlib.sha256).digest()
            return hmac.compare_digest(expected, signature)
        found = self._by_kid.get(kid) if isinstance(kid, str) else None
        if found is not None:
            candidates = [found]
        elif kid is None:
            candidates = self._all
        else:  # a key id the file does not name: only keys without an id may match
            candidates = self._unnamed
        for key_alg, key in candidates:
            if key_alg != alg:
                continue
            try:
                if isinstance(key, rsa.RSAPublicKey):
                    key.verify(signature, signed, padding.PKCS1v15(), SHA256())
                else:
                    if len(signature) != 64:
                        return False
                    der = encode_dss_signature(
                        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
                    )
                    key.verify(der, signed, ec.ECDSA(SHA256()))
            except InvalidSignature:
                continue
            return True
        return False

    def _check_claims(self, claims: Claims) -> Claims | InvalidToken:
        now, leeway = self._now(), self.config.leeway
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if exp is not None and (not _is_number(exp) or now > exp + leeway):
            return InvalidToken("the token has expired")
        if nbf is not None and (not _is_number(nbf) or now + leeway < nbf):
            return InvalidToken("the token is not valid yet")
        issuer = self.config.issuer
        if issuer is not None and claims.get("iss") != issuer:
            return InvalidToken("the token has another issuer")
        audience = self.config.audience
        if audience is not None:
            aud = claims.get("aud")
            if not (aud == audience or (isinstance(aud, list) and audience in aud)):
                return InvalidToken("the token is for another audience")
        return claims


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
