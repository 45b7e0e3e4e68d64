"""Report-only enforcement per route (issue #19 §2): watch before switching enforcement on.

    routes[].auth.enforcement: report

On such a route the whole decision runs as usual; a refusal is not answered but

* counted: ``gateway_would_refuse_total{route,reason}`` (and ``gateway_routes_report_only``),
* logged: the access log's ``would_refuse`` field, and a WARNING line without request data
  (at most one per route and reason every 10 s),
* forwarded with ``X-Auth-Would-Refuse: <reason>`` toward the upstream, and WITHOUT any identity
  header (nothing was verified that the upstream could rely on).

Never for a replay: a reused DPoP proof (or one the replay store cannot vouch for) is an attack,
not a misconfiguration, and is refused in report mode too. Wired in one place: ``app.build_pipeline``
wraps the pipeline only when a route reports, so enforcing configs pay nothing.

``debug_reason_header`` (sandboxes): the reason code toward the client, on a refusal (``app``'s
``refusal_response``) and on a report-only route's forwarded would-refuse.

Both are risks (``gateway.config.risks``): refused under the ``fapi`` TLS profile unless listed in
``acknowledge_risks``, warned about otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from .config import AuthPolicy, GatewayConfig, RouteConfig
from .errors import DependencyError, GatewayError, OAuthError
from .model import AuthRequest, Binding, Decision
from .pipeline import AuthPipeline

__all__ = (
    "ALWAYS_REFUSED",
    "DEBUG_REASON_HEADER",
    "WOULD_REFUSE_HEADER",
    "ReportOnlyPipeline",
    "debug_reason",
    "report_only",
)

log = logging.getLogger("gateway")

WOULD_REFUSE_HEADER: Final = "X-Auth-Would-Refuse"
DEBUG_REASON_HEADER: Final = "X-Auth-Debug-Reason"

# Reason codes refused whatever the route's enforcement: a replayed proof, and proofs whose
# first use the replay store cannot confirm (down, or its memory younger than the proof).
ALWAYS_REFUSED: Final = frozenset({"dpop_replay", "replay_store_unavailable", "dpop_predates_replay_store"})
_LOG_EVERY_S: Final = 10.0
_MAX_LOGGED: Final = 4096


def debug_reason(route: RouteConfig | None, exc: GatewayError) -> tuple[str, str] | None:
    """The ``X-Auth-Debug-Reason`` header for a refusal on ``route``, if that route sends one."""
    if route is not None and isinstance(route.auth, AuthPolicy) and route.auth.debug_reason_header:
        return DEBUG_REASON_HEADER, exc.reason
    return None


class ReportOnlyPipeline(AuthPipeline):
    """``AuthPipeline`` whose refusals on report-only routes become marked, anonymous allows."""

    def __init__(self, inner: AuthPipeline, on_would_refuse: Callable[[str, str], None]) -> None:
        # Not super().__init__: every stage stays the inner pipeline's (one set of stages).
        self._inner = inner
        self.limits = inner.limits  # a reload carries the rate limiter's local counts over
        self._on_would_refuse = on_would_refuse
        self._logged: dict[tuple[str, str], float] = {}

    async def decide(self, req: AuthRequest, route: RouteConfig) -> Decision:
        policy = route.auth
        if not isinstance(policy, AuthPolicy) or policy.enforcement == "enforce":
            return await self._inner.decide(req, route)
        try:
            return await self._inner.decide(req, route)
        except (OAuthError, DependencyError) as exc:
            if exc.reason in ALWAYS_REFUSED:
                raise
            reason = exc.reason
        self._on_would_refuse(route.id, reason)
        now = time.monotonic()
        key = (route.id, reason)
        if now - self._logged.get(key, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            if len(self._logged) >= _MAX_LOGGED:  # bounded: reason codes are a closed set, routes too
                self._logged.clear()
            self._logged[key] = now
            # Reason code and route only: no header, token or proof of the request is logged. One
            # line per route and reason every _LOG_EVERY_S (the access log has every request).
            log.warning("report-only route %s: would refuse (%s), forwarded", route.id, reason)
        return Decision(
            token=None,
            binding=Binding("none"),
            upstream_headers=((WOULD_REFUSE_HEADER, reason),),
            response_headers=((DEBUG_REASON_HEADER, reason),) if policy.debug_reason_header else (),
            would_refuse=reason,
        )


def report_only(
    cfg: GatewayConfig, pipeline: AuthPipeline, on_would_refuse: Callable[[str, str], None]
) -> tuple[AuthPipeline, tuple[str, ...]]:
    """``pipeline`` wrapped when any route reports (else unchanged), and those routes' ids.

    Logs the loud start-up (and reload) warning."""
    ids = tuple(r.id for r in cfg.routes if isinstance(r.auth, AuthPolicy) and r.auth.enforcement == "report")
    if not ids:
        return pipeline, ids
    log.warning(
        "REPORT-ONLY ENFORCEMENT on route(s) %s: requests the auth decision refuses are FORWARDED "
        "(marked %s, counted in gateway_would_refuse_total); DPoP replays are still refused. "
        "Set auth.enforcement: enforce before production.", ", ".join(ids), WOULD_REFUSE_HEADER,
    )
    return ReportOnlyPipeline(pipeline, on_would_refuse), ids
