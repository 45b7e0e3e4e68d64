"""Token stages through the real gateway over TLS: status, WWW-Authenticate, and what the upstream saw."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from tests.conftest import GatewayFactory, Pki, Upstream
from tests.dpop.proofs import ath, es256

from .authserver import AuthServer, raw_jws
from .conftest import AUD

pytestmark = pytest.mark.timeout(60)


def body(auth_server: AuthServer, pki: Pki, upstream: Upstream) -> str:
    return f"""
    issuers:
      - name: bank-as
        issuer: {auth_server.issuer}
        jwks_uri: {auth_server.url}/jwks
        ca: {pki.ca_pem}
        mode: jwt_with_introspection_fallback
        introspection:
          endpoint: {auth_server.url}/introspect
          client_auth: {{method: client_secret_basic, client_id: gateway, client_secret: "s3cret:+/="}}
    routes:
      - id: accounts
        match: {{path_prefix: /accounts}}
        upstream: {upstream.url}
        auth: {{issuers: [bank-as], audience: {AUD}, scopes: [accounts], realm: bank}}
      - id: payments
        match: {{path_prefix: /payments, methods: [POST]}}
        upstream: {upstream.url}
        auth: {{issuers: [bank-as], audience: {AUD}, method_scopes: {{POST: [payments]}}, realm: bank}}
      - id: plain
        match: {{path_prefix: /plain}}
        upstream: {upstream.url}
        auth: {{issuers: [bank-as], audience: {AUD}, sender_constraint: none, realm: bank}}
    """


@pytest.fixture
async def gw(gateway: GatewayFactory, auth_server: AuthServer, pki: Pki, upstream: Upstream) -> Any:
    return await gateway(body(auth_server, pki, upstream))


async def call(gw: Any, pki: Pki, method: str, path: str, headers: dict[str, str] | None = None,
               cert: bool = False) -> tuple[int, Any]:
    ctx = pki.client_context(pki.client_a if cert else None)
    async with aiohttp.ClientSession() as s, s.request(
        method, f"https://localhost:{gw.port}{path}", ssl=ctx, headers=headers or {}
    ) as r:
        await r.read()
        return r.status, r.headers


def dpop_headers(token: str, gw: Any, method: str, path: str, signer: Any) -> dict[str, str]:
    proof = signer.proof(htm=method, htu=f"https://localhost:{gw.port}{path}", ath=ath(token),
                         iat=int(time.time()))
    return {"Authorization": f"DPoP {token}", "DPoP": proof}


async def test_dpop_bound_jwt_accepted_with_identity(gw: Any, auth_server: AuthServer, pki: Pki,
                                                     upstream: Upstream) -> None:
    """Valid token -> forwarded once; identity headers are ours, client-sent copies are dropped (AUTHZ-04)."""
    signer = es256()
    tok = auth_server.token("ec-1", cnf={"jkt": signer.jkt})
    headers = dpop_headers(tok, gw, "GET", "/accounts/1", signer)
    headers["X-Auth-Subject"] = "admin"
    status, _ = await call(gw, pki, "GET", "/accounts/1", headers)
    assert status == 200 and len(upstream.requests) == 1
    rec = upstream.last
    assert rec.all("X-Auth-Subject") == ["cust-123"]
    assert rec.header("X-Auth-Client-Id") == "tpp-1" and rec.header("X-Auth-Binding") == "dpop"
    assert rec.header("X-Auth-Cnf-Thumbprint") == signer.jkt


async def test_mtls_bound_opaque_token_and_as_outage(gw: Any, auth_server: AuthServer, pki: Pki,
                                                     upstream: Upstream) -> None:
    """Introspected, certificate-bound token; AS down: cached keeps working, uncached -> 503, not forwarded."""
    now = int(time.time())
    x5t = _x5t(pki.client_a.der)
    first, second = "opaque-1-aaaaaaaaaaaaaaaaaaaa", "opaque-2-bbbbbbbbbbbbbbbbbbbb"
    for name in (first, second):
        auth_server.tokens[name] = {"active": True, "aud": AUD, "scope": "accounts", "sub": "cust-9",
                                    "client_id": "tpp-1", "exp": now + 300, "cnf": {"x5t#S256": x5t}}
    status, _ = await call(gw, pki, "GET", "/accounts", {"Authorization": f"Bearer {first}"}, cert=True)
    assert status == 200 and upstream.last.header("X-Auth-Cnf-Thumbprint") == x5t
    auth_server.introspection_mode = "error"
    status, _ = await call(gw, pki, "GET", "/accounts", {"Authorization": f"Bearer {first}"}, cert=True)
    assert status == 200
    status, headers = await call(gw, pki, "GET", "/accounts", {"Authorization": f"Bearer {second}"}, cert=True)
    assert status == 503 and headers.get("Retry-After") and len(upstream.requests) == 2
    assert auth_server.introspection_calls == 2
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r:
        text = await r.text()
    assert 'gateway_jwks_fetches_total{issuer="bank-as",outcome="ok"} 1.0' in text
    assert 'gateway_introspection_requests_total{issuer="bank-as",outcome="active"} 1.0' in text
    assert 'gateway_introspection_requests_total{issuer="bank-as",outcome="error"} 1.0' in text
    assert 'gateway_introspection_cache_total{issuer="bank-as",result="hit"} 1.0' in text
    assert "opaque-" not in text


def _x5t(der: bytes) -> str:
    import base64
    import hashlib

    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("claims", "description"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"aud": "https://other-rs.example"}, "aud"),
        ({"iss": "https://evil.example"}, "issuer"),
    ],
)
async def test_bad_token_refused(gw: Any, auth_server: AuthServer, pki: Pki, upstream: Upstream,
                                 claims: dict[str, Any], description: str) -> None:
    """HDR-11a: 401 with the error in the Bearer challenge only; the upstream sees nothing."""
    tok = auth_server.token("ec-1", **claims)
    status, headers = await call(gw, pki, "GET", "/plain", {"Authorization": f"Bearer {tok}"})
    assert status == 401 and not upstream.requests
    www = headers["WWW-Authenticate"]
    bearer, _dpop = www.split(", DPoP ", 1)
    assert 'error="invalid_token"' in bearer and description in bearer
    assert tok[:30] not in www


async def test_token_error_only_in_used_scheme(gw: Any, auth_server: AuthServer, pki: Pki) -> None:
    """HDR-11a: with both schemes offered, a Bearer token error leaves the DPoP challenge clean."""
    tok = auth_server.token("ec-1", exp=int(time.time()) - 3600)
    status, headers = await call(gw, pki, "GET", "/plain", {"Authorization": f"Bearer {tok}"})
    assert status == 401
    _bearer, dpop = headers["WWW-Authenticate"].split(", DPoP ", 1)
    assert "error=" not in dpop


async def test_alg_none_refused(gw: Any, auth_server: AuthServer, pki: Pki, upstream: Upstream) -> None:
    tok = raw_jws({"alg": "none", "typ": "at+jwt", "kid": "ec-1"}, auth_server.claims())
    status, headers = await call(gw, pki, "GET", "/plain", {"Authorization": f"Bearer {tok}"})
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"] and not upstream.requests


async def test_insufficient_scope(gw: Any, auth_server: AuthServer, pki: Pki, upstream: Upstream) -> None:
    """HDR-12 / AUTHZ-02a: 403 with scope in the DPoP challenge."""
    signer = es256()
    tok = auth_server.token("ec-1", scope="accounts", cnf={"jkt": signer.jkt})
    status, headers = await call(gw, pki, "POST", "/payments", dpop_headers(tok, gw, "POST", "/payments", signer))
    assert status == 403 and not upstream.requests
    www = headers["WWW-Authenticate"]
    assert 'DPoP realm="bank", error="insufficient_scope"' in www and 'scope="payments"' in www


async def test_no_credentials_bare_challenge(gw: Any, pki: Pki, upstream: Upstream) -> None:
    """HDR-06."""
    status, headers = await call(gw, pki, "GET", "/accounts")
    assert status == 401 and not upstream.requests
    assert headers["WWW-Authenticate"] == 'Bearer realm="bank", DPoP realm="bank", algs="ES256 PS256 EdDSA Ed25519"'


async def test_query_token_and_two_headers(gw: Any, auth_server: AuthServer, pki: Pki, upstream: Upstream) -> None:
    """HDR-01a / HDR-05: 400 invalid_request, nothing forwarded."""
    tok = auth_server.token("ec-1")
    status, headers = await call(gw, pki, "GET", f"/plain?access_token={tok}")
    assert status == 400 and 'error="invalid_request"' in headers["WWW-Authenticate"]
    async with aiohttp.ClientSession() as s, s.get(
        f"https://localhost:{gw.port}/plain", ssl=pki.client_context(),
        headers=[("Authorization", f"Bearer {tok}"), ("Authorization", f"DPoP {tok}")],
    ) as r:
        assert r.status == 400
        assert r.headers["WWW-Authenticate"].count('error="invalid_request"') == 2
    assert not upstream.requests


async def test_plain_bearer_route(gw: Any, auth_server: AuthServer, pki: Pki, upstream: Upstream) -> None:
    """sender_constraint none: an unbound token is accepted as a bearer token; a bound one is not."""
    status, _ = await call(gw, pki, "GET", "/plain", {"Authorization": f"bearer {auth_server.token('ed-1')}"})
    assert status == 200 and upstream.last.header("X-Auth-Binding") == "none"
    bound = auth_server.token("ed-1", cnf={"jkt": "abc"})
    status, _ = await call(gw, pki, "GET", "/plain", {"Authorization": f"Bearer {bound}"})
    assert status == 401 and len(upstream.requests) == 1
