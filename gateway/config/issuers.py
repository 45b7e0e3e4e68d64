"""``issuers:`` — who may issue access tokens and how their tokens are verified.

Each issuer says how its tokens are checked (``mode``): locally as RFC 9068 JWTs, by RFC 7662
introspection, or JWTs locally with introspection for opaque tokens. Keys come from exactly one
source: ``jwks_uri``, a static ``jwks_file``, or ``discovery`` (RFC 8414 / OpenID metadata).
Secrets are written as ``${VAR}`` so they stay out of the file.

    issuers:
      - name: bank-as
        issuer: https://as.bank.example            # compared exactly with iss
        mode: jwt_with_introspection_fallback      # jwt | introspection | jwt_with_introspection_fallback
        discovery: true                            # or jwks_uri: ... / jwks_file: ...
        algorithms: [PS256, ES256]                 # default PS256 ES256 EdDSA; never none/HS*
        ca: /etc/gateway/as-ca.pem                 # trust anchors for the AS's TLS certificate
        introspection:
          client_auth: {method: private_key_jwt, client_id: gateway, private_key: /etc/gateway/as-key.pem,
                        private_key_alg: ES256}
          cache_ttl_s: 60                          # 0 for routes that need every revocation at once
        jwks_max_stale_s: 3600                     # last good keys while the JWKS is down (max 6 h)

An ``introspection:`` block is allowed in mode ``jwt`` too: routes with ``auth.introspect: always``
then introspect this issuer's JWTs (after verifying them locally), other routes do not.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr, ValidationInfo, model_validator

from .base import FilePath, Model, check_files

# Asymmetric algorithms only: ``none`` and HS* are never accepted (RFC 8725 §3.1, RFC 9068 §4).
# "Ed25519": RFC 9864's fully specified name for EdDSA over Ed25519 (node-oidc-provider can sign with it).
SigningAlg = Literal[
    "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519", "RS256", "RS384", "RS512"
]
IssuerMode = Literal["jwt", "introspection", "jwt_with_introspection_fallback"]
ClientAuthMethod = Literal["client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth"]

Seconds = Annotated[float, Field(gt=0, le=86400)]
CacheSize = Annotated[int, Field(ge=1, le=10_000_000)]
MAX_JWKS_STALE_S = 6 * 3600.0

# FAPI 2.0 §5.4.1 algorithms; RS256 only when an operator lists it.
DEFAULT_ALGORITHMS: tuple[SigningAlg, ...] = ("PS256", "ES256", "EdDSA", "Ed25519")
# RFC 9068 §2.2 marks these REQUIRED; iss, exp and aud are always checked on top of them.
DEFAULT_REQUIRED_CLAIMS: tuple[str, ...] = ("sub", "client_id", "iat", "jti")


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("not an absolute http(s) URL")
    if parts.fragment:
        raise ValueError("must not carry a fragment")
    return value


AbsUrl = Annotated[str, AfterValidator(_url)]


def _check_signing_key(path: str, alg: str) -> None:
    """Load the client-assertion key once at config load, so a wrong key fails here, not per call."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        with open(path, "rb") as fh:
            key = load_pem_private_key(fh.read(), password=None)
    except (ValueError, TypeError, OSError):
        raise ValueError(f"private_key: {path} is not an unencrypted PEM private key") from None
    fits = {
        "RS": isinstance(key, rsa.RSAPrivateKey),
        "PS": isinstance(key, rsa.RSAPrivateKey),
        "ES": isinstance(key, ec.EllipticCurvePrivateKey),
        "Ed": isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey),
    }[alg[:2]]
    if not fits:
        raise ValueError(f"private_key: the key in {path} cannot sign {alg}")


class ClientAuth(Model):
    """How the gateway authenticates to the introspection endpoint (RFC 7662 §2.1)."""

    method: ClientAuthMethod
    client_id: Annotated[str, Field(min_length=1)]
    client_secret: SecretStr | None = None
    # private_key_jwt (RFC 7523): PEM private key, its algorithm and optional kid.
    private_key: FilePath | None = None
    private_key_alg: SigningAlg = "PS256"
    private_key_kid: str | None = None
    # tls_client_auth (RFC 8705 §2.1): the client certificate presented to the AS.
    tls_cert: FilePath | None = None
    tls_key: FilePath | None = None

    @model_validator(mode="after")
    def _material(self, info: ValidationInfo) -> ClientAuth:
        if self.method in ("client_secret_basic", "client_secret_post"):
            if self.client_secret is None or not self.client_secret.get_secret_value():
                raise ValueError(f"{self.method} needs client_secret (e.g. client_secret: ${{AS_SECRET}})")
        elif self.method == "private_key_jwt":
            if self.private_key is None:
                raise ValueError("private_key_jwt needs private_key (a PEM file)")
            if check_files(info):  # check-config --no-files: the key file is not here
                _check_signing_key(self.private_key, self.private_key_alg)
        elif self.tls_cert is None or self.tls_key is None:
            raise ValueError("tls_client_auth needs tls_cert and tls_key")
        if self.method != "tls_client_auth" and (self.tls_cert or self.tls_key):
            raise ValueError("tls_cert/tls_key are only used with method: tls_client_auth")
        return self


class IntrospectionConfig(Model):
    """RFC 7662 introspection of one issuer's tokens, with bounded caches."""

    # Default: introspection_endpoint from the issuer's metadata (needs discovery).
    endpoint: AbsUrl | None = None
    client_auth: ClientAuth
    # ``jwt``: ask for and verify a signed RFC 9701 response (typ token-introspection+jwt).
    response: Literal["json", "jwt"] = "json"
    # Positive results live until min(cache_ttl_s, exp); 0 disables caching (sensitive routes).
    cache_ttl_s: Annotated[float, Field(ge=0, le=86400)] = 60.0
    negative_cache_ttl_s: Annotated[float, Field(ge=0, le=3600)] = 5.0
    cache_size: CacheSize = 10_000
    negative_cache_size: CacheSize = 10_000
    timeout_s: Seconds = 3.0
    # At most this many introspection calls in flight at once (protects the AS).
    max_concurrent_calls: Annotated[int, Field(ge=1, le=10_000)] = 64
    # Calls that may wait for one of those slots, and for how long; beyond either the request is
    # refused at once with 503 + Retry-After (a slow AS must not make every request wait).
    max_queued_calls: Annotated[int, Field(ge=0, le=100_000)] = 256
    queue_timeout_s: Annotated[float, Field(gt=0, le=30)] = 1.0
    # Calls in flight or waiting on behalf of one source (client certificate, else client address,
    # IPv6 by /64): one client flooding garbage tokens cannot take every slot.
    max_concurrent_per_source: Annotated[int, Field(ge=1, le=10_000)] = 8
    # Token scanning (INTR-11): once a source's tokens came back inactive this many times within
    # inactive_window_s, its uncached tokens are refused (503) without asking the AS until the
    # window ends. Valid and cached tokens never count; raise it for clients behind one NAT.
    max_inactive_per_source: Annotated[int, Field(ge=1, le=1_000_000)] = 100
    inactive_window_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # Tokens outside these lengths are refused (401) without asking the AS. RFC 6749 §10.10 wants
    # at least 128 bits of entropy: no genuine token is shorter than ~22 characters.
    min_token_length: Annotated[int, Field(ge=1, le=1024)] = 16
    max_token_length: Annotated[int, Field(ge=1, le=12_288)] = 8192

    @model_validator(mode="after")
    def _lengths(self) -> IntrospectionConfig:
        if self.min_token_length > self.max_token_length:
            raise ValueError("min_token_length must not exceed max_token_length")
        return self


class IssuerConfig(Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    # Compared byte for byte with ``iss`` (RFC 9068 §4): no normalisation, no trailing-slash games.
    issuer: AbsUrl
    mode: IssuerMode = "jwt"
    # Key source: exactly one of these for JWT modes (or for RFC 9701 responses).
    jwks_uri: AbsUrl | None = None
    jwks_file: FilePath | None = None
    # true: RFC 8414 metadata, then OpenID Connect discovery, under the issuer URL; or a metadata URL.
    discovery: bool | AbsUrl = False
    algorithms: Annotated[tuple[SigningAlg, ...], Field(min_length=1)] = DEFAULT_ALGORITHMS
    # RFC 9068 §4 requires typ at+jwt; plain ``JWT`` only for legacy servers, explicitly.
    allow_legacy_jwt_typ: bool = False
    required_claims: tuple[str, ...] = DEFAULT_REQUIRED_CLAIMS
    # Clock skew allowed on exp, nbf and iat (FAPI 2.0: accept up to 10 s in the future).
    leeway_s: Annotated[float, Field(ge=0, le=300)] = 10.0
    # Refuse tokens whose exp - iat exceeds this (RFC 9449 §11.2 spirit); None: no limit.
    max_lifetime_s: Seconds | None = None
    # Verified-token cache: by SHA-256(token), until exp, capped by token_cache_ttl_s.
    token_cache_size: CacheSize = 10_000
    token_cache_ttl_s: Annotated[float, Field(ge=0, le=86400)] = 300.0
    # JWKS cache: periodic refresh, unknown-kid refetch at most once per cooldown, stale-on-error.
    jwks_refresh_s: Seconds = 300.0
    jwks_refetch_cooldown_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    # How long the last good key set is used while the JWKS cannot be fetched (issue #13: hours,
    # not a day, so a key the AS withdrew stops verifying soon even if the AS is unreachable).
    jwks_max_stale_s: Annotated[float, Field(gt=0, le=MAX_JWKS_STALE_S)] = 3600.0
    jwks_max_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 1024 * 1024
    http_timeout_s: Seconds = 5.0
    # Extra trust anchors (PEM) for the AS's TLS certificate; default: the system store.
    ca: FilePath | None = None
    # Metadata/JWKS/introspection over plain http:// (FAPI forbids it: dev and tests only).
    allow_insecure_http: bool = False
    introspection: IntrospectionConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> IssuerConfig:
        sources = [s for s in (self.jwks_uri, self.jwks_file, self.discovery or None) if s]
        needs_keys = self.mode != "introspection" or (
            self.introspection is not None and self.introspection.response == "jwt"
        )
        if len(sources) > 1:
            raise ValueError("set only one of jwks_uri, jwks_file or discovery")
        if needs_keys and not sources:
            raise ValueError(f"mode {self.mode} needs a key source: jwks_uri, jwks_file or discovery")
        if self.mode != "jwt" and self.introspection is None:
            raise ValueError(f"mode {self.mode} needs an introspection: block")
        # Also in mode jwt: the block then serves routes with ``introspect: always``.
        if self.introspection is not None and self.introspection.endpoint is None and not self.discovery:
            raise ValueError("introspection.endpoint is required unless discovery is enabled")
        if self.jwks_max_stale_s < self.jwks_refresh_s:
            raise ValueError("jwks_max_stale_s must be at least jwks_refresh_s (keys would lapse between refreshes)")
        if not self.allow_insecure_http:
            urls = [self.jwks_uri, self.discovery if isinstance(self.discovery, str) else None]
            urls.append(self.introspection.endpoint if self.introspection else None)
            if self.discovery is True:
                urls.append(self.issuer)
            for url in urls:
                if url and not url.startswith("https://"):
                    raise ValueError(
                        f"{url} is not https:// (FAPI requires TLS; allow_insecure_http: true for dev only)"
                    )
        return self
