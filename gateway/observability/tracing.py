"""OpenTelemetry traces (issue #19): one server span per request, a child span per stage.

    GET api                                  SERVER  route, status, reason code as span status,
    ├─ tls_peer                                      fapi.interaction_id
    ├─ credentials
    ├─ token_verify                                  gateway.token.cache hit | miss, issuer
    │   └─ POST (aiohttp client instrumentation)  CLIENT  introspection / JWKS, with traceparent
    ├─ binding
    │   └─ replay_store                              memory | redis
    ├─ policy
    └─ upstream                              CLIENT  traceparent sent upstream

A decision check (Envoy ext_authz gRPC/HTTP, nginx auth_request, Traefik forwardAuth:
gateway/decision/) is the same tree under its own SERVER span (``traced_check``), without
``upstream``; ``tls_peer`` there is the check of the certificate the front passed.

This module is imported only when ``observability.tracing.enabled`` is true: with tracing off no
OpenTelemetry package is loaded and the request path is the untraced one, byte for byte (the
wrappers here replace the stages of a ``GatewayState``; nothing checks a flag per request).

With tracing on and ``sample_ratio`` set, the handler decides before any span exists: a request
that is not sampled gets no span, a ``traceparent`` (flags 00) for the upstream and one context
read per stage wrapper (each returns straight to its stage when nothing is being recorded).
benchmarks/TRACING.md has the figures.

No token material ever goes into a span: attributes are route ids, reason codes, status codes,
issuer identifiers and the interaction id. The aiohttp client instrumentation can be told by
environment variables to capture request headers (an introspection call's ``Authorization``
carries the gateway's client secret), so those variables are removed before it is enabled.

Exporting is OTLP/HTTP (protobuf) from a batch processor's thread: a bounded queue
(``max_queue_size``), dropped spans when the collector is slow, never a blocked event loop.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from random import getrandbits
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision as SamplingDecision
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, SamplingResult, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..errors import GatewayError
from .observer import Observer

if TYPE_CHECKING:
    from aiohttp import web
    from multidict import CIMultiDict

    from ..app import GatewayHandler, GatewayState
    from ..config import AuthPolicy
    from ..config.observability import TracingConfig
    from ..decision.core import OriginalRequest, Verdict
    from ..model import AuthRequest, Binding, Credentials, Decision, PeerCertificate, VerifiedToken

__all__ = (
    "DecisionCheck",
    "TracedGatewayHandler",
    "TracedObserver",
    "instrument_state",
    "setup_tracing",
    "shutdown_tracing",
    "traced_check",
    "traced_handler",
    "tracer",
)

log = logging.getLogger(__name__)

# decision.core.check's shape (the decision fronts call it through DecisionService).
DecisionCheck = Callable[..., Awaitable["Verdict"]]

DEFAULT_SERVICE_NAME: Final = "fapi-gateway"
# Environment variables that make HTTP instrumentations copy request/response headers into spans.
_HEADER_CAPTURE_ENV: Final = (
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST",
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE",
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST",
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE",
)
_MAX_PATH: Final = 256
# W3C Trace Context only: a client's baggage is not ours to forward or record.
_PROPAGATOR: Final = TraceContextTextMapPropagator()


class _Tracing:
    """The process's tracing: one provider, its tracer, how incoming context is treated."""

    def __init__(self, provider: TracerProvider, incoming: str, ratio: float | None) -> None:
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("gateway", _version())
        self.incoming = incoming
        # With sample_ratio in the file, a request that starts a trace is sampled here, before any
        # span exists: an unsampled one then costs a random number, not a span.
        self.ratio = ratio
        self.bound = round(ratio * (1 << 64)) if ratio is not None else None


class _HeadSampled(Sampler):
    """Root spans with ``sample_ratio`` set: a request's SERVER span is started only for a request
    the handler chose to sample, so it is recorded; any other root (a JWKS refresh, an AS call made
    outside a sampled request) is sampled at the ratio."""

    def __init__(self, ratio: float) -> None:
        self._ratio = TraceIdRatioBased(ratio)

    def should_sample(
        self, parent_context: Any, trace_id: int, name: str, kind: SpanKind | None = None,
        attributes: Any = None, links: Any = None, trace_state: Any = None,
    ) -> SamplingResult:
        if kind == SpanKind.SERVER:
            return SamplingResult(SamplingDecision.RECORD_AND_SAMPLE, attributes)
        return self._ratio.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"GatewayHeadSampled{{{self._ratio.get_description()}}}"


_ACTIVE: _Tracing | None = None


def _version() -> str:
    try:
        return metadata.version("fapi-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"


def tracer() -> Tracer | None:
    """The gateway's tracer, or None when tracing was not set up in this process."""
    return _ACTIVE.tracer if _ACTIVE is not None else None


def setup_tracing(
    cfg: TracingConfig,
    *,
    exporter: SpanExporter | None = None,
    processor: SpanProcessor | None = None,
) -> TracerProvider | None:
    """Build this process's tracer provider and OTLP exporter (once per process; again replaces it).

    ``exporter`` / ``processor``: tests pass the SDK's in-memory exporter (with a simple,
    synchronous processor). Returns None when ``OTEL_SDK_DISABLED`` is true.
    """
    global _ACTIVE
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        log.warning("observability.tracing.enabled is true but OTEL_SDK_DISABLED=true: no traces")
        return None
    shutdown_tracing()
    name = cfg.service_name or os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
    # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES; the attributes given here win.
    resource = Resource.create({SERVICE_NAME: name, SERVICE_VERSION: _version()})
    # sample_ratio set: new traces are sampled by the request handler (TracedGatewayHandler), other
    # roots at the ratio; a caller's decision still rules (ParentBased). Unset: the SDK's sampler
    # from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (default: parent-based, all).
    sampler = ParentBased(_HeadSampled(cfg.sample_ratio)) if cfg.sample_ratio is not None else None
    provider = TracerProvider(resource=resource, sampler=sampler)
    if processor is None:
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # endpoint None: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT (+ /v1/traces),
            # else http://localhost:4318/v1/traces; headers and certificates from OTEL_EXPORTER_OTLP_*.
            exporter = OTLPSpanExporter(endpoint=cfg.endpoint, timeout=cfg.export_timeout_s)
            processor = BatchSpanProcessor(exporter, max_queue_size=cfg.max_queue_size,
                                           export_timeout_millis=cfg.export_timeout_s * 1000)
        else:
            processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    _instrument_aiohttp_client(provider)
    _ACTIVE = _Tracing(provider, cfg.incoming_context, cfg.sample_ratio)
    if cfg.incoming_context == "any":
        # A client then picks our trace ids and can have every one of its requests sampled.
        log.warning("observability.tracing.incoming_context: any: any client's traceparent is continued, "
                    "sampling decision included")
    log.info("tracing on: service %s, sampling %s", name,
             f"{cfg.sample_ratio:g} (parent-based)" if cfg.sample_ratio is not None
             else os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on"))
    return provider


def _instrument_aiohttp_client(provider: TracerProvider) -> None:
    """Client spans and ``traceparent`` on every aiohttp client call: the authorization server's
    introspection, metadata and JWKS endpoints (gateway.verify.fetch)."""
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor

    for var in _HEADER_CAPTURE_ENV:
        if os.environ.pop(var, None) is not None:
            log.warning("%s ignored: the gateway never records HTTP headers in spans", var)
    inst = AioHttpClientInstrumentor()
    if inst.is_instrumented_by_opentelemetry:
        inst.uninstrument()
    inst.instrument(tracer_provider=provider)


def shutdown_tracing() -> None:
    """Flush queued spans (bounded by the exporter's timeout) and stop tracing in this process."""
    global _ACTIVE
    active, _ACTIVE = _ACTIVE, None
    if active is not None:
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor

        inst = AioHttpClientInstrumentor()
        if inst.is_instrumented_by_opentelemetry:
            inst.uninstrument()
        active.provider.shutdown()


# --- spans -------------------------------------------------------------------------------------


def _refused(span: Span, exc: BaseException) -> None:
    if isinstance(exc, GatewayError):
        # The reason code is the status: it says why, and holds nothing from the request.
        span.set_status(Status(StatusCode.ERROR, exc.reason))
        span.set_attribute("gateway.reason", exc.reason)
    else:
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


@contextmanager
def _span(t: Tracer, name: str, kind: SpanKind = SpanKind.INTERNAL) -> Iterator[Span]:
    # No record_exception: an exception's message is free text, not something to export.
    with t.start_as_current_span(name, kind=kind, record_exception=False, set_status_on_exception=False) as span:
        try:
            yield span
        except BaseException as exc:
            _refused(span, exc)
            raise


def _recording() -> bool:
    """A parent span is being recorded (a sampled request): only then are stage spans worth it."""
    return trace.get_current_span().is_recording()


class _Wrapper:
    """A stage wrapped for tracing: the real stage and the tracer."""

    __slots__ = ("_inner", "_t")

    def __init__(self, inner: Any, t: Tracer) -> None:
        self._inner = inner
        self._t = t


class _Delegating(_Wrapper):
    """A wrapped stage whose other attributes (ready, flush, token_cache, replay, start, close, ...)
    are the real stage's."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _TracedExtract(_Wrapper):
    __slots__ = ()

    def __call__(self, req: AuthRequest, policy: AuthPolicy) -> Credentials:
        if not _recording():
            return self._inner(req, policy)  # type: ignore[no-any-return]
        with _span(self._t, "credentials") as span:
            creds = self._inner(req, policy)
            span.set_attribute("gateway.scheme", creds.scheme)
            return creds  # type: ignore[no-any-return]


class _TracedTokens(_Delegating):
    """The token stage: whether the verification was cached, and the AS call as a child when not."""

    __slots__ = ()

    def _cached(self, token: str) -> bool:
        # A second SHA-256 of the token, on sampled requests only; the digest is never recorded.
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        inner = self._inner
        if digest in getattr(inner, "token_cache", ()):
            return True
        for rt in getattr(inner, "issuers", {}).values():
            if rt.introspector is not None and digest in rt.introspector.positive:
                return True
        return False

    async def verify(self, token: str, policy: AuthPolicy, *, source: str | None = None) -> VerifiedToken:
        if not _recording():
            return await self._inner.verify(token, policy, source=source)  # type: ignore[no-any-return]
        with _span(self._t, "token_verify") as span:
            span.set_attribute("gateway.token.cache", "hit" if self._cached(token) else "miss")
            result: VerifiedToken = await self._inner.verify(token, policy, source=source)
            span.set_attribute("gateway.token.issuer", result.issuer)
            return result


class _TracedBinder(_Delegating):
    __slots__ = ()

    async def check(self, req: AuthRequest, creds: Credentials, token: VerifiedToken, policy: AuthPolicy) -> Binding:
        if not _recording():
            return await self._inner.check(req, creds, token, policy)  # type: ignore[no-any-return]
        with _span(self._t, "binding") as span:
            binding: Binding = await self._inner.check(req, creds, token, policy)
            span.set_attribute("gateway.binding", binding.type)
            return binding


class _TracedPolicy(_Wrapper):
    __slots__ = ()

    def __call__(self, req: AuthRequest, token: VerifiedToken, binding: Binding, policy: AuthPolicy) -> Decision:
        if not _recording():
            return self._inner(req, token, binding, policy)  # type: ignore[no-any-return]
        with _span(self._t, "policy"):
            return self._inner(req, token, binding, policy)  # type: ignore[no-any-return]


def _trace_replay_store(store: Any, t: Tracer) -> None:
    """Wrap the store's ``first_use`` in place: the DPoP verifier holds the store itself. A memory
    store survives reloads (app.build_pipeline), so it is wrapped once."""
    if store is None or getattr(store, "_gateway_traced", False):
        return
    inner = store.first_use
    kind = "redis" if "redis" in type(store).__name__.lower() else "memory"

    async def first_use(key: bytes, ttl_s: int) -> bool:
        if not _recording():
            return await inner(key, ttl_s)  # type: ignore[no-any-return]
        with _span(t, "replay_store", SpanKind.CLIENT if kind == "redis" else SpanKind.INTERNAL) as span:
            span.set_attribute("gateway.replay.store", kind)
            if kind == "redis":
                span.set_attribute("db.system.name", "redis")
            first: bool = await inner(key, ttl_s)
            span.set_attribute("gateway.replay.first_use", first)
            return first

    store.first_use = first_use
    store._gateway_traced = True


class _TracedClientCerts(_Delegating):
    """Step 1 (the client certificate: handshake or trusted front proxy) as the ``tls_peer`` span."""

    __slots__ = ()

    @property
    def checker(self) -> _TracedChecker:
        # The decision fronts (decision/core.py) check the certificate a front passed them here;
        # the proxy's own path goes through peer_certificate (its inner checker: no second span).
        return _TracedChecker(self._inner.checker, self._t)

    def upstream_header(self, peer: PeerCertificate | None) -> tuple[str, str] | None:
        # Every forwarded request asks: a plain method, not the __getattr__ fallback.
        return self._inner.upstream_header(peer)  # type: ignore[no-any-return]

    def peer_certificate(self, request: web.BaseRequest, *, authenticates: bool = True) -> PeerCertificate | None:
        if not _recording():
            return self._inner.peer_certificate(request, authenticates=authenticates)  # type: ignore[no-any-return]
        with _span(self._t, "tls_peer") as span:
            peer: PeerCertificate | None = self._inner.peer_certificate(request, authenticates=authenticates)
            span.set_attribute("gateway.client_cert", peer is not None)
            return peer


class _TracedChecker(_Delegating):
    """A decision check's step 1: the certificate the front passed, checked as the ``tls_peer`` span."""

    __slots__ = ()

    def check(self, facts: Any) -> PeerCertificate:
        if not _recording():
            return self._inner.check(facts)  # type: ignore[no-any-return]
        with _span(self._t, "tls_peer") as span:
            peer: PeerCertificate = self._inner.check(facts)
            span.set_attribute("gateway.client_cert", True)
            return peer


class _TracedForwarder(_Delegating):
    """The upstream exchange as a CLIENT span; ``traceparent`` goes upstream in every case (sampled
    or not: the upstream then knows the gateway's decision), replacing whatever the client sent."""

    __slots__ = ()

    async def forward(
        self, request: web.BaseRequest, upstream: Any, headers: CIMultiDict[str], **kwargs: Any
    ) -> tuple[web.StreamResponse, int]:
        # The client's trace state describes the client's trace, not ours.
        headers.popall("traceparent", None)
        headers.popall("tracestate", None)
        current = trace.get_current_span()
        if not current.is_recording():
            # Written directly (the unsampled path is the hot one): the caller's unsampled context,
            # or, for a trace the handler chose not to sample (no span at all), fresh ids, flags 00.
            ctx = current.get_span_context()
            headers["traceparent"] = (
                f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}" if ctx.is_valid
                else f"00-{getrandbits(128) or 1:032x}-{getrandbits(64) or 1:016x}-00"
            )
            return await self._inner.forward(request, upstream, headers, **kwargs)  # type: ignore[no-any-return]
        with _span(self._t, "upstream", SpanKind.CLIENT) as span:
            span.set_attribute("http.request.method", request.method)
            url = getattr(getattr(upstream, "config", None), "url", None)
            if isinstance(url, str):
                span.set_attribute("server.address", url.split("://", 1)[-1].split("/", 1)[0])
            _PROPAGATOR.inject(headers)
            resp, status = await self._inner.forward(request, upstream, headers, **kwargs)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return resp, status


def instrument_state(state: GatewayState) -> None:
    """Replace ``state``'s stages by traced ones (once per state; no-op without ``setup_tracing``)."""
    active = _ACTIVE
    if active is None or getattr(state, "_gateway_traced", False):
        return
    t = active.tracer
    pipeline = state.pipeline
    # The pipeline's four stages (gateway/pipeline.py); the decision code itself is unchanged.
    pipeline._extract = _TracedExtract(pipeline._extract, t)
    pipeline._tokens = _TracedTokens(pipeline._tokens, t)
    binder = pipeline._binder
    _trace_replay_store(getattr(binder, "replay", None), t)
    pipeline._binder = _TracedBinder(binder, t)
    pipeline._policy = _TracedPolicy(pipeline._policy, t)
    state.client_certs = _TracedClientCerts(state.client_certs, t)  # type: ignore[assignment]
    state.forwarder = _TracedForwarder(state.forwarder, t)  # type: ignore[assignment]
    state._gateway_traced = True  # type: ignore[attr-defined]


# --- the request span --------------------------------------------------------------------------


class TracedObserver(Observer):
    """``Observer`` that also writes the request's outcome onto its server span."""

    __slots__ = ()

    def finished(self, request: Any, **kw: Any) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            route_id = kw.get("route_id")
            status: int = kw["status"]
            reason = kw.get("reason")
            span.update_name(f"{request.method} {route_id or '_unmatched'}")
            if route_id:
                span.set_attribute("http.route", route_id)
            span.set_attribute("http.response.status_code", status)
            if kw.get("interaction_id"):
                span.set_attribute("fapi.interaction_id", kw["interaction_id"])
            decision = kw.get("decision")
            if decision is not None and decision.binding is not None:
                span.set_attribute("gateway.binding", decision.binding.type)
            if reason:
                span.set_attribute("gateway.reason", reason)
                span.set_status(Status(StatusCode.ERROR, reason))
            elif status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        super().finished(request, **kw)


def _handler_base() -> type[GatewayHandler]:
    from ..app import GatewayHandler

    return GatewayHandler


def _server_span(
    active: _Tracing, headers: Any, name: str, trusted: Callable[[str | None], bool], remote: str | None,
) -> Span | None:
    """The SERVER span of a proxied request or a decision check (not yet current), continuing the
    caller's W3C context as ``incoming_context`` says; None for a new trace not sampled here."""
    parent = None
    if "traceparent" in headers and (
        active.incoming == "any" or (active.incoming == "trusted_proxies" and trusted(remote))
    ):
        parent = _PROPAGATOR.extract(headers)
    bound = active.bound
    if parent is None and bound is not None and getrandbits(64) >= bound:
        return None  # not sampled: no span at all (the upstream still gets a traceparent)
    return active.tracer.start_span(name, context=parent, kind=SpanKind.SERVER)


class TracedGatewayHandler(_handler_base()):  # type: ignore[misc]
    """The public listener's handler inside a SERVER span (W3C context from trusted callers)."""

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        active = _ACTIVE
        if active is None:
            return await super().__call__(request)  # type: ignore[no-any-return]
        # start_span + attach rather than start_as_current_span: the context-manager machinery
        # costs more than the span itself.
        span = _server_span(active, request.headers, request.method, self.holder.current.is_trusted, request.remote)
        if span is None:  # not sampled (the upstream still gets a traceparent: _TracedForwarder)
            return await super().__call__(request)  # type: ignore[no-any-return]
        if span.is_recording():
            path = request.path
            span.set_attributes({
                "http.request.method": request.method,
                "url.path": path if len(path) <= _MAX_PATH else path[:_MAX_PATH],
                "url.scheme": "https" if request.secure else "http",
                "gateway.mode": "proxy",
            })
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return await super().__call__(request)  # type: ignore[no-any-return]
        finally:
            otel_context.detach(token)
            span.end()


def traced_handler(handler: GatewayHandler) -> GatewayHandler:
    """``handler`` with request spans; its state's stages traced too (unchanged when not set up)."""
    if _ACTIVE is None:
        return handler
    obs = handler.observer
    traced = TracedGatewayHandler(handler.holder, TracedObserver(obs.metrics, obs.access_log))
    instrument_state(handler.holder.current)
    return traced


# --- the decision fronts -----------------------------------------------------------------------


def _caller_trusted(_remote: str | None) -> bool:
    # A check only runs for a caller the front trusts (decision.*.trusted_peers / identities):
    # the decision listener's counterpart of listen.trusted_proxies.
    return True


def traced_check(check: DecisionCheck) -> DecisionCheck:
    """``decision.core.check`` inside a SERVER span (Envoy ext_authz gRPC/HTTP, nginx auth_request,
    Traefik forwardAuth), continuing the original request's W3C context (the front passes its
    headers); its stages are the state's traced ones and the outcome is written by the
    ``TracedObserver`` the fronts share with the proxy. Unchanged when tracing is not set up."""
    if _ACTIVE is None:
        return check

    async def traced(state: GatewayState, original: OriginalRequest, observer: Observer | None = None,
                     *, trace_carrier: dict[str, str] | None = None, **kw: Any) -> Verdict:
        # trace_carrier: the gRPC call's metadata, where Envoy puts its own ext_authz span's context;
        # otherwise the original request's headers carry the caller's (HTTP fronts inject there).
        carrier = trace_carrier if trace_carrier and "traceparent" in trace_carrier else original.headers
        active = _ACTIVE
        span = None if active is None else _server_span(
            active, carrier, original.method, _caller_trusted, original.remote)
        if span is None:
            return await check(state, original, observer, **kw)
        if span.is_recording():
            path = original.path
            span.set_attributes({
                "http.request.method": original.method,
                "url.path": path if len(path) <= _MAX_PATH else path[:_MAX_PATH],
                "url.scheme": original.scheme,
                "gateway.mode": original.mode,
            })
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return await check(state, original, observer, **kw)
        finally:
            otel_context.detach(token)
            span.end()

    return traced
