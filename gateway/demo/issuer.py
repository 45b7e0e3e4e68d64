"""A demo authorization server that mints RFC 9068 access tokens bound to the caller. DEV ONLY.

``POST /token`` (client credentials): over mTLS the token is bound to the client certificate
(``cnf.x5t#S256``, RFC 8705); with a ``DPoP`` proof header it is bound to the proof key
(``cnf.jkt``, RFC 9449). Anything else gets an unbound token. Signed with certs/dev/issuer-key.pem.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ..model import sha256_b64url

__all__ = ("DemoIssuer", "build_issuer_app")

KID = "demo-1"


class DemoIssuer:
    def __init__(self, key_file: str | Path, issuer: str, audience: str) -> None:
        key = load_pem_private_key(Path(key_file).read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.key = key
        self.issuer = issuer
        self.audience = audience
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        self.jwks = {"keys": [{**public, "kid": KID, "use": "sig", "alg": "ES256"}]}

    def mint(self, *, client_id: str, scope: str, cnf: dict[str, str] | None, ttl_s: int = 600) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": client_id, "client_id": client_id, "aud": self.audience,
            "scope": scope, "iat": now, "exp": now + ttl_s, "jti": secrets.token_urlsafe(12),
        }
        if cnf:
            claims["cnf"] = cnf
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"typ": "at+jwt", "kid": KID})


def _dpop_jkt(proof: str) -> str:
    """Thumbprint of the proof's key after checking its signature (a demo AS still checks that)."""
    from ..bind.jwk import jwk_thumbprint

    header = jwt.get_unverified_header(proof)
    jwk = header.get("jwk")
    if header.get("typ") != "dpop+jwt" or not isinstance(jwk, dict):
        raise web.HTTPBadRequest(text='{"error":"invalid_dpop_proof"}', content_type="application/json")
    key = jwt.PyJWK.from_dict(jwk)
    try:
        jwt.decode(proof, key.key, algorithms=[header.get("alg", "")])
    except jwt.PyJWTError:
        raise web.HTTPBadRequest(text='{"error":"invalid_dpop_proof"}', content_type="application/json") from None
    return jwk_thumbprint(jwk)


def build_issuer_app(issuer: DemoIssuer) -> web.Application:
    async def metadata(request: web.Request) -> web.Response:
        return web.json_response({
            "issuer": issuer.issuer,
            "jwks_uri": f"{issuer.issuer}/jwks",
            "token_endpoint": f"{issuer.issuer}/token",
            "grant_types_supported": ["client_credentials"],
            "dpop_signing_alg_values_supported": ["ES256", "PS256", "EdDSA"],
            "tls_client_certificate_bound_access_tokens": True,
        })

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response(issuer.jwks)

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        scope = str(form.get("scope") or "accounts")
        cnf: dict[str, str] | None = None
        token_type = "Bearer"  # noqa: S105 - a token type name, not a secret
        client_id = str(form.get("client_id") or "demo-client")
        proof = request.headers.get("DPoP")
        sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = sslobj.getpeercert(binary_form=True) if sslobj else None
        if proof:
            cnf = {"jkt": _dpop_jkt(proof)}
            token_type = "DPoP"  # noqa: S105
        elif der:
            cnf = {"x5t#S256": sha256_b64url(der)}
        return web.json_response({
            "access_token": issuer.mint(client_id=client_id, scope=scope, cnf=cnf),
            "token_type": token_type, "expires_in": 600, "scope": scope,
        }, headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/.well-known/oauth-authorization-server", metadata)
    app.router.add_get("/jwks", jwks)
    app.router.add_post("/token", token)
    return app
