"""RFC 9449 §4.3: one test per check, each proof violating exactly that check (DPOP-01..27)."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa

from gateway.bind import Binder

from .conftest import MakeBinder, policy
from .helpers import check, rejected
from .proofs import TOKEN, URL, Signer, ath, b64, b64json, private_jwk


async def test_valid_proofs_pass_for_each_default_alg(binder: Binder, k1: Signer, ps256: Signer, eddsa: Signer) -> None:
    """DPOP-09: ES256, PS256 and EdDSA proofs verify with cryptography; the binding carries jkt."""
    for signer in (k1, ps256, eddsa):
        binding = await check(binder, signer.proof(), signer.jkt)
        assert binding.type == "dpop"
        assert binding.thumbprint == signer.jkt


# --- DPOP-01/03: structure ----------------------------------------------------------------


async def test_two_dpop_headers_rejected(binder: Binder, k1: Signer) -> None:
    """DPOP-01a: the credentials stage refuses two DPoP lines before the binder sees them."""
    from multidict import CIMultiDict, CIMultiDictProxy

    from gateway.credentials import extract_credentials
    from gateway.errors import InvalidDpopProofError
    from gateway.model import AuthRequest

    h = CIMultiDict[str]()
    h.add("Authorization", f"DPoP {TOKEN}")
    h.add("DPoP", k1.proof())
    h.add("dpop", k1.proof())
    req = AuthRequest("GET", URL, "/accounts", "", CIMultiDictProxy(h), None)
    with pytest.raises(InvalidDpopProofError):
        extract_credentials(req, policy())


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda p: p.rsplit(".", 1)[0], id="two-segments"),
        pytest.param(lambda p: p + ".AAAA", id="four-segments"),
        pytest.param(lambda p: p + "..", id="jwe-five-segments"),
        pytest.param(lambda p: p.replace(".", "=.", 1), id="padding"),
        pytest.param(lambda p: p.replace(".", " .", 1), id="whitespace"),
        pytest.param(lambda p: json.dumps({"payload": p.split(".")[1], "signatures": []}), id="json-serialization"),
        pytest.param(lambda p: "é" + p, id="non-ascii"),
        pytest.param(lambda p: b64(b"not json") + "." + p.split(".", 1)[1], id="header-not-json"),
        pytest.param(lambda p: b64json([1, 2]) + "." + p.split(".", 1)[1], id="header-array"),
        pytest.param(lambda p: "", id="empty"),
    ],
)
async def test_malformed_compact_jws(binder: Binder, k1: Signer, mutate: object) -> None:
    """DPOP-03: anything but three base64url segments of JSON objects -> invalid_dpop_proof."""
    proof = mutate(k1.proof())  # type: ignore[operator]
    with pytest.raises(Exception) as info:
        await check(binder, proof, k1.jkt)
    # empty proof is refused as missing; the rest as malformed: always invalid_dpop_proof
    assert getattr(info.value, "error", None) == "invalid_dpop_proof"


async def test_payload_array_rejected(binder: Binder, k1: Signer) -> None:
    """DPOP-03e: the payload must be a JSON object."""
    proof = k1.sign_parts(b64json(k1.header()), b64json(["jti"]))
    await rejected(binder, proof, k1.jkt, reason="dpop_malformed")


# --- DPOP-04: required claims ----------------------------------------------------------------


@pytest.mark.parametrize("claim", ["jti", "htm", "htu", "iat", "ath"])
async def test_missing_claim(binder: Binder, k1: Signer, claim: str) -> None:
    """DPOP-04 / DPOP-18b: each required claim removed in turn."""
    exc = await rejected(binder, k1.proof(drop=(claim,)), k1.jkt, reason="dpop_missing_claim")
    assert claim in exc.description


@pytest.mark.parametrize(
    "claims",
    [{"iat": "1700000000"}, {"htu": [URL]}, {"jti": ""}, {"iat": True}, {"htm": 1}, {"iat": 10**30}],
    ids=["iat-string", "htu-array", "jti-empty", "iat-bool", "htm-number", "iat-huge"],
)
async def test_claim_types(binder: Binder, k1: Signer, claims: dict[str, Any]) -> None:
    """DPOP-04: claims with the wrong JSON type."""
    await rejected(binder, k1.proof(**claims), k1.jkt, reason="dpop_missing_claim")


# --- DPOP-05: typ ----------------------------------------------------------------------------


@pytest.mark.parametrize("typ", [None, "JWT", "at+jwt", "dpop+jwt+wrongyousee", 1])
async def test_bad_typ(binder: Binder, k1: Signer, typ: object) -> None:
    """DPOP-05a/b."""
    header = k1.header(typ=typ)
    if typ is None:
        del header["typ"]
    await rejected(binder, k1.proof(header=header), k1.jkt, reason="dpop_bad_typ")


@pytest.mark.parametrize("typ", ["application/dpop+jwt", "DPoP+JWT"])
async def test_typ_media_type_rules(binder: Binder, k1: Signer, typ: str) -> None:
    """DPOP-05c: RFC 7515 §4.1.9, media types are case-insensitive and "application/" optional."""
    assert (await check(binder, k1.proof(header=k1.header(typ=typ)), k1.jkt)).type == "dpop"


# --- DPOP-06: alg ----------------------------------------------------------------------------


async def test_alg_none(binder: Binder, k1: Signer) -> None:
    """DPOP-06a/b: none and noNE, with an empty signature."""
    for alg in ("none", "noNE"):
        proof = f"{b64json(k1.header(alg=alg))}.{b64json(k1.claims())}."
        await rejected(binder, proof, k1.jkt)
        proof = f"{b64json(k1.header(alg=alg))}.{b64json(k1.claims())}.AAAA"
        await rejected(binder, proof, k1.jkt, reason="dpop_bad_alg")


async def test_alg_hs256_key_confusion(binder: Binder, k1: Signer) -> None:
    """DPOP-06c: HMAC with the public jwk as the secret."""
    h, c = b64json(k1.header(alg="HS256")), b64json(k1.claims())
    mac = hmac.new(json.dumps(k1.jwk).encode(), f"{h}.{c}".encode(), hashlib.sha256).digest()
    await rejected(binder, f"{h}.{c}.{b64(mac)}", k1.jkt, reason="dpop_bad_alg")


async def test_rs256_refused_by_default_allowed_when_listed(make_binder: MakeBinder) -> None:
    """DPOP-06d: RS256 only when the operator lists it."""
    from .proofs import rsa_signer

    signer = rsa_signer("RS256")
    await rejected(make_binder(), signer.proof(), signer.jkt, reason="dpop_bad_alg")
    allowed = make_binder(algorithms=["ES256", "RS256"])
    assert (await check(allowed, signer.proof(), signer.jkt)).type == "dpop"


async def test_alg_missing(binder: Binder, k1: Signer) -> None:
    """DPOP-06e."""
    await rejected(binder, k1.proof(drop_header=("alg",)), k1.jkt, reason="dpop_bad_alg")


# --- DPOP-07/08: jwk -------------------------------------------------------------------------


async def test_jwk_missing_or_located_elsewhere(binder: Binder, k1: Signer) -> None:
    """DPOP-07a/f/g: no jwk (jku / x5c instead) -> refused; nothing is ever fetched."""
    await rejected(binder, k1.proof(drop_header=("jwk",)), k1.jkt, reason="dpop_bad_jwk")
    header = k1.header(jku="https://attacker.example/jwks")
    del header["jwk"]
    await rejected(binder, k1.proof(header=header), k1.jkt, reason="dpop_bad_jwk")
    header = k1.header(x5c=["MIIB"])
    del header["jwk"]
    await rejected(binder, k1.proof(header=header), k1.jkt, reason="dpop_bad_jwk")


async def test_kid_is_ignored(binder: Binder, k1: Signer) -> None:
    """DPOP-07h: a kid never selects a key; the jwk is used."""
    assert (await check(binder, k1.proof(header=k1.header(kid="as-1")), k1.jkt)).type == "dpop"


async def test_jwk_oct(binder: Binder, k1: Signer) -> None:
    """DPOP-07b: a symmetric key."""
    await rejected(binder, k1.proof(header=k1.header(jwk={"kty": "oct", "k": "c2VjcmV0"})), k1.jkt,
                   reason="dpop_bad_jwk")


async def test_key_type_must_match_alg(binder: Binder, k1: Signer, eddsa: Signer) -> None:
    """DPOP-07c: ES256 with a P-384 key; an Ed25519 key under ES256; an EC key under EdDSA."""
    p384 = Signer(ec.generate_private_key(ec.SECP384R1()), "ES384")
    await rejected(binder, p384.proof(header=p384.header(alg="ES256"), sign_alg="ES384"), p384.jkt,
                   reason="dpop_bad_jwk")
    await rejected(binder, k1.proof(header=k1.header(jwk=eddsa.jwk)), eddsa.jkt, reason="dpop_bad_jwk")
    await rejected(binder, eddsa.proof(header=eddsa.header(jwk=k1.jwk)), k1.jkt, reason="dpop_bad_jwk")


async def test_secp256k1_refused(binder: Binder) -> None:
    """DPOP-07c: a curve we do not accept, labelled as P-256 or honestly."""
    k = ec.generate_private_key(ec.SECP256K1())
    signer = Signer.__new__(Signer)
    signer.key, signer.alg = k, "ES256"
    nums = k.public_key().public_numbers()
    signer.jwk = {"kty": "EC", "crv": "secp256k1", "x": b64(nums.x.to_bytes(32, "big")),
                  "y": b64(nums.y.to_bytes(32, "big"))}
    signer.jkt = "x"
    await rejected(binder, signer.proof(), signer.jkt, reason="dpop_bad_jwk")
    signer.jwk = dict(signer.jwk, crv="P-256")  # not on P-256: the point check refuses it
    await rejected(binder, signer.proof(), signer.jkt, reason="dpop_bad_jwk")


async def test_rsa_1024_refused(binder: Binder) -> None:
    """DPOP-07d: FAPI 2.0 §5.4.1, RSA >= 2048 bits."""
    small = Signer(rsa.generate_private_key(public_exponent=65537, key_size=1024), "PS256")
    exc = await rejected(binder, small.proof(), small.jkt, reason="dpop_bad_jwk")
    assert "2048" in exc.description


async def test_ed448_refused(binder: Binder) -> None:
    """DPOP-07e: EdDSA means Ed25519 under FAPI 2.0."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = ed448.Ed448PrivateKey.generate()
    x = b64(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    h = {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": {"kty": "OKP", "crv": "Ed448", "x": x}}
    c = b64json({"jti": "a", "htm": "GET", "htu": URL, "iat": 1, "ath": ath(TOKEN)})
    sig = key.sign(f"{b64json(h)}.{c}".encode())
    await rejected(binder, f"{b64json(h)}.{c}.{b64(sig)}", "x", reason="dpop_bad_jwk")


@pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi", "oth", "k"])
async def test_private_members_refused(binder: Binder, ps256: Signer, member: str) -> None:
    """DPOP-08: any private member, even with a valid signature."""
    jwk = dict(ps256.jwk, **{member: private_jwk(ps256.key).get(member, "AQAB")})
    exc = await rejected(binder, ps256.proof(header=ps256.header(jwk=jwk)), ps256.jkt, reason="dpop_bad_jwk")
    assert "private" in exc.description
    assert jwk[member] not in exc.description


async def test_ec_private_d_refused(binder: Binder, k1: Signer, eddsa: Signer) -> None:
    """DPOP-08: d on EC and OKP keys (suite SetDpopHeaderJwkToPrivateKey)."""
    for s in (k1, eddsa):
        await rejected(binder, s.proof(header=s.header(jwk=private_jwk(s.key))), s.jkt, reason="dpop_bad_jwk")


# --- DPOP-09: signature ---------------------------------------------------------------------


async def test_signature_byte_flipped(binder: Binder, k1: Signer) -> None:
    """DPOP-09a."""
    h, c, s = k1.proof().split(".")
    sig = bytearray(__import__("base64").urlsafe_b64decode(s + "=="))
    sig[5] ^= 1
    await rejected(binder, f"{h}.{c}.{b64(bytes(sig))}", k1.jkt, reason="dpop_bad_signature")


async def test_signed_by_other_key(binder: Binder, k1: Signer, k2: Signer) -> None:
    """DPOP-09b: jwk is K1 but K2 signed."""
    h, c = b64json(k1.header()), b64json(k1.claims())
    await rejected(binder, k2.sign_parts(h, c), k1.jkt, reason="dpop_bad_signature")


async def test_der_signature_refused(binder: Binder, k1: Signer) -> None:
    """DPOP-09c: RFC 7518 §3.4 wants raw R||S, not DER."""
    await rejected(binder, k1.proof(der=True), k1.jkt, reason="dpop_bad_signature")


async def test_signature_wrong_length(binder: Binder, k1: Signer, ps256: Signer, eddsa: Signer) -> None:
    """DPOP-09d."""
    for s in (k1, ps256, eddsa):
        h, c, sig = s.proof().split(".")
        await rejected(binder, f"{h}.{c}.{sig}AAAA", s.jkt, reason="dpop_bad_signature")


async def test_ps256_with_wrong_salt_length(binder: Binder, ps256: Signer) -> None:
    """RFC 7518 §3.5: PSS salt = hash length; a max-length salt signature is not PS256."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    h, c = b64json(ps256.header()), b64json(ps256.claims())
    assert isinstance(ps256.key, rsa.RSAPrivateKey)
    sig = ps256.key.sign(f"{h}.{c}".encode(), padding.PSS(padding.MGF1(hashes.SHA256()), 100), hashes.SHA256())
    await rejected(binder, f"{h}.{c}.{b64(sig)}", ps256.jkt, reason="dpop_bad_signature")


# --- DPOP-10: crit and extra members -----------------------------------------------------------


async def test_extra_members_ignored(binder: Binder, k1: Signer) -> None:
    """DPOP-10a."""
    proof = k1.proof(header=k1.header(tx_id="x"), tx_id_key="y")
    assert (await check(binder, proof, k1.jkt)).type == "dpop"


@pytest.mark.parametrize("crit", [{"crit": ["foo"], "foo": 1}, {"crit": ["b64"], "b64": False}])
async def test_crit_refused(binder: Binder, k1: Signer, crit: dict[str, object]) -> None:
    """DPOP-10b/c."""
    await rejected(binder, k1.proof(header=k1.header(**crit)), k1.jkt, reason="dpop_bad_header")


# --- DPOP-11..13: htm / htu ------------------------------------------------------------------


@pytest.mark.parametrize("htm", ["PUT", "get"])
async def test_htm_mismatch(binder: Binder, k1: Signer, htm: str) -> None:
    """DPOP-11a/b: the description names htm."""
    exc = await rejected(binder, k1.proof(htm=htm), k1.jkt, reason="dpop_htm_mismatch")
    assert "htm" in exc.description and "GET" in exc.description


async def test_htm_head_vs_get(binder: Binder, k1: Signer) -> None:
    """DPOP-11c."""
    await rejected(binder, k1.proof(htm="GET"), k1.jkt, method="HEAD", reason="dpop_htm_mismatch")


@pytest.mark.parametrize(
    ("htu", "url"),
    [
        (URL, URL + "?from=2024"),
        (URL + "?x=1#f", URL),
        ("HTTPS://API.BANK.EXAMPLE/accounts", URL),
        ("https://api.bank.example:443/accounts", URL),
        ("https://api.bank.example/%61ccounts", URL),
        ("https://api.bank.example/x/../accounts", URL),
        ("https://api.bank.example/./accounts", URL),
        ("https://api.bank.example/a%2fb", "https://api.bank.example/a%2Fb"),
    ],
)
async def test_htu_accepted(binder: Binder, k1: Signer, htu: str, url: str) -> None:
    """DPOP-12a/b, DPOP-13a-d: query/fragment ignored on both sides, RFC 3986 normalisation."""
    assert (await check(binder, k1.proof(htu=htu), k1.jkt, url=url.split("?")[0])).type == "dpop"


@pytest.mark.parametrize(
    ("htu", "part"),
    [
        ("https://api.bank.example/payments", "path"),
        ("http://api.bank.example/accounts", "scheme"),
        ("https://api.bank.example/accounts/", "path"),
        ("https://other.example/accounts", "host"),
        ("https://api.bank.example:8443/accounts", "port"),
        ("https://api.bank.example/Accounts", "path"),
        ("https://u:p@api.bank.example/accounts", "userinfo"),
        ("/accounts", "http"),
        ("https://api.bank.example/%zz", "percent"),
    ],
)
async def test_htu_rejected(binder: Binder, k1: Signer, htu: str, part: str) -> None:
    """DPOP-12c-g, DPOP-13e: the description names the differing part, not the attacker's URL."""
    exc = await rejected(binder, k1.proof(htu=htu), k1.jkt, reason="dpop_htu_mismatch")
    assert "htu" in exc.description and part in exc.description
    assert "other.example" not in exc.description
