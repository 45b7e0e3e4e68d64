"""``clients:`` and ``http_signatures:`` — FAPI 2.0 HTTP message signatures (RFC 9421, RFC 9530).

    clients:                                   # OAuth clients whose request signatures are checked
      - client_id: tpp-1                       # the token's client_id
        jwks_uri: https://tpp-1.example/jwks   # or jwks_file: /etc/gateway/tpp-1.jwks.json
        ca: /etc/gateway/tpp-ca.pem            # trust anchors for jwks_uri (default: system store)
    http_signatures:
      signing_keys:                            # the gateway's own keys, for response signatures
        - {kid: gw-2026-01, file: /etc/gateway/sig-es256.pem, alg: ES256}
      active_key: gw-2026-01                   # which one signs; the others stay published
      jwks_path: /.well-known/gateway-signing-jwks.json   # public JWKS of signing_keys
      max_age_s: 60                            # a request signature's ``created`` may be this old
      max_future_s: 10                         # ... and this far in the future (clock skew)
    routes:
      - id: payments
        http_signatures: {request: required, response: "on", max_response_bytes: 1048576}

Client keys are cached like an issuer's JWKS (``gateway.verify.jwks``: periodic refresh,
unknown-``kid`` refetch at most once per cooldown, stale-on-error up to ``jwks_max_stale_s``).
Only asymmetric keys are ever used (ES256, PS256, Ed25519): never HMAC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator

from .base import FilePath, Model
from .issuers import MAX_JWKS_STALE_S, AbsUrl, Seconds
from .mtls import HeaderName

if TYPE_CHECKING:
    from .schema import GatewayConfig

__all__ = (
    "ClientConfig",
    "HttpSignaturesConfig",
    "RouteSignatures",
    "SigningKeyConfig",
    "check_signatures",
)

SigningAlgName = Literal["ES256", "PS256", "Ed25519", "EdDSA"]


class ClientConfig(Model):
    client_id: Annotated[str, Field(min_length=1, max_length=255)]
    jwks_uri: AbsUrl | None = None
    jwks_file: FilePath | None = None
    ca: FilePath | None = None
    # Fetch over plain http:// (dev and tests only; FAPI requires TLS).
    allow_insecure_http: bool = False
    jwks_refresh_s: Seconds = 300.0
    jwks_refetch_cooldown_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    jwks_max_stale_s: Annotated[float, Field(gt=0, le=MAX_JWKS_STALE_S)] = 3600.0
    jwks_max_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 256 * 1024
    http_timeout_s: Seconds = 5.0

    @model_validator(mode="after")
    def _one_source(self) -> ClientConfig:
        if (self.jwks_uri is None) == (self.jwks_file is None):
            raise ValueError("set exactly one of jwks_uri or jwks_file")
        if self.jwks_uri and not self.jwks_uri.startswith("https://") and not self.allow_insecure_http:
            raise ValueError(f"{self.jwks_uri} is not https:// (allow_insecure_http: true for dev only)")
        if self.jwks_max_stale_s < self.jwks_refresh_s:
            raise ValueError("jwks_max_stale_s must be at least jwks_refresh_s")
        return self


class SigningKeyConfig(Model):
    kid: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
    # An unencrypted PEM private key or a private JWK (JSON) file.
    file: FilePath
    alg: SigningAlgName

    @model_validator(mode="after")
    def _loads(self) -> SigningKeyConfig:
        # Loaded once here, so a wrong key fails at load with its field, not at the first response.
        from ..signatures.keys import load_signing_key

        load_signing_key(self)
        return self


class HttpSignaturesConfig(Model):
    signing_keys: tuple[SigningKeyConfig, ...] = ()
    active_key: str | None = None
    # Where the public keys of ``signing_keys`` are served on the public listener (no auth).
    jwks_path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9._~/-]{0,200}$")] | None = None
    max_age_s: Annotated[float, Field(gt=0, le=600)] = 60.0
    max_future_s: Annotated[float, Field(ge=0, le=60)] = 10.0

    @model_validator(mode="after")
    def _keys(self) -> HttpSignaturesConfig:
        kids = [k.kid for k in self.signing_keys]
        if len(set(kids)) != len(kids):
            raise ValueError("signing_keys: duplicate kid")
        if self.signing_keys and self.active_key is None:
            raise ValueError("active_key: name the signing key in use (one of signing_keys' kid)")
        if self.active_key is not None and self.active_key not in kids:
            raise ValueError(f"active_key: {self.active_key!r} is not the kid of any signing_keys entry")
        return self


class RouteSignatures(Model):
    # required: refuse unsigned requests; optional: check a signature when there is one.
    request: Literal["required", "optional", "off"] = "off"
    response: Literal["on", "off"] = "off"
    # Signed responses are buffered to compute their Content-Digest: larger ones are a 502.
    max_response_bytes: Annotated[int, Field(ge=0, le=64 * 1024 * 1024)] = 1024 * 1024
    # Send the verified keyid (and label) upstream in this header (stripped from client requests).
    identity_header: HeaderName | None = None


def check_signatures(cfg: GatewayConfig) -> list[str]:
    """Cross-references: signed routes need an authenticated client and keys to check or sign with."""
    from .auth import AuthPolicy

    problems: list[str] = []
    ids = [c.client_id for c in cfg.clients]
    for n, cid in enumerate(ids):
        if cid in ids[:n]:
            problems.append(f"clients[{n}].client_id: duplicate {cid!r}")
    for n, route in enumerate(cfg.routes):
        sig = route.http_signatures
        where = f"routes[{n}].http_signatures"
        if sig.request != "off":
            if not isinstance(route.auth, AuthPolicy):
                problems.append(f"{where}.request: needs an authenticated route (the client's keys are "
                                "found by the token's client_id); auth is none")
            if not cfg.clients:
                problems.append(f"{where}.request: no clients: registry to find the client's keys in")
        if sig.response == "on" and not cfg.http_signatures.signing_keys:
            problems.append(f"{where}.response: needs http_signatures.signing_keys (the gateway's signing key)")
        if sig.identity_header is not None and sig.request == "off":
            problems.append(f"{where}.identity_header: only meaningful with request: required or optional")
    if cfg.http_signatures.jwks_path is not None and not cfg.http_signatures.signing_keys:
        problems.append("http_signatures.jwks_path: no signing_keys to publish")
    return problems
