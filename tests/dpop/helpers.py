"""Shared assertions: run one proof through the real Binder and check the error and its challenge."""

from __future__ import annotations

import re

import pytest

from gateway.bind import Binder
from gateway.challenge import ChallengeSettings, render_challenges
from gateway.errors import InvalidDpopProofError, OAuthError
from gateway.model import Binding

from .conftest import dpop_creds, policy, request, token_for
from .proofs import TOKEN, URL

SETTINGS = ChallengeSettings(schemes=("DPoP",), dpop_algs=("PS256", "ES256", "EdDSA"))
# DPOP-26, the checklist's regex for a DPoP-only route.
CHALLENGE = re.compile(
    r'^DPoP error="(invalid_token|invalid_dpop_proof|use_dpop_nonce|invalid_request|insufficient_scope)"'
    r'(, error_description="[\x20\x21\x23-\x5B\x5D-\x7E]*")?, algs="PS256 ES256 EdDSA"$'
)


async def check(
    binder: Binder,
    proof: str | None,
    jkt: str,
    *,
    method: str = "GET",
    url: str = URL,
    token: str = TOKEN,
    require_nonce: bool = False,
) -> Binding:
    req = request(method, url, proofs=(proof,) if proof else ())
    return await binder.check(req, dpop_creds(proof, token), token_for(jkt), policy(require_dpop_nonce=require_nonce))


def challenge_of(exc: OAuthError) -> str:
    www = render_challenges(exc, SETTINGS)
    assert CHALLENGE.match(www), www
    return www


async def rejected(
    binder: Binder,
    proof: str | None,
    jkt: str,
    *,
    reason: str | None = None,
    error: type[OAuthError] = InvalidDpopProofError,
    **kw: object,
) -> OAuthError:
    """The proof is refused with ``error`` (default invalid_dpop_proof) and a well-formed DPoP challenge."""
    with pytest.raises(OAuthError) as info:
        await check(binder, proof, jkt, **kw)  # type: ignore[arg-type]
    exc = info.value
    assert type(exc) is error, (type(exc), exc.description)
    if reason is not None:
        assert exc.reason == reason, (exc.reason, exc.description)
    www = challenge_of(exc)
    assert f'error="{exc.error}"' in www
    return exc
