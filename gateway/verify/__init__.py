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

Revocation (issue #13): a cached JWT verification is used only while the key that verified it is
still usable (in the current JWKS, not stale, its kid not denied) and no flush of its issuer
happened since; denied ``kid``/``jti`` values (``gateway.verify.denylist``) are refused as
``invalid_token`` (``token_revoked``); a route with ``introspect: always`` also introspects JWTs.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal, Protocol

from ..config.auth import AuthPolicy
from ..config.issuers import IssuerConfig
from ..errors import DependencyError, IntrospectionUnavailableError, InvalidTokenError
from ..model import VerifiedToken
from .denylist import DenyList
from .fetch import Discovery, IssuerHttp
from .introspection import Introspector
from .jose import looks_like_jws, parse_compact
from .jwks import JwksCache
from .jwt import JwtVerifier
from .tokencache import TtuCache

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
    # Bumped by a flush: cached verifications made before it are no longer used.
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class _Cached:
    """A verified JWT and what it was verified with, so a cache hit can be re-checked cheaply."""

    token: VerifiedToken
    rt: IssuerRuntime
    key: bytes  # fingerprint of the verifying key (a denied kid's keys are not usable either)
    epoch: int


def _revoked() -> InvalidTokenError:
    return InvalidTokenError("the access token has been revoked", reason="token_revoked")


@dataclass(frozen=True, slots=True)
class _RouteIssuers:
    by_iss: dict[str, IssuerRuntime]  # JWT-capable issuers of the route, by issuer identifier
    introspection: tuple[IssuerRuntime, ...]  # introspection-capable issuers of the route
    # Issuers in pure introspection mode: they also get JWT-shaped tokens not verified locally
    # (a fallback issuer only introspects opaque tokens, so foreign JWTs never go to its AS).
    introspect_jwts: tuple[IssuerRuntime, ...]
    accepted: frozenset[str]  # issuer identifiers a cached result may carry on this route
    always: bool  # ``introspect: always``: JWTs are introspected too


class AccessTokenVerifier:
    """The ``TokenVerifier`` stage (``gateway.pipeline``) for all configured issuers."""

    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        *,
        clock: Callable[[], float] = time.time,
        events: VerifierEvents | None = None,
        denylist: DenyList | None = None,
    ) -> None:
        self._clock = clock
        self.denylist = denylist if denylist is not None else DenyList(clock=clock)
        self.issuers: dict[str, IssuerRuntime] = {}
        for cfg in issuers:
            http = IssuerHttp(cfg)
            discovery = Discovery(cfg, http) if cfg.discovery else None
            signed_responses = cfg.introspection is not None and cfg.introspection.response == "jwt"
            has_keys = bool(cfg.jwks_uri or cfg.jwks_file or cfg.discovery) and (
                cfg.mode != "introspection" or signed_responses
            )
            on_fetch = partial(events.jwks_fetch, cfg.name) if events else None
            jwks = (
                JwksCache(cfg, http, discovery, clock=clock, on_fetch=on_fetch, denylist=self.denylist)
                if has_keys else None
            )
            local = jwks is not None and cfg.mode != "introspection"
            jwt_verifier = JwtVerifier(cfg, jwks, clock=clock) if jwks is not None and local else None
            introspector = None
            if cfg.introspection is not None:  # mode jwt too: for ``introspect: always`` routes
                introspector = Introspector(
                    cfg, http, discovery, jwks, clock=clock,
                    on_call=partial(events.introspection_call, cfg.name) if events else None,
                    on_cache=partial(events.introspection_cache_lookup, cfg.name) if events else None,
                )
            self.issuers[cfg.name] = IssuerRuntime(cfg, http, jwks, jwt_verifier, introspector)
        size = max((c.token_cache_size for c in issuers), default=1)
        self._ttl_cap = {c.issuer: c.token_cache_ttl_s for c in issuers}
        self.token_cache: TtuCache[bytes, _Cached] = TtuCache(maxsize=size, ttu=self._cached_until, timer=clock)
        self._routes: dict[tuple[tuple[str, ...], str], _RouteIssuers] = {}

    def _cached_until(self, _key: bytes, value: _Cached, now: float) -> float:
        return min(value.token.expires_at, now + self._ttl_cap.get(value.token.issuer, 0.0))

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
        key = (policy.issuers, policy.introspect)
        found = self._routes.get(key)
        if found is None:
            runtimes = [self.issuers[n] for n in policy.issuers if n in self.issuers]
            found = _RouteIssuers(
                by_iss={rt.cfg.issuer: rt for rt in runtimes if rt.jwt is not None},
                # Opaque tokens go to issuers whose mode introspects (not to a jwt-mode issuer
                # whose introspection block only serves ``introspect: always``).
                introspection=tuple(
                    rt for rt in runtimes if rt.introspector is not None and rt.cfg.mode != "jwt"
                ),
                introspect_jwts=tuple(rt for rt in runtimes if rt.cfg.mode == "introspection"),
                accepted=frozenset(rt.cfg.issuer for rt in runtimes if rt.jwt is not None),
                always=policy.introspect == "always",
            )
            self._routes[key] = found
        return found

    def _check_denied(self, rt: IssuerRuntime, result: VerifiedToken) -> None:
        if self.denylist.jti_denied(rt.cfg.name, result.jti):
            raise _revoked()

    async def _also_introspect(self, token: str, digest: bytes, rt: IssuerRuntime, local: VerifiedToken) -> None:
        """``introspect: always``: the AS must say active, and about the same token."""
        if rt.introspector is None:  # config forbids it; fail closed all the same
            raise IntrospectionUnavailableError(
                "the token issuer cannot be asked about this token", reason="introspection_not_configured"
            )
        remote = await rt.introspector.introspect(token, digest)
        pairs = (
            (local.subject, remote.subject),
            (local.client_id, remote.client_id),
            (local.jti, remote.jti),
            (local.cnf_jkt, remote.cnf_jkt),
            (local.cnf_x5t_s256, remote.cnf_x5t_s256),
        )
        if any(a is not None and b is not None and a != b for a, b in pairs):
            raise InvalidTokenError(
                "the access token does not match what its issuer says about it",
                reason="token_introspection_mismatch",
            )
        self._check_denied(rt, remote)

    async def flush(self, name: str) -> bool | None:
        """Forget every cached verification of issuer ``name`` and fetch its keys again.

        Returns whether the key set loaded (None: the issuer has no key set)."""
        rt = self.issuers[name]
        rt.epoch += 1
        if rt.introspector is not None:
            rt.introspector.positive.clear()
            rt.introspector.negative.clear()
        return await rt.jwks.refresh() if rt.jwks is not None else None

    async def verify(self, token: str, policy: AuthPolicy, *, source: str | None = None) -> VerifiedToken:
        """``source``: who an introspection call counts against (``admission.request_source``)."""
        route = self._route(policy)
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        entry = self.token_cache.get(digest)
        if entry is not None and entry.token.issuer in route.accepted:
            hit, cached = entry.rt, entry.token
            # Inlined (the hot path): same flush epoch, key still usable, jti not denied.
            if entry.epoch == hit.epoch and hit.jwks is not None and hit.jwks.has_key(entry.key):
                if self.denylist.jti_denied(hit.cfg.name, cached.jti):
                    raise _revoked()
                if route.always:
                    await self._also_introspect(token, digest, hit, cached)
                return cached
            self.token_cache.pop(digest, None)  # its key was withdrawn, replaced, denied or went stale
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
                    kid = jws.header.get("kid")
                    kid = kid if isinstance(kid, str) else None
                    if self.denylist.kid_denied(rt.cfg.name, kid):
                        raise _revoked()
                    epoch = rt.epoch  # before the await: a flush meanwhile wins
                    result, key = await rt.jwt.verify_with_key(jws)
                    self._check_denied(rt, result)
                    if route.always:
                        await self._also_introspect(token, digest, rt, result)
                    self.token_cache[digest] = _Cached(result, rt, key.fingerprint, epoch)
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
                result = await rt.introspector.introspect(token, digest, source=source)
            except DependencyError as exc:
                unavailable = exc
            except InvalidTokenError as exc:
                last = exc
            else:
                self._check_denied(rt, result)
                return result
        # Fail closed: if any issuer could not answer, the token might be valid there -> 503.
        if unavailable is not None:
            raise unavailable
        assert last is not None
        raise last
