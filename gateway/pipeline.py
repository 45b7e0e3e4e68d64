"""The auth decision (steps 1-5), composed in one visible place, independent of forwarding.

    AuthRequest -> credentials.extract -> tokens.verify -> binder.check -> policy.check
                -> authz.check (route with ``auth.authz`` only) -> Decision
    (with ``rate_limits:``, ``gateway.ratelimit`` around it: a source budget before, limits after)

The proxy (``gateway.proxy``) calls ``AuthPipeline.decide`` and forwards only when it returns;
any refusal is a ``GatewayError``. The same ``decide`` can serve an ext_authz / auth_request /
forwardAuth endpoint, since nothing here knows about forwarding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .authz import authz_step
from .config import AuthPolicy, RouteConfig
from .config.authz import AuthzConfig
from .errors import OAuthError
from .model import ALLOW_ANONYMOUS, AuthRequest, Binding, Credentials, Decision, VerifiedToken
from .verify.admission import request_source

if TYPE_CHECKING:
    from .ratelimit import RateLimiter, Ride

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
        limits: RateLimiter | None = None,
        authz: AuthzChecker = authz_step,
    ) -> None:
        self._source = source
        # Rate limits and abuse budgets (gateway.ratelimit), around the decision; None: none.
        self.limits = limits
        self._authz = authz
        self._extract = extract
        self._tokens = tokens
        self._binder = binder
        self._policy = policy

    async def decide(self, req: AuthRequest, route: RouteConfig) -> Decision:
        limits = self.limits
        if limits is None:
            return await self._decide(req, route, None)
        # Before any token work: a source that spent its budget of refusals is refused (429).
        source = self._source(req)
        limits.admit(source)
        ride = limits.ride(req, route)
        try:
            decision = await self._decide(req, route, source, ride)
        except OAuthError as exc:
            await limits.refused(source, exc)
            raise
        # After it: the route's limits, keyed by what was verified (429 when one is exceeded).
        return await limits.check(req, route, decision, ride)

    async def _decide(
        self, req: AuthRequest, route: RouteConfig, source: str | None, ride: Ride | None = None
    ) -> Decision:
        policy = route.auth
        if not isinstance(policy, AuthPolicy):  # explicit ``auth: none``
            return ALLOW_ANONYMOUS
        creds = self._extract(req, policy)
        token: VerifiedToken | None = None
        try:
            # source: the client an introspection call counts against (verify/admission.py).
            token = await self._tokens.verify(creds.token, policy, source=source or self._source(req))
            if ride is None:
                binding = await self._binder.check(req, creds, token, policy)
            else:
                # The route's limits go in the DPoP replay check's Redis script: one round trip.
                armed = ride.arm(token)
                try:
                    binding = await self._binder.check(req, creds, token, policy)
                finally:
                    ride.disarm(armed)
            decision = self._policy(req, token, binding, policy)
            if policy.authz is not None:
                await self._authz(req, decision, policy.authz, route.id)
            return decision
        except OAuthError as exc:
            if exc.scheme is None:
                # RFC 9449 §7.2: error information goes in the challenge of the scheme used.
                exc.scheme = creds.scheme
            if token is not None:  # refused after verification: the log says whose token it was
                exc.token = token
            raise
