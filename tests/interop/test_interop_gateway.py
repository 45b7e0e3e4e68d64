"""End to end: node-oidc-provider issues, third-party clients present, the real gateway decides.

The gateway runs ``config/examples/node-oidc-provider.yaml`` (see harness.py). Every refusal
checks that the upstream saw nothing; most also show the same credentials accepted when right.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets

import jwt
import pytest
import requests
from requests_oauth2client.dpop import DPoPKey, DPoPToken

from .harness import (
    INTROSPECTION_CACHE_TTL_S,
    SELF_SIGNED_REFRESH_S,
    Gw,
    GwFactory,
    assert_forwarded,
    assert_refused,
    blocking,
)
from .interop_as import (
    RS_JWT,
    RS_JWT_ED25519,
    RS_JWT_EDDSA,
    RS_JWT_ES256,
    RS_OPAQUE,
    RS_OTHER,
    Clients,
    run_node_client,
    wait_until,
)
from .interop_pki import Pki, b64u

# --- DPoP-bound tokens -------------------------------------------------------------------------


async def test_dpop_bound_jwt_accepted(gw: Gw) -> None:
    """JWT-01, DPOP-19, AUTHZ-04: at+jwt with cnf.jkt from the AS; proof by requests-oauth2client."""
    key = DPoPKey.generate(alg="ES256")
    token = await blocking(gw.auth.dpop_token, RS_JWT, key=key)
    resp = await blocking(gw.dpop_get, "/accounts/123", token)
    assert_forwarded(resp, gw, "/accounts/123")
    assert gw.upstream.last.header("X-Auth-Client-Id") == "dpop-app"
    assert gw.upstream.last.header("X-Auth-Cnf-Thumbprint") == key.dpop_jkt


@pytest.mark.parametrize("alg", ["ES256", "PS256", "EdDSA"])
async def test_dpop_proof_algorithms_python_client(gw: Gw, alg: str) -> None:
    """DPOP-06, DPOP-09: each default proof algorithm, keys and proofs by jwskate (requests-oauth2client)."""
    key = DPoPKey.generate(alg=alg)
    token = await blocking(gw.auth.dpop_token, RS_JWT, key=key)
    assert_forwarded(await blocking(gw.dpop_get, f"/accounts/{alg}", token), gw, f"/accounts/{alg}")


# oauth4webapi signs with Ed25519 keys as ``alg: "Ed25519"`` (RFC 9864 fully-specified name; it
# never writes "EdDSA"); the gateway accepts both names.
@pytest.mark.parametrize("alg", ["PS256", "Ed25519"])
async def test_dpop_proof_algorithms_node_client(gw: Gw, alg: str) -> None:
    """DPOP-06, DPOP-09: the same with WebCrypto keys and oauth4webapi's proofs (ES256 is above)."""
    out = await blocking(run_node_client, gw.auth, RS_JWT, url=gw.url(f"/accounts/{alg}"), alg=alg)
    assert out["status"] == 200, out
    assert gw.upstream.last.raw_path == f"/accounts/{alg}"


async def test_dpop_bound_jwt_as_bearer_refused(gw: Gw) -> None:
    """DPOP-20: a DPoP-bound token is never accepted as a plain bearer token (RFC 9449 §7.2)."""
    token = await blocking(gw.auth.dpop_token, RS_JWT)
    resp = await blocking(gw.bearer_get, "/accounts", token.access_token, None)
    assert_refused(resp, 401, "invalid_token", gw)
    # Control: the same token with its proof is good.
    assert_forwarded(await blocking(gw.dpop_get, "/accounts", token), gw, "/accounts")


async def test_dpop_proof_from_another_key_refused(gw: Gw) -> None:
    """DPOP-19: the proof key must be the one the AS bound the token to (RFC 9449 §4.3)."""
    token = await blocking(gw.auth.dpop_token, RS_JWT)
    thief = DPoPToken(token.access_token, _dpop_key=DPoPKey.generate(alg="ES256"))
    resp = await blocking(gw.dpop_get, "/accounts", thief)
    assert resp.status_code == 401
    assert gw.upstream.requests == []
    assert_forwarded(await blocking(gw.dpop_get, "/accounts", token), gw, "/accounts")


async def test_dpop_bound_opaque_token_via_introspection(gw: Gw) -> None:
    """INTR-06, DPOP-19: cnf.jkt comes from the introspection response (RFC 9449 §6.2)."""
    token = await blocking(gw.auth.dpop_token, RS_OPAQUE)
    assert "." not in token.access_token
    resp = await blocking(gw.dpop_get, "/accounts", token)
    assert_forwarded(resp, gw, "/accounts")
    # A proof by another key is refused for the introspected token too.
    thief = DPoPToken(token.access_token, _dpop_key=DPoPKey.generate(alg="ES256"))
    resp = await blocking(gw.dpop_get, "/accounts", thief)
    assert resp.status_code == 401
    assert len(gw.upstream.requests) == 1


async def test_node_client_dpop_proof_accepted(gw: Gw) -> None:
    """DPOP-09, DPOP-12, DPOP-18: proofs from a second implementation (oauth4webapi) are accepted."""
    out = await blocking(run_node_client, gw.auth, RS_JWT, url=gw.url("/accounts/node"))
    assert out["status"] == 200, out
    assert out["resourceNonceRetries"] == 0
    assert len(gw.upstream.requests) == 1
    assert gw.upstream.last.raw_path == "/accounts/node"


async def test_dpop_nonce_flow_with_both_clients(gw: Gw) -> None:
    """DPOPN-01, DPOPN-04: use_dpop_nonce + DPoP-Nonce, then the retry passes (both clients)."""
    key = DPoPKey.generate(alg="ES256")
    token = await blocking(gw.auth.dpop_token, RS_JWT, key=key)
    resp = await blocking(gw.dpop_get, "/consents/1", token)
    assert_forwarded(resp, gw, "/consents/1")
    assert key.rs_nonce, "the gateway never handed out a nonce"
    out = await blocking(run_node_client, gw.auth, RS_JWT, url=gw.url("/consents/2"))
    assert out["status"] == 200, out
    assert out["resourceNonceRetries"] == 1
    assert len(gw.upstream.requests) == 2


async def test_dpop_nonce_missing_refused(gw: Gw) -> None:
    """DPOPN-01: a proof lacking the nonce gets 401 use_dpop_nonce and nothing upstream."""
    token = await blocking(gw.auth.dpop_token, RS_JWT)
    proof = token.dpop_key.proof(
        htm="GET", htu=gw.url("/consents/1"), ath=b64u(hashlib.sha256(token.access_token.encode()).digest())
    )
    headers = {"Authorization": f"DPoP {token.access_token}", "DPoP": str(proof)}
    resp = await blocking(gw.session().get, gw.url("/consents/1"), headers=headers, timeout=15)
    assert_refused(resp, 401, "use_dpop_nonce", gw)
    assert resp.headers.get("DPoP-Nonce")


@pytest.mark.parametrize(
    ("resource", "alg"),
    [
        (RS_JWT_ES256, "ES256"),
        (RS_JWT_EDDSA, "EdDSA"),
        (RS_JWT_ED25519, "Ed25519"),
    ],
)
async def test_jwt_access_token_algorithms(gw_factory: GwFactory, resource: str, alg: str) -> None:
    """JWT-02, JWT-05: access tokens signed by the AS (jose) with the other default algorithms."""
    accounts_audience = '      audience: ["${API_AUDIENCE}", "${API_OPAQUE_AUDIENCE}"]\n'

    def edit(text: str) -> str:
        assert accounts_audience in text
        return text.replace(accounts_audience, accounts_audience.replace("]", f', "{resource}"]'), 1)

    gw = await gw_factory(edit)
    token = await blocking(gw.auth.dpop_token, resource)
    assert jwt.get_unverified_header(token.access_token)["alg"] == alg
    assert_forwarded(await blocking(gw.dpop_get, "/accounts", token), gw, "/accounts")


# --- certificate-bound tokens ------------------------------------------------------------------


async def test_mtls_bound_jwt_accepted_with_its_certificate(gw: Gw, interop_clients: Clients) -> None:
    """MTLS-03, MTLS-06: cnf.x5t#S256 from the AS matches this TLS connection's certificate."""
    cert = interop_clients.mtls_a
    token = await blocking(gw.auth.mtls_token, cert, "mtls-a", RS_JWT)
    resp = await blocking(gw.bearer_get, "/accounts/a", token, cert)
    assert_forwarded(resp, gw, "/accounts/a")
    # The gateway's thumbprint of the TLS peer certificate is the one the AS put in cnf.
    assert gw.upstream.last.header("X-Auth-Cnf-Thumbprint") == cert.x5t
    assert gw.upstream.last.header("X-Auth-Client-Id") == "mtls-a"


async def test_mtls_bound_jwt_refused_with_another_clients_certificate(gw: Gw, interop_clients: Clients) -> None:
    """MTLS-04: client B's certificate with client A's token -> 401 invalid_token."""
    token = await blocking(gw.auth.mtls_token, interop_clients.mtls_a, "mtls-a", RS_JWT)
    resp = await blocking(gw.bearer_get, "/accounts", token, interop_clients.mtls_b)
    assert_refused(resp, 401, "invalid_token", gw)
    assert_forwarded(await blocking(gw.bearer_get, "/accounts", token, interop_clients.mtls_a), gw, "/accounts")


async def test_mtls_bound_jwt_refused_without_certificate(gw: Gw, interop_clients: Clients) -> None:
    """MTLS-05: a certificate-bound token on a connection without a client certificate."""
    token = await blocking(gw.auth.mtls_token, interop_clients.mtls_a, "mtls-a", RS_JWT)
    resp = await blocking(gw.bearer_get, "/accounts", token, None)
    assert_refused(resp, 401, "invalid_token", gw)


async def test_mtls_bound_opaque_token_via_introspection(gw: Gw, interop_clients: Clients) -> None:
    """MTLS-06, INTR-06: cnf.x5t#S256 from the introspection response; wrong cert refused."""
    token = await blocking(gw.auth.mtls_token, interop_clients.mtls_b, "mtls-b", RS_OPAQUE)
    resp = await blocking(gw.bearer_get, "/accounts", token, interop_clients.mtls_a)
    assert_refused(resp, 401, "invalid_token", gw)
    resp = await blocking(gw.bearer_get, "/accounts", token, interop_clients.mtls_b)
    assert_forwarded(resp, gw, "/accounts")


async def test_self_signed_client_accepted_after_gateway_picks_up_its_certificate(gw: Gw, interop_pki: Pki) -> None:
    """MTLS-07: a certificate registered as x5c in the client's JWKS becomes a trust anchor."""
    made = interop_pki.self_signed_cert(gw.self_signed_client_id)
    cert = made[0]

    def accepted(token: str) -> bool:
        try:
            return gw.bearer_get("/accounts/ss", token, cert).status_code == 200
        except requests.exceptions.ConnectionError:
            return False  # not a trust anchor: the handshake fails (TLS 1.3: a closed connection)

    # Before registration the gateway's directory fetch found nothing: the certificate is refused.
    assert not await blocking(accepted, "x" * 20)
    await blocking(gw.auth.register_self_signed_client, gw.self_signed_client_id, made)
    token = await blocking(gw.auth.mtls_token, cert, gw.self_signed_client_id, RS_JWT)
    assert await blocking(wait_until, lambda: accepted(token), 10 * SELF_SIGNED_REFRESH_S + 5)
    assert [r.raw_path for r in gw.upstream.requests] == ["/accounts/ss"]


async def test_self_signed_certificate_refused_before_registration(gw: Gw, interop_pki: Pki) -> None:
    """MTLS-07: before the directory lists it, a self-signed certificate gets nowhere."""
    cert, _ = interop_pki.self_signed_cert(f"unregistered-{secrets.token_hex(3)}")
    try:
        resp = await blocking(gw.bearer_get, "/accounts", "x" * 20, cert)
    except requests.exceptions.ConnectionError:
        pass
    else:
        assert resp.status_code == 401
    assert gw.upstream.requests == []


# --- audience, scope, revocation, key rotation -------------------------------------------------


async def test_token_for_another_resource_refused(gw: Gw) -> None:
    """JWT-07, AUTHZ-01: aud names another API (RFC 8707 resource) -> 401 invalid_token."""
    token = await blocking(gw.auth.dpop_token, RS_OTHER)
    assert jwt.decode(token.access_token, options={"verify_signature": False})["aud"] == RS_OTHER
    resp = await blocking(gw.dpop_get, "/accounts", token)
    assert_refused(resp, 401, "invalid_token", gw)


async def test_missing_scope_is_403(gw: Gw) -> None:
    """AUTHZ-02, HDR: a genuine token without payments:write -> 403 insufficient_scope with scope."""
    token = await blocking(gw.auth.dpop_token, RS_JWT, scope="accounts:read")
    resp = await blocking(gw.dpop_request, "POST", "/payments", token)
    assert_refused(resp, 403, "insufficient_scope", gw)
    assert 'scope="payments:write"' in resp.headers["WWW-Authenticate"]
    # Control: reading payments back needs only accounts:read (method_scopes).
    assert_forwarded(await blocking(gw.dpop_get, "/payments/1", token), gw, "/payments/1")


async def test_revoked_opaque_token_refused_once_cache_entry_expires(gw: Gw) -> None:
    """INTR-09: revocation at the AS takes effect once the introspection cache entry expires."""
    token = await blocking(gw.auth.dpop_token, RS_OPAQUE)
    resp = await blocking(gw.dpop_get, "/accounts", token)
    assert_forwarded(resp, gw, "/accounts")
    await blocking(gw.auth.revoke_dpop_token, token.access_token)
    assert (await blocking(gw.auth.introspect, token.access_token))["active"] is False

    await asyncio.sleep(INTROSPECTION_CACHE_TTL_S + 0.5)
    forwarded_before = len(gw.upstream.requests)
    resp = await blocking(gw.dpop_get, "/accounts", token)
    assert resp.status_code == 401
    assert 'error="invalid_token"' in resp.headers.get("WWW-Authenticate", "")
    assert len(gw.upstream.requests) == forwarded_before


async def test_as_signing_key_rotation_without_gateway_restart(gw: Gw) -> None:
    """JWT-04: tokens signed with a key published after the gateway started are accepted."""
    old = await blocking(gw.auth.dpop_token, RS_JWT)
    assert_forwarded(await blocking(gw.dpop_get, "/accounts/old", old), gw, "/accounts/old")
    new_kid = await blocking(gw.auth.rotate_signing_key)
    new = await blocking(gw.auth.dpop_token, RS_JWT)
    assert jwt.get_unverified_header(new.access_token)["kid"] == new_kid

    def accepted() -> bool:
        return gw.dpop_get("/accounts/new", new).status_code == 200

    # The refetch cooldown (1 s here) may hold the first attempt back; nothing else may.
    assert await blocking(wait_until, accepted, 5)
    assert (await blocking(gw.dpop_get, "/accounts/old-again", old)).status_code == 200
    assert [r.raw_path for r in gw.upstream.requests][-1] == "/accounts/old-again"
