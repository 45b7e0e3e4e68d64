"""Fuzz target: JWK Set documents (``gateway.verify.jwks.parse_jwks``) as an issuer serves them.

The loader (``JwksCache._load``) treats ``FetchError``, ``ValueError`` and ``UnicodeError`` as
"this key set is unusable" (keep the last good one, 503 without); anything else would escape
into the request that triggered the refresh as a 500.
"""

from __future__ import annotations

import json

from ._harness import instrumented, run
from .keys import ec_jwk, ed_jwk

with instrumented():
    from gateway.errors import GatewayError
    from gateway.verify.fetch import FetchError
    from gateway.verify.jose import loads_strict
    from gateway.verify.jwks import parse_jwks

ALLOWED = (GatewayError, FetchError, ValueError, UnicodeError)


def one(data: bytes) -> None:
    doc = loads_strict(data)
    keys = parse_jwks(doc, source="fuzz")
    for key in keys.keys:
        keys.candidates(key.kid, key.alg or "ES256")
        assert key.fingerprint


def seeds() -> list[bytes]:
    return [json.dumps(d).encode() for d in (
        {"keys": [{**ed_jwk(), "kid": "ed"}, {**ec_jwk(), "kid": "ec", "alg": "ES256", "use": "sig"}]},
        {"keys": [{**ec_jwk(), "key_ops": ["verify"]}, {"kty": "oct", "k": "AA"},
                  {"kty": "RSA", "n": "AQAB", "e": "AQAB"}]},
        {"keys": [{**ec_jwk(), "d": "AA"}, {**ed_jwk(), "use": "enc"}, 7, None]},
        {"keys": []},
    )]


if __name__ == "__main__":
    run("jwks", one, ALLOWED, seeds, max_len=4096)
