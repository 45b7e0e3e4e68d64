"""Public JSON Web Keys for DPoP proofs: RFC 7517 (JWK), RFC 7518 §6 (key parameters), RFC 8037
(OKP/Ed25519) and RFC 7638 (JWK thumbprint).

A proof carries its own key in the ``jwk`` header (RFC 9449 §4.2). It must be a *public* key of the
type its ``alg`` names; key sizes follow FAPI 2.0 §5.4.1 (RSA >= 2048 bits). Keys are parsed with
``cryptography`` and cached by their RFC 7638 thumbprint, since one client reuses its key for
every request.

A live ``cryptography`` key costs native memory (~2 KiB for an EC key: OpenSSL builds a curve group
per key), and rebuilding one from its DER form costs 1-5 µs (plus ~3 µs more on its first EC
verification). So long-lived caches keep a ``CompactJwk`` (thumbprint + DER, ~0.3 KiB) and
``JwkCache`` keeps live keys for the most recently used ones only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

__all__ = (
    "ALG_KEY_TYPES",
    "BoundedTtlMap",
    "CompactJwk",
    "JwkCache",
    "JwkError",
    "PublicJwk",
    "PublicKey",
    "b64url_decode",
    "jwk_thumbprint",
    "parse_public_jwk",
)

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

# RFC 7517 §4 / RFC 7518 §6: members that only a private (or symmetric) key has.
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

# RFC 7638 §3.2: the required members of each key type, the only ones hashed.
_THUMBPRINT_MEMBERS: dict[str, tuple[str, ...]] = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}
# Our own copies of the names, so a cached key does not keep strings decoded from a request.
_KTYS = {kty: kty for kty in _THUMBPRINT_MEMBERS}

_EC_CURVES: dict[str, tuple[ec.EllipticCurve, int]] = {
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
    "P-521": (ec.SECP521R1(), 66),
}
_CRVS = {crv: crv for crv in _EC_CURVES}

# alg -> (kty, crv or None). RFC 8725 §3.1: each key is used with exactly one algorithm family.
ALG_KEY_TYPES: dict[str, tuple[str, str | None]] = {
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "RS256": ("RSA", None),
    "EdDSA": ("OKP", "Ed25519"),
    "Ed25519": ("OKP", "Ed25519"),  # RFC 9864
}

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_TO_STD = bytes.maketrans(b"-_", b"+/")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class JwkError(ValueError):
    """The JWK is unusable. The message is short, fixed text: it never repeats key material."""


def b64url_decode(value: str) -> bytes:
    """Strict base64url without padding (RFC 7515 §2): no ``=``, no whitespace, no other alphabet."""
    if len(value) % 4 == 1 or _B64URL.fullmatch(value) is None:
        raise ValueError("not base64url")
    try:
        data = (value + "=" * (-len(value) % 4)).encode("ascii").translate(_TO_STD)
        return binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        raise ValueError("not base64url") from None


class BoundedTtlMap(Generic[K, V]):
    """A small cache bounded in size and age: entries expire after ``ttl_s``; when full the oldest goes.

    Cheaper per hit than ``cachetools.TTLCache`` (no expiry sweep on every access), which matters on
    the per-request path. Values must be pure functions of their keys.
    """

    def __init__(self, *, maxsize: int, ttl_s: float) -> None:
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._maxsize = maxsize
        self._ttl_s = ttl_s

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K) -> V | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        if hit[0] < time.monotonic():
            del self._data[key]
            return None
        return hit[1]

    def put(self, key: K, value: V) -> None:
        data = self._data
        data.pop(key, None)
        while len(data) >= self._maxsize:
            data.popitem(last=False)
        data[key] = (time.monotonic() + self._ttl_s, value)


@dataclass(frozen=True, slots=True)
class CompactJwk:
    """A validated public key without its live key object: what long-lived caches keep."""

    kty: str
    crv: str | None
    thumbprint: str  # RFC 7638, SHA-256, base64url
    spki: bytes  # DER SubjectPublicKeyInfo, to rebuild the key object


@dataclass(frozen=True, slots=True)
class PublicJwk:
    kty: str
    crv: str | None
    key: PublicKey
    thumbprint: str  # RFC 7638, SHA-256, base64url

    def compact(self) -> CompactJwk:
        spki = self.key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return CompactJwk(self.kty, self.crv, self.thumbprint, spki)


def _canonical(jwk: Mapping[str, Any]) -> tuple[str, str]:
    """(kty, RFC 7638 canonical JSON of the required members)."""
    kty = jwk.get("kty")
    kty = _KTYS.get(kty) if isinstance(kty, str) else None
    if kty is None:
        raise JwkError("unsupported key type (kty)")
    members = {}
    for name in _THUMBPRINT_MEMBERS[kty]:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise JwkError(f"key member {name} is missing or not a string")
        members[name] = value
    # RFC 7638 §3.3: lexicographic member order, no whitespace. The values were checked to be
    # strings; json.dumps escapes anything outside ASCII, as §3.3 requires for the hash input.
    return kty, json.dumps(members, sort_keys=True, separators=(",", ":"))


def _thumbprint(canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url, no padding. Optional members (alg, kid, use) are ignored."""
    _, canonical = _canonical(jwk)
    return _thumbprint(canonical)


def _decode_member(jwk: Mapping[str, Any], name: str) -> bytes:
    try:
        return b64url_decode(jwk[name])
    except ValueError:
        raise JwkError(f"key member {name} is not base64url") from None


def _load_key(
    jwk: Mapping[str, Any], kty: str, min_rsa_bits: int, max_rsa_bits: int
) -> tuple[PublicKey, str | None]:
    if kty == "EC":
        crv = jwk["crv"]
        if crv not in _EC_CURVES:
            raise JwkError("unsupported EC curve")
        curve, size = _EC_CURVES[crv]
        x, y = _decode_member(jwk, "x"), _decode_member(jwk, "y")
        # RFC 7518 §6.2.1.2/§6.2.1.3: coordinates are the full curve size, not shortened.
        if len(x) != size or len(y) != size:
            raise JwkError("EC coordinates have the wrong length for the curve")
        try:
            # Checks the point is on the curve (invalid-curve attacks).
            return ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + x + y), _CRVS[crv]
        except ValueError:
            raise JwkError("EC point is not on the curve") from None
    if kty == "RSA":
        n_bytes, e_bytes = _decode_member(jwk, "n"), _decode_member(jwk, "e")
        if not n_bytes or n_bytes[0] == 0 or not e_bytes or e_bytes[0] == 0:
            raise JwkError("RSA n and e must be minimal unsigned integers")
        n, e = int.from_bytes(n_bytes, "big"), int.from_bytes(e_bytes, "big")
        bits = n.bit_length()
        # FAPI 2.0 §5.4.1: at least 2048 bits; the upper bound caps verification cost (DPOP-25).
        if bits < min_rsa_bits or bits > max_rsa_bits:
            raise JwkError(f"RSA key size must be {min_rsa_bits}..{max_rsa_bits} bits")
        # Only the standard exponent: anything else is either weak (e=3) or a cost attack.
        if e != 65537:
            raise JwkError("RSA public exponent must be 65537")
        return rsa.RSAPublicNumbers(e, n).public_key(), None
    # OKP (RFC 8037 §2): FAPI 2.0 allows the Ed25519 variant of EdDSA only.
    crv = jwk["crv"]
    if crv != "Ed25519":
        raise JwkError("unsupported OKP curve (only Ed25519)")
    x = _decode_member(jwk, "x")
    if len(x) != 32:
        raise JwkError("Ed25519 key has the wrong length")
    return ed25519.Ed25519PublicKey.from_public_bytes(x), "Ed25519"


def _check_public_only(jwk: Mapping[str, Any]) -> None:
    # RFC 9449 §4.2: the jwk "MUST NOT contain a private key"; "k" would be a symmetric key.
    if not PRIVATE_MEMBERS.isdisjoint(jwk.keys()):
        raise JwkError("the jwk contains private key material")


def parse_public_jwk(
    jwk: Mapping[str, Any], *, min_rsa_bits: int = 2048, max_rsa_bits: int = 8192
) -> PublicJwk:
    """Parse a public JWK, refusing private or symmetric members; raises ``JwkError``."""
    _check_public_only(jwk)
    kty, canonical = _canonical(jwk)
    key, crv = _load_key(jwk, kty, min_rsa_bits, max_rsa_bits)
    return PublicJwk(kty=kty, crv=crv, key=key, thumbprint=_thumbprint(canonical))


class JwkCache:
    """Live parsed keys by RFC 7638 thumbprint: bounded in size and age (oldest out first, TTL).

    The thumbprint covers the required members only, so the same key sent with different
    optional members (``kid``, ``alg``) is one entry. Failures are not cached.
    """

    def __init__(
        self,
        *,
        maxsize: int = 10_000,
        ttl_s: float = 3600.0,
        min_rsa_bits: int = 2048,
        max_rsa_bits: int = 8192,
    ) -> None:
        self._cache = BoundedTtlMap[str, PublicJwk](maxsize=maxsize, ttl_s=ttl_s)
        self._min_rsa_bits = min_rsa_bits
        self._max_rsa_bits = max_rsa_bits

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, jwk: Mapping[str, Any]) -> PublicJwk:
        """Parse and validate ``jwk`` (or find it parsed); raises ``JwkError``."""
        _check_public_only(jwk)  # before the cache: a private member is refused whatever the rest is
        kty, canonical = _canonical(jwk)
        thumbprint = _thumbprint(canonical)
        hit = self._cache.get(thumbprint)
        if hit is not None:
            return hit
        key, crv = _load_key(jwk, kty, self._min_rsa_bits, self._max_rsa_bits)
        parsed = PublicJwk(kty=kty, crv=crv, key=key, thumbprint=thumbprint)
        self._cache.put(thumbprint, parsed)
        return parsed

    def live(self, compact: CompactJwk) -> PublicJwk:
        """The live key of ``compact``, which ``PublicJwk.compact`` made from a validated key."""
        hit = self._cache.get(compact.thumbprint)
        if hit is not None:
            return hit
        key = load_der_public_key(compact.spki)
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
            raise JwkError("unsupported key type")  # pragma: no cover - spki comes from such a key
        parsed = PublicJwk(kty=compact.kty, crv=compact.crv, key=key, thumbprint=compact.thumbprint)
        self._cache.put(compact.thumbprint, parsed)
        return parsed
