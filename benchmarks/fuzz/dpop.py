"""Fuzz target: DPoP proof verification (``gateway.bind.dpop``, with ``jwk`` and ``htu``).

Input byte 0 picks the mode. Even: the rest is the proof as sent (raw compact JWS). Odd: the rest
is ``header JSON NUL payload JSON``, base64url-encoded and signed here with a fixed Ed25519 key,
so the fuzzer reaches the claim, htu, ath, binding, time and replay checks behind the signature.
Bit 1: POST instead of GET. Bit 2: a verifier with server nonces, on a route that requires one.
"""

from __future__ import annotations

import asyncio
import json

from ._harness import instrumented, run, split
from .keys import NOW, TOKEN, URL, ath, b64, b64json, ec_jwk, ed_jwk, sign_ed, sign_es256, thumbprint

with instrumented():
    from gateway.bind.dpop import DpopVerifier
    from gateway.bind.nonce import NonceIssuer
    from gateway.bind.replay import MemoryReplayStore
    from gateway.config.dpop import DpopConfig
    from gateway.errors import GatewayError

LOOP = asyncio.new_event_loop()
VERIFIER = DpopVerifier(
    DpopConfig.model_validate({}),
    replay=MemoryReplayStore(max_entries=100_000, clock=lambda: NOW, began=NOW - 3600),
    clock=lambda: NOW,
)
NONCES = NonceIssuer(["fuzz-nonce-secret-0123456789abcdef"], clock=lambda: NOW)
NONCE_VERIFIER = DpopVerifier(
    DpopConfig.model_validate({"nonce": {"secrets": ["fuzz-nonce-secret-0123456789abcdef"]}}),
    replay=MemoryReplayStore(max_entries=100_000, clock=lambda: NOW, began=NOW - 3600),
    nonces=NONCES,
    clock=lambda: NOW,
)
JKT = thumbprint(ed_jwk())


def one(data: bytes) -> None:
    if not data:
        return
    if data[0] % 2 == 0:
        proof = data[1:].decode("utf-8", "surrogateescape")
    else:
        header, payload = split(data[1:], 2)
        proof = sign_ed(b64(header), b64(payload))
    method = "POST" if data[0] & 2 else "GET"
    nonce = bool(data[0] & 4)
    verifier = NONCE_VERIFIER if nonce else VERIFIER
    verified = LOOP.run_until_complete(
        verifier.verify(proof, method=method, url=URL, access_token=TOKEN, cnf_jkt=JKT, require_nonce=nonce)
    )
    # Accepted only with our key's thumbprint (the signature was checked with the jwk it names).
    assert verified.jkt == JKT


def _claims(**over: object) -> bytes:
    c: dict[str, object] = {"jti": "j-1", "htm": "GET", "htu": URL, "iat": NOW, "ath": ath()}
    c.update(over)
    return json.dumps(c, separators=(",", ":")).encode()


def seeds() -> list[bytes]:
    ed_header = {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": ed_jwk()}
    es_header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": ec_jwk()}
    hdr = json.dumps(ed_header, separators=(",", ":")).encode()
    return [
        b"\x00" + sign_ed(b64json(ed_header), b64(_claims())).encode(),
        b"\x00" + sign_es256(b64json(es_header), b64(_claims(jti="j-2"))).encode(),
        b"\x01" + hdr + b"\x00" + _claims(jti="j-3"),
        b"\x03" + hdr + b"\x00" + _claims(jti="j-4", htm="POST", htu=URL + "?q=1#f", exp=NOW + 60, nbf=NOW - 5),
        b"\x01" + hdr + b"\x00" + _claims(jti="j-5", htu="https://API.bank.example:443/./accounts", nonce="n"),
        b"\x01" + hdr + b"\x00" + _claims(jti="j-6", iat=NOW - 100),
        b"\x05" + hdr + b"\x00" + _claims(jti="j-7", nonce=NONCES.issue()),
        b"\x05" + hdr + b"\x00" + _claims(jti="j-8", iat=NOW - 3000, nonce=NONCES.issue()),
    ]


if __name__ == "__main__":
    run("dpop", one, (GatewayError,), seeds, max_len=4096)
