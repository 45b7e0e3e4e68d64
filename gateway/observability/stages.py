"""Metrics read from the running stages at scrape time, and the Redis replay store's latency
(issue #19 §4: what the dashboard and the alerts need).

    gateway_jwks_last_load_timestamp_seconds{issuer}   when the key set in use was loaded
    gateway_jwks_max_stale_seconds{issuer}             issuers[].jwks_max_stale_s
    gateway_jwks_stale{issuer}                         1: no usable key set (never loaded, or older
                                                       than jwks_max_stale_s): its tokens get 503
    gateway_replay_store_duration_seconds{store}       one SET NX round trip to Redis (histogram)

The first three cost nothing per request: they are computed from the current ``GatewayState``
when /metrics is scraped. The replay-store histogram is observed on the DPoP path with a Redis
store only (the in-process store answers in a microsecond; timing it would cost more than it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .hotpath import FastHistogram

if TYPE_CHECKING:
    from ..app import GatewayState

__all__ = ("REPLAY_BUCKETS", "IssuerKeys", "time_replay_store")

# A Redis SET NX on the same network is a few hundred microseconds; a struggling one, many ms.
REPLAY_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class IssuerKeys(Collector):
    """Each issuer's key set, as the running state sees it (``state()``: the current state)."""

    def __init__(self, state: Callable[[], GatewayState | None]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        loaded = GaugeMetricFamily(
            "gateway_jwks_last_load_timestamp_seconds",
            "Unix time the issuer's key set in use was loaded (JWKS fetch or file).", labels=("issuer",))
        max_stale = GaugeMetricFamily(
            "gateway_jwks_max_stale_seconds",
            "How long a key set stays usable without a successful refresh (issuers[].jwks_max_stale_s).",
            labels=("issuer",))
        stale = GaugeMetricFamily(
            "gateway_jwks_stale",
            "1 when the issuer has no usable key set (never loaded, or older than jwks_max_stale_s): "
            "its JWTs are refused with 503.", labels=("issuer",))
        state = self.state()
        revocation = getattr(state, "revocation", None)
        tokens = getattr(revocation, "tokens", None)
        for name, rt in (getattr(tokens, "issuers", None) or {}).items():
            jwks = rt.jwks
            if jwks is None:
                continue
            if jwks.loaded_at:
                loaded.add_metric((name,), jwks.loaded_at)
            max_stale.add_metric((name,), rt.cfg.jwks_max_stale_s)
            stale.add_metric((name,), 0.0 if jwks.ready else 1.0)
        yield loaded
        yield max_stale
        yield stale


def time_replay_store(store: Any, histogram: FastHistogram) -> None:
    """Observe each ``first_use`` of a Redis replay store (wrapped in place, once: the DPoP
    verifier holds the store itself). Failures are timed too: a timeout is the latency to see."""
    if store is None or "redis" not in type(store).__name__.lower() or getattr(store, "_gateway_timed", False):
        return
    inner = store.first_use
    series = histogram.series(("redis",))
    clock = time.perf_counter

    async def first_use(key: bytes, ttl_s: int) -> bool:
        t0 = clock()
        try:
            return await inner(key, ttl_s)  # type: ignore[no-any-return]
        finally:
            series.observe(clock() - t0)

    store.first_use = first_use
    store._gateway_timed = True
