"""The signature-base wrapper (``gateway.signatures.base``): the library's lower-level entry point
fed with our own parse must agree with the library's high-level API, keep every check the
library's ``verify`` made on the fields, and its serialisation cache must never mix up two
identifiers that compare equal but serialise differently."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, HTTPSignatureKeyResolver, algorithms
from http_sf.types import Token
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config.signatures import HttpSignaturesConfig, SigningKeyConfig
from gateway.signatures import base
from gateway.signatures.keys import load_signing_key
from gateway.signatures.sign import ResponseSigner, SignedRequestView
from gateway.signatures.verify import signature_verifies
from tests.signatures.support import ClientKey, content_digest, sign

URL = "https://api.bank.example/payments?x=1"


def _headers() -> dict[str, str]:
    body = b'{"amount":"10.00"}'
    return {"Authorization": "DPoP abc.def.ghi", "DPoP": "proof.jwt.value", "Content-Type": "application/json",
            "Content-Digest": content_digest(body), "Content-Length": str(len(body))}


def test_serialisation_cache_keeps_types_apart() -> None:
    pairs = [
        ([("content-digest", {"key": "sha-256"})], [("content-digest", {"key": Token("sha-256")})]),
        ([("@method", {"req": True})], [("@method", {"req": 1})]),
        ([("@query-param", {"name": "a"})], [("@query-param", {"name": "b"})]),
    ]
    for left, right in pairs:
        for _ in range(2):  # the second round reads the cache
            a, b = str(base.components(left)[0]), str(base.components(right)[0])
            assert a != b
    assert str(base.components([("@method", {"req": True})])[0]) == '"@method";req'
    assert str(base.components([("content-digest", {"key": Token("sha-256")})])[0]) == '"content-digest";key=sha-256'


def test_request_signature_verifies_like_the_library() -> None:
    key = ClientKey("ES256", "k1")
    signed = sign(key, "POST", URL, _headers())
    pub = key.key.public_key()
    assert signature_verifies("POST", URL, CIMultiDictProxy(CIMultiDict(signed)), pub, algorithms.ECDSA_P256_SHA256,
                              tag="fapi-2-request")

    class _One(HTTPSignatureKeyResolver):
        def resolve_public_key(self, key_id: str) -> Any:
            return pub

    class _Msg:
        method, url, headers = "POST", URL, signed

    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ECDSA_P256_SHA256, key_resolver=_One())
    assert verifier.verify(_Msg(), max_age=None, expect_tag="fapi-2-request")
    # A field the signature covers, sent as two lines: joined in wire order, as the library does.
    lines = CIMultiDict(signed)
    lines.popall("DPoP")
    lines.add("DPoP", "proof.jwt")
    lines.add("DPoP", "value")
    assert not signature_verifies("POST", URL, CIMultiDictProxy(lines), pub, algorithms.ECDSA_P256_SHA256,
                                  tag="fapi-2-request")


def test_field_checks_of_the_library_are_kept() -> None:
    """What the library's ``verify`` refused in any member, selected or not, is still refused."""
    key = ClientKey("ES256", "k1")
    signed = sign(key, "POST", URL, _headers())
    pub = key.key.public_key()

    def ok(**changes: str) -> bool:
        return signature_verifies("POST", URL, {**signed, **changes}, pub, algorithms.ECDSA_P256_SHA256,
                                  tag="fapi-2-request")

    assert ok()
    sig, sig_input = signed["Signature"], signed["Signature-Input"]
    other_in = 'other=("@method");created=1;keyid="x"'
    other_sig = "other=:" + base64.b64encode(b"x" * 64).decode() + ":"
    assert ok(**{"Signature-Input": f"{sig_input}, {other_in}", "Signature": f"{sig}, {other_sig}"})
    # labels differ between the two fields
    assert not ok(**{"Signature": f"{sig}, {other_sig}"})
    assert not ok(**{"Signature-Input": f"{sig_input}, {other_in}"})
    # another member's parameter of the wrong type, or not an inner list / byte sequence
    assert not ok(**{"Signature-Input": f'{sig_input}, other=("@method");created="1";keyid="x"',
                     "Signature": f"{sig}, {other_sig}"})
    assert not ok(**{"Signature-Input": f'{sig_input}, other="x"', "Signature": f"{sig}, {other_sig}"})
    assert not ok(**{"Signature-Input": f"{sig_input}, {other_in}", "Signature": f'{sig}, other="x"'})
    # unknown parameter, created in the future, expired
    assert not ok(**{"Signature-Input": sig_input + ';foo="bar"'})
    future = int(datetime.now(UTC).timestamp()) + 600
    assert not ok(**{"Signature-Input": sig_input.replace("created=", f"created={future};x=")})


def test_response_base_matches_the_library_prepare(tmp_path: Any) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = tmp_path / "gw.pem"
    private = ec.generate_private_key(ec.SECP256R1())
    pem.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    cfg = HttpSignaturesConfig(signing_keys=(SigningKeyConfig(kid="gw-1", file=str(pem), alg="ES256"),),
                               active_key="gw-1")
    signer = ResponseSigner(load_signing_key(cfg.signing_keys[0]))
    req = CIMultiDictProxy(CIMultiDict(_headers()))
    body = b'{"status":"ok"}'
    out = dict(signer.headers_for(201, CIMultiDict({"Content-Type": "application/json"}), body,
                                  SignedRequestView("POST", URL, req)))
    assert out["Content-Digest"] == content_digest(body)

    class _Req:
        method, url, headers = "POST", URL, dict(req)

    class _Resp:
        status_code, request = 201, _Req()
        headers = {"Content-Type": "application/json", **out}

    class _One(HTTPSignatureKeyResolver):
        def resolve_public_key(self, key_id: str) -> Any:
            return private.public_key()

    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ECDSA_P256_SHA256, key_resolver=_One())
    [result] = verifier.verify(_Resp(), max_age=None, expect_tag="fapi-2-response", body=body)
    assert list(result.covered_components)[:-1] == [
        '"@status"', '"content-digest"', '"content-type"', '"@method";req', '"@target-uri";req',
        '"authorization";req', '"dpop";req', '"content-digest";req']
    # The library's own prepare() gives the same @signature-params for the same inputs.
    created = result.parameters["created"]
    assert isinstance(created, int)
    prepared = HTTPMessageSigner(signature_algorithm=algorithms.ECDSA_P256_SHA256).prepare(
        _Resp(), key_id="gw-1", tag="fapi-2-response", include_alg=False, label="sig",
        created=datetime.fromtimestamp(created, UTC), use_existing_digest=True,
        covered_component_ids=[c for c in result.covered_components if c != '"@signature-params"'],
    )
    assert out["Signature-Input"] == f"sig={prepared.signature_params}"
