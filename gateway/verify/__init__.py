"""Step 3: is the access token genuine and live? (RFC 9068 JWTs, RFC 7662 introspection).

The way a token is checked is decided by configuration, never by trial (INTR-12, RFC 8725
§3.12): a JWS whose unverified ``iss`` names one of the route's JWT issuers is verified locally
with *that* issuer's keys (JWT-06b); anything else goes to the route's introspection issuers, if
any; otherwise it is refused. Verified JWTs are cached by SHA-256(token) until ``exp`` (bounded),
so a hot token costs one hash and one dict lookup per request.

Wiring::

    verifier = AccessTokenVerifier(cfg.issuers, events=metrics)   # events: optional counters
    await verifier.start()      # app startup: metadata + JWKS loaded before serving
    verifier.ready              # for /readyz: every key-based issuer has a usable key set
    token = await verifier.verify(creds.token, route_policy)
    await verifier.close()      # app cleanup
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal, Protocol

from cachetools import TLRUCache

from ..config.auth import AuthPolicy
from ..config.issuers import IssuerConfig
from ..errors import DependencyError, InvalidTokenError
from ..model import VerifiedToken
from .fetch import Discovery, IssuerHttp
from .introspection import Introspector
from .jose import looks_like_jws, parse_compact
from .jwks import JwksCache
from .jwt import JwtVerifier

__all__ = ("AccessTokenVerifier", "IssuerRuntime", "VerifierEvents")


class VerifierEvents(Protocol):
    """What the verifier reports (``gateway.observability.metrics.Metrics`` fits), by issuer name."""

    def jwks_fetch(self, issuer: str, ok: bool) -> None: ...
    def introspection_call(self, issuer: str, outcome: Literal["active", "inactive", "error"]) -> None: ...
    def introspection_cache_lookup(self, issuer: str, hit: bool) -> None: ...


@dataclass(slots=True)
class IssuerRuntime:
    """Everything built for one configured issuer."""

    cfg: IssuerConfig
    http: IssuerHttp
    jwks: JwksCache | None
    jwt: JwtVerifier | None
    introspector: Introspector | None


@dataclass(frozen=True, slots=True)
class _RouteIssuers:
    by_iss: dict[str, IssuerRuntime]  # JWT-capable issuers of the route, by issuer identifier
    introspection: tuple[IssuerRuntime, ...]  # introspection-capable issuers of the route
    # Issuers in pure introspection mode: they also get JWT-shaped tokens not verified locally
    # (a fallback issuer only introspects opaque tokens, so foreign JWTs never go to its AS).
    introspect_jwts: tuple[IssuerRuntime, ...]
    accepted: frozenset[str]  # issuer identifiers a cached result may carry on this route


class AccessTokenVerifier:
    """The ``TokenVerifier`` stage (``gateway.pipeline``) for all configured issuers."""

    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        *,
        clock: Callable[[], float] = time.time,
        events: VerifierEvents | None = None,
    ) -> None:
        self._clock = clock
        self.issuers: dict[str, IssuerRuntime] = {}
        for cfg in issuers:
            http = IssuerHttp(cfg)
            discovery = Discovery(cfg, http) if cfg.discovery else None
            signed_responses = cfg.introspection is not None and cfg.introspection.response == "jwt"
            has_keys = bool(cfg.jwks_uri or cfg.jwks_file or cfg.discovery) and (
                cfg.mode != "introspection" or signed_responses
            )
            on_fetch = partial(events.jwks_fetch, cfg.name) if events else None
            jwks = JwksCache(cfg, http, discovery, clock=clock, on_fetch=on_fetch) if has_keys else None
            local = jwks is not None and cfg.mode != "introspection"
            jwt_verifier = JwtVerifier(cfg, jwks, clock=clock) if jwks is not None and local else None
            introspector = None
            if cfg.mode != "jwt":
                introspector = Introspector(
                    cfg, http, discovery, jwks, clock=clock,
                    on_call=partial(events.introspection_call, cfg.name) if events else None,
                    on_cache=partial(events.introspection_cache_lookup, cfg.name) if events else None,
                )
            self.issuers[cfg.name] = IssuerRuntime(cfg, http, jwks, jwt_verifier, introspector)
        size = max((c.token_cache_size for c in issuers), default=1)
        self._ttl_cap = {c.issuer: c.token_cache_ttl_s for c in issuers}
        self.token_cache: TLRUCache[bytes, VerifiedToken] = TLRUCache(
            maxsize=size, ttu=self._cached_until, timer=clock
        )
        self._routes: dict[tuple[str, ...], _RouteIssuers] = {}

    def _cached_until(self, _key: bytes, value: VerifiedToken, now: float) -> float:
        return min(value.expires_at, now + self._ttl_cap.get(value.issuer, 0.0))

    async def start(self) -> None:
        # In parallel: one slow AS must not delay the others (each fetch is time-bounded).
        await asyncio.gather(*(rt.jwks.start() for rt in self.issuers.values() if rt.jwks is not None))

    async def close(self) -> None:
        for rt in self.issuers.values():
            if rt.jwks is not None:
                await rt.jwks.close()
            await rt.http.close()

    @property
    def ready(self) -> bool:
        """Every key-based issuer has a usable key set (for /readyz)."""
        return all(rt.jwks is None or rt.jwks.ready for rt in self.issuers.values())

    def _route(self, policy: AuthPolicy) -> _RouteIssuers:
        found = self._routes.get(policy.issuers)
        if found is None:
            runtimes = [self.issuers[n] for n in policy.issuers if n in self.issuers]
            found = _RouteIssuers(
                by_iss={rt.cfg.issuer: rt for rt in runtimes if rt.jwt is not None},
                introspection=tuple(rt for rt in runtimes if rt.introspector is not None),
                introspect_jwts=tuple(rt for rt in runtimes if rt.cfg.mode == "introspection"),
                accepted=frozenset(rt.cfg.issuer for rt in runtimes if rt.jwt is not None),
            )
            self._routes[policy.issuers] = found
        return found

    async def verify(self, token: str, policy: AuthPolicy, *, source: str | None = None) -> VerifiedToken:
        """``source``: who an introspection call counts against (``admission.request_source``)."""
        route = self._route(policy)
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        cached = self.token_cache.get(digest)
        if cached is not None and cached.issuer in route.accepted:
            return cached
        if looks_like_jws(token):
            try:
                jws = parse_compact(token)
            except InvalidTokenError:
                if not route.introspection:
                    raise
            else:
                iss = jws.payload.get("iss")
                rt = route.by_iss.get(iss) if isinstance(iss, str) else None
                if rt is not None and rt.jwt is not None:
                    result = await rt.jwt.verify(jws)
                    self.token_cache[digest] = result
                    return result
                if not route.introspect_jwts:
                    raise InvalidTokenError(
                        "the access token was not issued by an accepted issuer", reason="token_wrong_issuer"
                    )
                return await self._introspect(token, digest, route.introspect_jwts, source)
        if not route.introspection:
            raise InvalidTokenError("the access token is not a JWT access token", reason="token_malformed")
        return await self._introspect(token, digest, route.introspection, source)

    async def _introspect(
        self, token: str, digest: bytes, issuers: tuple[IssuerRuntime, ...], source: str | None
    ) -> VerifiedToken:
        # An opaque token does not say who issued it: ask each introspection issuer in order.
        last: InvalidTokenError | DependencyError | None = None
        unavailable: DependencyError | None = None
        for rt in issuers:
            assert rt.introspector is not None
            try:
                return await rt.introspector.introspect(token, digest, source=source)
            except DependencyError as exc:
                unavailable = exc
            except InvalidTokenError as exc:
                last = exc
        # Fail closed: if any issuer could not answer, the token might be valid there -> 503.
        if unavailable is not None:
            raise unavailable
        assert last is not None
        raise last
