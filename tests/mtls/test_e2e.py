"""Certificate-bound tokens through the real gateway over real TLS (MTLS-01..05, -13; PRX-05).

Status, WWW-Authenticate, and what the recording upstream saw (nothing, on a refusal).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from gateway.config.mtls import DEFAULT_STRIP_HEADERS
from gateway.model import sha256_b64url
from gateway.tls.front_proxy import parse_xfcc
from tests.conftest import GatewayFactory, Pki, Upstream

from .conftest import make_crl, make_self_signed

pytestmark = pytest.mark.timeout(60)

ISSUER = "https://as.bank.example"
AUD = "https://api.bank.example"


class Issuer:
    def __init__(self, directory: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        jwk = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        jwk.update(kid="k1", alg="ES256", use="sig")
        self.jwks_file = directory / "jwks.json"
        self.jwks_file.write_text(json.dumps({"keys": [jwk]}))

    def token(self, x5t: str | None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": ISSUER, "sub": "cust-1", "aud": AUD, "client_id": "tpp-a",
                                  "scope": "accounts", "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
        if x5t is not None:
            claims["cnf"] = {"x5t#S256": x5t}
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"typ": "at+jwt", "kid": "k1"})


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(tmp_path)


def config(issuer: Issuer, upstream: Upstream, client_certs: str = "") -> str:
    return f"""
    issuers:
      - name: bank-as
        issuer: {ISSUER}
        jwks_file: {issuer.jwks_file}
    routes:
      - id: accounts
        match: {{path_prefix: /accounts}}
        upstream: {upstream.url}
        auth: {{issuers: [bank-as], audience: {AUD}, scopes: [accounts], sender_constraint: mtls}}
      - id: any
        match: {{path_prefix: /any}}
        upstream: {upstream.url}
        auth: {{issuers: [bank-as], audience: {AUD}, scopes: [accounts], sender_constraint: any}}
    {client_certs}
    """


async def call(port: int, pki: Pki, cert: Any, path: str, headers: dict[str, str]) -> tuple[int, Any, bytes]:
    ctx = pki.client_context(cert)
    async with aiohttp.ClientSession() as s, s.get(
        f"https://localhost:{port}{path}", ssl=ctx, headers=headers
    ) as r:
        return r.status, r.headers, await r.read()


async def test_bound_token_right_cert_other_cert_no_cert(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, issuer: Issuer
) -> None:
    """MTLS-01 b, MTLS-04, MTLS-05 (client_auth: optional)."""
    gw = await gateway(config(issuer, upstream))
    token_a = issuer.token(sha256_b64url(pki.client_a.der))
    auth = {"Authorization": f"Bearer {token_a}"}

    status, _, _ = await call(gw.port, pki, pki.client_a, "/accounts/1", auth)
    assert status == 200 and len(upstream.requests) == 1

    for cert in (pki.client_b, None):
        for path in ("/accounts/1", "/any/1"):  # a bound token is checked whatever the route says
            status, headers, body = await call(gw.port, pki, cert, path, auth)
            assert status == 401, (cert, path)
            www = headers["WWW-Authenticate"]
            assert 'error="invalid_token"' in www
            assert json.loads(body)["error"] == "invalid_token"
    assert len(upstream.requests) == 1  # refusals never reached the upstream


async def test_mtls_route_refuses_unbound_token(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, issuer: Issuer
) -> None:
    gw = await gateway(config(issuer, upstream))
    status, headers, _ = await call(gw.port, pki, pki.client_a, "/accounts/1",
                                    {"Authorization": f"Bearer {issuer.token(None)}"})
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert upstream.requests == []


async def test_client_sent_identity_headers_never_reach_upstream(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, issuer: Issuer
) -> None:
    """MTLS-02 a/c, MTLS-13, PRX-05: forged cert/user headers don't bind and aren't forwarded."""
    gw = await gateway(config(issuer, upstream))
    token_a = issuer.token(sha256_b64url(pki.client_a.der))
    forged = {name: "forged" for name in DEFAULT_STRIP_HEADERS}
    forged["Client-Cert"] = ":" + base64.b64encode(pki.client_a.der).decode() + ":"
    forged["X-Forwarded-Client-Cert"] = "Hash=" + "0" * 64

    # Client B presents A's certificate in headers: still B's handshake cert that counts.
    status, _, _ = await call(gw.port, pki, pki.client_b, "/accounts/1",
                              {"Authorization": f"Bearer {token_a}", **forged})
    assert status == 401 and upstream.requests == []

    status, _, _ = await call(gw.port, pki, pki.client_a, "/accounts/1",
                              {"Authorization": f"Bearer {token_a}", **forged})
    assert status == 200
    seen = {name.lower() for name, _ in upstream.last.headers}
    leaked = {name for name in DEFAULT_STRIP_HEADERS if name.lower() in seen}
    assert not leaked


def _wired(gw: Any) -> Any:
    certs = getattr(gw.state_holder.current, "client_certs", None)
    if certs is None:
        pytest.skip("gateway.tls.clientcerts.ClientCertificates is not wired into gateway/app.py yet")
    return certs


async def test_verified_cert_forwarded_upstream_and_client_copy_dropped(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, issuer: Issuer
) -> None:
    """MTLS-13: exactly one forwarded-cert header upstream, ours, for the handshake's certificate."""
    gw = await gateway(config(issuer, upstream, "client_certs: {forward: {header: X-Forwarded-Client-Cert}}"))
    _wired(gw)
    token_a = issuer.token(sha256_b64url(pki.client_a.der))
    status, _, _ = await call(gw.port, pki, pki.client_a, "/accounts/1",
                              {"Authorization": f"Bearer {token_a}", "X-Forwarded-Client-Cert": "Hash=00"})
    assert status == 200
    values = upstream.last.all("X-Forwarded-Client-Cert")
    assert len(values) == 1 and values[0].startswith("Hash=")
    assert parse_xfcc(values[0])[0] == pki.client_a.der


async def test_revoked_cert_refused_through_the_gateway(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, issuer: Issuer, tmp_path: Path
) -> None:
    serial = x509.load_der_x509_certificate(pki.client_a.der).serial_number
    crl = tmp_path / "ca.crl"
    crl.write_bytes(make_crl(pki.ca, [serial]))
    gw = await gateway(config(issuer, upstream, f"client_certs: {{crl_files: [{crl}]}}"))
    _wired(gw)
    token_a = issuer.token(sha256_b64url(pki.client_a.der))
    status, headers, _ = await call(gw.port, pki, pki.client_a, "/accounts/1", {"Authorization": f"Bearer {token_a}"})
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert upstream.requests == []


async def test_xfcc_from_trusted_proxy_through_the_gateway(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, issuer: Issuer
) -> None:
    """The front proxy (trusted by its own mTLS identity) forwards client A's certificate."""
    proxy_x5t = sha256_b64url(pki.client_b.der)  # client B plays the ingress here
    gw = await gateway(config(issuer, upstream, f"""
    client_certs:
      front_proxy: {{format: xfcc, trusted_identities: [{{x5t_s256: "{proxy_x5t}"}}]}}
    """))
    _wired(gw)
    token_a = issuer.token(sha256_b64url(pki.client_a.der))
    xfcc = f'Cert="{quote(pki.client_a.pem.decode(), safe="")}"'
    status, _, _ = await call(gw.port, pki, pki.client_b, "/accounts/1",
                              {"Authorization": f"Bearer {token_a}", "X-Forwarded-Client-Cert": xfcc})
    assert status == 200
    assert upstream.last.header("X-Forwarded-Client-Cert") is None  # consumed, then stripped
    # The same kind of header from anyone else is ignored: client A sends B's certificate with B's
    # token, but A's own handshake certificate is what counts.
    status, _, _ = await call(gw.port, pki, pki.client_a, "/accounts/1",
                              {"Authorization": f"Bearer {issuer.token(sha256_b64url(pki.client_b.der))}",
                               "X-Forwarded-Client-Cert": f'Cert="{quote(pki.client_b.pem.decode(), safe="")}"'})
    assert status == 401
    # Malformed header from the trusted proxy: 400, never 500.
    status, _, _ = await call(gw.port, pki, pki.client_b, "/accounts/1",
                              {"Authorization": f"Bearer {token_a}", "X-Forwarded-Client-Cert": 'Cert="%ZZ"'})
    assert status == 400
    assert len(upstream.requests) == 1


async def test_self_signed_client_through_the_gateway(
    gateway: GatewayFactory, pki: Pki, upstream: Upstream, issuer: Issuer, tmp_path: Path
) -> None:
    """MTLS-07 a: a registered self-signed certificate (anchor directory) + its bound token -> OK."""
    anchors = tmp_path / "anchors"
    anchors.mkdir()
    client_s = make_self_signed("self-signed-tpp")
    (anchors / "tpp.pem").write_bytes(client_s.cert_pem)
    gw = await gateway(config(issuer, upstream, f"client_certs: {{self_signed: {{directory: {anchors}}}}}"))
    _wired(gw)
    ctx = pki.client_context()
    client_s.configure_cert(ctx, tmp_path)
    token_s = issuer.token(sha256_b64url(client_s.der))
    async with aiohttp.ClientSession() as s, s.get(
        f"https://localhost:{gw.port}/accounts/1", ssl=ctx, headers={"Authorization": f"Bearer {token_s}"}
    ) as r:
        assert r.status == 200
    assert upstream.last.header("X-Auth-Cnf-Thumbprint") in (None, sha256_b64url(client_s.der))
