"""The only place that writes ``WWW-Authenticate`` (RFC 6750 §3, RFC 9449 §7.1, RFC 9110 §11.6.1).

Which challenges a route offers depends on the schemes it accepts; error parameters go only into
the challenge of the scheme the client used when that is unambiguous (RFC 9449 §7.2), otherwise
into all. Values are restricted to RFC 6749's error charset so a header can never be broken by
what we put in it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import InsufficientAuthorizationError, InsufficientScopeError, OAuthError, Scheme, UseDpopNonceError

__all__ = ("ChallengeSettings", "render_challenges", "safe_param")

# RFC 6749 §A.7 error_description: %x20-21 / %x23-5B / %x5D-7E (no '"' and no '\').
_UNSAFE = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')
_MAX_DESCRIPTION = 200


def safe_param(value: str, limit: int = _MAX_DESCRIPTION) -> str:
    """Make a value safe inside a quoted-string: drop every character outside the OAuth charset."""
    cleaned = _UNSAFE.sub("", value)
    return cleaned[:limit]


@dataclass(frozen=True, slots=True)
class ChallengeSettings:
    """Per-route challenge facts: the schemes offered and what may be disclosed."""

    schemes: tuple[Scheme, ...]  # in the order they are offered
    realm: str | None = None
    dpop_algs: tuple[str, ...] = ("ES256", "PS256", "EdDSA")
    include_description: bool = True


# authorization_remediation (draft-zehavi-oauth-rar-metadata-06) is base64url JSON, bounded by
# gateway.authz.stage; cut at 200 it would no longer decode.
_LONG_PARAMS = {"authorization_remediation": 4096}


def _challenge(scheme: Scheme, params: Iterable[tuple[str, str]]) -> str:
    rendered = ", ".join(f'{k}="{safe_param(v, _LONG_PARAMS.get(k, _MAX_DESCRIPTION))}"' for k, v in params)
    return f"{scheme} {rendered}" if rendered else scheme


def render_challenges(error: OAuthError | None, settings: ChallengeSettings) -> str:
    """Build the ``WWW-Authenticate`` value for ``error`` (``None``: a bare challenge, no error)."""
    parts: list[str] = []
    schemes = list(settings.schemes)
    if error is not None and error.scheme is not None and error.scheme not in schemes:
        # The client used a scheme this route does not offer, but the error is about it.
        schemes.append(error.scheme)
    for scheme in schemes:
        params: list[tuple[str, str]] = []
        if settings.realm:
            params.append(("realm", settings.realm))
        carries_error = (
            error is not None
            and error.error is not None
            and (error.scheme is None or error.scheme == scheme)
        )
        if carries_error:
            assert error is not None and error.error is not None
            params.append(("error", error.error))
            if settings.include_description and error.description:
                params.append(("error_description", error.description))
            if isinstance(error, InsufficientScopeError) and error.scope:
                params.append(("scope", error.scope))
            if isinstance(error, InsufficientAuthorizationError) and error.remediation:
                params.append(("authorization_remediation", error.remediation))
        if scheme == "DPoP" and settings.dpop_algs:
            params.append(("algs", " ".join(settings.dpop_algs)))
        parts.append(_challenge(scheme, params))
    return ", ".join(parts)


def nonce_header(error: OAuthError) -> str | None:
    """The ``DPoP-Nonce`` to send with this error, if any (RFC 9449 §8.1/§9)."""
    return error.nonce if isinstance(error, UseDpopNonceError) else None
