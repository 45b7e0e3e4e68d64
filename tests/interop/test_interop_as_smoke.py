"""The authorization server issues each kind of token the scenarios rely on.

These pin node-oidc-provider's behaviour (and our configuration of it) independently of the
gateway, so a scenario failure can be told apart from an AS misconfiguration.
"""

from __future__ import annotations

import base64

import jwt
import pytest
import requests
from requests_oauth2client import InvalidClient, InvalidTarget
from requests_oauth2client.dpop import DPoPKey

from .interop_as import API_SCOPES, RS_JWT, RS_OPAQUE, RS_OTHER, AuthServer, Clients, run_node_client


def _jwt_parts(token: str) -> tuple[dict[str, object], dict[str, object]]:
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    return header, claims


def _verify_with_as_jwks(auth_server: AuthServer, token: str, audience: str) -> dict[str, object]:
    """Check the signature with the AS's published keys (PS256), as the gateway will."""
    jwks = jwt.PyJWKSet.from_dict(auth_server.fetch_jwks())
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    claims: dict[str, object] = jwt.decode(
        token, key.key, algorithms=["PS256"], audience=audience, issuer=auth_server.issuer
    )
    return claims


def test_discovery_advertises_sender_constraints(auth_server: AuthServer) -> None:
    """DPOP, MTLS: the AS metadata names what the gateway's issuer config relies on."""
    meta = requests.get(
        f"{auth_server.issuer}/.well-known/openid-configuration", verify=auth_server.ca_path, timeout=10
    ).json()
    assert meta["issuer"] == auth_server.issuer
    assert meta["jwks_uri"] == auth_server.jwks_uri
    assert meta["introspection_endpoint"] == auth_server.introspection_endpoint
    assert meta["revocation_endpoint"] == auth_server.revocation_endpoint
    assert meta["tls_client_certificate_bound_access_tokens"] is True
    assert "ES256" in meta["dpop_signing_alg_values_supported"]
    assert {"tls_client_auth", "self_signed_tls_client_auth"} <= set(meta["token_endpoint_auth_methods_supported"])


def test_dpop_bound_jwt_access_token(auth_server: AuthServer) -> None:
    """RFC 9068 + RFC 9449 §6.1: at+jwt with cnf.jkt = thumbprint of the client's DPoP key."""
    key = DPoPKey.generate(alg="ES256")
    token = auth_server.dpop_token(RS_JWT, key=key)
    assert token.token_type.lower() == "dpop"
    header, _ = _jwt_parts(token.access_token)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "PS256"
    claims = _verify_with_as_jwks(auth_server, token.access_token, RS_JWT)
    assert claims["cnf"] == {"jkt": key.dpop_jkt}
    assert claims["client_id"] == "dpop-app"
    assert set(str(claims["scope"]).split()) == set(API_SCOPES.split())


def test_mtls_bound_jwt_access_token(auth_server: AuthServer, interop_clients: Clients) -> None:
    """RFC 8705 §3.1: cnf.x5t#S256 = SHA-256 of the client certificate used at the token endpoint."""
    cert = interop_clients.mtls_a
    token = auth_server.mtls_token(cert, "mtls-a", RS_JWT)
    header, _ = _jwt_parts(token)
    assert header["typ"] == "at+jwt"
    claims = _verify_with_as_jwks(auth_server, token, RS_JWT)
    assert claims["cnf"] == {"x5t#S256": cert.x5t}
    assert claims["client_id"] == "mtls-a"


def test_tls_client_auth_refuses_the_wrong_certificate(auth_server: AuthServer, interop_clients: Clients) -> None:
    """The AS itself checks tls_client_auth_san_dns: client B's certificate can't act as mtls-a."""
    with pytest.raises(InvalidClient):
        auth_server.mtls_token(interop_clients.mtls_b, "mtls-a", RS_JWT)


def test_opaque_token_is_introspected_with_its_binding(auth_server: AuthServer) -> None:
    """RFC 7662 + RFC 9449 §6.2: an opaque DPoP-bound token's introspection carries cnf.jkt."""
    key = DPoPKey.generate(alg="ES256")
    token = auth_server.dpop_token(RS_OPAQUE, key=key)
    assert token.access_token.count(".") == 0
    info = auth_server.introspect(token.access_token)
    assert info["active"] is True
    assert info["aud"] == RS_OPAQUE
    assert info["iss"] == auth_server.issuer
    assert info["cnf"] == {"jkt": key.dpop_jkt}
    assert info["token_type"] == "DPoP"


def test_opaque_mtls_token_introspection(auth_server: AuthServer, interop_clients: Clients) -> None:
    """RFC 8705 §3.2: introspection returns cnf.x5t#S256 for certificate-bound opaque tokens."""
    token = auth_server.mtls_token(interop_clients.mtls_b, "mtls-b", RS_OPAQUE)
    info = auth_server.introspect(token)
    assert info["active"] is True
    assert info["cnf"] == {"x5t#S256": interop_clients.mtls_b.x5t}


def test_revocation_makes_introspection_inactive(auth_server: AuthServer) -> None:
    token = auth_server.dpop_token(RS_OPAQUE)
    assert auth_server.introspect(token.access_token)["active"] is True
    auth_server.revoke_dpop_token(token.access_token)
    assert auth_server.introspect(token.access_token) == {"active": False}


def test_other_resource_gets_its_own_audience(auth_server: AuthServer) -> None:
    token = auth_server.dpop_token(RS_OTHER)
    _, claims = _jwt_parts(token.access_token)
    assert claims["aud"] == RS_OTHER


def test_scope_is_limited_to_what_was_asked(auth_server: AuthServer) -> None:
    token = auth_server.dpop_token(RS_JWT, scope="accounts:read")
    _, claims = _jwt_parts(token.access_token)
    assert claims["scope"] == "accounts:read"


def test_unknown_resource_is_refused_by_the_as(auth_server: AuthServer) -> None:
    with pytest.raises(InvalidTarget):
        auth_server.dpop_token("https://unknown.bank.test")


def test_self_signed_client_gets_certificate_bound_token(auth_server: AuthServer) -> None:
    """RFC 8705 §2.2: self_signed_tls_client_auth, certificate registered as x5c in the client JWKS."""
    url = auth_server.directory_jwks_url("selfsigned-smoke")
    assert requests.get(url, verify=auth_server.ca_path, timeout=10).status_code == 404
    cert = auth_server.register_self_signed_client("selfsigned-smoke")
    token = auth_server.mtls_token(cert, "selfsigned-smoke", RS_JWT)
    claims = _verify_with_as_jwks(auth_server, token, RS_JWT)
    assert claims["cnf"] == {"x5t#S256": cert.x5t}
    (key,) = requests.get(url, verify=auth_server.ca_path, timeout=10).json()["keys"]
    assert base64.b64decode(key["x5c"][0]) == cert.der
    assert "d" not in key


def test_as_dpop_nonce_is_handled_by_both_clients(auth_server: AuthServer) -> None:
    """RFC 9449 §8: the AS demands a nonce; requests-oauth2client and oauth4webapi both retry."""
    auth_server.require_dpop_nonce(True)
    try:
        key = DPoPKey.generate(alg="ES256")
        token = auth_server.dpop_token(RS_JWT, key=key)
        assert key.as_nonce is not None
        assert _jwt_parts(token.access_token)[1]["cnf"] == {"jkt": key.dpop_jkt}
        out = run_node_client(auth_server, RS_JWT)
        assert out["tokenNonceRetries"] == 1
        assert _jwt_parts(out["accessToken"])[1]["cnf"] == {"jkt": out["jkt"]}
    finally:
        auth_server.require_dpop_nonce(False)


def test_node_client_gets_dpop_bound_token(auth_server: AuthServer) -> None:
    out = run_node_client(auth_server, RS_JWT, scope="accounts:read")
    assert out["tokenType"].lower() == "dpop"
    assert out["tokenNonceRetries"] == 0
    claims = _verify_with_as_jwks(auth_server, out["accessToken"], RS_JWT)
    assert claims["cnf"] == {"jkt": out["jkt"]}


def test_signing_key_rotation(auth_server: AuthServer) -> None:
    """New tokens are signed with the new key; both keys are published during the overlap."""
    before = auth_server.dpop_token(RS_JWT).access_token
    new_kid = auth_server.rotate_signing_key()
    after = auth_server.dpop_token(RS_JWT).access_token
    assert jwt.get_unverified_header(after)["kid"] == new_kid
    assert jwt.get_unverified_header(before)["kid"] != new_kid
    published = {k["kid"] for k in auth_server.fetch_jwks()["keys"]}
    assert {new_kid, jwt.get_unverified_header(before)["kid"]} <= published
    _verify_with_as_jwks(auth_server, after, RS_JWT)
    _verify_with_as_jwks(auth_server, before, RS_JWT)
