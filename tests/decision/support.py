"""Shared by the decision-service tests: the gateway config (DPoP, mTLS and open routes behind a
decision front), tokens from a real AS key, real DPoP proofs, client certificates from the session PKI."""

from __future__ import annotations

import json
import textwrap
from typing import Any
from urllib.parse import quote

from tests.conftest import Pki
from tests.dpop.e2e_support import AUD, ISS, AsKey
from tests.dpop.proofs import Signer, ath

ORIGIN_HOST = "api.bank.example"


def decision_yaml(
    pki: Pki,
    as_key: AsKey,
    *,
    origin: str = f"https://{ORIGIN_HOST}",
    decision: str = "decision: {enabled: true, grpc: {host: 127.0.0.1, port: 0}}",
    dpop: str = "",
    upstream: str = "http://127.0.0.1:9",
    nonce: bool = False,
) -> str:
    """Routes: /accounts (DPoP, scope accounts), /payments (mTLS-bound), /open (auth: none).

    The gateway's own listener is plain on loopback (not used by these tests); the decision front
    passes client certificates; the verified certificate goes upstream as X-Client-Cert-Thumbprint."""
    return textwrap.dedent(f"""
    listen: {{host: 127.0.0.1, port: 0, external_origin: "{origin}"}}
    admin: {{host: 127.0.0.1, port: 0}}
    issuers:
      - name: bank-as
        issuer: {ISS}
        jwks_file: {as_key.jwks}
    dpop:
      algorithms: [PS256, ES256, EdDSA]
      {dpop}
    client_certs:
      forward: {{header: X-Client-Cert-Thumbprint, format: x5t_s256}}
    routes:
      - id: accounts
        match: {{path_prefix: /accounts}}
        upstream: {upstream}
        auth: {{issuers: [bank-as], audience: [{AUD}], scopes: [accounts], sender_constraint: dpop,
                require_dpop_nonce: {str(nonce).lower()}}}
      - id: payments
        match: {{path_prefix: /payments}}
        upstream: {upstream}
        auth: {{issuers: [bank-as], audience: [{AUD}], scopes: [payments], sender_constraint: mtls}}
      - id: open
        match: {{path_prefix: /open}}
        upstream: {upstream}
        auth: none
    """) + textwrap.dedent(decision) + "\n"


def proof(k: Signer, token: str, *, htu: str, method: str = "GET", **claims: Any) -> str:
    return k.proof(htu=htu, htm=method, ath=ath(token), **claims)


def dpop_headers(token: str, p: str) -> list[tuple[str, str]]:
    return [("authorization", f"DPoP {token}"), ("dpop", p)]


def url_pem(pem: bytes) -> str:
    """Envoy's ``attributes.source.certificate``: the URL-encoded PEM."""
    return quote(pem.decode(), safe="")


def body_json(body: bytes) -> dict[str, Any]:
    out = json.loads(body)
    assert isinstance(out, dict)
    return out
