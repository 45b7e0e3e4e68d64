"""Helpers for the HTTP message signature tests: client keys, a request signer (the
``http-message-signatures`` library as a client would use it), configs and a recording upstream."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms

from gateway.signatures.algorithms import PS256
from tests.dpop.e2e_support import AUD, ISS, ORIGIN, AsKey
from tests.dpop.proofs import jkt, public_jwk

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
JWKS_PATH = "/.well-known/gateway-signing-jwks.json"


class ClientKey:
    """A client's signing key, published in its JWKS file under ``kid``."""

    def __init__(self, kind: str, kid: str) -> None:
        self.kind, self.kid = kind, kid
        self.key: PrivateKey
        if kind == "ES256":
            self.key = ec.generate_private_key(ec.SECP256R1())
            self.algorithm: type[algorithms.HTTPSignatureAlgorithm] = algorithms.ECDSA_P256_SHA256
        elif kind == "Ed25519":
            self.key = ed25519.Ed25519PrivateKey.generate()
            self.algorithm = algorithms.ED25519
        else:
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.algorithm = PS256
        self.jwk: dict[str, str] = {**public_jwk(self.key), "kid": kid, "use": "sig"}
        self.thumbprint = jkt(self.jwk)

    def pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def write_jwks(path: Path, *keys: ClientKey) -> Path:
    path.write_text(json.dumps({"keys": [k.jwk for k in keys]}))
    return path


class _Resolver(HTTPSignatureKeyResolver):
    def __init__(self, key: Any) -> None:
        self.key = key

    def resolve_private_key(self, key_id: str) -> Any:
        return self.key

    def resolve_public_key(self, key_id: str) -> Any:
        return self.key.public_key()


class _Msg:
    def __init__(self, method: str, url: str, headers: dict[str, str]) -> None:
        self.method, self.url, self.headers = method, url, headers


def content_digest(body: bytes, alg: str = "sha-256") -> str:
    h = hashlib.sha256(body) if alg == "sha-256" else hashlib.sha512(body)
    return f"{alg}=:{base64.b64encode(h.digest()).decode()}:"


def sign(
    key: ClientKey,
    method: str,
    url: str,
    headers: dict[str, str],
    *,
    components: Sequence[str] | None = None,
    tag: str | None = "fapi-2-request",
    keyid: str | None = None,
    created: int | None = None,
    expires: int | None = None,
    nonce: str | None = None,
    label: str = "sig",
) -> dict[str, str]:
    """``headers`` plus Signature-Input / Signature; the FAPI components by default."""
    if components is None:
        components = ["@method", "@target-uri", "authorization"]
        if "DPoP" in headers:
            components.append("dpop")
        if "Content-Digest" in headers:
            components.append("content-digest")
    msg = _Msg(method, url, dict(headers))
    signer = HTTPMessageSigner(signature_algorithm=key.algorithm, key_resolver=_Resolver(key.key))
    signer.sign(
        msg, key_id=keyid or key.kid, label=label, tag=tag, nonce=nonce, include_alg=False,
        created=datetime.fromtimestamp(created, UTC) if created is not None else None,
        expires=datetime.fromtimestamp(expires, UTC) if expires is not None else None,
        covered_component_ids=tuple(components), use_existing_digest="Content-Digest" in headers,
    )
    return msg.headers


def config_body(
    as_key: AsKey, upstream_url: str, jwks1: Path, jwks2: Path, gw_key: Path, *, request: str = "required",
    response: str = "on", extra_route: str = "", max_response_bytes: int = 1048576,
) -> str:
    return f"""
issuers:
  - name: bank-as
    issuer: {ISS}
    jwks_file: {as_key.jwks}
dpop:
  algorithms: [PS256, ES256, EdDSA]
clients:
  - client_id: tpp-1
    jwks_file: {jwks1}
    jwks_refetch_cooldown_s: 0
  - client_id: tpp-2
    jwks_file: {jwks2}
http_signatures:
  signing_keys: [{{kid: gw-1, file: {gw_key}, alg: ES256}}]
  active_key: gw-1
  jwks_path: {JWKS_PATH}
routes:
  - id: payments
    match: {{path_prefix: /payments}}
    upstream: {upstream_url}
    external_origin: {ORIGIN}
    auth: {{issuers: [bank-as], audience: [{AUD}], scopes: [payments], sender_constraint: dpop}}
    http_signatures: {{request: {request}, response: "{response}", identity_header: X-Signature-Key,
                      max_response_bytes: {max_response_bytes}}}
{extra_route}
"""
