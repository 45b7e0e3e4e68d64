"""Step 5: is this verified token meant for this route and action? (RFC 6750 §3.1, RFC 9068 §4,
RFC 9700 §2.3, FAPI 1.0 Part 1 §6.2.1 items 5-7).

- ``aud`` must contain one of the route's audiences, exactly -> else 401 ``invalid_token``.
- Scopes (RFC 6749 §3.3 tokens, case-sensitive): all of the method's required scopes, and one
  of ``any_of`` if set -> else 403 ``insufficient_scope`` with the ``scope`` attribute. A method
  with no scope rule (``method_scopes`` without ``scopes``) -> 403, whatever the token holds.
- ``client_ids`` allowlist and ``required_claims`` values -> else 403 ``insufficient_scope``
  (the token is fine, it just does not grant this).
- On success: verified identity headers for the upstream, and the binding's response headers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .config import AuthPolicy
from .config.auth import IdentityHeaders
from .credentials import scheme_of
from .errors import InsufficientScopeError, InvalidTokenError
from .model import AuthRequest, Binding, Decision, VerifiedToken

__all__ = ("check_policy", "identity_header_names")

# Header values we emit must be visible ASCII; anything else (e.g. a non-ASCII sub) is
# percent-encoded so no claim can ever split or smuggle a header.
_UNSAFE_VALUE = re.compile(r"[^\x20-\x7e]|%")


def _header_value(value: str) -> str:
    if value.isascii() and value.isprintable() and "%" not in value:
        return value  # the common case, no regex
    return _UNSAFE_VALUE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group(0).encode("utf-8")), value)


def identity_header_names(policies: Iterable[AuthPolicy | object]) -> frozenset[str]:
    """Every identity header name any route may inject (lower-case), defaults included: the proxy
    strips client-sent copies of all of them on every route."""
    names = {n.lower() for n in IdentityHeaders().names}
    for policy in policies:
        if isinstance(policy, AuthPolicy):
            names.update(n.lower() for n in policy.identity_headers.names)
    return frozenset(names)


def _claim_matches(value: object, accepted: tuple[str | int | bool, ...]) -> bool:
    # bool vs int: True == 1 in Python, but not in JSON.
    return any(type(value) is type(a) and value == a for a in accepted)


def check_policy(req: AuthRequest, token: VerifiedToken, binding: Binding, policy: AuthPolicy) -> Decision:
    """The ``PolicyChecker`` stage: audience, scopes, client, claims -> ``Decision``."""
    scheme = scheme_of(req)
    if policy.audience_set.isdisjoint(token.audience):
        raise InvalidTokenError(
            "the access token is not meant for this resource (aud)", reason="wrong_audience", scheme=scheme
        )
    required = policy.required_scopes(req.method)
    if required is None:
        # AUTHZ-02c: the config check refuses such routes; this keeps a policy built any other way closed.
        raise InsufficientScopeError(
            "this method is not permitted on this resource", reason="method_not_permitted", scheme=scheme
        )
    if not required <= token.scopes or (policy.any_of_set and policy.any_of_set.isdisjoint(token.scopes)):
        # RFC 6750 §3: scope lists what would be sufficient (the all-of set, or all-of + any_of).
        needed = sorted(required)
        if policy.any_of_set and policy.any_of_set.isdisjoint(token.scopes):
            needed += sorted(policy.any_of_set - required)
        raise InsufficientScopeError(
            "the access token lacks a required scope",
            scope=" ".join(needed),
            reason="insufficient_scope",
            scheme=scheme,
        )
    if policy.client_id_set and token.client_id not in policy.client_id_set:
        raise InsufficientScopeError(
            "the client is not allowed on this resource", reason="client_not_allowed", scheme=scheme
        )
    for claim, accepted in policy.required_claims.items():
        if not _claim_matches(token.claims.get(claim), accepted):
            raise InsufficientScopeError(
                f"the access token does not satisfy the {claim} requirement",
                reason="required_claim_missing",
                scheme=scheme,
            )
    return Decision(
        token=token,
        binding=binding,
        upstream_headers=_identity(policy.identity_headers, token, binding),
        response_headers=binding.response_headers,
    )


def _identity(names: IdentityHeaders, token: VerifiedToken, binding: Binding) -> tuple[tuple[str, str], ...]:
    values = (
        (names.subject, token.subject),
        (names.client_id, token.client_id),
        (names.scope, " ".join(sorted(token.scopes)) if token.scopes else None),
        (names.issuer, token.issuer),
        (names.binding, binding.type),
        (names.thumbprint, binding.thumbprint),
        (names.jti, token.jti),
    )
    return tuple((name, _header_value(value)) for name, value in values if name and value)
