"""Helpers for the end-to-end DPoP tests: an AS key whose JWKS the gateway loads, configs, requests."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from .proofs import Signer, ath

ORIGIN = "https://api.bank.example"
AUD = "https://api.bank.example"
ISS = "https://as.bank.example"
CHALLENGE = re.compile(
    r'^DPoP error="(?P<error>[a-z_]+)"(, error_description="(?P<desc>[\x20\x21\x23-\x5B\x5D-\x7E]*)")?, '
    r'algs="PS256 ES256 EdDSA"$'
)


class AsKey:
    """The AS signing key (PS256); its JWKS is a file the gateway loads."""

    def __init__(self, tmp: Path) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid="as-1", alg="PS256", use="sig")
        self.jwks = tmp / "jwks.json"
        self.jwks.write_text(json.dumps({"keys": [jwk]}))

    def token(self, *, jkt: str | None = None, **over: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": ISS, "aud": AUD, "sub": "cust-123", "client_id": "tpp-1", "iat": now,
                                  "exp": now + 300, "jti": str(uuid.uuid4()), "scope": "accounts payments"}
        if jkt:
            claims["cnf"] = {"jkt": jkt}
        claims.update(over)
        return jwt.encode(claims, self.key, algorithm="PS256", headers={"kid": "as-1", "typ": "at+jwt"})


def config_body(as_key: AsKey, upstream_url: str, dpop: str = "", nonce_route: bool = False) -> str:
    return f"""
issuers:
  - name: bank-as
    issuer: {ISS}
    jwks_file: {as_key.jwks}
dpop:
  algorithms: [PS256, ES256, EdDSA]
{dpop}
routes:
  - id: accounts
    match: {{path_prefix: /accounts}}
    upstream: {upstream_url}
    external_origin: {ORIGIN}
    forward_credentials: false
    auth: {{issuers: [bank-as], audience: [{AUD}], scopes: [accounts], sender_constraint: dpop,
            require_dpop_nonce: {str(nonce_route).lower()}}}
"""


Send = Callable[..., Awaitable[tuple[int, dict[str, list[str]], str]]]


def dpop_headers(token: str, *proofs: str, scheme: str = "DPoP") -> list[tuple[str, str]]:
    return [("Authorization", f"{scheme} {token}"), *(("DPoP", p) for p in proofs)]


def proof_for(k: Signer, token: str, **claims: Any) -> str:
    claims.setdefault("htu", ORIGIN + "/accounts")
    claims.setdefault("ath", ath(token))
    return k.proof(**claims)
