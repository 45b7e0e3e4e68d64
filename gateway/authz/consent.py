"""Consent / intent binding: a named claim (``consent_id``, ``openbanking_intent_id``, ...) must
equal a path parameter or a header of the request, so a token issued for one consent cannot be
used on another consent's resources (Open Banking UK intent ids, Brazil consent ids, CDR arrangement
ids). The claim must be a JSON string (or an integer for an ``int`` parameter); absent, null, an
array or an object refuses."""

from __future__ import annotations

from ..config.authz import ConsentBinding
from ..model import AuthRequest, VerifiedToken
from .refs import ref_value, same_value

__all__ = ("consent_bound",)


def consent_bound(binding: ConsentBinding, token: VerifiedToken, req: AuthRequest) -> bool:
    expected = ref_value(binding, req)
    return expected is not None and same_value(token.claims.get(binding.claim), expected)
