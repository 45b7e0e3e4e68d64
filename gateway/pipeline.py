"""The auth decision (steps 1-5), composed in one visible place, independent of forwarding.

    AuthRequest -> credentials.extract -> tokens.verify -> binder.check -> policy.check
                -> authz.check (route with ``auth.authz`` only) -> Decision

The proxy (``gateway.proxy``) calls ``AuthPipeline.decide`` and forwards only when it returns;
any refusal is a ``GatewayError``. The same ``decide`` can serve an ext_authz / auth_request /
forwardAuth endpoint, since nothing here knows about forwarding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .authz import authz_step
from .config import AuthPolicy, RouteConfig
from .config.authz import AuthzConfig
from .errors import OAuthError
from .model import ALLOW_ANONYMOUS, AuthRequest, Binding, Credentials, Decision, VerifiedToken
from .verify.admission import request_source

__all__ = ("AuthPipeline", "AuthzChecker", "BindingChecker", "CredentialExtractor", "PolicyChecker", "TokenVerifier")


class CredentialExtractor(Protocol):
    """Step 2: Authorization / DPoP headers -> Credentials (raises InvalidRequest / MissingCredentials)."""

    def __call__(self, req: AuthRequest, policy: AuthPolicy) -> Credentials: ...


class TokenVerifier(Protocol):
    """Step 3: is the token genuine and live? JWT (RFC 9068) or introspection (RFC 7662)."""

    async def verify(self, token: str, policy: AuthPolicy, *, source: str | None = None) -> VerifiedToken: ...


class BindingChecker(Protocol):
    """Step 4: the sender constraint (cnf.x5t#S256 vs the client cert, cnf.jkt vs the DPoP proof)."""

    async def check(
        self, req: AuthRequest, creds: Credentials, token: VerifiedToken, policy: AuthPolicy
    ) -> Binding: ...


class PolicyChecker(Protocol):
    """Step 5: audience, scopes, client and claim requirements; returns identity headers upstream."""

    def __call__(
        self, req: AuthRequest, token: VerifiedToken, binding: Binding, policy: AuthPolicy
    ) -> Decision: ...


class AuthzChecker(Protocol):
    """Step 6 (issue #16): RFC 9396 authorization_details, consent binding and CEL rules of the
    route's ``auth.authz``; raises the route's refusal (403), returns when every rule holds. Reads
    the JSON body (``req.body``) only for a route that opts in, after every earlier step passed."""

    async def __call__(
        self, req: AuthRequest, decision: Decision, authz: AuthzConfig, route_id: str, body: object = None
    ) -> None: ...


class AuthPipeline:
    def __init__(
        self,
        *,
        extract: CredentialExtractor,
        tokens: TokenVerifier,
        binder: BindingChecker,
        policy: PolicyChecker,
        source: Callable[[AuthRequest], str | None] = request_source,
        authz: AuthzChecker = authz_step,
    ) -> None:
        self._source = source
        self._authz = authz
        self._extract = extract
        self._tokens = tokens
        self._binder = binder
        self._policy = policy

    async def decide(self, req: AuthRequest, route: RouteConfig) -> Decision:
        policy = route.auth
        if not isinstance(policy, AuthPolicy):  # explicit ``auth: none``
            return ALLOW_ANONYMOUS
        creds = self._extract(req, policy)
        try:
            # source: the client an introspection call counts against (verify/admission.py).
            token = await self._tokens.verify(creds.token, policy, source=self._source(req))
            binding = await self._binder.check(req, creds, token, policy)
            decision = self._policy(req, token, binding, policy)
            if policy.authz is not None:
                await self._authz(req, decision, policy.authz, route.id)
            return decision
        except OAuthError as exc:
            if exc.scheme is None:
                # RFC 9449 §7.2: error information goes in the challenge of the scheme used.
                exc.scheme = creds.scheme
            raise
