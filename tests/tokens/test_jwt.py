"""JWT access tokens against a real JWKS server (checklist JWT-01..JWT-18, AUTHZ-06)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import InvalidTokenError, KeySourceUnavailableError
from gateway.verify import AccessTokenVerifier

from .authserver import AuthServer, b64, ec_key, raw_jws, rsa_key
from .conftest import FakeClock, IssuerFactory, policy

pytestmark = pytest.mark.timeout(60)


async def refused(v: AccessTokenVerifier, token: str, reason: str | None = None, **pol: Any) -> InvalidTokenError:
    with pytest.raises(InvalidTokenError) as info:
        await v.verify(token, policy(**pol))
    assert info.value.status == 401 and info.value.error == "invalid_token"
    if reason is not None:
        assert info.value.reason == reason, info.value.reason
    # Never echo token material into the description (HDR-10).
    assert token[:20] not in info.value.description
    return info.value


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1", "ed-1"])
async def test_valid_token_each_key_type(auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any,
                                         kid: str) -> None:
    """JWT-02f: PS256, ES256 and EdDSA tokens verify; the result carries the claims."""
    v = await make_verifier(issuer_cfg())
    tok = await v.verify(auth_server.token(kid, cnf={"jkt": "abc"}), policy())
    assert tok.issuer == auth_server.issuer and tok.subject == "cust-123" and tok.client_id == "tpp-1"
    assert tok.scopes == frozenset({"accounts", "payments"}) and tok.audience == (auth_server.audience,)
    assert tok.cnf_jkt == "abc" and tok.source == "jwt"


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "at+JWT", "Application/AT+JWT"])
async def test_typ_accepted(auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any, typ: str) -> None:
    """JWT-01a: typ is case-insensitive with an optional application/ prefix."""
    v = await make_verifier(issuer_cfg())
    await v.verify(auth_server.token(typ=typ), policy())


@pytest.mark.parametrize("typ", ["JWT", None, "dpop+jwt", "logout+jwt", "token-introspection+jwt", "at+jwt2"])
async def test_typ_refused(auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any,
                           typ: str | None) -> None:
    """JWT-01b / JWT-18: other token kinds from the same AS are not access tokens."""
    v = await make_verifier(issuer_cfg())
    await refused(v, auth_server.token(typ=typ), "token_wrong_typ")


async def test_legacy_jwt_typ_only_by_opt_in(auth_server: AuthServer, issuer_cfg: IssuerFactory,
                                             make_verifier: Any) -> None:
    v = await make_verifier(issuer_cfg(allow_legacy_jwt_typ=True))
    await v.verify(auth_server.token(typ="JWT"), policy())
    await refused(v, auth_server.token(typ="dpop+jwt"), "token_wrong_typ")


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 11}, "token_expired"),  # JWT-08a/b (leeway 10 s)
        ({"exp": None}, "token_missing_claim"),  # JWT-08c
        ({"exp": "9999999999"}, "token_malformed"),  # JWT-08d
        ({"exp": int(time.time() * 1000)}, "token_malformed"),  # JWT-08d milliseconds
        ({"exp": True}, "token_malformed"),
        ({"nbf": int(time.time()) + 3600}, "token_not_yet_valid"),  # JWT-09a
        ({"iat": int(time.time()) + 3600}, "token_not_yet_valid"),  # JWT-09b
        ({"sub": None}, "token_missing_claim"),  # JWT-10
        ({"client_id": None}, "token_missing_claim"),
        ({"jti": None}, "token_missing_claim"),
        ({"iat": None}, "token_missing_claim"),
        ({"aud": 5}, "token_malformed"),
        ({"scope": ["payments"]}, "token_malformed"),  # JWT-13d: documented 401
        ({"cnf": {"x5t": "sha1"}}, "token_unsupported_cnf"),
        ({"cnf": "jkt"}, "token_malformed"),
        ({"sub": 42}, "token_malformed"),
    ],
)
async def test_claim_failures(auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any,
                              claims: dict[str, Any], reason: str) -> None:
    v = await make_verifier(issuer_cfg())
    await refused(v, auth_server.token(**claims), reason)


async def test_nbf_within_skew_accepted(auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any,
                                        clock: FakeClock) -> None:
    """JWT-09c: nbf=now+5 is inside the default 10 s leeway."""
    v = await make_verifier(issuer_cfg())
    await v.verify(auth_server.token(nbf=int(clock.now) + 5, iat=int(clock.now) + 5), policy())


async def test_zero_leeway_expiry(auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any,
                                  clock: FakeClock) -> None:
    v = await make_verifier(issuer_cfg(leeway_s=0))
    await refused(v, auth_server.token(exp=int(clock.now) - 1), "token_expired")


@pytest.mark.parametrize(
    "iss_suffix", ["/", "x", ".evil.com"],
)
async def test_iss_exact(auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any,
                         iss_suffix: str) -> None:
    """JWT-06a: iss must equal the configured issuer byte for byte."""
    v = await make_verifier(issuer_cfg())
    await refused(v, auth_server.token(iss=auth_server.issuer + iss_suffix), "token_wrong_issuer")
    await refused(v, auth_server.token(iss=auth_server.issuer.upper()), "token_wrong_issuer")


async def test_max_lifetime(auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any) -> None:
    """AUTHZ-07: exp - iat over the maximum is refused when a maximum is configured."""
    v = await make_verifier(issuer_cfg(max_lifetime_s=3600))
    now = int(time.time())
    await refused(v, auth_server.token(iat=now, exp=now + 86400), "token_lifetime_too_long")
    await v.verify(auth_server.token(iat=now, exp=now + 3000), policy())


@pytest.mark.parametrize("alg", ["none", "None", "nOnE"])
async def test_alg_none(auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any, alg: str) -> None:
    """JWT-02a/b."""
    v = await make_verifier(issuer_cfg())
    tok = raw_jws({"alg": alg, "typ": "at+jwt", "kid": "rsa-1"}, auth_server.claims())
    await refused(v, tok, "token_alg_not_allowed")


async def test_hs256_with_public_key(auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any) -> None:
    """JWT-02c: the McLean key-confusion token (HMAC keyed with the RSA public key) is refused."""
    v = await make_verifier(issuer_cfg(algorithms=["PS256", "ES256", "EdDSA", "RS256"]))
    pub = auth_server.key("rsa-1").private.public_key()
    for secret in (
        pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        json.dumps(auth_server.key("rsa-1").public_jwk()).encode(),
    ):
        header = {"alg": "HS256", "typ": "at+jwt", "kid": "rsa-1"}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(auth_server.claims()).encode())}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        await refused(v, f"{signing_input}.{b64(mac)}", "token_alg_not_allowed")


async def test_rs256_refused_by_default(auth_server: AuthServer, issuer_cfg: IssuerFactory,
                                        make_verifier: Any) -> None:
    """JWT-02d: RS256 signed by the genuine AS key is refused under the FAPI default allowlist."""
    v = await make_verifier(issuer_cfg())
    await refused(v, auth_server.token("rsa-1", alg="RS256"), "token_alg_not_allowed")


async def test_rs_ps_confusion(auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any) -> None:
    """JWT-05b: the JWK says alg PS256, so an RS256 token with that key fails even when RS256 is allowed."""
    v = await make_verifier(issuer_cfg(algorithms=["PS256", "RS256"]))
    await refused(v, auth_server.token("rsa-1", alg="RS256"), "token_unknown_key")
    # A PS256 header over an RS256 signature (same key) fails the signature check.
    rs = auth_server.token("rsa-1", alg="RS256").split(".")
    header = b64(json.dumps({"alg": "PS256", "typ": "at+jwt", "kid": "rsa-1"}).encode())
    await refused(v, f"{header}.{rs[1]}.{rs[2]}", "token_bad_signature")


async def test_key_type_must_match_alg(auth_server: AuthServer, issuer_cfg: IssuerFactory,
                                       make_verifier: Any) -> None:
    """JWT-05a/c: ES256 header naming the RSA key; a P-384 key used for ES256."""
    p384 = ec_key("p384", ec.SECP384R1(), alg="ES384")
    p384_as_es256 = dict(p384.public_jwk(), alg="ES256", kid="p384")
    auth_server.published = [k.public_jwk() for k in auth_server.keys] + [p384_as_es256]
    v = await make_verifier(issuer_cfg(algorithms=["PS256", "ES256", "ES384"]))
    tok = auth_server.token("ec-1", headers={"kid": "rsa-1"})
    await refused(v, tok, "token_unknown_key")
    await refused(v, auth_server.token(key=p384, alg="ES384"), "token_unknown_key")


async def test_embedded_key_headers_ignored(auth_server: AuthServer, issuer_cfg: IssuerFactory,
                                            make_verifier: Any) -> None:
    """JWT-03: jwk / jku / x5u / x5c headers never supply the key; no fetch goes to them."""
    attacker = ec_key("attacker")
    v = await make_verifier(issuer_cfg())
    fetches = auth_server.jwks_fetches
    for extra in (
        {"jwk": attacker.public_jwk()},
        {"jku": f"{auth_server.url}/attacker-jwks"},
        {"x5u": f"{auth_server.url}/attacker.pem"},
        {"x5c": ["MIIB"]},
    ):
        tok = auth_server.token(key=attacker, headers=extra)
        await refused(v, tok)
    assert auth_server.jwks_fetches <= fetches + 1  # only the (cooldown-limited) unknown-kid refetch


async def test_crit_unknown_refused(auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any) -> None:
    """JWT-12."""
    v = await make_verifier(issuer_cfg())
    await refused(v, auth_server.token(headers={"crit": ["exp-x"], "exp-x": 1}), "token_crit_unsupported")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.replace(".", ". ", 1),  # whitespace inside (JWT-14d)
        lambda t: t + "\n",
        lambda t: ".".join(t.split(".")[:2]) + ".",  # empty signature
        lambda t: t + ".x.y",  # five segments: a JWE shape (JWT-11a)
        lambda t: t.split(".")[0] + "." + b64(b"[1]") + "." + t.split(".")[2],  # non-object payload
        lambda t: t.split(".")[0] + "." + b64(b"[" * 8000) + "." + t.split(".")[2],  # nesting bomb
    ],
)
async def test_malformed(auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any, mangle: Any) -> None:
    v = await make_verifier(issuer_cfg())
    await refused(v, mangle(auth_server.token()))


async def test_duplicate_members_and_utf16(auth_server: AuthServer, issuer_cfg: IssuerFactory,
                                           make_verifier: Any) -> None:
    """JWT-14b/c: duplicate "aud" in the claims and a UTF-16 header are refused before any crypto."""
    v = await make_verifier(issuer_cfg())
    claims = json.dumps(auth_server.claims())[:-1] + ', "aud": "https://other.example"}'
    await refused(v, raw_jws({"alg": "PS256", "typ": "at+jwt", "kid": "rsa-1"}, claims.encode(), b"x"),
                  "token_malformed")
    header16 = json.dumps({"alg": "PS256", "typ": "at+jwt", "kid": "rsa-1"}).encode("utf-16")
    await refused(v, f"{b64(header16)}.{b64(json.dumps(auth_server.claims()).encode())}.{b64(b'x')}",
                  "token_malformed")


async def test_kid_injection_is_just_unknown(auth_server: AuthServer, issuer_cfg: IssuerFactory,
                                             make_verifier: Any) -> None:
    """JWT-04a."""
    v = await make_verifier(issuer_cfg())
    for kid in ("../../etc/passwd", "' OR 1=1 --"):
        await refused(v, auth_server.token(headers={"kid": kid}), "token_unknown_key")


async def test_key_rotation_picked_up(auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any,
                                      clock: FakeClock) -> None:
    """JWT-04b: a token with a new kid triggers a refetch that finds the rotated-in key."""
    v = await make_verifier(issuer_cfg())
    assert auth_server.jwks_fetches == 1
    new = rsa_key("rsa-2")
    auth_server.keys.append(new)
    clock.advance(31)  # past the refetch cooldown
    tok = await v.verify(auth_server.token("rsa-2"), policy())
    assert tok.subject == "cust-123" and auth_server.jwks_fetches == 2


async def test_random_kid_flood_few_fetches(auth_server: AuthServer, issuer_cfg: IssuerFactory,
                                            make_verifier: Any, clock: FakeClock) -> None:
    """JWT-04b: 500 concurrent tokens with random kids, then more over 90 s: one fetch per cooldown."""
    v = await make_verifier(issuer_cfg())
    attacker = ec_key("x")
    toks = [auth_server.token(key=attacker, headers={"kid": f"kid-{n}"}) for n in range(500)]
    results = await asyncio.gather(*(v.verify(t, policy()) for t in toks), return_exceptions=True)
    assert all(isinstance(r, InvalidTokenError) for r in results)
    assert auth_server.jwks_fetches <= 2
    for _ in range(3):
        clock.advance(30)
        await asyncio.gather(*(v.verify(t, policy()) for t in toks[:50]), return_exceptions=True)
    assert auth_server.jwks_fetches <= 5


async def test_stale_on_error_and_unavailable(auth_server: AuthServer, issuer_cfg: IssuerFactory,
                                              make_verifier: Any, clock: FakeClock) -> None:
    """JWT-16d: during a JWKS outage cached keys keep working; with no keys at all -> 503."""
    v = await make_verifier(issuer_cfg(jwks_refetch_cooldown_s=0))
    auth_server.jwks_down = True
    clock.advance(60)
    await v.verify(auth_server.token("ec-1"), policy())  # known kid: the last good set
    await refused(v, auth_server.token(key=ec_key("new")), "token_unknown_key")
    cold = await make_verifier(issuer_cfg(name="cold", jwks_refetch_cooldown_s=0), )
    with pytest.raises(KeySourceUnavailableError) as info:
        await cold.verify(auth_server.token("ec-1"), policy(issuers=["cold"]))
    assert info.value.status == 503
    auth_server.jwks_down = False
    await cold.verify(auth_server.token("ec-1"), policy(issuers=["cold"]))  # recovers without restart


async def test_keys_expire_after_max_stale(auth_server: AuthServer, issuer_cfg: IssuerFactory,
                                           make_verifier: Any, clock: FakeClock) -> None:
    v = await make_verifier(issuer_cfg(jwks_max_stale_s=600, jwks_refetch_cooldown_s=0))
    auth_server.jwks_down = True
    clock.advance(601)
    with pytest.raises(KeySourceUnavailableError):
        await v.verify(auth_server.token("ec-1"), policy())


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the 1024-bit key is the point
async def test_unusable_keys_skipped(auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any) -> None:
    """JWT-04d, JWT-17, HMAC keys: skipped; tokens naming them are refused."""
    weak = rsa_key("weak", bits=1024)
    enc = ec_key("enc")
    auth_server.published = [
        auth_server.key("ec-1").public_jwk(),
        weak.public_jwk(),
        enc.public_jwk(use="enc"),
        {"kty": "oct", "k": b64(b"secret"), "kid": "oct", "alg": "HS256"},
        {"kty": "XYZ", "kid": "odd"},
        "not a key",
    ]
    v = await make_verifier(issuer_cfg())
    await v.verify(auth_server.token("ec-1"), policy())
    await refused(v, auth_server.token(key=weak), "token_unknown_key")
    await refused(v, auth_server.token(key=enc), "token_unknown_key")


async def test_duplicate_kid_told_apart_by_type(auth_server: AuthServer, issuer_cfg: IssuerFactory,
                                                make_verifier: Any) -> None:
    """JWT-04c: an RSA and an EC key share a kid; an ES256 token verifies with the EC key."""
    rsa_same = rsa_key("shared")
    ec_same = ec_key("shared")
    auth_server.published = [rsa_same.public_jwk(), ec_same.public_jwk()]
    v = await make_verifier(issuer_cfg())
    await v.verify(auth_server.token(key=ec_same), policy())
    await v.verify(auth_server.token(key=rsa_same), policy())


async def test_discovery_and_static_file(auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any,
                                         tmp_path: Any) -> None:
    v = await make_verifier(issuer_cfg(jwks_uri=None, discovery=True))
    await v.verify(auth_server.token(), policy())
    assert auth_server.metadata_fetches == 1
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [k.public_jwk() for k in auth_server.keys]}))
    v2 = await make_verifier(issuer_cfg(name="file", jwks_uri=None, jwks_file=str(jwks)))
    await v2.verify(auth_server.token("ed-1"), policy(issuers=["file"]))


async def test_discovery_issuer_mismatch(auth_server: AuthServer, issuer_cfg: IssuerFactory,
                                         make_verifier: Any) -> None:
    """RFC 8414 §3.3: metadata for another issuer is not used -> no keys -> 503."""
    cfg = issuer_cfg(jwks_uri=None, discovery=f"{auth_server.url}/.well-known/oauth-authorization-server",
                     issuer=auth_server.issuer + "/tenant")
    v = await make_verifier(cfg)
    with pytest.raises(KeySourceUnavailableError):
        await v.verify(auth_server.token(iss=auth_server.issuer + "/tenant"), policy())


async def test_untrusted_tls_loads_no_keys(auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any,
                                           pki: Any) -> None:
    """JWT-16b: the JWKS server's certificate is not trusted -> no keys, never OK."""
    v = await make_verifier(issuer_cfg(ca=str(pki.other_ca_pem)))
    with pytest.raises(KeySourceUnavailableError):
        await v.verify(auth_server.token(), policy())


async def test_issuer_selection_two_issuers(auth_server: AuthServer, issuer_cfg: IssuerFactory,
                                            make_verifier: Any, tmp_path: Any) -> None:
    """JWT-06b / AUTHZ-06: keys are chosen by iss before verifying; routes accept only their issuers."""
    other_key = ec_key("b-1")
    jwks = tmp_path / "b.json"
    jwks.write_text(json.dumps({"keys": [other_key.public_jwk()]}))
    a = issuer_cfg()
    b = issuer_cfg(name="as-b", issuer="https://as-b.example", jwks_uri=None, jwks_file=str(jwks))
    v = await make_verifier(a, b)
    # Claims iss=B but signed with A's key (A's kid): B's key set has no such key.
    await refused(v, auth_server.token("ec-1", iss="https://as-b.example"), issuers=["bank-as", "as-b"])
    tok_b = auth_server.token(key=other_key, iss="https://as-b.example")
    assert (await v.verify(tok_b, policy(issuers=["as-b"]))).issuer == "https://as-b.example"
    # A valid B token on an A-only route, even once cached.
    await refused(v, tok_b, "token_wrong_issuer", issuers=["bank-as"])


async def test_result_cache(auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any,
                            clock: FakeClock) -> None:
    """A hot token costs a lookup; the entry ends at exp."""
    v = await make_verifier(issuer_cfg())
    now = int(clock.now)
    tok = auth_server.token(iat=now, exp=now + 100)
    first = await v.verify(tok, policy())
    assert await v.verify(tok, policy()) is first
    clock.advance(111)
    await refused(v, tok, "token_expired")


async def test_memory_bounded_garbage(auth_server: AuthServer, issuer_cfg: IssuerFactory,
                                      make_verifier: Any) -> None:
    """100k distinct garbage tokens: all refused, caches stay at their bound, one JWKS fetch."""
    v = await make_verifier(issuer_cfg(token_cache_size=100))
    header = b64(json.dumps({"alg": "ES256", "typ": "at+jwt", "kid": "ec-1"}).encode())
    pol = policy()
    refusals = 0
    for n in range(100_000):
        try:
            await v.verify(f"{header}.{b64(str(n).encode())}.c2ln" if n % 2 else f"garbage{n}", pol)
        except InvalidTokenError:
            refusals += 1
    assert refusals == 100_000 and len(v.token_cache) == 0
    for n in range(300):
        await v.verify(auth_server.token("ec-1", jti=str(n)), policy())
    assert len(v.token_cache) == 100
    assert auth_server.jwks_fetches == 1



async def test_jwks_size_limit(auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any) -> None:
    """JWT-16c: a JWK Set over the size limit is not loaded (fail closed: 503, never OK)."""
    auth_server.published = [k.public_jwk() for k in auth_server.keys] + [{"kty": "x", "pad": "a" * 4096}]
    v = await make_verifier(issuer_cfg(jwks_max_bytes=2048))
    with pytest.raises(KeySourceUnavailableError):
        await v.verify(auth_server.token(), policy())
    assert not v.ready


async def test_background_refresh_and_close(auth_server: AuthServer, issuer_cfg: IssuerFactory) -> None:
    """Keys are refreshed in the background (no request needed); close() stops the task."""
    v = AccessTokenVerifier([issuer_cfg(jwks_refresh_s=0.05)])
    await v.start()
    try:
        for _ in range(200):
            if auth_server.jwks_fetches >= 3:
                break
            await asyncio.sleep(0.01)
        assert auth_server.jwks_fetches >= 3
    finally:
        await v.close()
    after = auth_server.jwks_fetches
    await asyncio.sleep(0.2)
    assert auth_server.jwks_fetches == after
