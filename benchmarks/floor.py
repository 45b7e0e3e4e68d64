"""The ``floor`` candidate (issue 20): the minimal aiohttp mTLS proxy plus exactly the irreducible
work of a DPoP request, and nothing else.

Per request: split the ``DPoP`` header at its dots, look its protected header up in a dict of public
keys (the header is parsed and the key built only the first time it is seen), base64url-decode the
signature and do ONE ES256 verify over the signing input. The access token is verified once (ES256
against the AS key) and then found in a dict. No claim, ``htm``/``htu``/``iat``/``ath``/``jti``,
replay, binding or policy check: this is what a DPoP-checking proxy cannot go below, so the
gateway's DPoP route is reported as a ratio to it, measured in the same interleaved rounds.

``python -m benchmarks.floor --port P --upstream http://127.0.0.1:U --cert --key --ca --jwks FILE``
"""

from __future__ import annotations

import argparse
import base64
import json
import ssl
from collections.abc import Callable
from pathlib import Path

import uvloop
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .minimal_proxy import build_app, tune_gc

_ES256 = ec.ECDSA(hashes.SHA256())


def _b64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _key(jwk: dict[str, str]) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicNumbers(
        int.from_bytes(_b64(jwk["x"]), "big"), int.from_bytes(_b64(jwk["y"]), "big"), ec.SECP256R1()
    ).public_key()


def _verify(key: ec.EllipticCurvePublicKey, jws: str) -> tuple[bool, str]:
    head, _, rest = jws.partition(".")
    payload, _, sig = rest.partition(".")
    raw = _b64(sig)
    if len(raw) != 64:
        return False, head
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        key.verify(der, f"{head}.{payload}".encode(), _ES256)
    except InvalidSignature:
        return False, head
    return True, head


def make_check(jwks_file: str) -> Callable[[web.Request], bool]:
    as_key = _key(json.loads(Path(jwks_file).read_text())["keys"][0])
    # Unbounded on purpose: the benchmark's client set is fixed (10k) and this is a reference, not a
    # server; the gateway's caches are bounded.
    proof_keys: dict[str, ec.EllipticCurvePublicKey] = {}
    tokens: set[str] = set()

    def check(request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        proof = request.headers.get("DPoP")
        if not auth.startswith("DPoP ") or proof is None:
            return False
        token = auth[5:]
        if token not in tokens:
            if not _verify(as_key, token)[0]:
                return False
            tokens.add(token)
        head = proof.partition(".")[0]
        key = proof_keys.get(head)
        if key is None:
            try:
                key = _key(json.loads(_b64(head))["jwk"])
            except (ValueError, KeyError, TypeError):
                return False
            proof_keys[head] = key
        return _verify(key, proof)[0]

    return check


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("--upstream", "--cert", "--key", "--ca", "--jwks"):
        ap.add_argument(name, required=True)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.load_verify_locations(args.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    uvloop.install()
    tune_gc()
    web.run_app(
        build_app(args.upstream.rstrip("/"), check=make_check(args.jwks)),
        host="127.0.0.1", port=args.port, ssl_context=ctx, access_log=None, print=None, keepalive_timeout=120,
    )


if __name__ == "__main__":
    main()
