"""The example configuration's alternatives, against the same AS: discovery and mTLS to the AS."""

from __future__ import annotations

from .harness import GwFactory, assert_forwarded, blocking
from .interop_as import RS_JWT, RS_OPAQUE, Clients

SECRET_AUTH = """\
      client_auth:
        method: client_secret_basic
        client_id: ${GATEWAY_CLIENT_ID:-gateway}
        client_secret: ${GATEWAY_INTROSPECTION_SECRET}
"""


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"the example config no longer contains {old!r}"
    return text.replace(old, new)


async def test_discovery_finds_jwks_and_introspection_endpoint(gw_factory: GwFactory) -> None:
    """JWT-03, JWT-16: `discovery: true` reads oidc-provider's OpenID metadata (it serves no
    RFC 8414 document) for jwks_uri and introspection_endpoint."""

    def edit(text: str) -> str:
        text = _replace(text, "    jwks_uri: ${AS_ISSUER}/jwks\n", "    discovery: true\n")
        return _replace(text, "      endpoint: ${AS_ISSUER}/token/introspection\n", "")

    gw = await gw_factory(edit)
    jwt_token = await blocking(gw.auth.dpop_token, RS_JWT)
    assert_forwarded(await blocking(gw.dpop_get, "/accounts/jwt", jwt_token), gw, "/accounts/jwt")
    gw.upstream.requests.clear()
    opaque = await blocking(gw.auth.dpop_token, RS_OPAQUE)
    assert_forwarded(await blocking(gw.dpop_get, "/accounts/opaque", opaque), gw, "/accounts/opaque")


async def test_introspection_with_tls_client_auth(gw_factory: GwFactory, interop_clients: Clients) -> None:
    """INTR-02: the gateway authenticates to oidc-provider's introspection endpoint with its own
    certificate (tls_client_auth, RFC 8705 §2.1) instead of a secret."""
    cert = interop_clients.gateway_cert
    mtls_auth = (
        "      client_auth:\n"
        "        method: tls_client_auth\n"
        "        client_id: gateway-mtls\n"
        f"        tls_cert: {cert.cert_path}\n"
        f"        tls_key: {cert.key_path}\n"
    )
    gw = await gw_factory(lambda text: _replace(text, SECRET_AUTH, mtls_auth))
    opaque = await blocking(gw.auth.dpop_token, RS_OPAQUE)
    assert_forwarded(await blocking(gw.dpop_get, "/accounts/opaque", opaque), gw, "/accounts/opaque")
