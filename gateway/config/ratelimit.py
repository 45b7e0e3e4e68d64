"""``rate_limits:`` — per-client limits keyed by verified identity, and per-source abuse budgets.

    rate_limits:
      backend: redis                 # redis: shared by every replica and worker; local: this process only
      # redis: {url: ...}            # omitted: the DPoP replay store's connection settings
      key_prefix: "gateway:rl:"
      limits:
        - id: tpp-burst              # GCRA: `rate` per `per_s` seconds, `burst` at once
          key: client_id
          rate: 20
          burst: 40
        - id: tpp-daily              # fixed window (aligned on the epoch: UTC days for 86400)
          key: [client_id]
          quota: 10000
          window_s: 86400
          fail: open                 # Redis unreachable: let the request through (counted in metrics)
      default: [tpp-burst]           # limits for routes not named under routes:
      routes:
        payments: {limits: [tpp-burst, tpp-daily], headers: true}
      source_budget:                 # before the expensive steps: refused requests per source
        refused: 20
        introspection_calls: 50      # and AS calls (introspection cache misses) per source
        window_s: 60
        fail: closed

Key parts (one or a tuple): ``client_id``, ``sub``, ``jkt`` (the token's ``cnf.jkt``, proven by
the DPoP proof), ``cert_thumbprint`` (the client certificate's ``x5t#S256``), ``route``,
``source_ip`` (IPv6 by /64), ``claim:<name>`` (a claim of the verified token) and
``header:<name>`` (read only when the peer is in ``listen.trusted_proxies``; otherwise the part is
the peer's address, so an untrusted client cannot pick its own bucket). A request whose token lacks
a part (no ``cnf.jkt`` for ``jkt``, no such claim) is not subject to that limit.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from .base import Model
from .dpop import RedisReplayConfig

if TYPE_CHECKING:
    from .schema import GatewayConfig

__all__ = (
    "KEY_PARTS", "LimitConfig", "RateLimitsConfig", "RouteLimits", "SourceBudget", "check_local_workers",
    "check_rate_limits",
)

KEY_PARTS = frozenset(("client_id", "sub", "jkt", "cert_thumbprint", "route", "source_ip"))
_NAMED = re.compile(r"^(claim|header):[A-Za-z0-9_.-]{1,64}$")
LimitId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


def _key_part(value: str) -> str:
    if value in KEY_PARTS or _NAMED.match(value):
        return value.lower() if value.startswith("header:") else value
    raise ValueError(
        f"unknown key part {value!r} (one of {', '.join(sorted(KEY_PARTS))}, claim:<name>, header:<name>)"
    )


def _as_tuple(value: object) -> object:
    return (value,) if isinstance(value, str) else value


KeyPart = Annotated[str, AfterValidator(_key_part)]


class LimitConfig(Model):
    id: LimitId
    key: Annotated[tuple[KeyPart, ...], BeforeValidator(_as_tuple), Field(min_length=1, max_length=6)]
    # GCRA (a smooth token bucket): `rate` requests per `per_s` seconds, at most `burst` at once.
    rate: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    per_s: Annotated[float, Field(gt=0, le=86_400)] = 1.0
    burst: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    # Fixed window: `quota` requests per `window_s` seconds (windows aligned on the Unix epoch).
    quota: Annotated[int, Field(ge=1, le=1_000_000_000)] | None = None
    window_s: Annotated[int, Field(ge=1, le=31 * 86_400)] | None = None
    # Redis unreachable: open lets the request through (counted as outcome fail_open), closed
    # refuses it with 429 + Retry-After. Open by default: a payment going through beats a quota.
    fail: Literal["open", "closed"] = "open"

    @model_validator(mode="after")
    def _one_algorithm(self) -> LimitConfig:
        if (self.rate is None) == (self.quota is None):
            raise ValueError("set exactly one of rate (GCRA) or quota (fixed window)")
        if self.quota is not None and self.window_s is None:
            raise ValueError("quota needs window_s")
        if self.rate is not None and self.window_s is not None:
            raise ValueError("window_s goes with quota; a rate uses per_s")
        if self.quota is not None and self.burst is not None:
            raise ValueError("burst goes with rate")
        return self

    @property
    def capacity(self) -> int:
        """Requests allowed at once: the burst, or the quota of a window."""
        if self.quota is not None:
            return self.quota
        return self.burst if self.burst is not None else int(self.rate or 1)

    @property
    def window(self) -> float:
        """The RateLimit-Policy ``w`` (seconds): the window, or the time to refill the whole burst."""
        if self.window_s is not None:
            return float(self.window_s)
        return self.capacity * self.per_s / float(self.rate or 1)


class RouteLimits(Model):
    limits: tuple[LimitId, ...] = ()
    # RateLimit-Policy / RateLimit fields on allowed responses too (429s always carry them).
    headers: bool | None = None


class SourceBudget(Model):
    """Refused requests (bad tokens, proofs, certificates, scopes) per source and window: beyond
    it, the source is refused with 429 before any token work, so a flood of garbage tokens costs
    the AS at most ``refused`` introspection calls per window (plus the calls already in flight)."""

    refused: Annotated[int, Field(ge=1, le=1_000_000)] = 20
    # Introspection calls (RFC 7662, cache misses only) a source may cause per window, across
    # replicas; beyond, its uncached tokens get 429 without asking the AS. None: not limited here
    # (the issuer's max_concurrent_per_source and max_inactive_per_source still apply per process).
    introspection_calls: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    window_s: Annotated[int, Field(ge=1, le=86_400)] = 60
    # Redis unreachable: closed keeps the budget, counted per process; open drops it meanwhile.
    fail: Literal["open", "closed"] = "closed"


class RateLimitsConfig(Model):
    backend: Literal["redis", "local"] = "redis"
    # None: the connection settings of dpop.replay.redis (one Redis for both), with key_prefix below.
    redis: RedisReplayConfig | None = None
    key_prefix: Annotated[str, Field(min_length=1, max_length=64)] = "gateway:rl:"
    limits: tuple[LimitConfig, ...] = ()
    default: tuple[LimitId, ...] = ()
    routes: dict[str, RouteLimits] = {}
    # The default for routes that do not say: RateLimit fields on allowed responses.
    headers: bool = False
    source_budget: SourceBudget | None = None
    # local backend: keys remembered per process (the least recently used are dropped beyond it).
    max_local_keys: Annotated[int, Field(ge=100, le=10_000_000)] = 100_000

    @model_validator(mode="after")
    def _references(self) -> RateLimitsConfig:
        problems: list[str] = []
        seen: dict[str, int] = {}
        for n, limit in enumerate(self.limits):
            if limit.id in seen:
                problems.append(f"limits[{n}].id: duplicate of limits[{seen[limit.id]}].id ({limit.id!r})")
            if limit.id in ("source_budget", "source_introspection"):
                problems.append(f"limits[{n}].id: {limit.id} names a per-source budget (metrics, 429 body)")
            seen.setdefault(limit.id, n)
        for k, ref in enumerate(self.default):
            if ref not in seen:
                problems.append(f"default[{k}]: no limit with id {ref!r} under limits:")
        for route, rl in self.routes.items():
            for k, ref in enumerate(rl.limits):
                if ref not in seen:
                    problems.append(f"routes.{route}.limits[{k}]: no limit with id {ref!r} under limits:")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def limits_for(self, route_id: str) -> tuple[LimitConfig, ...]:
        by_id = {limit.id: limit for limit in self.limits}
        rl = self.routes.get(route_id)
        ids = rl.limits if rl is not None else self.default
        return tuple(by_id[i] for i in ids)

    def headers_for(self, route_id: str) -> bool:
        rl = self.routes.get(route_id)
        return self.headers if rl is None or rl.headers is None else rl.headers

    def redis_settings(self, replay: RedisReplayConfig) -> RedisReplayConfig:
        base = self.redis if self.redis is not None else replay
        return base.model_copy(update={"key_prefix": self.key_prefix})


def check_rate_limits(cfg: GatewayConfig) -> list[str]:
    """Cross-references with the rest of the file (GatewayConfig's pass 2)."""
    rl = cfg.rate_limits
    if rl is None:
        return []
    problems: list[str] = []
    route_ids = {r.id for r in cfg.routes}
    for route in rl.routes:
        if route not in route_ids:
            problems.append(f"rate_limits.routes.{route}: no route with that id under routes:")
    local = check_local_workers(cfg, cfg.lifecycle.workers)
    if local:
        problems.append(local)
    return problems


def check_local_workers(cfg: GatewayConfig, workers: int) -> str | None:
    """The problem with counting limits per process when ``workers`` processes run, or None
    (``--workers`` on the command line wins over the file: checked at start-up and reload too)."""
    rl = cfg.rate_limits
    if rl is not None and rl.backend == "local" and workers > 1:
        return (
            f"rate_limits.backend: local counts inside one process, so with {workers} workers "
            "every limit would be that many times as large; use backend: redis or one worker"
        )
    return None
