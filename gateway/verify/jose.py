"""Strict compact-JWS parsing and key/algorithm binding (RFC 7515 §3.1, §4.1.11; RFC 8725 §3.1-3.7).

The compact form is split and decoded by hand so that every ambiguity is refused before any
crypto: non-canonical base64url, non-UTF-8 or duplicate JSON members (JWT-14), unknown ``crit``
(JWT-12). Signatures are checked with PyJWT's algorithm objects on ``cryptography`` keys, after
checking that the key type fits the algorithm (no RSA/HMAC or RS/PS confusion, JWT-05).
Every PyJWT / cryptography exception is translated here, at the boundary (``translate``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import Algorithm, get_default_algorithms

from ..errors import GatewayError, InvalidTokenError, KeySourceUnavailableError
from ..strictjson import STRICT_JSON

__all__ = (
    "ALGORITHMS",
    "CompactJws",
    "key_fits",
    "loads_strict",
    "looks_like_jws",
    "parse_compact",
    "translate",
    "verify_signature",
)

_ALL = get_default_algorithms()
# Only asymmetric signature algorithms can ever be configured; ``none`` and HS* are absent.
ALGORITHMS: dict[str, Algorithm] = {
    name: _ALL[name]
    for name in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
}
ALGORITHMS["Ed25519"] = _ALL["EdDSA"]  # RFC 9864: the same signature, with its curve in its name
_EDDSA_NAMES = frozenset(("EdDSA", "Ed25519"))
_EC_CURVE = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
# Header parameters we understand when listed in ``crit`` (none: RFC 9068 defines no extension).
_UNDERSTOOD_CRIT: frozenset[str] = frozenset()
_MAX_PART = 16_384


def _b64url_decode(part: str) -> bytes:
    if len(part) > _MAX_PART:
        raise ValueError("segment too long")
    padded = part + "=" * (-len(part) % 4)
    raw = base64.urlsafe_b64decode(padded.encode("ascii"))
    # Refuse non-canonical encodings (trailing bits set), so one token has one spelling.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != part:
        raise ValueError("non-canonical base64url")
    return raw


def loads_strict(data: bytes) -> Any:
    """JSON from UTF-8 bytes, refusing duplicate members and other encodings (RFC 8725 §3.7)."""
    try:
        return STRICT_JSON.decode(data.decode("utf-8"))
    except RecursionError:  # "[[[[...": deep nesting must be a 401, never a 500
        raise ValueError("JSON nested too deeply") from None


@dataclass(frozen=True, slots=True)
class CompactJws:
    header: Mapping[str, Any]
    payload: Mapping[str, Any]
    signing_input: bytes
    signature: bytes


def looks_like_jws(token: str) -> bool:
    """Three dot-separated segments: a JWS compact serialization (a JWE has five)."""
    return token.count(".") == 2


def parse_compact(token: str) -> CompactJws:
    """Decode a compact JWS whose payload is a JSON object; raise ``InvalidTokenError`` otherwise."""
    try:
        head_b64, body_b64, sig_b64 = token.split(".")
        header = loads_strict(_b64url_decode(head_b64))
        payload = loads_strict(_b64url_decode(body_b64))
        signature = _b64url_decode(sig_b64)
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidTokenError("the access token is malformed", reason="token_malformed") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise InvalidTokenError("the access token is malformed", reason="token_malformed")
    crit = header.get("crit")
    if crit is not None:
        # RFC 7515 §4.1.11: a non-empty list of names we must understand, else reject.
        if not isinstance(crit, list) or not crit or any(not isinstance(c, str) for c in crit):
            raise InvalidTokenError("the access token header is malformed", reason="token_malformed")
        if any(c not in _UNDERSTOOD_CRIT for c in crit):
            raise InvalidTokenError(
                "the access token uses an unsupported critical header", reason="token_crit_unsupported"
            )
    return CompactJws(header, payload, f"{head_b64}.{body_b64}".encode("ascii"), signature)


def key_fits(alg: str, key: Any, jwk_alg: str | None) -> bool:
    """RFC 8725 §3.1: the key type (and curve) must be the one ``alg`` needs, and the JWK's own
    ``alg``, when published, must be exactly ``alg`` (so an RSA key for PS256 never checks RS256)."""
    if jwk_alg is not None and jwk_alg != alg and not (jwk_alg in _EDDSA_NAMES and alg in _EDDSA_NAMES):
        return False
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    if alg in _EC_CURVE:
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _EC_CURVE[alg]
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    if alg == "Ed25519":
        return isinstance(key, ed25519.Ed25519PublicKey)
    return False


def verify_signature(jws: CompactJws, alg: str, key: Any) -> bool:
    """Check the signature with ``alg`` (already allowlisted) and a key that ``key_fits``."""
    algorithm = ALGORITHMS.get(alg)
    if algorithm is None:
        return False
    try:
        return bool(algorithm.verify(jws.signing_input, key, jws.signature))
    except Exception as exc:  # any library failure on attacker input means "not valid"
        raise translate(exc) from None


def translate(exc: BaseException) -> GatewayError:
    """Map a PyJWT / cryptography exception to our error model (401 token bad, 503 source down)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, jwt.exceptions.PyJWKClientConnectionError):
        return KeySourceUnavailableError("the token issuer's keys are unavailable", reason="jwks_unavailable")
    if isinstance(exc, jwt.exceptions.ExpiredSignatureError):
        return InvalidTokenError("the access token has expired", reason="token_expired")
    if isinstance(exc, jwt.exceptions.ImmatureSignatureError):
        return InvalidTokenError("the access token is not yet valid", reason="token_not_yet_valid")
    if isinstance(exc, jwt.exceptions.InvalidSignatureError | InvalidSignature):
        return InvalidTokenError("the access token signature is invalid", reason="token_bad_signature")
    # Everything else (PyJWTError, UnsupportedAlgorithm, ValueError...) means "this token is bad".
    return InvalidTokenError("the access token is invalid", reason="token_invalid")
