"""Rate limits and abuse protection: a pipeline stage on both sides of the auth decision (issue #18).

    source -> admit (local: is this source over its refusal budget?)    before any token work
           -> extract, verify, bind, policy                             the decision
           -> refused(source)  on an OAuth refusal: one unit of the source's budget
           -> check(identity)  on an allowed decision: the route's limits, keyed by what was verified

* **Identity limits** (``rate_limits.limits``) are checked only after the decision, with key
  parts taken from the verified token, proof and certificate: an unauthenticated caller, or a
  garbage token naming someone's ``client_id``, never touches that client's quota.
* **The source budget** (``rate_limits.source_budget``) counts refused requests per source (the
  client certificate, else the address; as ``verify.admission.request_source``) in the shared
  store. The check before the decision is local and free: a source is blocked in this process
  once the store says its budget is spent, until its window ends. So N garbage tokens from one
  source cost the AS at most ``refused`` introspection calls per window, plus one per replica
  and the calls already in flight (bounded by introspection's ``max_concurrent_per_source``).
  ``verify.admission.ScanGuard`` keeps its per-process bound on inactive introspection answers;
  this budget is the cross-replica one on every kind of refusal.
"""

from __future__ import annotations

import contextvars
import dataclasses
import ipaddress
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cachetools import TLRUCache

from ..bind.redis_client import PipelinedRedis, RedisUnavailableError
from ..bind.replay import REPLAY_RIDER, ReplayRider
from ..config.ratelimit import LimitConfig, RateLimitsConfig
from ..errors import MissingCredentialsError, OAuthError, RateLimitedError, UseDpopNonceError
from ..model import AuthRequest, Decision, VerifiedToken
from ..verify.admission import request_source
from .fields import DRAFT, policy_field, state_field, tightest
from .store import (
    Check,
    LimitStore,
    LimitStoreUnavailableError,
    LocalLimitStore,
    Outcome,
    RedisLimitStore,
    outcomes,
    packed_tail,
    replay_and_limit_command,
    storage_key,
)

if TYPE_CHECKING:
    from ..config import GatewayConfig, RouteConfig

__all__ = ("DRAFT", "RateLimiter", "Ride", "build_rate_limiter")

log = logging.getLogger(__name__)

Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
# Called with (limit id, outcome): allowed | limited | fail_open | fail_closed.
Recorder = Callable[[str, str], None]

# Sources blocked at once in one process; beyond, the soonest to expire are forgotten first.
_BLOCKED_SOURCES = 10_000
SOURCE_BUDGET_ID = "source_budget"
INTROSPECTION_BUDGET_ID = "source_introspection"
_KEY_CACHE = 50_000


@dataclasses.dataclass(frozen=True, slots=True)
class _RoutePlan:
    limits: tuple[LimitConfig, ...]
    headers: bool
    policy: str  # the RateLimit-Policy field value
    # The packed tail of the replay-and-limit command when every limit applies, per replay TTL.
    tails: dict[int, bytes] = dataclasses.field(default_factory=dict)

    def tail(self, ttl_ms: int, checks: Sequence[Check]) -> bytes | None:
        if len(checks) != len(self.limits):  # a limit without its key part: packed afresh
            return None
        tail = self.tails.get(ttl_ms)
        if tail is None:
            tail = self.tails[ttl_ms] = packed_tail(ttl_ms, self.limits)
        return tail


class RateLimiter:
    """The stage. ``store``: Redis or local; ``fallback``: the local store the source budget uses
    while Redis is unreachable (``fail: closed``)."""

    def __init__(
        self,
        cfg: RateLimitsConfig,
        route_ids: Sequence[str],
        store: LimitStore,
        *,
        fallback: LocalLimitStore | None = None,
        record: Recorder | None = None,
        trusted_proxies: Networks = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.fallback = fallback or LocalLimitStore(max_keys=cfg.max_local_keys)
        self._record = record or (lambda _limit, _outcome: None)
        # The limits go in the DPoP replay store's script (same Redis, standalone): build_rate_limiter.
        self.rides_with_replay = False
        self._trusted = trusted_proxies
        self._clock = clock
        self._prefix: bytes = getattr(store, "prefix", b"")
        self._plans: dict[str, _RoutePlan] = {}
        # (limit id, key part values) -> its Check: the storage key's hash, once per client.
        self._keys: dict[tuple[str, tuple[str, ...]], Check] = {}
        for rid in route_ids:
            limits = cfg.limits_for(rid)
            self._plans[rid] = _RoutePlan(limits, cfg.headers_for(rid), policy_field(limits))
        budget = cfg.source_budget
        self._budget: LimitConfig | None = None
        if budget is not None:
            self._budget = LimitConfig(id=SOURCE_BUDGET_ID, key=("source_ip",), quota=budget.refused,
                                       window_s=budget.window_s, fail=budget.fail)
        self._calls: LimitConfig | None = None
        if budget is not None and budget.introspection_calls is not None:
            self._calls = LimitConfig(id=INTROSPECTION_BUDGET_ID, key=("source_ip",), quota=budget.introspection_calls,
                                      window_s=budget.window_s, fail=budget.fail)
        # source -> (monotonic) end of its block; expires by itself. One map per budget.
        self._blocked: TLRUCache[str, float] = TLRUCache(
            maxsize=_BLOCKED_SOURCES, ttu=lambda _k, until, _now: until, timer=clock
        )
        self._calls_blocked: TLRUCache[str, float] = TLRUCache(
            maxsize=_BLOCKED_SOURCES, ttu=lambda _k, until, _now: until, timer=clock
        )

    @property
    def introspection_budget(self) -> bool:
        return self._calls is not None

    async def start(self) -> None:
        await self.store.start()

    async def close(self) -> None:
        await self.store.close()

    # --- before the decision: the source budget ----------------------------------------------

    def admit(self, source: str | None) -> None:
        """Refuse at once a source that has spent its budget of refusals (no I/O)."""
        if source is None or self._budget is None:
            return
        until = self._blocked.get(source)
        if until is not None:
            self._record(SOURCE_BUDGET_ID, "limited")
            raise self._refusal(self._budget, max(0.0, until - self._clock()),
                                "too many refused requests from this client; retry later", reason="source_budget")

    async def refused(self, source: str | None, exc: OAuthError) -> None:
        """Count one refusal against ``source``; block it here once its budget is spent."""
        budget = self._budget
        if source is None or budget is None:
            return
        # Not abuse: a request without credentials costs no token work, and use_dpop_nonce is a
        # normal step of the DPoP protocol (RFC 9449 §8).
        if isinstance(exc, MissingCredentialsError | UseDpopNonceError):
            return
        await self._spend(budget, source, self._blocked)

    async def introspection_call(self, source: str | None) -> None:
        """Before an introspection call (a cache miss) for ``source``: refuse it (429, no AS call)
        when the source's budget of calls is spent, else count it. Wired into each issuer's
        ``verify.introspection.Introspector`` by ``gateway.app.build_pipeline``."""
        calls = self._calls
        if source is None or calls is None:
            return
        until = self._calls_blocked.get(source)
        if until is None:
            await self._spend(calls, source, self._calls_blocked, before=True)
            until = self._calls_blocked.get(source)
        if until is not None:
            self._record(INTROSPECTION_BUDGET_ID, "limited")
            raise self._refusal(calls, max(0.0, until - self._clock()),
                                "too many token checks from this client; retry later", reason="source_introspection")

    async def _spend(
        self, budget: LimitConfig, source: str, blocked: TLRUCache[str, float], *, before: bool = False
    ) -> None:
        """One unit of ``budget`` for ``source``; the source is blocked here once it is spent.
        ``before``: the unit is for something about to happen, so only a refused unit blocks."""
        key, tag = storage_key(self._prefix, budget, (source,))
        check = (Check(budget, key, tag),)
        try:
            outcome = (await self.store.apply(check))[0]
        except LimitStoreUnavailableError:
            if budget.fail == "open":
                self._record(budget.id, "fail_open")
                return
            self._record(budget.id, "fail_closed")
            outcome = self.fallback.apply_sync(check)[0]  # still bounded: per process meanwhile
        if not outcome.allowed or (outcome.remaining == 0 and not before):
            blocked[source] = self._clock() + max(outcome.reset_s, 0.001)

    # --- after the decision: identity limits --------------------------------------------------

    def key_parts(
        self, limit: LimitConfig, req: AuthRequest, route_id: str, token: VerifiedToken | None, jkt: str | None
    ) -> tuple[str, ...] | None:
        """The values of ``limit``'s key parts for this request; None when one is unknown.
        ``jkt``: the DPoP key proven for this request (the token's ``cnf.jkt``), if any."""
        out: list[str] = []
        for part in limit.key:
            value: Any
            if part == "client_id":
                value = token.client_id if token is not None else None
            elif part == "sub":
                value = token.subject if token is not None else None
            elif part == "jkt":
                value = jkt
            elif part == "cert_thumbprint":
                value = req.peer_cert.x5t_s256 if req.peer_cert is not None else None
            elif part == "route":
                value = route_id
            elif part == "source_ip":
                value = self._address(req)
            elif part.startswith("claim:"):
                value = token.claims.get(part[6:]) if token is not None else None
                if not isinstance(value, str | int) or isinstance(value, bool):
                    value = None
            else:  # header:<name>, believed from a trusted proxy only
                value = req.headers.get(part[7:]) if self._from_trusted(req) else "peer:" + (req.remote or "")
            if value is None or value == "":
                return None
            out.append(str(value)[:256])
        return tuple(out)

    def _address(self, req: AuthRequest) -> str | None:
        source = request_source(dataclasses.replace(req, peer_cert=None), self._trusted)
        return source[3:] if source is not None else None

    def _from_trusted(self, req: AuthRequest) -> bool:
        if not self._trusted or not req.remote:
            return False
        try:
            addr = ipaddress.ip_address(req.remote)
        except ValueError:
            return False
        return any(addr in net for net in self._trusted)

    def checks(
        self, req: AuthRequest, route_id: str, token: VerifiedToken | None, jkt: str | None
    ) -> list[Check]:
        plan = self._plans.get(route_id)
        if plan is None or not plan.limits:
            return []
        out = []
        keys = self._keys
        for limit in plan.limits:
            parts = self.key_parts(limit, req, route_id, token, jkt)
            if parts is not None:
                check = keys.get((limit.id, parts))
                if check is None:
                    key, tag = storage_key(self._prefix, limit, parts)
                    check = Check(limit, key, tag)
                    if len(keys) >= _KEY_CACHE:  # bounded; refilled by the clients seen next
                        keys.clear()
                    keys[(limit.id, parts)] = check
                out.append(check)
        return out

    def ride(self, req: AuthRequest, route: RouteConfig) -> Ride | None:
        """A ``Ride`` when this route's limits can go with the DPoP replay check (same Redis)."""
        if not self.rides_with_replay:
            return None
        plan = self._plans.get(route.id)
        return Ride(self, req, route.id, plan) if plan is not None and plan.limits else None

    async def check(
        self, req: AuthRequest, route: RouteConfig, decision: Decision, ride: Ride | None = None
    ) -> Decision:
        """The route's limits for an allowed decision: the decision (with RateLimit fields when the
        route asks), or ``RateLimitedError``."""
        if ride is not None and ride.outcomes is not None:  # already checked with the replay SET
            return self.judge(route.id, ride.outcomes, decision)
        binding = decision.binding
        checks = self.checks(req, route.id, decision.token, binding.thumbprint if binding.type == "dpop" else None)
        if not checks:
            return decision
        try:
            outcomes = await self.store.apply(checks)
        except LimitStoreUnavailableError:
            return self._unavailable(checks, decision)
        return self.judge(route.id, outcomes, decision)

    def judge(self, route_id: str, outcomes: Sequence[Outcome], decision: Decision) -> Decision:
        worst = tightest(outcomes)
        plan = self._plans[route_id]
        if not worst.allowed:
            for o in outcomes:
                self._record(o.limit.id, "limited" if o is worst else "allowed")
            raise self._refusal(worst.limit, worst.retry_after_s, f"rate limit {worst.limit.id} exceeded",
                                policy=plan.policy, state=state_field(worst), decision=decision)
        for o in outcomes:
            self._record(o.limit.id, "allowed")
        if not plan.headers:
            return decision
        fields = (("RateLimit-Policy", plan.policy), ("RateLimit", state_field(worst)))
        return dataclasses.replace(decision, response_headers=(*decision.response_headers, *fields))

    def _unavailable(self, checks: Sequence[Check], decision: Decision) -> Decision:
        closed = [c.limit for c in checks if c.limit.fail == "closed"]
        for c in checks:
            self._record(c.limit.id, "fail_closed" if c.limit.fail == "closed" else "fail_open")
        if closed:
            # Refused, but never a 5xx: the client may retry shortly (issue #18).
            raise self._refusal(closed[0], 1.0, f"rate limit {closed[0].id} cannot be checked; retry shortly",
                                reason="rate_limit_unavailable", decision=decision)
        log.debug("rate limits not checked (store unavailable): fail open")
        return decision

    @staticmethod
    def _refusal(
        limit: LimitConfig, retry_after_s: float, description: str, *, policy: str | None = None,
        state: str | None = None, reason: str | None = None, decision: Decision | None = None,
    ) -> RateLimitedError:
        retry = max(1, math.ceil(retry_after_s - 1e-6))
        fields = (
            ("RateLimit-Policy", policy or policy_field((limit,))),
            ("RateLimit", state or f'"{limit.id}";r=0;t={retry}'),
        )
        return RateLimitedError(description, limit_id=limit.id, retry_after_s=retry, fields=fields, reason=reason,
                                decision=decision)

    # --- admin: usage of one key --------------------------------------------------------------

    async def usage(self, limit_id: str, parts: dict[str, str]) -> dict[str, Any]:
        """What a support engineer asks: how much of ``limit_id`` has this key left (nothing consumed)."""
        limit = next((lim for lim in self.cfg.limits if lim.id == limit_id), None)
        if limit is None:
            raise KeyError(limit_id)
        missing = [p for p in limit.key if p not in parts]
        if missing:
            raise ValueError(f"the key of {limit_id} needs {', '.join(missing)}")
        key, tag = storage_key(self._prefix, limit, tuple(parts[p] for p in limit.key))
        outcome = (await self.store.apply((Check(limit, key, tag),), peek=True))[0]
        return {
            "limit": limit.id,
            "key": {p: parts[p] for p in limit.key},
            "capacity": limit.capacity,
            "window_s": limit.window,
            # What is left now (the peek asks "would one more pass?": that one is not consumed).
            "remaining": outcome.remaining + 1 if outcome.allowed else 0,
            "throttled": not outcome.allowed,
            "retry_after_s": round(outcome.retry_after_s, 3),
            "reset_s": round(outcome.reset_s, 3),
        }


class Ride:
    """One request's limits riding on its DPoP replay check: ``arm`` (once the token is verified)
    makes ``RedisReplayStore.first_use`` send the ``SET NX`` and the limits as ONE script on its
    pipelined connection; a replay consumes nothing. Not armed, or the replay check never ran (a
    refused proof, an in-memory or cluster replay store): ``check`` makes its own call.

    Handed over in a context variable (``bind.replay.REPLAY_RIDER``), set only around the binding
    step, rather than as a parameter through ``Binder.check`` and ``DpopVerifier.verify``: the
    binding stage's interfaces stay as they are, and only the Redis store knows about it."""

    __slots__ = ("checks", "limiter", "outcomes", "plan", "req", "route_id")

    def __init__(self, limiter: RateLimiter, req: AuthRequest, route_id: str, plan: _RoutePlan) -> None:
        self.limiter = limiter
        self.req = req
        self.route_id = route_id
        self.plan = plan
        self.checks: list[Check] = []
        self.outcomes: list[Outcome] | None = None

    def arm(self, token: VerifiedToken) -> contextvars.Token[ReplayRider | None] | None:
        # Keyed by cnf.jkt: the proof is held to that key before the replay check runs.
        if token.cnf_jkt is None:
            return None
        self.checks = self.limiter.checks(self.req, self.route_id, token, token.cnf_jkt)
        return REPLAY_RIDER.set(self) if self.checks else None

    @staticmethod
    def disarm(armed: contextvars.Token[ReplayRider | None] | None) -> None:
        if armed is not None:
            REPLAY_RIDER.reset(armed)

    async def first_use(self, redis: PipelinedRedis, name: bytes, ttl_ms: int) -> bool:
        try:
            reply = await redis.execute(
                replay_and_limit_command(name, ttl_ms, self.checks, tail=self.plan.tail(ttl_ms, self.checks)))
        except RedisUnavailableError as exc:
            if "NOSCRIPT" not in str(exc):
                raise
            reply = await redis.execute(replay_and_limit_command(name, ttl_ms, self.checks, sha=False))
        if reply is None:
            return False  # a replay: nothing consumed
        try:
            self.outcomes = outcomes(self.checks, reply)
        except LimitStoreUnavailableError as exc:
            raise RedisUnavailableError("unexpected reply from the replay-and-limit script") from exc
        return True


def build_rate_limiter(
    cfg: GatewayConfig,
    record: Recorder | None = None,
    previous: RateLimiter | None = None,
    trusted_proxies: Networks = (),
) -> RateLimiter | None:
    """The stage for ``cfg``, or None when ``rate_limits:`` is absent. A reload keeps a local
    store (and the local fallback) of the same size, or every count would start afresh."""
    rl = cfg.rate_limits
    if rl is None:
        return None
    fallback: LocalLimitStore | None = None
    store: LimitStore
    if previous is not None and previous.cfg.max_local_keys == rl.max_local_keys:
        fallback = previous.fallback
    if rl.backend == "local":
        if previous is not None and isinstance(previous.store, LocalLimitStore) and fallback is not None:
            store = previous.store
        else:
            store = LocalLimitStore(max_keys=rl.max_local_keys)
    else:
        store = RedisLimitStore(rl.redis_settings(cfg.dpop.replay.redis))
    limiter = RateLimiter(rl, [r.id for r in cfg.routes], store, fallback=fallback, record=record,
                          trusted_proxies=trusted_proxies)
    replay = cfg.dpop.replay
    mine = rl.redis_settings(replay.redis)
    # One Redis for both, reached the same way: then a DPoP request's limits ride on its replay check.
    limiter.rides_with_replay = (
        rl.backend == "redis" and replay.backend == "redis" and replay.redis.mode == mine.mode == "standalone"
        and mine.url == replay.redis.url and mine.password == replay.redis.password
    )
    return limiter
