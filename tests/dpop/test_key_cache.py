"""The proof-header cache keeps keys in compact form; live key objects only for the most recent keys.

A key evicted from the live set is rebuilt from its DER form: proofs keep verifying, and every
check (signature, binding to cnf.jkt) still applies to the rebuilt key.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.bind import dpop as dpop_module
from gateway.bind.jwk import CompactJwk, JwkCache, parse_public_jwk
from gateway.errors import InvalidTokenError

from .conftest import MakeBinder
from .helpers import check, rejected
from .proofs import Signer, b64json


@pytest.fixture
def one_live_key(monkeypatch: pytest.MonkeyPatch, make_binder: MakeBinder) -> MakeBinder:
    monkeypatch.setattr(dpop_module, "_LIVE_KEYS", 1)
    return make_binder


async def test_evicted_live_keys_are_rebuilt(one_live_key: MakeBinder, k1: Signer, k2: Signer, ps256: Signer,
                                             eddsa: Signer) -> None:
    binder = one_live_key()
    verifier = binder.dpop
    for _ in range(2):
        for signer in (k1, k2, ps256, eddsa):
            binding = await check(binder, signer.proof(), signer.jkt)
            assert binding.thumbprint == signer.jkt
    assert len(verifier._keys) == 1  # live keys: bounded by _LIVE_KEYS
    assert len(verifier._headers) == 4  # every header, in compact form


async def test_rebuilt_key_still_checked(one_live_key: MakeBinder, k1: Signer, k2: Signer) -> None:
    """A header cached for k1 whose live key was evicted: a proof signed by k2 under it fails."""
    binder = one_live_key()
    await check(binder, k1.proof(), k1.jkt)
    await check(binder, k2.proof(), k2.jkt)  # evicts k1's live key
    header_seg = b64json(k1.header())
    forged = k2.sign_parts(header_seg, b64json(k1.claims()))
    await rejected(binder, forged, k1.jkt, reason="dpop_bad_signature")
    # and the binding to the token's key still holds for a proof k1 really signed
    await rejected(binder, k1.proof(), k2.jkt, reason="binding_mismatch", error=InvalidTokenError)


SPKI = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def test_compact_round_trip(k1: Signer, ps256: Signer, eddsa: Signer) -> None:
    cache = JwkCache(maxsize=1, ttl_s=60)
    for signer in (k1, ps256, eddsa):
        parsed = parse_public_jwk(signer.jwk)
        compact = parsed.compact()
        assert isinstance(compact, CompactJwk) and compact.thumbprint == signer.jkt
        live = cache.live(compact)
        assert live.thumbprint == signer.jkt and (live.kty, live.crv) == (parsed.kty, parsed.crv)
        assert live.key.public_bytes(*SPKI) == parsed.key.public_bytes(*SPKI) == compact.spki
    assert len(cache) == 1
