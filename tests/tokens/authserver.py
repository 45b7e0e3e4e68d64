"""A real authorization server for the token tests: RFC 8414 metadata, JWKS, RFC 7662 introspection.

It signs real tokens with real RSA / EC / Ed25519 keys and serves over TLS (the session PKI), so
the gateway's fetches, TLS checks and signature checks all run for real. Counters and switches
let tests observe fetches and simulate outages.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def public_jwk(self, **extra: Any) -> dict[str, Any]:
        pub = self.private.public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(pub, as_dict=True)
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(pub, as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(pub, as_dict=True)
        jwk.update(kid=self.kid, use="sig", alg=self.alg)
        jwk.update(extra)
        return jwk


def rsa_key(kid: str, alg: str = "PS256", bits: int = 2048) -> SigningKey:
    return SigningKey(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=bits))


def ec_key(kid: str, curve: ec.EllipticCurve | None = None, alg: str = "ES256") -> SigningKey:
    return SigningKey(kid, alg, ec.generate_private_key(curve or ec.SECP256R1()))


def ed_key(kid: str) -> SigningKey:
    return SigningKey(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_jws(header: dict[str, Any], payload: dict[str, Any] | bytes, signature: bytes = b"") -> str:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return f"{b64(json.dumps(header).encode())}.{b64(body)}.{b64(signature)}"


@dataclass
class AuthServer:
    keys: list[SigningKey]
    audience: str = "https://api.bank.example"
    url: str = ""
    # what /jwks publishes (defaults to the public form of ``keys``)
    published: list[Any] | None = None
    # opaque token -> introspection response
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    # introspection behaviour: "ok", "error" (500), "html", "garbage", "jwt" (RFC 9701)
    introspection_mode: str = "ok"
    jwks_down: bool = False
    client_auth: str = "client_secret_basic"
    client_id: str = "gateway"
    client_secret: str = "s3cret:+/="
    client_public_key: Any = None
    jwks_fetches: int = 0
    metadata_fetches: int = 0
    introspection_calls: int = 0
    introspection_forms: list[dict[str, str]] = field(default_factory=list)
    introspection_urls: list[str] = field(default_factory=list)
    auth_failures: int = 0
    # When not None, introspecting a token not in ``tokens`` (garbage) waits until it is set: a
    # slow AS under a flood. ``held``: such calls waiting right now.
    hold_unknown: asyncio.Event | None = None
    held: int = 0
    # the time tokens are minted at (the tests' fake clock)
    clock: Callable[[], float] = time.time

    @property
    def issuer(self) -> str:
        return self.url

    def key(self, kid: str) -> SigningKey:
        return next(k for k in self.keys if k.kid == kid)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": self.audience, "sub": "cust-123", "client_id": "tpp-1",
            "iat": now, "exp": now + 300, "jti": str(uuid.uuid4()), "scope": "accounts payments",
        }
        for k, v in overrides.items():
            if v is None:
                claims.pop(k, None)
            else:
                claims[k] = v
        return claims

    def token(
        self,
        kid: str | None = None,
        *,
        alg: str | None = None,
        typ: str | None = "at+jwt",
        headers: dict[str, Any] | None = None,
        key: SigningKey | None = None,
        **claims: Any,
    ) -> str:
        signer = key or (self.key(kid) if kid else self.keys[0])
        hdr: dict[str, Any] = {"kid": signer.kid}
        if typ is not None:
            hdr["typ"] = typ
        hdr.update(headers or {})
        return jwt.encode(self.claims(**claims), signer.private, algorithm=alg or signer.alg, headers=hdr)

    # --- handlers ---------------------------------------------------------------------------

    async def metadata(self, request: web.Request) -> web.Response:
        self.metadata_fetches += 1
        return web.json_response({
            "issuer": self.issuer,
            "jwks_uri": f"{self.url}/jwks",
            "introspection_endpoint": f"{self.url}/introspect",
        })

    async def jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        if self.jwks_down:
            return web.Response(status=503)
        keys = self.published if self.published is not None else [k.public_jwk() for k in self.keys]
        return web.json_response({"keys": keys})

    def _client_ok(self, request: web.Request, form: dict[str, str]) -> bool:
        if self.client_auth == "client_secret_basic":
            expected = base64.b64encode(b"gateway:s3cret%3A%2B%2F%3D").decode()
            return request.headers.get("Authorization") == f"Basic {expected}"
        if self.client_auth == "client_secret_post":
            return form.get("client_id") == self.client_id and form.get("client_secret") == self.client_secret
        if self.client_auth == "private_key_jwt":
            try:
                claims = jwt.decode(
                    form.get("client_assertion", ""), self.client_public_key, algorithms=["ES256"],
                    audience=self.issuer, issuer=self.client_id,
                )
            except jwt.PyJWTError:
                return False
            return (
                form.get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                and claims["sub"] == self.client_id
            )
        if self.client_auth == "tls_client_auth":
            sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
            return bool(sslobj and sslobj.getpeercert(binary_form=True)) and form.get("client_id") == self.client_id
        return False

    async def introspect(self, request: web.Request) -> web.Response:
        self.introspection_calls += 1
        self.introspection_urls.append(str(request.rel_url))
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.introspection_forms.append(form)
        if not self._client_ok(request, form):
            self.auth_failures += 1
            return web.json_response({"error": "invalid_client"}, status=401)
        if self.hold_unknown is not None and form.get("token", "") not in self.tokens:
            self.held += 1
            try:
                await self.hold_unknown.wait()
            finally:
                self.held -= 1
        if self.introspection_mode == "error":
            return web.Response(status=500)
        if self.introspection_mode == "garbage":
            return web.Response(body=b"{not json", content_type="application/json")
        response = self.tokens.get(form.get("token", ""), {"active": False})
        if self.introspection_mode == "html":
            return web.Response(text=json.dumps(response), content_type="text/html")
        if self.introspection_mode == "jwt":
            signer = self.keys[0]
            body = jwt.encode(
                {"iss": self.issuer, "aud": self.client_id, "iat": int(self.clock()),
                 "token_introspection": response},
                signer.private, algorithm=signer.alg,
                headers={"kid": signer.kid, "typ": "token-introspection+jwt"},
            )
            return web.Response(body=body.encode(), content_type="application/token-introspection+jwt")
        return web.json_response(response)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/oauth-authorization-server", self.metadata)
        app.router.add_get("/jwks", self.jwks)
        app.router.add_post("/introspect", self.introspect)
        return app
