"""Prometheus metrics with closed, low-cardinality label sets.

One ``Metrics`` object per application. It owns its own ``CollectorRegistry`` so two apps in one
process (tests, a reload building a new app) never collide on the global registry.

Label values come only from configuration (route ids, issuer names) or from closed enums chosen
by the code (method class, status, reason codes, TLS failure reasons). Every label that could be
fed a value at run time goes through a ``_LabelGuard``: a value that is not a short
``[a-z0-9_]`` code, or that would push the number of distinct values past a small cap, is counted
as ``other``. A bug that passes a token or a subject as a reason therefore cannot leak it into a
scrape nor blow up cardinality (OPS-01).

What other stages call (all cheap, none blocks):

======================================  ===============================================
``metrics.route(route_id, mode)``       ``RouteMetrics`` with pre-bound children; the app
                                        keeps one per route and mode (``proxy`` or a decision
                                        front, issue #15) and calls ``.finished(...)``
``metrics.in_flight``                   gauge with ``inc()`` / ``dec()`` (event loop only)
``metrics.introspection_call(iss, o)``  ``o`` in ``active | inactive | error``
``metrics.introspection_cache_lookup``  ``(issuer, hit)``: True on a cache hit, False on a miss
``metrics.jwks_fetch(iss, ok)``         one JWKS fetch; ``ok`` False counts a failure
``metrics.replay_store_error(store)``   ``store`` in ``redis | memory``
``metrics.front_proxy_cert_dropped(h)`` client-cert header ``h`` from an untrusted peer dropped
``metrics.tls_handshake_failed(r)``     ``r`` from ``gateway.observability.tls``
``metrics.config_reload(ok, partial)``  one reload attempt: good, refused, or applied except
                                        for settings that need a restart
``metrics.config_risks(pairs)``         the loaded config's risky settings, ``(id, level)``
``metrics.malformed_request(listener)`` a request aiohttp's parser refused (400, closed)
``metrics.connection_closed(r)``        the listener closed a client connection (``listener.py``)
``metrics.connections_open``            gauge: established client connections
``metrics.would_refuse(route, reason)`` a report-only route forwarded what it would refuse
``metrics.report_only_routes(n)``       gauge: routes in report-only enforcement (issue #19)
======================================  ===============================================

Stages that should not import this module take a small callback instead, e.g.
``functools.partial(metrics.jwks_fetch, "bank-as")`` as a ``Callable[[bool], None]``.
"""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any, Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .certs import CertificateExpiry
from .hotpath import FastCounter, FastGauge, FastHistogram, HotPathCollector
from .stages import REPLAY_BUCKETS, IssuerKeys

__all__ = (
    "CONTENT_TYPE",
    "MethodClass",
    "Metrics",
    "RouteMetrics",
    "method_class",
)

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

MethodClass = Literal["read", "write", "other"]

_METHOD_CLASS: Final[dict[str, MethodClass]] = {
    "GET": "read",
    "HEAD": "read",
    "OPTIONS": "read",
    "POST": "write",
    "PUT": "write",
    "PATCH": "write",
    "DELETE": "write",
}

# End-to-end and upstream: sub-millisecond for a cached token up to a slow banking backend.
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Auth stage: a cache hit is tens of microseconds; introspection or a JWKS fetch is milliseconds.
AUTH_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0)

UNMATCHED_ROUTE: Final = "_unmatched"
NO_REASON: Final = "none"
OTHER: Final = "other"

# Who asked for the decision: the proxy itself, or a decision front (gateway.decision, issue #15).
MODES: Final = ("proxy", "ext_authz_grpc", "ext_authz_http", "auth_request", "forward_auth")

# Why the listener closed a connection itself (gateway.listener).
_CLOSE_REASONS: Final = ("header_timeout", "idle_evicted", "over_capacity", "send_timeout")

_CODE = re.compile(r"^[a-z0-9_]{1,48}$")
_ROUTE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HEADER = re.compile(r"^[a-z0-9-]{1,64}$")


_REVISION = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def build_labels() -> tuple[str, str, str]:
    """``(version, python, revision)`` for ``gateway_build_info``. The revision comes from the
    image build (``GATEWAY_BUILD_REVISION``); anything that does not look like one is ``unknown``."""
    try:
        version = metadata.version("fapi-gateway")
    except metadata.PackageNotFoundError:
        version = "unknown"
    revision = os.environ.get("GATEWAY_BUILD_REVISION", "")
    return version, platform.python_version(), revision if _REVISION.match(revision) else "unknown"


def method_class(method: str) -> MethodClass:
    """Map an HTTP method to ``read | write | other`` (unknown or extension methods: ``other``)."""
    return _METHOD_CLASS.get(method, "other")


class _LabelGuard:
    """Admit a label value only if it looks like a code and the set of values stays small."""

    __slots__ = ("_limit", "_pattern", "_seen")

    def __init__(self, limit: int, pattern: re.Pattern[str] = _CODE, preset: Iterable[str] = ()) -> None:
        self._pattern = pattern
        self._limit = limit
        self._seen: set[str] = set(preset)

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit or not self._pattern.match(value):
            return OTHER
        self._seen.add(value)
        return value


def _status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else OTHER


class RouteMetrics:
    """One route's pre-bound series: the hot path does a dict lookup and a few list increments.

    Request counter cells are cached per ``(method, status, reason)``; with a closed set of
    reasons and statuses that cache stays small.
    """

    __slots__ = ("_auth", "_duration", "_metrics", "_mode", "_requests", "_route", "_upstream")

    def __init__(self, metrics: Metrics, route_id: str, mode: str = "proxy") -> None:
        self._metrics = metrics
        self._route = route_id
        self._mode = mode
        on = metrics.latency_histograms
        labels = (route_id, mode)
        self._duration = metrics.request_duration.series(labels) if on else None
        self._auth = metrics.auth_duration.series(labels) if on else None
        self._upstream = metrics.upstream_duration.series((route_id,)) if on else None
        self._requests: dict[tuple[str, int, str], list[float]] = {}

    def finished(
        self,
        method: str,
        status: int,
        reason: str | None,
        duration_s: float,
        auth_s: float | None = None,
        upstream_s: float | None = None,
    ) -> None:
        """Count one finished request. ``reason`` is the refusal's reason code, None when allowed."""
        key = (method, status, reason or NO_REASON)
        cell = self._requests.get(key)
        if cell is None:
            cell = self._bind(key)
        cell[0] += 1
        if self._duration is not None:
            self._duration.observe(duration_s)
            if auth_s is not None and self._auth is not None:
                self._auth.observe(auth_s)
            if upstream_s is not None and self._upstream is not None:
                self._upstream.observe(upstream_s)

    def _bind(self, key: tuple[str, int, str]) -> list[float]:
        method, status, reason = key
        m = self._metrics
        cell = m.requests.cell(
            (self._route, self._mode, method_class(method), _status_label(status), m.reason_label(reason))
        )
        # Unknown methods are folded into "other" above; keep them out of the cache key space too.
        if len(self._requests) < 4096 and method in _METHOD_CLASS:
            self._requests[key] = cell
        return cell


class Metrics:
    """The gateway's metrics, in a registry of their own. ``render()`` is the /metrics body."""

    def __init__(
        self,
        *,
        route_ids: Iterable[str] = (),
        issuers: Iterable[str] = (),
        latency_histograms: bool = True,
    ) -> None:
        self.latency_histograms = latency_histograms
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        # Per-request metrics: lock-free (see hotpath.py); updated only on the event loop.
        self.requests = FastCounter(
            "gateway_requests_total",
            "Requests by route id, mode (proxy or decision front), method class (read/write/other), status "
            "and refusal reason code.",
            ("route", "mode", "method", "status", "reason"),
        )
        self.request_duration = FastHistogram(
            "gateway_request_duration_seconds",
            "End-to-end request latency as seen by the gateway (until the response or verdict is sent).",
            ("route", "mode"),
            LATENCY_BUCKETS,
        )
        self.auth_duration = FastHistogram(
            "gateway_auth_duration_seconds",
            "Time spent in the auth decision (credentials, token, binding, policy).",
            ("route", "mode"),
            AUTH_BUCKETS,
        )
        self.upstream_duration = FastHistogram(
            "gateway_upstream_duration_seconds",
            "Upstream exchange time: request sent until the response was relayed.",
            ("route",),
            LATENCY_BUCKETS,
        )
        self.in_flight = FastGauge("gateway_requests_in_flight", "Requests being handled right now.")
        r.register(
            HotPathCollector(
                self.requests, self.request_duration, self.auth_duration, self.upstream_duration, self.in_flight
            )
        )
        self.introspection_requests = Counter(
            "gateway_introspection_requests_total",
            "Token introspection calls (RFC 7662) by issuer and outcome (active/inactive/error).",
            ("issuer", "outcome"),
            registry=r,
        )
        self.introspection_cache = Counter(
            "gateway_introspection_cache_total",
            "Introspection cache lookups by issuer and result (hit/miss).",
            ("issuer", "result"),
            registry=r,
        )
        self.jwks_fetches = Counter(
            "gateway_jwks_fetches_total",
            "JWKS fetches by issuer and outcome (ok/error).",
            ("issuer", "outcome"),
            registry=r,
        )
        self.replay_store_errors = Counter(
            "gateway_replay_store_errors_total",
            "DPoP replay-store operations that failed (the request was refused: fail closed).",
            ("store",),
            registry=r,
        )
        # Lock-free like the per-request metrics: counted on every request of a limited route.
        self.rate_limit_decisions = FastCounter(
            "gateway_rate_limit_decisions_total",
            "Rate-limit decisions by limit id (source_budget: the per-source budget of refusals) and outcome "
            "(allowed, limited, fail_open: store unreachable and let through, fail_closed).",
            ("limit", "outcome"),
        )
        r.register(HotPathCollector(self.rate_limit_decisions))
        self.front_proxy_cert_headers_dropped = Counter(
            "gateway_front_proxy_cert_headers_dropped_total",
            "Client-certificate headers dropped because the sending peer is not a trusted proxy.",
            ("header",),
            registry=r,
        )
        self.tls_handshake_failures = Counter(
            "gateway_tls_handshake_failures_total",
            "TLS handshakes refused, by reason.",
            ("reason",),
            registry=r,
        )
        self.config_reloads = Counter(
            "gateway_config_reloads_total",
            "Configuration reload attempts by result (success/failure; a failure keeps the old config).",
            ("result",),
            registry=r,
        )
        self.config_last_reload = Gauge(
            "gateway_config_last_reload_success_timestamp_seconds",
            "Unix time of the last configuration load that took effect.",
            registry=r,
        )
        self.config_last_reload.set(time.time())
        # Operator foot-guns (issue #13): alert on these rather than grep logs.
        self.config_risks_gauge = Gauge(
            "gateway_config_risks",
            "Risky settings in the running config by id and level (warn/acknowledged); see README.",
            ("risk", "level"),
            registry=r,
        )
        self.config_restart_required = Gauge(
            "gateway_config_restart_required",
            "1 while the config file changes settings a reload cannot apply (listen, admin, ...).",
            registry=r,
        )
        # What runs (issue #21): one series, value 1; a dashboard joins on it or shows the labels.
        self.build_info = Gauge(
            "gateway_build_info",
            "Version of the gateway, Python it runs on and the image's source revision (value 1).",
            ("version", "python", "revision"),
            registry=r,
        )
        self.build_info.labels(*build_labels()).set(1)
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...: with
        # several workers, observability/multiprocess.py sums them (start time, fd limit: the max).
        ProcessCollector(registry=r)
        # The Redis replay store's SET NX round trip (observability/stages.py times it).
        self.replay_store_duration = FastHistogram(
            "gateway_replay_store_duration_seconds",
            "DPoP replay-store round trip (Redis SET NX), failures included.",
            ("store",),
            REPLAY_BUCKETS,
        )
        self.replay_store_duration.series(("redis",))  # present from the start: dashboards and alerts
        r.register(HotPathCollector(self.replay_store_duration))
        self._issuer_keys: IssuerKeys | None = None
        self.access_log_dropped = Counter(
            "gateway_access_log_dropped_lines_total",
            "Access-log lines lost: the writer's queue was full (stalled disk or stdout) or a write failed.",
            registry=r,
        )
        self.malformed_requests = Counter(
            "gateway_http_malformed_requests_total",
            "Requests refused by the HTTP parser (bad request line or header), by listener.",
            ("listener",),
            registry=r,
        )

        self.connections_open = Gauge(
            "gateway_connections_open", "Established client connections on the public listener.", registry=r
        )
        self.connections_closed = Counter(
            "gateway_connections_closed_total",
            "Client connections the gateway closed itself, by reason (header_timeout, idle_evicted, "
            "over_capacity, send_timeout).",
            ("reason",),
            registry=r,
        )
        # Issue #19: report-only rollout; alert on a gauge above 0 in production.
        self.would_refuse_total = Counter(
            "gateway_would_refuse_total",
            "Requests a report-only route forwarded although the auth decision refused them, by route "
            "and reason code.",
            ("route", "reason"),
            registry=r,
        )
        self.routes_report_only = Gauge(
            "gateway_routes_report_only", "Routes whose auth.enforcement is report (not enforcing).", registry=r
        )
        self._certs: CertificateExpiry | None = None
        self._close_reasons = _LabelGuard(limit=8, preset=_CLOSE_REASONS)
        for reason in _CLOSE_REASONS:
            self.connections_closed.labels(reason)
        self._reasons = _LabelGuard(limit=128)
        self._issuers = _LabelGuard(limit=64, pattern=_ROUTE_ID, preset=issuers)
        self._tls_reasons = _LabelGuard(limit=32)
        self._headers = _LabelGuard(limit=16, pattern=_HEADER)
        self._stores = _LabelGuard(limit=4, preset=("redis", "memory"))
        self._risks = _LabelGuard(limit=32)
        self._routes: dict[tuple[str, str], RouteMetrics] = {}
        self._modes = _LabelGuard(limit=len(MODES), preset=MODES)
        self._route_guard = _LabelGuard(limit=1024, pattern=_ROUTE_ID, preset=(UNMATCHED_ROUTE,))
        for rid in route_ids:
            self.route(rid)
        for outcome in ("success", "failure", "partial"):
            self.config_reloads.labels(outcome)
        for listener in ("public", "admin"):
            self.malformed_requests.labels(listener)

    # -- per request -------------------------------------------------------------------------

    def route(self, route_id: str | None, mode: str = "proxy") -> RouteMetrics:
        """The pre-bound metrics of one route (``None``: a request that matched no route) in one
        mode (``proxy``, or the decision front that asked: ``MODES``)."""
        key = (route_id or UNMATCHED_ROUTE, mode)
        rm = self._routes.get(key)
        if rm is None:
            label = (self._route_guard(key[0]), self._modes(mode))
            rm = self._routes.get(label) or RouteMetrics(self, *label)
            self._routes[label] = rm
            if len(self._routes) < 2048:
                self._routes[key] = rm
        return rm

    def reason_label(self, reason: str) -> str:
        return self._reasons(reason)

    # -- events from the stages ---------------------------------------------------------------

    def introspection_call(self, issuer: str, outcome: Literal["active", "inactive", "error"]) -> None:
        self.introspection_requests.labels(self._issuers(issuer), outcome).inc()

    def introspection_cache_lookup(self, issuer: str, hit: bool) -> None:
        self.introspection_cache.labels(self._issuers(issuer), "hit" if hit else "miss").inc()

    def jwks_fetch(self, issuer: str, ok: bool) -> None:
        self.jwks_fetches.labels(self._issuers(issuer), "ok" if ok else "error").inc()

    def replay_store_error(self, store: str = "redis") -> None:
        self.replay_store_errors.labels(self._stores(store)).inc()

    def rate_limit_decision(self, limit: str, outcome: str) -> None:
        # Limit ids come from the config (a closed set), outcomes from gateway.ratelimit.
        self.rate_limit_decisions.cell((limit, outcome))[0] += 1

    def front_proxy_cert_dropped(self, header: str = "") -> None:
        """``header``: the (closed set of) certificate header names, e.g. X-Forwarded-Client-Cert."""
        self.front_proxy_cert_headers_dropped.labels(self._headers(header.lower() or OTHER)).inc()

    def tls_handshake_failed(self, reason: str) -> None:
        self.tls_handshake_failures.labels(self._tls_reasons(reason)).inc()

    def config_reload(self, ok: bool, *, restart_required: tuple[str, ...] = ()) -> None:
        """``restart_required``: changed settings the reload could not apply (result ``partial``)."""
        result = ("partial" if restart_required else "success") if ok else "failure"
        self.config_reloads.labels(result).inc()
        if ok:
            self.config_last_reload.set(time.time())
            self.config_restart_required.set(1 if restart_required else 0)

    def config_risks(self, risks: Iterable[tuple[str, str]]) -> None:
        """Replace the risky-settings gauge with ``(risk id, level)`` pairs from the config."""
        self.config_risks_gauge.clear()
        for risk, level in risks:
            self.config_risks_gauge.labels(self._risks(risk), level).inc()

    def would_refuse(self, route_id: str, reason: str) -> None:
        self.would_refuse_total.labels(self._route_guard(route_id), self._reasons(reason)).inc()

    def report_only_routes(self, count: int) -> None:
        self.routes_report_only.set(count)

    def malformed_request(self, listener: str) -> None:
        self.malformed_requests.labels("admin" if listener == "admin" else "public").inc()

    def connection_closed(self, reason: str) -> None:
        self.connections_closed.labels(self._close_reasons(reason)).inc()

    def watch_certificates(self, files: Callable[[], list[tuple[str, str]]]) -> None:
        """Export the expiry of the ``(kind, path)`` files ``files()`` names at each scrape
        (``observability/certs.py``; the server passes its running configuration's)."""
        if self._certs is None:
            self._certs = CertificateExpiry(files)
            self.registry.register(self._certs)
        else:
            self._certs.files = files

    def watch_state(self, state: Callable[[], Any]) -> None:
        """Export what the running ``GatewayState`` (``state()``) knows at scrape time: each
        issuer's key-set age and staleness (``observability/stages.py``)."""
        if self._issuer_keys is None:
            self._issuer_keys = IssuerKeys(state)
            self.registry.register(self._issuer_keys)
        else:
            self._issuer_keys.state = state

    def access_log_lost(self, lines: int = 1) -> None:
        """Access-log lines dropped (queue full or write failed); any thread."""
        self.access_log_dropped.inc(lines)

    # -- exposition ---------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry (``CONTENT_TYPE`` is its media type)."""
        return generate_latest(self.registry)
