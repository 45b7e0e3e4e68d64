"""Fuzz target: the DPoP proof's ``jwk`` header (``gateway.bind.jwk``): JSON -> public key + thumbprint."""

from __future__ import annotations

import json

from ._harness import instrumented, run
from .keys import ec_jwk, ed_jwk

with instrumented():
    from gateway.bind.jwk import JwkError, jwk_thumbprint, parse_public_jwk
    from gateway.errors import GatewayError
    from gateway.strictjson import STRICT_JSON


def one(data: bytes) -> None:
    try:
        jwk = STRICT_JSON.decode(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return  # the DPoP verifier refuses these before the jwk (covered by the dpop target)
    if not isinstance(jwk, dict):
        return
    try:
        parsed = parse_public_jwk(jwk)
    except JwkError:
        return
    # A parsed key has the thumbprint RFC 7638 gives its required members.
    assert parsed.thumbprint == jwk_thumbprint(jwk)
    assert parsed.compact().thumbprint == parsed.thumbprint


_N = (
    "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstI"
    "s-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkA"
    "FmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPw"
    "VZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw"
)


def seeds() -> list[bytes]:
    rsa = {"kty": "RSA", "e": "AQAB", "n": _N}
    return [json.dumps(j).encode() for j in (
        ed_jwk(), ec_jwk(), rsa, {**ec_jwk(), "kid": "k", "alg": "ES256"}, {**ec_jwk(), "d": "AA"},
        {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}, {"kty": "oct", "k": "AA"},
    )]


if __name__ == "__main__":
    run("jwk", one, (GatewayError,), seeds, max_len=2048)
