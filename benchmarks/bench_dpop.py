"""Cost of DPoP proof verification per request (RFC 9449 §4.3), against PyJWT.

    .venv/bin/python benchmarks/bench_dpop.py [--n 3000]

For each algorithm, N distinct proofs (distinct jti) are made up front, then timed through:
  gateway   DpopVerifier.verify: every §4.3 check, ath, jkt, jti into the memory replay store
  sig-only  the gateway's signature step alone (cryptography, JOSE R||S -> DER)
  pyjwt     jwt.decode with the key already parsed (signature + JSON only, no DPoP checks)
  pyjwt+jwk get_unverified_header + PyJWK(jwk) + jwt.decode: what a naive verifier does per request
Prints CPU microseconds per proof (process time, median of 5 runs: robust on a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jwt

from gateway.bind.dpop import DpopVerifier, _verify_signature
from gateway.bind.replay import MemoryReplayStore
from gateway.config.dpop import DpopConfig
from tests.dpop.proofs import TOKEN, URL, Signer, ed25519_signer, es256, rsa_signer


def _median_us(fn: Callable[[], None], n: int, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.process_time()
        fn()
        times.append((time.process_time() - t0) / n * 1e6)
    return statistics.median(times)


def bench(signer: Signer, n: int) -> dict[str, float]:
    cfg = DpopConfig.model_validate({"algorithms": ["ES256", "PS256", "EdDSA"]})
    proofs_per_run = [[signer.proof() for _ in range(n)] for _ in range(5)]
    loop = asyncio.new_event_loop()
    # The store's memory began before the pre-signed proofs (else they predate it and are refused).
    replay = MemoryReplayStore(max_entries=10 * n * 6, began=time.time() - 60)
    verifier = DpopVerifier(cfg, replay=replay)
    runs = iter(proofs_per_run)

    def gateway_run() -> None:
        proofs = next(runs)

        async def go() -> None:
            for p in proofs:
                await verifier.verify(p, method="GET", url=URL, access_token=TOKEN, cnf_jkt=signer.jkt)

        loop.run_until_complete(go())

    out = {"gateway": _median_us(gateway_run, n)}
    sample = proofs_per_run[0]
    header = verifier._header(sample[0].split(".")[0])
    key = verifier._keys.live(header.jwk).key

    def sig_only() -> None:
        for p in sample:
            h, c, s = p.split(".")
            from gateway.bind.jwk import b64url_decode

            _verify_signature(header.alg, key, f"{h}.{c}".encode(), b64url_decode(s))

    out["sig-only"] = _median_us(sig_only, n)
    pyjwt_key = jwt.PyJWK(signer.jwk, algorithm=signer.alg).key
    opts: Any = {"verify_aud": False, "verify_iat": False, "verify_exp": False}

    def pyjwt_decode() -> None:
        for p in sample:
            jwt.decode(p, pyjwt_key, algorithms=[signer.alg], options=opts)

    out["pyjwt"] = _median_us(pyjwt_decode, n)

    def pyjwt_full() -> None:
        for p in sample:
            h = jwt.get_unverified_header(p)
            k = jwt.PyJWK(h["jwk"], algorithm=h["alg"]).key
            jwt.decode(p, k, algorithms=[signer.alg], options=opts)

    out["pyjwt+jwk"] = _median_us(pyjwt_full, n)
    loop.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3000)
    args = parser.parse_args()
    signers = {"ES256": es256(), "PS256": rsa_signer("PS256"), "EdDSA": ed25519_signer()}
    cols = ("gateway", "sig-only", "pyjwt", "pyjwt+jwk")
    print(f"DPoP proof verification, µs per proof (median of 5 x {args.n}), Python {sys.version.split()[0]}")
    print(f"{'alg':<7}" + "".join(f"{c:>12}" for c in cols))
    for name, signer in signers.items():
        r = bench(signer, args.n)
        print(f"{name:<7}" + "".join(f"{r[c]:>12.1f}" for c in cols))


if __name__ == "__main__":
    main()
