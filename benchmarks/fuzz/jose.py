"""Fuzz target: JWT access tokens (``gateway.verify.jose``, ``jwt``, ``claims``, ``strictjson``).

Input byte 0 picks the mode. Even: the rest is the token as sent (compact JWS, any bytes:
trailing garbage, duplicate members, huge numbers, deep nesting). Odd: the rest is ``header JSON
NUL payload JSON``, signed here with the issuer's fixed Ed25519 key, so the fuzzer reaches the
header, key selection and every claim check behind a valid signature.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from ._harness import instrumented, run, split
from .keys import NOW, b64, b64json, ec_jwk, ed_jwk, sign_ed, sign_es256

with instrumented():
    from gateway.config.issuers import IssuerConfig
    from gateway.errors import GatewayError
    from gateway.verify.fetch import IssuerHttp
    from gateway.verify.jose import looks_like_jws, parse_compact
    from gateway.verify.jwks import JwksCache
    from gateway.verify.jwt import JwtVerifier

ISSUER = "https://as.bank.example"
_JWKS = Path(tempfile.mkdtemp(prefix="fuzz-jose-")) / "jwks.json"
_JWKS.write_text(json.dumps({"keys": [{**ed_jwk(), "kid": "ed"}, {**ec_jwk(), "kid": "ec", "alg": "ES256"}]}))
CFG = IssuerConfig.model_validate(
    {"name": "as", "issuer": ISSUER, "jwks_file": str(_JWKS), "algorithms": ["EdDSA", "ES256", "PS256"]}
)
LOOP = asyncio.new_event_loop()
KEYS = JwksCache(CFG, IssuerHttp(CFG), None, clock=lambda: NOW)
LOOP.run_until_complete(KEYS.refresh())
assert KEYS.ready, "the fuzz issuer's key set did not load"
VERIFIER = JwtVerifier(CFG, KEYS, clock=lambda: NOW)


def one(data: bytes) -> None:
    if not data:
        return
    if data[0] % 2 == 0:
        token = data[1:].decode("utf-8", "surrogateescape")
    else:
        header, payload = split(data[1:], 2)
        token = sign_ed(b64(header), b64(payload))
    if not looks_like_jws(token):
        return
    jws = parse_compact(token)
    verified = LOOP.run_until_complete(VERIFIER.verify(jws))
    # Accepted only from our issuer, unexpired (RFC 9068 §4).
    assert verified.issuer == ISSUER and verified.expires_at > NOW - CFG.leeway_s


def _claims(**over: object) -> dict[str, object]:
    c: dict[str, object] = {
        "iss": ISSUER, "sub": "cust-1", "aud": "https://api.bank.example", "client_id": "tpp-1",
        "exp": NOW + 300, "iat": NOW, "jti": "at-1", "scope": "accounts payments",
    }
    c.update(over)
    return c


def _raw(header: dict[str, object], claims: dict[str, object]) -> bytes:
    compact = (",", ":")
    return json.dumps(header, separators=compact).encode() + b"\x00" + json.dumps(claims, separators=compact).encode()


def seeds() -> list[bytes]:
    ed = {"typ": "at+jwt", "alg": "EdDSA", "kid": "ed"}
    es = {"typ": "at+jwt", "alg": "ES256", "kid": "ec"}
    valid = sign_ed(b64json(ed), b64json(_claims()))
    return [
        b"\x00" + valid.encode(),
        b"\x00" + sign_es256(b64json(es), b64json(_claims(cnf={"jkt": "x" * 43}))).encode(),
        b"\x00" + valid.encode() + b".garbage",
        b"\x00" + valid.encode() + b"A",
        b"\x01" + _raw(ed, _claims()),
        b"\x01" + _raw(ed, _claims(cnf={"x5t#S256": "y" * 43}, nbf=NOW - 10, aud=["a", "b"])),
        b"\x01" + _raw({"typ": "application/at+jwt", "alg": "EdDSA"}, _claims(exp=NOW + 10**20)),
        b'\x01{"typ":"at+jwt","alg":"EdDSA","alg":"none"}\x00' + json.dumps(_claims()).encode(),
        b'\x01{"typ":"at+jwt","alg":"EdDSA","crit":["b64"]}\x00' + json.dumps(_claims()).encode(),
        b"\x01" + _raw(ed, {**_claims(), "x": [[[[[[[[1]]]]]]]]}),
        b"\x01" + _raw(ed, _claims(exp=10**300, nbf=-(10**300), iat=1e300)),
    ]


if __name__ == "__main__":
    run("jose", one, (GatewayError,), seeds, max_len=4096)
