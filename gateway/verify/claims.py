"""Token claims -> ``VerifiedToken``, the same rules for JWTs and introspection responses.

RFC 9068 §4 (iss exact, exp required, aud), RFC 7519 §4.1 (NumericDate exp/nbf/iat with leeway),
RFC 8693 §4.2 (scope: space-delimited, case-sensitive), RFC 7800 §3.1 / RFC 9449 §6 / RFC 8705
§3.1 (cnf: ``jkt``, ``x5t#S256``), RFC 7662 §2.2 (introspection members). Audience and scope
are *extracted* here and *checked* per route by ``gateway.policy``.

A ``VerifiedToken`` lives in the token caches until ``exp`` (tens of thousands of them), so it
keeps only what the later stages read: the typed fields, and in ``claims`` the scalar members a
route's ``required_claims`` can match (``_kept_claims``). Scope sets and audience tuples, the
same for most tokens, are shared.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Literal

from ..errors import InvalidTokenError
from ..model import VerifiedToken

__all__ = ("to_verified_token",)

# Anything later than this is not a seconds-since-epoch date (e.g. a milliseconds value, JWT-08d).
_MAX_LIFETIME_SANITY_S = 10 * 365 * 86400


def _bad(description: str, reason: str) -> InvalidTokenError:
    return InvalidTokenError(description, reason=reason)


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # bool is an int subclass in Python; JSON true is not a date.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"the access token's {name} claim is not a NumericDate", "token_malformed")
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float (e.g. 10**400) is no date either
        raise _bad(f"the access token's {name} claim is not a NumericDate", "token_malformed") from None


def _opt_str(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"the access token's {name} claim is not a string", "token_malformed")
    return value


# One shared object per distinct value instead of one per cached token. The values come from
# verified tokens of configured issuers, and the caches are bounded.
@lru_cache(maxsize=256)
def _shared_audience(aud: tuple[str, ...]) -> tuple[str, ...]:
    return aud


@lru_cache(maxsize=256)
def _shared_scopes(scope: str) -> frozenset[str]:
    return frozenset(sys.intern(s) for s in scope.split(" ") if s)


def _audience(claims: Mapping[str, Any]) -> tuple[str, ...]:
    aud = claims.get("aud")
    if aud is None:
        return ()
    if isinstance(aud, str):
        return _shared_audience((aud,))
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return _shared_audience(tuple(aud))
    raise _bad("the access token's aud claim is malformed", "token_malformed")


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    scope = claims.get("scope")
    if scope is None:
        return frozenset()
    if not isinstance(scope, str):
        # RFC 8693 §4.2 defines a string; a JSON array is refused rather than guessed at (JWT-13d).
        raise _bad("the access token's scope claim is not a string", "token_malformed")
    return _shared_scopes(scope)


# Config refuses these in required_claims (gateway.config.auth): their values are in typed fields.
_NOT_REQUIRABLE = frozenset({"iss", "aud", "scope", "client_id"})
_NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})


def _kept_claims(claims: Mapping[str, Any]) -> Mapping[str, Any]:
    """The members ``gateway.policy`` can match against ``required_claims``: JSON strings, integers
    and booleans (a required value is one of these, compared with its type, so an object, array,
    float or null never matches and need not be kept). Names are interned: every cached token
    would otherwise hold its own copy of "sub", "exp", ... RFC 9396 ``authorization_details`` is kept
    whatever its JSON type, for the authz stage (``gateway.authz``), which refuses a malformed one."""
    kept = {
        sys.intern(name): value
        for name, value in claims.items()
        if (isinstance(value, str | int) and name not in _NOT_REQUIRABLE) or name == "authorization_details"
    }
    return MappingProxyType(kept) if kept else _NO_CLAIMS


def _cnf(claims: Mapping[str, Any]) -> tuple[str | None, str | None]:
    cnf = claims.get("cnf")
    if cnf is None:
        return None, None
    if not isinstance(cnf, dict):
        raise _bad("the access token's cnf claim is malformed", "token_malformed")
    jkt, x5t = cnf.get("jkt"), cnf.get("x5t#S256")
    if (jkt is not None and not isinstance(jkt, str)) or (x5t is not None and not isinstance(x5t, str)):
        raise _bad("the access token's cnf claim is malformed", "token_malformed")
    if jkt is None and x5t is None:
        # Bound to something we cannot check: refusing is the only safe answer (fail closed).
        raise _bad("the access token's confirmation method is not supported", "token_unsupported_cnf")
    return jkt, x5t


def to_verified_token(
    claims: Mapping[str, Any],
    *,
    issuer: str,
    source: Literal["jwt", "introspection"],
    now: float,
    leeway_s: float,
    required: Collection[str],
    require_exp: bool,
    max_lifetime_s: float | None,
    default_expiry: float,
) -> VerifiedToken:
    """Check the time and issuer claims and extract the rest; raise ``InvalidTokenError``."""
    iss = claims.get("iss")
    # RFC 9068 §4: exact match, no normalisation (JWT-06); RFC 7662: checked when present.
    if (source == "jwt" or iss is not None) and iss != issuer:
        raise _bad("the access token was not issued by an accepted issuer", "token_wrong_issuer")
    for name in required:
        if claims.get(name) is None:
            raise _bad(f"the access token lacks the {name} claim", "token_missing_claim")
    exp = _numeric_date(claims, "exp")
    nbf = _numeric_date(claims, "nbf")
    iat = _numeric_date(claims, "iat")
    if exp is None and require_exp:
        raise _bad("the access token lacks the exp claim", "token_missing_claim")
    if exp is not None:
        if now >= exp + leeway_s:
            raise _bad("the access token has expired", "token_expired")
        if exp > now + _MAX_LIFETIME_SANITY_S:
            raise _bad("the access token's exp claim is implausible", "token_malformed")
    if nbf is not None and nbf > now + leeway_s:
        raise _bad("the access token is not yet valid", "token_not_yet_valid")
    if iat is not None and iat > now + leeway_s:
        raise _bad("the access token was issued in the future", "token_not_yet_valid")
    if max_lifetime_s is not None and exp is not None:
        start = iat if iat is not None else (nbf if nbf is not None else now)
        if exp - start > max_lifetime_s:
            raise _bad("the access token's lifetime exceeds the allowed maximum", "token_lifetime_too_long")
    jkt, x5t = _cnf(claims)
    return VerifiedToken(
        issuer=issuer,
        subject=_opt_str(claims, "sub"),
        client_id=_opt_str(claims, "client_id"),
        audience=_audience(claims),
        scopes=_scopes(claims),
        expires_at=exp if exp is not None else default_expiry,
        jti=_opt_str(claims, "jti"),
        cnf_jkt=jkt,
        cnf_x5t_s256=x5t,
        source=source,
        claims=_kept_claims(claims),
    )
