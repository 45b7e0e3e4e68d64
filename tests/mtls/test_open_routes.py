"""A refused client certificate on an ``auth: none`` route (issue #13 finding 20, part 2).

A 401 must carry ``WWW-Authenticate`` (RFC 9110 §15.5.2), and a route that does not authenticate
has no challenge to offer. A certificate the gateway refuses (revoked, expired, wrong usage, not a
registration's own) is refused on every route, as the handshake would have refused it: on routes
that authenticate with 401 ``invalid_token`` and a challenge, on routes that don't with 403 (RFC
9110 §15.5.4), which needs none. Over real TLS.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from gateway.model import sha256_b64url
from tests.conftest import ClientCert, GatewayFactory, Pki, Upstream

from .conftest import make_crl
from .test_e2e import AUD, ISSUER, Issuer

pytestmark = pytest.mark.timeout(60)


def _yaml(issuer: Issuer, upstream: Upstream, crl: Path) -> str:
    return f"""
issuers:
  - name: bank-as
    issuer: {ISSUER}
    jwks_file: {issuer.jwks_file}
routes:
  - id: open
    match: {{path_prefix: /open}}
    upstream: {upstream.url}
    auth: none
  - id: accounts
    match: {{path_prefix: /accounts}}
    upstream: {upstream.url}
    auth: {{issuers: [bank-as], audience: {AUD}, scopes: [accounts], sender_constraint: mtls}}
client_certs: {{crl_files: [{crl}]}}
"""


async def _get(port: int, pki: Pki, cert: ClientCert | None, path: str,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict[str, str]]:
    async with aiohttp.ClientSession() as s, s.get(
        f"https://localhost:{port}{path}", ssl=pki.client_context(cert), headers=headers or {}
    ) as r:
        return r.status, dict(r.headers), json.loads(await r.read())


@pytest.mark.parametrize("client_auth", ["optional", "required"])
async def test_refused_certificate_on_an_open_route_is_403_without_challenge(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, tmp_path: Path, client_auth: str
) -> None:
    issuer = Issuer(tmp_path)
    from cryptography import x509

    crl = tmp_path / "ca.crl"
    crl.write_bytes(make_crl(pki.ca, [x509.load_der_x509_certificate(pki.client_a.der).serial_number]))
    gw = await gateway(_yaml(issuer, upstream, crl), client_auth=client_auth)

    status, headers, body = await _get(gw.port, pki, pki.client_a, "/open/rates")
    assert status == 403, (status, headers)
    assert "WWW-Authenticate" not in headers
    assert body == {"error": "client_cert_revoked", "error_description": "client certificate not accepted"}
    assert upstream.requests == []

    # Other clients use the open route as before.
    status, _, _ = await _get(gw.port, pki, pki.client_b, "/open/rates")
    assert status == 200
    if client_auth == "optional":
        status, _, _ = await _get(gw.port, pki, None, "/open/rates")
        assert status == 200

    # A route that authenticates keeps 401 invalid_token, with its challenge.
    token = issuer.token(sha256_b64url(pki.client_a.der))
    status, headers, body = await _get(gw.port, pki, pki.client_a, "/accounts/1", {"Authorization": f"Bearer {token}"})
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert body["error"] == "invalid_token"
    assert len(upstream.requests) == (2 if client_auth == "optional" else 1)
