"""Fuzz target: DPoP proof verification (``gateway.bind.dpop``, with ``jwk`` and ``htu``).

Input byte 0 picks the mode. Even: the rest is the proof as sent (raw compact JWS). Odd: the rest
is ``header JSON NUL payload JSON``, base64url-encoded and signed here with a fixed Ed25519 key,
so the fuzzer reaches the claim, htu, ath, binding, time and replay checks behind the signature.
"""

from __future__ import annotations

import asyncio
import json

from ._harness import instrumented, run, split
from .keys import NOW, TOKEN, URL, ath, b64, b64json, ec_jwk, ed_jwk, sign_ed, sign_es256, thumbprint

with instrumented():
    from gateway.bind.dpop import DpopVerifier
    from gateway.bind.replay import MemoryReplayStore
    from gateway.config.dpop import DpopConfig
    from gateway.errors import GatewayError

LOOP = asyncio.new_event_loop()
VERIFIER = DpopVerifier(
    DpopConfig.model_validate({}),
    replay=MemoryReplayStore(max_entries=100_000, clock=lambda: NOW, began=NOW - 3600),
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
    verified = LOOP.run_until_complete(
        VERIFIER.verify(proof, method=method, url=URL, access_token=TOKEN, cnf_jkt=JKT)
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
    ]


if __name__ == "__main__":
    run("dpop", one, (GatewayError,), seeds, max_len=4096)
