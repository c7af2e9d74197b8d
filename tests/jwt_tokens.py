"""Test helpers: sign JWTs (HS256, RS256, ES256) and write the matching JWKS file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(value: int) -> str:
    return b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def _signing_input(alg: str, claims: dict[str, Any], kid: str | None) -> bytes:
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}".encode()


def hs256(secret: str, claims: dict[str, Any]) -> str:
    signed = _signing_input("HS256", claims, None)
    signature = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return f"{signed.decode()}.{b64(signature)}"


class Keys:
    """An RSA and a P-256 key pair with key ids, and their JWKS document."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())

    def rs256(self, claims: dict[str, Any], kid: str | None = "rsa-1") -> str:
        signed = _signing_input("RS256", claims, kid)
        signature = self.rsa.sign(signed, padding.PKCS1v15(), SHA256())
        return f"{signed.decode()}.{b64(signature)}"

    def es256(self, claims: dict[str, Any], kid: str | None = "ec-1") -> str:
        signed = _signing_input("ES256", claims, kid)
        r, s = decode_dss_signature(self.ec.sign(signed, ec.ECDSA(SHA256())))
        return f"{signed.decode()}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def jwks(self) -> dict[str, Any]:
        rsa_numbers = self.rsa.public_key().public_numbers()
        ec_numbers = self.ec.public_key().public_numbers()
        return {
            "keys": [
                {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256",
                 "n": _int(rsa_numbers.n), "e": _int(rsa_numbers.e)},
                {"kty": "EC", "kid": "ec-1", "crv": "P-256",
                 "x": b64(ec_numbers.x.to_bytes(32, "big")),
                 "y": b64(ec_numbers.y.to_bytes(32, "big"))},
            ]
        }  # fmt: skip

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks()))
        return path
