"""Keys for HTTP message signatures: the clients' (verification) and the gateway's (signing).

Client keys: one JWKS cache per ``clients:`` entry (``gateway.verify.jwks.JwksCache``, the very
cache issuer keys use: refresh, unknown-key refetch at most once per cooldown, stale-on-error,
RSA under 2048 bits / symmetric / private / ``use: enc`` keys skipped). A request's ``keyid`` names
a key of the token's client only (by JWK ``kid`` or RFC 7638 thumbprint): a key registered for
another client never verifies, since it is never looked up.

Signing keys: PEM or private-JWK files, loaded once at start; the active one signs, all are
published (public parts only) so a rotated-out key still verifies responses signed before.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from ..bind.jwk import jwk_thumbprint
from ..config.issuers import IssuerConfig
from ..config.signatures import ClientConfig, HttpSignaturesConfig, SigningKeyConfig
from ..verify.fetch import IssuerHttp
from ..verify.jwks import JwksCache, VerificationKey

__all__ = ("ClientKey", "ClientKeys", "SigningKey", "SigningKeys", "load_signing_key", "public_jwk", "rfc9421_alg")

# What the gateway accepts, per key type: the FAPI 2.0 algorithms (§5.4.1), as JWS names.
# ``alg`` in a Signature-Input, when present, must be the RFC 9421 registry name for the same
# computation (RFC 9421 §3.3.7 forbids JWS names there); PS256 has none, so it is always implied.
_EC_P256 = "secp256r1"


def key_alg(key: Any, jwk_alg: str | None) -> str | None:
    """The JWS algorithm this public key verifies with, or None (not a key we use)."""
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        alg = "ES256" if key.curve.name == _EC_P256 else None
    elif isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        alg = "Ed25519"
    elif isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        alg = "PS256"
    else:
        return None
    if jwk_alg is not None and jwk_alg != alg and not (alg == "Ed25519" and jwk_alg == "EdDSA"):
        return None  # e.g. an RSA key published for RS256: never used for PS256
    return alg


def rfc9421_alg(jws_alg: str) -> str | None:
    """The RFC 9421 registry name that computes the same signature as ``jws_alg``."""
    return {"ES256": "ecdsa-p256-sha256", "Ed25519": "ed25519", "EdDSA": "ed25519"}.get(jws_alg)


def public_jwk(key: Any) -> dict[str, Any]:
    """The public JWK members of a cryptography key (no kid/alg)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        key = key.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return dict(ECAlgorithm.to_jwk(key, as_dict=True))
    if isinstance(key, rsa.RSAPublicKey):
        return dict(RSAAlgorithm.to_jwk(key, as_dict=True))
    if isinstance(key, ed25519.Ed25519PublicKey):
        return dict(OKPAlgorithm.to_jwk(key, as_dict=True))
    raise ValueError("unsupported key type")


@dataclass(frozen=True, slots=True)
class ClientKey:
    client_id: str
    keyid: str  # as the request named it
    key: Any  # cryptography public key
    alg: str  # JWS name: ES256, PS256, Ed25519


def _issuer_view(n: int, c: ClientConfig) -> IssuerConfig:
    """The JWKS cache's settings for a client (it is written for issuers; only key-source fields
    are read). ``name`` is what its log lines say."""
    return IssuerConfig(
        name=f"client-{n}", issuer=f"https://clients.invalid/{n}", mode="jwt",
        jwks_uri=c.jwks_uri, jwks_file=c.jwks_file, ca=c.ca, allow_insecure_http=c.allow_insecure_http,
        jwks_refresh_s=c.jwks_refresh_s, jwks_refetch_cooldown_s=c.jwks_refetch_cooldown_s,
        jwks_max_stale_s=c.jwks_max_stale_s, jwks_max_bytes=c.jwks_max_bytes, http_timeout_s=c.http_timeout_s,
    )


class ClientKeys:
    """The ``clients:`` registry: client_id -> its JWKS cache."""

    def __init__(self, clients: Sequence[ClientConfig]) -> None:
        self._caches: dict[str, JwksCache] = {}
        self._http: list[IssuerHttp] = []
        for n, c in enumerate(clients):
            view = _issuer_view(n, c)
            http = IssuerHttp(view)
            self._http.append(http)
            self._caches[c.client_id] = JwksCache(view, http, None)
        # RFC 7638 thumbprints by key fingerprint, computed once per key (bounded by the key sets).
        self._thumbprints: dict[bytes, str] = {}

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._caches

    async def start(self) -> None:
        for cache in self._caches.values():
            await cache.start()

    async def close(self) -> None:
        for cache in self._caches.values():
            await cache.close()
        for http in self._http:
            await http.close()

    def _thumbprint(self, k: VerificationKey) -> str:
        tp = self._thumbprints.get(k.fingerprint)
        if tp is None:
            if len(self._thumbprints) > 10_000:
                self._thumbprints.clear()
            try:
                tp = jwk_thumbprint(public_jwk(k.key))
            except ValueError:
                tp = ""
            self._thumbprints[k.fingerprint] = tp
        return tp

    async def find(self, client_id: str, keyid: str) -> list[ClientKey]:
        """The client's usable keys named ``keyid`` (kid, else RFC 7638 thumbprint); [] if none."""
        cache = self._caches.get(client_id)
        if cache is None:
            return []
        found = await cache.find(lambda k: k.kid == keyid or self._thumbprint(k) == keyid)
        out = []
        for k in found:
            alg = key_alg(k.key, k.alg)
            if alg is not None:
                out.append(ClientKey(client_id, keyid, k.key, alg))
        return out


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    alg: str
    private: Any
    jwk: Mapping[str, Any]  # public JWK with kid, alg, use


def _load_private(cfg: SigningKeyConfig) -> Any:
    raw = Path(cfg.file).read_bytes()
    if raw.lstrip().startswith(b"{"):
        doc = json.loads(raw)
        if not isinstance(doc, dict) or "d" not in doc:
            raise ValueError(f"{cfg.file}: not a private JWK")
        return jwt.PyJWK(doc, algorithm="EdDSA" if cfg.alg in ("Ed25519", "EdDSA") else cfg.alg).key
    return load_pem_private_key(raw, password=None)


def load_signing_key(k: SigningKeyConfig) -> SigningKey:
    """Load one signing key; ``ValueError`` naming the file when it does not fit its ``alg``."""
    try:
        private = _load_private(k)
    except (OSError, ValueError, TypeError, jwt.PyJWTError) as exc:
        raise ValueError(f"{k.file} is not a usable unencrypted private key ({type(exc).__name__})") from None
    alg = key_alg(private, None)
    if alg is None or (alg != k.alg and not (alg == "Ed25519" and k.alg == "EdDSA")):
        raise ValueError(f"the key in {k.file} is not a {k.alg} key")
    if isinstance(private, rsa.RSAPrivateKey) and private.key_size < 2048:
        raise ValueError(f"the RSA key in {k.file} has fewer than 2048 bits")
    jwk = {**public_jwk(private), "kid": k.kid, "alg": k.alg, "use": "sig"}
    return SigningKey(k.kid, alg, private, jwk)


class SigningKeys:
    """The gateway's signing keys (checked at config load already)."""

    def __init__(self, cfg: HttpSignaturesConfig) -> None:
        keys = [load_signing_key(k) for k in cfg.signing_keys]
        self.keys = tuple(keys)
        self.active = next((k for k in keys if k.kid == cfg.active_key), None)
        self.jwks_document = json.dumps({"keys": [k.jwk for k in keys]}, separators=(",", ":")).encode()
