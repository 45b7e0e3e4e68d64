"""Resource-server DPoP nonces (RFC 9449 §8-9): DPOPN-01..09, through the real Binder."""

from __future__ import annotations

import re

import pytest

from gateway.bind import Binder, NonceIssuer
from gateway.errors import InvalidDpopProofError, UseDpopNonceError

from .conftest import Clock, MakeBinder
from .helpers import check, rejected
from .proofs import Signer

SECRET_A = "a" * 32
SECRET_B = "b" * 40
NQCHAR = re.compile(r"^[\x21\x23-\x5B\x5D-\x7E]+$")


def nonce_cfg(*secrets: str, lifetime_s: int = 300, refresh_before_s: int = 60) -> dict[str, object]:
    return {"nonce": {"secrets": list(secrets or (SECRET_A,)), "lifetime_s": lifetime_s,
                      "refresh_before_s": refresh_before_s}}


def test_nonces_unpredictable_and_well_formed(clock: Clock) -> None:
    """DPOPN-03: 10,000 nonces, all distinct, all NQCHAR, all valid."""
    issuer = NonceIssuer([SECRET_A], clock=clock)
    nonces = [issuer.issue() for _ in range(10_000)]
    assert len(set(nonces)) == len(nonces)
    assert all(NQCHAR.match(n) for n in nonces)
    assert all(issuer.check(n).valid for n in nonces[:100])


def test_rotation_and_foreign_keys(clock: Clock) -> None:
    """DPOPN-06/08: a new first key signs; the old one still verifies; an unknown key never does."""
    old = NonceIssuer([SECRET_A], clock=clock)
    rotated = NonceIssuer([SECRET_B, SECRET_A], clock=clock)
    foreign = NonceIssuer(["c" * 32], clock=clock)
    n_old = old.issue()
    assert rotated.check(n_old).valid
    assert not old.check(rotated.issue()).valid
    assert not rotated.check(foreign.issue()).valid
    for garbage in ("garbage", "", "A" * 55, old.issue()[:-2] + "AA"):
        assert not rotated.check(garbage).valid


def test_nonce_expiry(clock: Clock) -> None:
    """DPOPN-04/08: valid for its lifetime, then not; a nonce from the future beyond skew is refused."""
    issuer = NonceIssuer([SECRET_A], lifetime_s=300, clock_skew_s=5, clock=clock)
    n = issuer.issue()
    clock.now += 299
    assert issuer.check(n).valid and issuer.check(n).remaining_s == pytest.approx(1, abs=1)
    clock.now += 2
    assert not issuer.check(n).valid
    clock.now -= 400
    assert not issuer.check(n).valid


async def test_nonce_flow(make_binder: MakeBinder, k1: Signer) -> None:
    """DPOPN-01/05: no nonce -> use_dpop_nonce + nonce; retry with it passes; fresh iat is not enough."""
    binder = make_binder(**nonce_cfg())
    exc = await rejected(binder, k1.proof(), k1.jkt, error=UseDpopNonceError, require_nonce=True)
    assert isinstance(exc, UseDpopNonceError) and NQCHAR.match(exc.nonce)
    binding = await check(binder, k1.proof(nonce=exc.nonce), k1.jkt, require_nonce=True)
    assert binding.type == "dpop" and binding.response_headers == ()


async def test_wrong_or_expired_nonce(make_binder: MakeBinder, k1: Signer, clock: Clock) -> None:
    """DPOPN-04: garbage or an expired nonce -> use_dpop_nonce with a new nonce."""
    binder = make_binder(**nonce_cfg())
    e1 = await rejected(binder, k1.proof(nonce="garbage"), k1.jkt, error=UseDpopNonceError, require_nonce=True)
    nonce = e1.nonce  # type: ignore[attr-defined]
    clock.now += 301
    e2 = await rejected(binder, k1.proof(nonce=nonce, iat=clock.now), k1.jkt, error=UseDpopNonceError,
                        require_nonce=True)
    assert e2.nonce != nonce  # type: ignore[attr-defined]
    assert "invalid or expired" in e2.description


async def test_nonce_from_replica_a_accepted_by_b(make_binder: MakeBinder, k1: Signer) -> None:
    """DPOPN-09: two Binders (two replicas) sharing only the configured secret."""
    a, b = make_binder(**nonce_cfg()), make_binder(**nonce_cfg())
    exc = await rejected(a, k1.proof(), k1.jkt, error=UseDpopNonceError, require_nonce=True)
    assert (await check(b, k1.proof(nonce=exc.nonce), k1.jkt, require_nonce=True)).type == "dpop"  # type: ignore[attr-defined]


async def test_as_nonce_refused(make_binder: MakeBinder, k1: Signer) -> None:
    """DPOPN-06: a nonce minted under another key (e.g. the AS's) is not ours."""
    binder = make_binder(**nonce_cfg())
    foreign = NonceIssuer(["z" * 32]).issue()
    await rejected(binder, k1.proof(nonce=foreign), k1.jkt, error=UseDpopNonceError, require_nonce=True)


async def test_fresh_nonce_sent_before_expiry(make_binder: MakeBinder, k1: Signer, clock: Clock) -> None:
    """DPOPN-08, RFC 9449 §8.2: once the nonce has < refresh_before_s left, the response carries a new one."""
    binder = make_binder(**nonce_cfg())
    nonce = binder.dpop.nonces.issue()  # type: ignore[union-attr]
    clock.now += 250
    binding = await check(binder, k1.proof(nonce=nonce, iat=clock.now), k1.jkt, require_nonce=True)
    headers = dict(binding.response_headers)
    assert len(binding.response_headers) == 2 and headers["Cache-Control"] == "no-store"
    value = headers["DPoP-Nonce"]
    assert value != nonce and NQCHAR.match(value)


async def test_skewed_client_recovers_with_nonce(make_binder: MakeBinder, k1: Signer, clock: Clock) -> None:
    """Nonces enabled, iat an hour off and no nonce -> use_dpop_nonce (not a hard failure); with it -> OK."""
    binder = make_binder(**nonce_cfg())
    skewed = clock.now - 3600
    exc = await rejected(binder, k1.proof(iat=skewed), k1.jkt, error=UseDpopNonceError, reason="dpop_iat_window")
    assert (await check(binder, k1.proof(iat=skewed, nonce=exc.nonce), k1.jkt)).type == "dpop"  # type: ignore[attr-defined]


async def test_without_nonces_skew_is_a_hard_failure(binder: Binder, k1: Signer, clock: Clock) -> None:
    await rejected(binder, k1.proof(iat=clock.now - 3600), k1.jkt, error=InvalidDpopProofError)


def test_route_requiring_nonce_needs_nonce_config() -> None:
    """A route with require_dpop_nonce and no dpop.nonce is a config error."""
    from gateway.config import parse_config
    from gateway.errors import ConfigError

    text = """
routes:
  - id: r
    match: {path_prefix: /}
    upstream: http://127.0.0.1:1
    auth: {issuers: [as], audience: [https://x], sender_constraint: dpop, require_dpop_nonce: true}
issuers:
  - {name: as, issuer: https://as.example, jwks_uri: https://as.example/jwks}
"""
    with pytest.raises(ConfigError, match=r"dpop\.nonce"):
        parse_config(text)
