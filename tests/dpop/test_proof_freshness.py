"""RFC 9449 §4.3 checks 10-12 and §7: iat/exp/nbf, jti replay, ath, jkt, schemes; RFC vectors; fuzzing."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.bind import Binder
from gateway.errors import InvalidTokenError

from .conftest import MakeBinder, dpop_creds, policy, request, token_for
from .helpers import check, rejected
from .proofs import TOKEN, URL, Signer, ath, b64, b64json

# --- DPOP-15/16: iat, exp, nbf ---------------------------------------------------------------


@pytest.mark.parametrize("offset", [-60, -10, 0, 8, 10, 15])
async def test_iat_inside_window(binder: Binder, k1: Signer, clock: object, offset: int) -> None:
    """DPOP-15a-c: the FAPI 2.0 suite's now-10 and now+8 (and +10) succeed."""
    now = clock.now  # type: ignore[attr-defined]
    assert (await check(binder, k1.proof(iat=now + offset), k1.jkt)).type == "dpop"


@pytest.mark.parametrize(
    ("offset", "words"),
    [(61, "too far ahead: 61 s in the future"), (3600, "3600 s in the future"),
     (-61, "too old: 61 s in the past"), (-3600, "3600 s in the past")],
)
async def test_iat_outside_window(binder: Binder, k1: Signer, clock: object, offset: int, words: str) -> None:
    """DPOP-15d-g: the description says which way and by how many seconds."""
    now = clock.now  # type: ignore[attr-defined]
    exc = await rejected(binder, k1.proof(iat=now + offset), k1.jkt)
    assert words in exc.description
    assert exc.reason in ("dpop_iat_too_old", "dpop_iat_in_future")


async def test_iat_in_milliseconds(binder: Binder, k1: Signer, clock: object) -> None:
    """DPOP-15h."""
    now = clock.now  # type: ignore[attr-defined]
    await rejected(binder, k1.proof(iat=int(now * 1000)), k1.jkt, reason="dpop_iat_in_future")


async def test_iat_window_configurable(make_binder: MakeBinder, k1: Signer, clock: object) -> None:
    """DPOP-15: a stricter window is honoured."""
    strict = make_binder(iat_past_s=5, iat_future_s=0)
    now = clock.now  # type: ignore[attr-defined]
    await rejected(strict, k1.proof(iat=now - 6), k1.jkt, reason="dpop_iat_too_old")
    await rejected(strict, k1.proof(iat=now + 1), k1.jkt, reason="dpop_iat_in_future")


async def test_exp_nbf(binder: Binder, k1: Signer, clock: object) -> None:
    """DPOP-16a-c."""
    now = clock.now  # type: ignore[attr-defined]
    assert (await check(binder, k1.proof(nbf=now, exp=now + 300), k1.jkt)).type == "dpop"
    await rejected(binder, k1.proof(exp=now - 20), k1.jkt, reason="dpop_expired")
    await rejected(binder, k1.proof(nbf=now + 3600), k1.jkt, reason="dpop_not_yet_valid")


# --- DPOP-17: jti replay ---------------------------------------------------------------------


async def test_same_proof_twice(binder: Binder, k1: Signer) -> None:
    """DPOP-17a."""
    proof = k1.proof()
    await check(binder, proof, k1.jkt)
    await rejected(binder, proof, k1.jkt, reason="dpop_replay")


async def test_jti_recorded_only_after_all_checks(binder: Binder, k1: Signer, k2: Signer) -> None:
    """DPOP-17d: a bad-signature proof with jti X, then a valid one with X -> accepted."""
    h, c = b64json(k1.header()), b64json(k1.claims(jti="X"))
    await rejected(binder, k2.sign_parts(h, c), k1.jkt, reason="dpop_bad_signature")
    await rejected(binder, k1.proof(jti="X", htm="POST"), k1.jkt, reason="dpop_htm_mismatch")
    assert (await check(binder, k1.proof(jti="X"), k1.jkt)).type == "dpop"


async def test_jti_scoped_to_key(binder: Binder, k1: Signer, k2: Signer) -> None:
    """Replay key = hash(jkt, jti): one client's jti cannot block another's."""
    await check(binder, k1.proof(jti="shared"), k1.jkt)
    await check(binder, k2.proof(jti="shared"), k2.jkt)


async def test_long_jti_refused(binder: Binder, k1: Signer) -> None:
    """DPOP-17c: a 10 KB jti (also over the size bound); a 300-char one over the jti bound."""
    await rejected(binder, k1.proof(jti="j" * 10_000), k1.jkt, reason="dpop_too_large")
    await rejected(binder, k1.proof(jti="j" * 300), k1.jkt, reason="dpop_missing_claim")


# --- DPOP-18/19: ath, jkt ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [ath("another-token"), ath(TOKEN) + "=", hashlib.sha256(TOKEN.encode()).hexdigest(), ath("DPoP " + TOKEN)],
    ids=["other-token", "padded", "hex", "with-scheme"],
)
async def test_ath_mismatch(binder: Binder, k1: Signer, value: str) -> None:
    """DPOP-18c-f."""
    await rejected(binder, k1.proof(ath=value), k1.jkt, reason="dpop_ath_mismatch")


async def test_proof_key_not_the_token_key(binder: Binder, k1: Signer, k2: Signer) -> None:
    """DPOP-19a: RFC 9449 Fig. 16, DPoP error="invalid_token"."""
    exc = await rejected(binder, k2.proof(), k1.jkt, error=InvalidTokenError, reason="binding_mismatch")
    assert exc.scheme == "DPoP"


async def test_jwk_optional_members_do_not_change_jkt(binder: Binder, k1: Signer) -> None:
    """DPOP-19b."""
    jwk = dict(k1.jwk, alg="ES256", kid="k1", use="sig")
    assert (await check(binder, k1.proof(header=k1.header(jwk=jwk)), k1.jkt)).thumbprint == k1.jkt


async def test_padded_cnf_jkt_refused(binder: Binder, k1: Signer) -> None:
    """DPOP-19c."""
    await rejected(binder, k1.proof(), k1.jkt + "=", error=InvalidTokenError)


# --- DPOP-22..25 -------------------------------------------------------------------------------

FIG2_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19"
    ".eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ"
    ".2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg"
)


async def test_token_endpoint_proof_refused(make_binder: MakeBinder, clock: object) -> None:
    """DPOP-22a: RFC 9449 Fig. 2 (no ath, token-endpoint htu), even with a frozen clock."""
    clock.now = 1562262616  # type: ignore[attr-defined]
    binder = make_binder()
    await rejected(binder, FIG2_PROOF, "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I", method="POST",
                   url="https://server.example.com/token", reason="dpop_missing_claim")


async def test_duplicate_members_refused(binder: Binder, k1: Signer) -> None:
    """DPOP-23: two htu (first wrong, last right) and two alg in the header."""
    claims = json.dumps(k1.claims())[:-1] + f', "htu": "{URL}"}}'
    claims = claims.replace(f'"htu": "{URL}"', '"htu": "https://evil.example/x"', 1)
    proof = k1.sign_parts(b64json(k1.header()), b64(claims.encode()))
    await rejected(binder, proof, k1.jkt, reason="dpop_malformed")
    header = json.dumps(k1.header())[:-1] + ', "alg": "ES256"}'
    proof = k1.sign_parts(b64(header.encode()), b64json(k1.claims()))
    await rejected(binder, proof, k1.jkt, reason="dpop_malformed")


async def test_oversized_proof_refused_before_parsing(binder: Binder, k1: Signer) -> None:
    """DPOP-25a: over 8 KiB -> refused (whatever it contains)."""
    await rejected(binder, "a" * 8193, k1.jkt, reason="dpop_too_large")


async def test_huge_rsa_modulus_and_odd_exponent(binder: Binder) -> None:
    """DPOP-25b/c: a 16384-bit modulus and e=3 are refused before any signature work."""
    n = (1 << 16383) | 1
    jwk = {"kty": "RSA", "n": b64(n.to_bytes(2048, "big")), "e": "AQAB"}
    h = b64json({"typ": "dpop+jwt", "alg": "PS256", "jwk": jwk})
    proof = f"{h}.{b64json({'jti': 'a'})}.AAAA"
    exc = await rejected(binder, proof, "x", reason="dpop_bad_jwk")
    assert "8192" in exc.description
    key = rsa.generate_private_key(public_exponent=3, key_size=2048)
    signer = Signer(key, "PS256")
    await rejected(binder, signer.proof(), signer.jkt, reason="dpop_bad_jwk")


async def test_deep_json_and_nan(make_binder: MakeBinder, binder: Binder, k1: Signer) -> None:
    """DPOP-24: deep nesting and NaN never escape as a 500."""
    deep = b64(("[" * 20_000 + "]" * 20_000).encode())
    roomy = make_binder(max_proof_bytes=65_536)
    await rejected(roomy, f"{b64json(k1.header())}.{deep}.AAAA", k1.jkt, reason="dpop_malformed")
    nan = b64(b'{"jti":"a","htm":"GET","htu":"' + URL.encode() + b'","iat":NaN,"ath":"x"}')
    await rejected(binder, k1.sign_parts(b64json(k1.header()), nan), k1.jkt, reason="dpop_malformed")


async def test_fig13_vector_with_frozen_clock(make_binder: MakeBinder, clock: object) -> None:
    """§0.4-4: the RFC 9449 Fig. 13 proof verifies; replay, POST, other token, real clock fail."""
    proof = (
        "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19"
        ".eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9"
        ".2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA"
    )
    jkt = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
    url = "https://resource.example.org/protectedresource"
    real_now = clock.now  # type: ignore[attr-defined]
    clock.now = 1562262618  # type: ignore[attr-defined]
    binder = make_binder()
    await rejected(binder, proof, jkt, url=url, method="POST", reason="dpop_htm_mismatch")
    await rejected(binder, proof, jkt, url=url, token="another-token", reason="dpop_ath_mismatch")
    binding = await check(binder, proof, jkt, url=url)
    assert binding.thumbprint == jkt
    await rejected(binder, proof, jkt, url=url, reason="dpop_replay")
    clock.now = real_now  # type: ignore[attr-defined]
    await rejected(make_binder(), proof, jkt, url=url, reason="dpop_iat_too_old")


# --- RFC 9449 §7: schemes and route sender constraint -------------------------------------------


async def test_dpop_bound_token_as_bearer(binder: Binder, k1: Signer) -> None:
    """DPOP-20a/b: downgrade refused, with or without a proof: Bearer error="invalid_token"."""
    from gateway.model import Credentials

    for proof in (None, k1.proof()):
        creds = Credentials(scheme="Bearer", token=TOKEN, dpop_proof=proof)
        with pytest.raises(InvalidTokenError) as info:
            await binder.check(request(), creds, token_for(k1.jkt), policy(sender_constraint="any"))
        assert info.value.scheme == "Bearer"
        assert info.value.reason == "dpop_bound_token_as_bearer"


async def test_dpop_scheme_without_proof(binder: Binder, k1: Signer) -> None:
    """DPOP-21."""
    await rejected(binder, None, k1.jkt, reason="dpop_missing_proof")


async def test_dpop_scheme_with_unbound_token(binder: Binder, k1: Signer) -> None:
    """RFC 9449 §7.1: the DPoP scheme with a token lacking cnf.jkt -> invalid_token."""
    with pytest.raises(InvalidTokenError) as info:
        await binder.check(request(), dpop_creds(k1.proof()), token_for(None), policy(sender_constraint="any"))
    assert info.value.scheme == "DPoP" and info.value.reason == "token_not_dpop_bound"


# --- DPOP-24: fuzz -------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gateway.errors import OAuthError  # noqa: E402


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.text(max_size=300),
        st.lists(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=60),
                 min_size=1, max_size=5).map(".".join),
        st.tuples(st.dictionaries(st.text(max_size=5), st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3), max_leaves=8),
            max_size=6), st.binary(max_size=70)).map(lambda t: f"{b64json(t[0])}.{b64json(t[0])}.{b64(t[1])}"),
    )
)
async def test_fuzzed_proofs_fail_closed(binder: Binder, k1: Signer, proof: str) -> None:
    """DPOP-24: any header value is refused with an OAuth error, never another exception."""
    try:
        await check(binder, proof, k1.jkt)
    except OAuthError as exc:
        assert exc.status in (400, 401)
    else:  # pragma: no cover - would be a forged proof
        raise AssertionError("a fuzzed proof was accepted")
