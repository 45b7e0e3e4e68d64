"""JWT access tokens (RFC 9068 §4, RFC 8725 §3, FAPI 2.0 §5.4).

Order of checks: header (``typ``, ``alg`` allowlist, ``crit`` in ``jose.parse_compact``), key by
``kid`` from the issuer's own key set only, signature, then claims (``claims.to_verified_token``).
The signature is checked before any claim so error reasons say nothing about unverified content.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config.issuers import IssuerConfig
from ..errors import InvalidTokenError
from ..model import VerifiedToken
from .claims import to_verified_token
from .jose import CompactJws, verify_signature
from .jwks import JwksCache, VerificationKey

__all__ = ("JwtVerifier", "typ_is_access_token")

_MAX_KID = 256


def typ_is_access_token(typ: object, *, allow_legacy: bool) -> bool:
    """RFC 9068 §4 + RFC 7515 §4.1.9: ``at+jwt`` / ``application/at+jwt``, case-insensitive."""
    if not isinstance(typ, str):
        return False
    media = typ.lower()
    media = media.removeprefix("application/")
    return media == "at+jwt" or (allow_legacy and media == "jwt")


class JwtVerifier:
    """Verifies one issuer's JWT access tokens."""

    def __init__(self, cfg: IssuerConfig, keys: JwksCache, *, clock: Callable[[], float] = time.time) -> None:
        self._cfg = cfg
        self._keys = keys
        self._clock = clock
        self._algorithms = frozenset(cfg.algorithms)

    async def verify(self, jws: CompactJws) -> VerifiedToken:
        return (await self.verify_with_key(jws))[0]

    async def verify_with_key(self, jws: CompactJws) -> tuple[VerifiedToken, VerificationKey]:
        """The token and the key that verified it (a cached result is only good while that key is)."""
        cfg = self._cfg
        header = jws.header
        # RFC 9068 §4: typ must be at+jwt; this also keeps ID tokens, DPoP proofs and logout
        # tokens from the same AS from being accepted as access tokens (RFC 8725 §3.11-3.12).
        if not typ_is_access_token(header.get("typ"), allow_legacy=cfg.allow_legacy_jwt_typ):
            raise InvalidTokenError("the token is not a JWT access token (typ)", reason="token_wrong_typ")
        alg = header.get("alg")
        # Exact, case-sensitive allowlist: "none", "None", HS* and unlisted algs all fail here.
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise InvalidTokenError(
                "the access token's signing algorithm is not accepted", reason="token_alg_not_allowed"
            )
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > _MAX_KID):
            raise InvalidTokenError("the access token header is malformed", reason="token_malformed")
        # jku, x5u, jwk and x5c are deliberately never read: keys come from the issuer config only.
        candidates = await self._keys.keys_for(kid, alg)
        if not candidates:
            raise InvalidTokenError(
                "no key of the issuer matches the access token", reason="token_unknown_key"
            )
        key = next((k for k in candidates if verify_signature(jws, alg, k.key)), None)
        if key is None:
            raise InvalidTokenError("the access token signature is invalid", reason="token_bad_signature")
        now = self._clock()
        token = to_verified_token(
            jws.payload,
            issuer=cfg.issuer,
            source="jwt",
            now=now,
            leeway_s=cfg.leeway_s,
            required=cfg.required_claims,
            require_exp=True,
            max_lifetime_s=cfg.max_lifetime_s,
            default_expiry=now,
        )
        return token, key
