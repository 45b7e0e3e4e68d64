"""DPoP proof verification at a resource server: RFC 9449 §4.3 (checks 1-12), §7.1 (``ath``,
``cnf.jkt``), §8-9 (nonces), §11.1 (``jti`` replay, ``iat`` window), with RFC 7515 (JWS compact
serialization, ``crit``) and RFC 7518 §3 (signature formats).

The compact JWS is parsed by hand and the signature checked with ``cryptography`` directly: the
proof header is usually byte-identical from one request to the next, so its parse (typ, alg,
key, thumbprint) is cached by the header segment's SHA-256 and a proof costs one JSON decode and
one signature verification. The header cache keeps each key in compact form (``CompactJwk``); live
key objects, ~2 KiB of native memory each for EC keys, are kept for the most recent ``_LIVE_KEYS``
keys only and rebuilt (~10-15 µs per proof, EC) for the others.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..config.dpop import DpopConfig
from ..errors import InvalidDpopProofError, InvalidTokenError, ReplayStoreUnavailableError, UseDpopNonceError
from ..model import sha256_b64url
from ..strictjson import STRICT_JSON
from .htu import compare_htu
from .jwk import ALG_KEY_TYPES, BoundedTtlMap, CompactJwk, JwkCache, JwkError, PublicKey, b64url_decode
from .nonce import NonceIssuer
from .replay import ReplayStore, replay_key

__all__ = ("DpopVerifier", "VerifiedProof")

_HASHES: dict[str, hashes.HashAlgorithm] = {
    "256": hashes.SHA256(),
    "384": hashes.SHA384(),
    "512": hashes.SHA512(),
}
_EC_SIG_BYTES = {"ES256": 64, "ES384": 96, "ES512": 132}
# Signature parameter objects are immutable: built once, not per proof.
_ECDSA = {alg: ec.ECDSA(_HASHES[alg[2:]]) for alg in _EC_SIG_BYTES}
# RFC 7518 §3.5: MGF1 with the same hash, salt as long as the hash.
_RSA_PADDING: dict[str, padding.AsymmetricPadding] = {
    **{f"PS{n}": padding.PSS(mgf=padding.MGF1(_HASHES[n]), salt_length=_HASHES[n].digest_size)
       for n in ("256", "384", "512")},
    **{f"RS{n}": padding.PKCS1v15() for n in ("256", "384", "512")},
}
# Real headers are 200-900 characters (EC to RSA-4096 keys); bigger ones are verified, not cached,
# so the work and memory per cache entry stay bounded.
_MAX_CACHED_HEADER = 2048
# Live key objects kept (the header cache keeps every key in compact form): enough for the clients
# active at any moment. A proof whose key is not live costs ~10-15 µs more (EC: rebuild and first
# verification); a live EC key costs ~2.3 KiB, so 1024 of them ~2.4 MB.
_LIVE_KEYS = 1024
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class VerifiedProof:
    jkt: str
    jti: str
    # A fresh DPoP-Nonce for the response when the client's nonce is about to expire (RFC 9449 §8.2).
    next_nonce: str | None = None


@dataclass(frozen=True, slots=True)
class _Header:
    alg: str
    jwk: CompactJwk


def _bad(description: str, reason: str = "dpop_invalid_proof") -> InvalidDpopProofError:
    return InvalidDpopProofError(description, reason=reason)


def _decode_json_segment(segment: str, what: str) -> dict[str, Any]:
    try:
        data = STRICT_JSON.decode(b64url_decode(segment).decode("utf-8"))
    except (ValueError, RecursionError):
        # RecursionError: deeply nested JSON (DPOP-24) is refused, never a 500.
        raise _bad(f"DPoP proof {what} is not base64url-encoded JSON", "dpop_malformed") from None
    if not isinstance(data, dict):
        raise _bad(f"DPoP proof {what} is not a JSON object", "dpop_malformed")
    return data


def _is_number(value: Any) -> bool:
    """A JSON number usable as a NumericDate (DPOP-24: huge integers, NaN and booleans refused)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**53) < value < 2**53
    return isinstance(value, float) and math.isfinite(value)


def _verify_signature(alg: str, key: PublicKey, signing_input: bytes, signature: bytes) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            # RFC 7518 §3.4: JOSE carries R || S, each the full coordinate size; not DER.
            size = _EC_SIG_BYTES[alg]
            if len(signature) != size:
                return False
            half = size // 2
            der = encode_dss_signature(
                int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
            )
            key.verify(der, signing_input, _ECDSA[alg])
        elif isinstance(key, rsa.RSAPublicKey):
            if len(signature) != (key.key_size + 7) // 8:
                return False
            key.verify(signature, signing_input, _RSA_PADDING[alg], _HASHES[alg[2:]])
        else:
            key.verify(signature, signing_input)
    except InvalidSignature:
        return False
    return True


class DpopVerifier:
    """Checks one proof against one request. Nothing here is per-route except ``require_nonce``."""

    def __init__(
        self,
        cfg: DpopConfig,
        *,
        replay: ReplayStore,
        nonces: NonceIssuer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = cfg
        # Our own copy of each name, so cached headers do not keep strings decoded from requests.
        self._algs: dict[str, str] = {alg: alg for alg in cfg.algorithms}
        self._replay = replay
        self._nonces = nonces
        self._clock = clock
        self._keys = JwkCache(
            maxsize=min(cfg.key_cache_size, _LIVE_KEYS),
            ttl_s=cfg.key_cache_ttl_s,
            min_rsa_bits=cfg.rsa_min_bits,
            max_rsa_bits=cfg.rsa_max_bits,
        )
        # Validated headers by the SHA-256 of their exact base64url segment (a pure function of it);
        # the digest is a quarter of the segment's size.
        self._headers = BoundedTtlMap[bytes, _Header](maxsize=cfg.key_cache_size, ttl_s=cfg.key_cache_ttl_s)
        self._refresh_before_s = cfg.nonce.refresh_before_s if cfg.nonce else 0
        self._replay_ttl_s = cfg.replay_ttl_s

    @property
    def nonces(self) -> NonceIssuer | None:
        return self._nonces

    def _header(self, segment: str) -> _Header:
        digest = hashlib.sha256(segment.encode("utf-8", "surrogatepass")).digest()
        hit = self._headers.get(digest)
        if hit is not None:
            return hit
        raw = _decode_json_segment(segment, "header")
        # RFC 9449 §4.3 (4); RFC 7515 §4.1.9: media types are case-insensitive, "application/" optional.
        typ = raw.get("typ")
        if not isinstance(typ, str) or typ.lower().removeprefix("application/") != "dpop+jwt":
            raise _bad("DPoP proof typ must be dpop+jwt", "dpop_bad_typ")
        # RFC 9449 §4.3 (5), §11.6: an allowlist, compared exactly (so "noNE", HS256, none all fail).
        alg = raw.get("alg")
        alg = self._algs.get(alg) if isinstance(alg, str) else None
        if alg is None:
            raise _bad("DPoP proof alg is not one of the accepted algorithms", "dpop_bad_alg")
        # RFC 7515 §4.1.11: we implement no extension, so any crit makes the JWS invalid.
        if "crit" in raw:
            raise _bad("DPoP proof uses a critical header extension that is not supported", "dpop_bad_header")
        # RFC 9449 §4.2: the key comes from jwk only; jku/x5u/x5c/kid are never followed (RFC 8725 §3.10).
        jwk = raw.get("jwk")
        if not isinstance(jwk, dict):
            raise _bad("DPoP proof has no jwk header", "dpop_bad_jwk")
        try:
            parsed = self._keys.get(jwk)
        except JwkError as exc:
            raise _bad(f"DPoP proof jwk: {exc}", "dpop_bad_jwk") from None
        kty, crv = ALG_KEY_TYPES[alg]
        if parsed.kty != kty or (crv is not None and parsed.crv != crv):
            raise _bad("DPoP proof jwk key type does not match alg", "dpop_bad_jwk")
        header = _Header(alg=alg, jwk=parsed.compact())
        if len(segment) <= _MAX_CACHED_HEADER:
            self._headers.put(digest, header)
        return header

    def _check_time(self, claims: dict[str, Any], now: float, nonce_valid: bool) -> None:
        iat = claims["iat"]
        if not nonce_valid:
            # RFC 9449 §11.1: only a short window. With a valid server nonce, freshness comes from
            # the nonce instead (§11.1 "nonce values containing the time at the server").
            age = now - iat
            if age > self._cfg.iat_past_s or -age > self._cfg.iat_future_s:
                if self._nonces is not None:
                    # node-oidc-provider behaviour: a skewed client recovers by using our nonce.
                    raise UseDpopNonceError(
                        "DPoP proof iat is outside the accepted window; use the DPoP-Nonce",
                        nonce=self._nonces.issue(),
                        reason="dpop_iat_window",
                    )
                if age > 0:
                    raise _bad(
                        f"DPoP proof iat is too old: {math.ceil(age)} s in the past "
                        f"(at most {self._cfg.iat_past_s} s accepted)",
                        "dpop_iat_too_old",
                    )
                raise _bad(
                    f"DPoP proof iat is too far ahead: {math.ceil(-age)} s in the future "
                    f"(at most {self._cfg.iat_future_s} s accepted)",
                    "dpop_iat_in_future",
                )
        # DPOP-16: optional exp / nbf follow JWT semantics (with the same future skew).
        exp = claims.get("exp")
        if exp is not None and (not _is_number(exp) or exp <= now - self._cfg.iat_future_s):
            raise _bad("DPoP proof has expired (exp)", "dpop_expired")
        nbf = claims.get("nbf")
        if nbf is not None and (not _is_number(nbf) or nbf > now + self._cfg.iat_future_s):
            raise _bad("DPoP proof is not valid yet (nbf)", "dpop_not_yet_valid")

    async def verify(
        self,
        proof: str,
        *,
        method: str,
        url: str,
        access_token: str,
        cnf_jkt: str,
        require_nonce: bool = False,
    ) -> VerifiedProof:
        """Verify ``proof`` for this request and token, and consume its ``jti``.

        Raises ``InvalidDpopProofError``, ``UseDpopNonceError``, ``InvalidTokenError`` (key not
        the token's, RFC 9449 §7.1 / Fig. 16) or ``ReplayStoreUnavailableError``.
        """
        # DPOP-25: bounded before any parsing or crypto.
        if len(proof) > self._cfg.max_proof_bytes:
            raise _bad("DPoP proof is too large", "dpop_too_large")
        # RFC 9449 §4.3 (2): a single well-formed JWS compact serialization (three segments).
        parts = proof.split(".")
        if len(parts) != 3 or not all(parts):
            raise _bad("DPoP proof is not a compact JWS (three non-empty segments)", "dpop_malformed")
        header_seg, payload_seg, sig_seg = parts
        header = self._header(header_seg)
        claims = _decode_json_segment(payload_seg, "payload")
        try:
            signature = b64url_decode(sig_seg)
        except ValueError:
            raise _bad("DPoP proof signature is not base64url", "dpop_malformed") from None

        # RFC 9449 §4.2 / §4.3 (3): required claims with their JSON types; ath is required at an RS (§7).
        jti, htm, htu, iat, ath = (claims.get(n) for n in ("jti", "htm", "htu", "iat", "ath"))
        if not isinstance(jti, str) or not jti:
            raise _bad("DPoP proof jti is missing or not a string", "dpop_missing_claim")
        if len(jti) > self._cfg.max_jti_chars:
            raise _bad("DPoP proof jti is too long", "dpop_missing_claim")
        if not isinstance(htm, str):
            raise _bad("DPoP proof htm is missing or not a string", "dpop_missing_claim")
        if not isinstance(htu, str):
            raise _bad("DPoP proof htu is missing or not a string", "dpop_missing_claim")
        if not _is_number(iat):
            raise _bad("DPoP proof iat is missing or not a number", "dpop_missing_claim")
        if not isinstance(ath, str):
            raise _bad("DPoP proof ath is missing (required with an access token)", "dpop_missing_claim")
        nonce = claims.get("nonce")
        if nonce is not None and not isinstance(nonce, str):
            raise _bad("DPoP proof nonce is not a string", "dpop_missing_claim")

        # RFC 9449 §4.3 (8): the method, exactly (methods are case-sensitive).
        if htm != method:
            shown = f" {method}" if method in _KNOWN_METHODS else ""
            raise _bad(f"DPoP proof htm does not match the request method{shown}", "dpop_htm_mismatch")
        # RFC 9449 §4.3 (9): the URI, query and fragment ignored, after RFC 3986 normalisation.
        problem = compare_htu(htu, url)
        if problem is not None:
            raise _bad(f"DPoP proof {problem}", "dpop_htu_mismatch")
        # RFC 9449 §4.3 (12): ath = base64url(SHA-256(ASCII(token))), exact string.
        if not hmac.compare_digest(ath.encode(), sha256_b64url(access_token.encode()).encode()):
            raise _bad("DPoP proof ath does not match the access token", "dpop_ath_mismatch")

        # RFC 9449 §4.3 (6): the signature, with the key from the jwk header.
        signing_input = f"{header_seg}.{payload_seg}".encode("ascii")
        if not _verify_signature(header.alg, self._keys.live(header.jwk).key, signing_input, signature):
            raise _bad("DPoP proof signature is invalid", "dpop_bad_signature")

        # RFC 9449 §4.3 (12) / §6.1: the proof key is the one the token is bound to.
        if not hmac.compare_digest(header.jwk.thumbprint.encode(), cnf_jkt.encode()):
            raise InvalidTokenError(
                "the DPoP proof key does not match the key the access token is bound to",
                reason="binding_mismatch",
                scheme="DPoP",
            )

        # RFC 9449 §4.3 (10) / §9: the server nonce.
        now = self._clock()
        next_nonce: str | None = None
        nonce_valid = False
        issued_at = float(claims["iat"])  # how fresh the proof is: iat, or the time of a valid server nonce
        if self._nonces is not None and nonce is not None:
            check = self._nonces.check(nonce)
            nonce_valid = check.valid
            if check.valid:
                issued_at = check.issued_at
            if check.valid and check.remaining_s < self._refresh_before_s:
                next_nonce = self._nonces.issue()
        if require_nonce and not nonce_valid:
            if self._nonces is None:  # pragma: no cover - config validation forbids this
                raise _bad("server nonces are required but not configured", "dpop_nonce_unavailable")
            described = "DPoP proof nonce is invalid or expired" if nonce else "DPoP proof must carry a nonce"
            raise UseDpopNonceError(described, nonce=self._nonces.issue(), reason="dpop_nonce_required")
        # RFC 9449 §4.3 (11): iat window (or nonce-based freshness), exp/nbf if present.
        self._check_time(claims, now, nonce_valid)

        # RFC 9449 §11.1: jti single use, recorded only now that everything else passed, so an
        # unsigned or otherwise invalid proof cannot poison the store.
        began: float | None = None
        try:
            first = await self._replay.first_use(replay_key(header.jwk.thumbprint, jti), self._replay_ttl_s)
            if first:
                began = await self._replay.memory_began()
        except ReplayStoreUnavailableError:
            if self._cfg.replay.on_unavailable == "fail_open_safe_methods" and method in _SAFE_METHODS:
                first = True
            else:
                raise
        if not first:
            raise _bad("DPoP proof has already been used (jti replay)", "dpop_replay")
        # A proof issued before the store's memory began may have been used against the memory
        # that is gone (Redis restarted empty, flushed or failed over; a restarted process with
        # the memory store): "first use" cannot be known, so it is refused. Whole seconds, as iat.
        if began is not None and issued_at < math.floor(began):
            if self._nonces is not None:
                # Recoverable at once: a proof with this nonce is fresher than the store.
                raise UseDpopNonceError(
                    "DPoP proof predates the replay store's memory; use the DPoP-Nonce",
                    nonce=self._nonces.issue(),
                    reason="dpop_predates_replay_store",
                )
            raise _bad(
                "DPoP proof predates the replay store's memory; sign a new proof", "dpop_predates_replay_store"
            )
        return VerifiedProof(jkt=header.jwk.thumbprint, jti=jti, next_nonce=next_nonce)
