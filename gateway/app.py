"""Wiring only: builds every stage from the config and composes them in one request handler.

    request -> routing -> AuthRequest (tls peer cert, external URL) -> AuthPipeline.decide
            -> proxy (header policy, streaming forward) -> response

Everything built from one config lives in a ``GatewayState``; a reload builds a new state and
swaps it, and a request keeps the state it started with.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, cast

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .authz.body import BufferedBody
from .canonical import Target, canonical_target
from .challenge import ChallengeSettings, nonce_header, render_challenges
from .config import AuthPolicy, GatewayConfig
from .errors import (
    CorsRefusedError,
    DependencyError,
    ExpectationFailedError,
    GatewayError,
    HttpSignatureError,
    MethodNotAllowedError,
    OAuthError,
    RateLimitedError,
    Scheme,
)
from .model import AuthRequest, BodyReader, Decision, PeerCertificate, VerifiedToken
from .observability.metrics import Metrics
from .observability.observer import CLIENT_CLOSED, Observer
from .observability.stages import time_replay_store
from .origin import HostPolicy, PublicRequest
from .pipeline import AuthPipeline
from .proxy import HeaderPolicy, interaction_id
from .proxy.cors import CorsPolicy
from .proxy.forward import BodyDeadlines, Forwarder, UpstreamClient
from .proxy.headers import DEFAULT_IDENTITY_HEADERS, default_pseudonym
from .report import debug_reason
from .revocation import Revocation, build_denylist
from .routing import Route, Router
from .signatures import SignatureStage, signature_header_names
from .tls.clientcerts import ClientCertificates
from .tls.names import server_names

if TYPE_CHECKING:
    from .bind.replay import ReplayStore

__all__ = (
    "Authorized",
    "GatewayHandler",
    "GatewayState",
    "Progress",
    "RequestView",
    "StageOverrides",
    "StateHolder",
    "authorize",
    "build_handler",
    "build_pipeline",
    "build_state",
    "check_method",
    "error_response",
    "refusal_response",
)

log = logging.getLogger("gateway")


class Lifecycle(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StageOverrides:
    """What ``gateway explain`` (issue #19) substitutes so the same stages decide offline and at
    a chosen time: the clock every stage reads, a replay store of its own (an explained proof is
    never consumed in the shared one), and no runtime revocation sync (Redis)."""

    clock: Callable[[], float] | None = None
    replay: ReplayStore | None = None
    revocation_sync: bool = True
    # Rate limits and source budgets (issue #18): explain neither reads nor spends anyone's quota.
    rate_limits: bool = True
    # (stage name, stage) -> a stage of the same protocol that delegates to it and records.
    tap: Callable[[str, Any], Any] | None = None


def build_pipeline(
    cfg: GatewayConfig, metrics: Metrics, previous: GatewayState | None = None,
    overrides: StageOverrides | None = None,
) -> tuple[AuthPipeline, list[Lifecycle], frozenset[str]]:
    """The auth stages for ``cfg``, their start/close hooks, and the header names they inject.

    ``metrics`` outlives reloads; stages count their own events on it (JWKS fetches, ...).
    """
    ov = overrides or StageOverrides()
    clock = ov.clock or time.time
    lifecycles: list[Lifecycle] = []
    injected: frozenset[str] = frozenset()
    from .bind import Binder  # step 4: DPoP proofs + replay store + cnf.x5t#S256 (issue 5)
    from .bind.replay import MemoryReplayStore

    # A reload keeps an in-process replay store (same settings), or seen jtis would be forgotten.
    keep = previous is not None and previous.cfg.dpop.replay == cfg.dpop.replay and isinstance(
        previous.replay_store, MemoryReplayStore
    )
    replay = ov.replay if ov.replay is not None else (previous.replay_store if keep and previous is not None else None)
    binder = Binder(cfg.dpop, replay=replay, clock=clock)
    lifecycles.append(binder)  # opens/closes the replay store's Redis pool
    from .credentials import extract_credentials  # steps 2, 3, 5 (issue 3)
    from .policy import check_policy, identity_header_names
    from .verify import AccessTokenVerifier

    tokens = AccessTokenVerifier(cfg.issuers, events=metrics, denylist=build_denylist(cfg, previous, clock=clock),
                                 clock=clock)
    lifecycles.append(tokens)  # loads metadata + JWKS before serving; closes HTTP sessions
    if ov.revocation_sync:
        lifecycles.append(Revocation(cfg, tokens))  # the admin kill switch (issue #13); Redis sync
    injected = identity_header_names(route.auth for route in cfg.routes)
    from .verify.admission import request_source

    # Who an introspection call counts against (verify/admission.py); behind a trusted front
    # proxy, the client it forwarded for.
    proxies = tuple(ipaddress.ip_network(c, strict=False) for c in cfg.listen.trusted_proxies)
    from .ratelimit import build_rate_limiter  # issue #18: limits and abuse budgets, around the decision

    limits = build_rate_limiter(cfg, metrics.rate_limit_decision, previous.pipeline.limits if previous else None,
                                proxies) if ov.rate_limits else None
    if limits is not None:
        lifecycles.append(limits)
        if limits.introspection_budget:  # AS calls per source, counted across replicas
            for issuer in tokens.issuers.values():
                if issuer.introspector is not None:
                    issuer.introspector.call_budget = limits.introspection_call
    pipeline = AuthPipeline(extract=extract_credentials, tokens=tokens, binder=binder, policy=check_policy,
                            source=partial(request_source, trusted_proxies=proxies), limits=limits)
    if ov.tap is not None:  # explain: the same stage objects, each result and refusal recorded
        from .authz import authz_step
        pipeline = AuthPipeline(extract=ov.tap("credentials", extract_credentials), tokens=ov.tap("token", tokens),
                                binder=ov.tap("binding", binder), policy=ov.tap("policy", check_policy),
                                source=partial(request_source, trusted_proxies=proxies), limits=limits,
                                authz=ov.tap("authz", authz_step))  # issue #16
    from .report import WOULD_REFUSE_HEADER, report_only  # issue #19: report-only routes

    pipeline, reporting = report_only(cfg, pipeline, metrics.would_refuse)
    metrics.report_only_routes(len(reporting))
    injected |= {WOULD_REFUSE_HEADER.lower()}  # a client-sent copy never reaches the upstream
    return pipeline, lifecycles, injected


# --- per-route runtime -----------------------------------------------------------------------

def _schemes(policy: AuthPolicy | str) -> tuple[Scheme, ...]:
    if not isinstance(policy, AuthPolicy):
        return ()
    if policy.sender_constraint == "dpop":
        return ("DPoP",)
    if policy.sender_constraint == "mtls":
        return ("Bearer",)
    return ("Bearer", "DPoP")


@dataclass(frozen=True, slots=True)
class RouteRuntime:
    route: Route
    headers: HeaderPolicy
    challenge: ChallengeSettings
    upstream: UpstreamClient
    cors: CorsPolicy | None = None


_NO_CHALLENGE = ChallengeSettings(schemes=())


class GatewayState:
    """Everything built from one configuration."""

    def __init__(
        self,
        cfg: GatewayConfig,
        metrics: Metrics,
        client_certs: ClientCertificates | None = None,
        previous: GatewayState | None = None,
        overrides: StageOverrides | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        # Requests running on this state; a reload closes the old state once this reaches 0.
        self.in_flight = 0
        self.router = Router(cfg)
        self.pipeline, self._lifecycles, injected = build_pipeline(cfg, metrics, previous, overrides)
        self.replay_store = next((lc.replay for lc in self._lifecycles if hasattr(lc, "replay")), None)
        self.revocation = next((lc for lc in self._lifecycles if isinstance(lc, Revocation)), None)
        # FAPI 2.0 HTTP message signatures (gateway.signatures): None when nothing is configured.
        self.signatures = SignatureStage.build(cfg, self.replay_store)
        if self.signatures is not None:
            self._lifecycles.append(self.signatures)
        # Step 1: the client certificate (handshake or trusted front proxy) + the hot-reloaded TLS
        # context. A running server owns one for its listener and lends it to every state it builds,
        # so a config reload never detaches the listener's context from its watcher.
        self._owns_client_certs = client_certs is None
        self.client_certs = client_certs or ClientCertificates(
            cfg, on_untrusted_header=lambda _header: metrics.front_proxy_cert_dropped()
        )
        strip = set(getattr(cfg.client_certs, "strip_headers", DEFAULT_IDENTITY_HEADERS)) | set(injected)
        strip |= signature_header_names(cfg)
        dpop_algs = tuple(cfg.dpop.algorithms)
        pseudonym = default_pseudonym(cfg)  # our name in Via, and how a loop is recognised
        # One pool per named upstream; an inline URL is keyed by its full settings. Never by URL
        # alone: two upstreams may share a URL with different timeouts, CAs or client certs.
        self.upstreams: dict[object, UpstreamClient] = {}
        self.routes: dict[str, RouteRuntime] = {}
        for route in self.router.routes:
            name = route.config.upstream
            key: object = ("name", name) if name in cfg.upstreams else ("inline", route.upstream)
            up = self.upstreams.get(key)
            if up is None:
                up = self.upstreams[key] = UpstreamClient(route.upstream)
            policy = route.config.auth
            self.routes[route.id] = RouteRuntime(
                route=route,
                headers=HeaderPolicy.for_route(cfg, route.config, strip=strip, pseudonym=pseudonym),
                challenge=ChallengeSettings(
                    schemes=_schemes(policy),
                    realm=getattr(policy, "realm", None),
                    dpop_algs=dpop_algs,
                ),
                upstream=up,
                cors=CorsPolicy(route.config.cors, route.config.match.methods) if route.config.cors else None,
            )
        limits = cfg.listen.limits
        self.forwarder = Forwarder(
            body=BodyDeadlines(limits.body_timeout_s, limits.body_min_rate_bytes_s), on_stall=metrics.connection_closed
        )
        listen = cfg.listen
        self.origin = listen.external_origin
        self.trusted = tuple(ipaddress.ip_network(c, strict=False) for c in listen.trusted_proxies)
        # Without a configured external origin the URL a client signed (DPoP htu) is rebuilt from
        # Host, so Host must name this server: one of its certificate's names (DPOP-14, PRX-10).
        self.server_names = server_names(listen.tls.cert) if listen.tls is not None else None
        self.hosts = HostPolicy(cfg, self.server_names)  # Host / X-Forwarded-Host validation
        self.allow_trailing_dot = cfg.paths.allow_trailing_dot

    def is_trusted(self, remote: str | None) -> bool:
        if not self.trusted or not remote:
            return False
        try:
            addr = ipaddress.ip_address(remote)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    async def start(self) -> None:
        if self._owns_client_certs:
            await self.client_certs.start()
        for lc in self._lifecycles:
            await lc.start()

    async def close(self) -> None:
        for lc in reversed(self._lifecycles):
            await lc.close()
        if self._owns_client_certs:
            await self.client_certs.close()
        for up in self.upstreams.values():
            await up.close()


class StateHolder:
    """The current state; replaced whole on reload."""

    def __init__(self, state: GatewayState) -> None:
        self.current = state


def build_state(
    cfg: GatewayConfig,
    metrics: Metrics | None = None,
    client_certs: ClientCertificates | None = None,
    previous: GatewayState | None = None,
    overrides: StageOverrides | None = None,
) -> GatewayState:
    """``previous``: the state being replaced by a reload, whose long-lived parts may carry over."""
    state = GatewayState(cfg, metrics or Metrics(), client_certs, previous, overrides)
    time_replay_store(state.replay_store, state.metrics.replay_store_duration)  # Redis only (issue #19)
    if cfg.observability.tracing.enabled:  # OpenTelemetry (issue #19): not even imported when off
        from .observability.tracing import instrument_state

        instrument_state(state)
    return state


# --- the request handler ---------------------------------------------------------------------

def error_response(
    exc: GatewayError, challenge: ChallengeSettings, fapi_id: str
) -> web.Response:
    headers = CIMultiDict[str]()
    headers["x-fapi-interaction-id"] = fapi_id
    headers["Cache-Control"] = "no-store"
    body: dict[str, str] = {}
    if isinstance(exc, OAuthError):
        www = render_challenges(exc, challenge)
        if www:
            headers["WWW-Authenticate"] = www
        nonce = nonce_header(exc)
        if nonce:
            headers["DPoP-Nonce"] = nonce
        if exc.error:
            body["error"] = exc.error
    else:
        body["error"] = exc.reason
    if isinstance(exc, HttpSignatureError):  # RFC 9421 §5.1: what to sign, and what failed
        headers["Accept-Signature"] = exc.accept_signature
        body["error"] = exc.reason
    if exc.description:
        body["error_description"] = exc.description[:200]
    if isinstance(exc, DependencyError) and exc.retry_after_s:
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, RateLimitedError):  # gateway.ratelimit: which limit, and when to retry
        headers["Retry-After"] = str(exc.retry_after_s)
        headers.extend(exc.fields)
        body["limit"] = exc.limit_id
    resp = web.Response(
        status=exc.status, body=json.dumps(body).encode(), content_type="application/json", headers=headers
    )
    if exc.close_connection:
        resp.force_close()
    return resp


def _with_cert_header(
    headers: tuple[tuple[str, str], ...], cert: tuple[str, str] | None
) -> tuple[tuple[str, str], ...]:
    return (*headers, cert) if cert is not None else headers


# Methods an API gateway forwards; TRACE and CONNECT never pass (PRX-13, PRX-17).
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


class RequestView(Protocol):
    """What the auth decision reads of a request: an aiohttp request on the public listener, or a
    decision front's ``gateway.decision.core.OriginalRequest`` (no transport of ours)."""

    @property
    def method(self) -> str: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def remote(self) -> str | None: ...
    @property
    def transport(self) -> asyncio.BaseTransport | None: ...
    @property
    def raw_path(self) -> str: ...
    @property
    def query_string(self) -> str: ...


class Progress:
    """What is learnt on the way to a decision; the caller's ``finally`` reads it (metrics, log)."""

    __slots__ = ("auth_s", "challenge", "cors_origin", "decision", "limit", "refused_token", "route_id", "rt",
                 "signature", "t_auth")

    def __init__(self) -> None:
        self.route_id: str | None = None
        self.rt: RouteRuntime | None = None
        self.challenge = _NO_CHALLENGE
        self.cors_origin: str | None = None
        self.t_auth: float | None = None
        self.auth_s: float | None = None
        self.decision: Decision | None = None
        # The verified token of a request refused at binding or policy (the access log's client_id).
        self.refused_token: VerifiedToken | None = None
        self.limit: str | None = None  # the rate limit that refused the request (access log)
        self.signature: tuple[str, str] | None = None  # verified (keyid, label), for the access log


@dataclass(frozen=True, slots=True)
class Authorized:
    """``authorize`` allowed the request: what forwarding it needs."""

    rt: RouteRuntime
    public: PublicRequest
    target: Target
    auth_req: AuthRequest
    decision: Decision


# The client certificate of a request, given whether its route authenticates (401 vs 403).
PeerCertSource = Callable[[bool], PeerCertificate | None]


def check_method(method: str) -> None:
    if method not in _METHODS:
        raise MethodNotAllowedError("method not allowed", reason="method_not_allowed")


async def authorize(
    state: GatewayState,
    request: RequestView,
    p: Progress,
    fapi_id: str,
    *,
    trusted: bool,
    peer_cert: PeerCertSource | None = None,
    scheme: str | None = None,
    sni: str | None = None,
    body: BodyReader | None = None,
) -> Authorized | web.Response:
    """Everything up to and including ``AuthPipeline.decide``, for the proxy and every decision
    front alike (issue #15: one implementation of each check). Returns the allowed request, or a
    response the gateway answers itself (OPTIONS with Max-Forwards: 0, a CORS preflight); raises
    ``GatewayError`` for a refusal. ``peer_cert``: None for the public listener (our handshake or
    the trusted front proxy); ``scheme``/``sni``: how the request reached a decision front's caller.
    """
    # Validated once; routing, htu and X-Forwarded-Host/Forwarded use only this (issue #13).
    public = state.hosts.check(request, trusted=trusted, scheme=scheme, sni=sni)
    if request.method == "OPTIONS" and request.headers.get("Max-Forwards") == "0":
        # RFC 9110 §7.6.2: the last hop answers itself.
        return web.Response(status=204, headers={"Allow": ", ".join(sorted(_METHODS)),
                                                 "x-fapi-interaction-id": fapi_id})
    # The one canonical target: routed on, compared with htu and forwarded (issue #13).
    target = canonical_target(request.raw_path, allow_trailing_dot=state.allow_trailing_dot)
    resolved = state.router.resolve(request.method, public.authority.name, target.path)
    route = resolved.route
    p.route_id = route.id
    rt = p.rt = state.routes[route.id]
    challenge = p.challenge = rt.challenge
    rt.headers.check_request(request.headers)  # 501 / 508 / 400 before any auth work
    if rt.cors is not None:
        cors_origin = p.cors_origin = rt.cors.allowed_origin(request.headers)
        if rt.cors.is_preflight(request.method, request.headers):
            # Answered here, without auth, never forwarded (a preflight carries no credentials).
            if cors_origin is None:
                raise CorsRefusedError("origin not allowed")
            headers = rt.cors.preflight_headers(cors_origin)
            headers["x-fapi-interaction-id"] = fapi_id
            return web.Response(status=204, headers=headers)
    authenticates = bool(challenge.schemes)
    auth_req = AuthRequest(
        method=request.method,
        url=public.origin(route.config.external_origin or state.origin) + target.path,
        path=target.path,
        query_string=request.query_string,
        headers=request.headers,
        peer_cert=(
            state.client_certs.peer_certificate(cast(web.BaseRequest, request), authenticates=authenticates)
            if peer_cert is None else peer_cert(authenticates)
        ),
        remote=request.remote or "",
        path_params=resolved.params,
        body=body,  # read only by a route whose authz rules inspect it (gateway.authz.body)
    )
    p.t_auth = time.perf_counter()
    try:
        decision = p.decision = await state.pipeline.decide(auth_req, route.config)
    except OAuthError as exc:
        p.refused_token = exc.token
        raise
    p.auth_s = time.perf_counter() - p.t_auth
    return Authorized(rt, public, target, auth_req, decision)


class GatewayHandler:
    """The public listener's request handler, served by aiohttp's low-level ``web.Server``.

    No ``web.Application`` and no URL dispatcher: routing is ``gateway.routing``'s job, and
    aiohttp's resolver and match info cost CPU on every request for nothing here.
    """

    def __init__(self, holder: StateHolder, observer: Observer) -> None:
        self.holder = holder
        self.observer = observer

    async def start(self) -> None:
        await self.holder.current.start()

    async def close(self) -> None:
        await self.holder.current.close()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        state = self.holder.current
        fapi_id = interaction_id(request.headers)
        # Observability (gateway.observability.observer): filled in as the request goes along.
        p = Progress()
        status: int = 500
        reason: str | None = "internal"
        up_s: float | None = None
        up_status: int | None = None
        state.in_flight += 1
        state.metrics.in_flight.inc()
        try:
            check_method(request.method)
            sigs = state.signatures
            if sigs is not None and sigs.jwks_path is not None and request.method in ("GET", "HEAD") and (
                request.raw_path.partition("?")[0] == sigs.jwks_path
            ):
                status, reason = 200, None
                return sigs.jwks_response(fapi_id)  # the public keys of response signatures
            expect = request.headers.get("Expect")
            if expect is not None and expect.lower() != "100-continue":
                raise ExpectationFailedError("unsupported Expect")
            remote = request.remote or ""
            trusted = state.is_trusted(remote)
            # The body, should a route's authz rules inspect it: then read once and forwarded as is.
            buffered = BufferedBody(request, state.forwarder.deadlines)
            ok = await authorize(state, request, p, fapi_id, trusted=trusted, body=buffered)
            if isinstance(ok, web.Response):
                status, reason = ok.status, None
                return ok
            rt, public, target, decision = ok.rt, ok.public, ok.target, ok.decision
            req_headers = request.headers
            # HTTP message signature (headers only): refused before the client sends its body.
            exchange = await sigs.begin(
                rt.route.config, request.method,
                ok.auth_req.url + ("" if target.query is None else f"?{target.query}"), req_headers,
                decision.token.client_id if decision.token is not None else None,
            ) if sigs is not None else None
            if exchange is not None and exchange.signature is not None:
                p.signature = (exchange.signature.keyid, exchange.signature.label)
            # Deferred until the request is authorised (PRX-16): no body is read before.
            if expect is not None and request.version >= (1, 1) and not buffered.continued:
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                buffered.continued = True
            up_headers = rt.headers.upstream_request_headers(
                req_headers,
                client_ip=remote,
                proto=public.proto,
                host=str(public.authority),
                fapi_id=fapi_id,
                inject=_with_cert_header(
                    decision.upstream_headers if exchange is None else (
                        *decision.upstream_headers, *exchange.upstream_headers),
                    state.client_certs.upstream_header(ok.auth_req.peer_cert)
                ),
                prior_forwarded_for=req_headers.get("X-Forwarded-For") if trusted else None,
            )
            t_up = time.perf_counter()
            extra: tuple[tuple[str, str], ...] = (("x-fapi-interaction-id", fapi_id), *decision.response_headers)
            if p.cors_origin is not None and rt.cors is not None:
                cors_headers = CIMultiDict[str]()
                rt.cors.add_response_headers(cors_headers, p.cors_origin)
                extra = (*extra, *cors_headers.items())
            # A signed body is read whole and its digest checked before the upstream sees a byte.
            # (read once: an authz body rule may have read it already, BufferedBody keeps it).
            body = await exchange.body(
                request, buffered, max_body_bytes=rt.route.config.max_body_bytes
            ) if exchange is not None else None
            resp, up_status = await state.forwarder.forward(
                request,
                rt.upstream,
                up_headers,
                max_body_bytes=rt.route.config.max_body_bytes,
                header_policy=rt.headers,
                extra_response_headers=extra,
                target=str(target),
                body=body if body is not None else buffered.data,
                buffer_response=exchange.response_limit if exchange is not None else None,
            )
            if exchange is not None:
                exchange.sign(resp)  # the response signature, before anything is sent
            up_s = time.perf_counter() - t_up
            status, reason = resp.status, None
            return resp
        except GatewayError as exc:
            # FAPI-03: every log entry about a request names its x-fapi-interaction-id.
            log.debug("refused %s %s: %s (x-fapi-interaction-id %s)", request.method, request.path, exc.reason, fapi_id)
            status, reason = exc.status, exc.reason
            return refusal_response(exc, p, fapi_id)
        except asyncio.CancelledError:
            status, reason = CLIENT_CLOSED, "client_closed"
            raise
        except Exception:
            # A bug, not a refusal: 500 with no detail; the traceback goes to the log only.
            log.exception("internal error (x-fapi-interaction-id %s)", fapi_id)
            status, reason = 500, "internal"
            return error_response(GatewayError("internal error"), _NO_CHALLENGE, fapi_id)
        finally:
            state.in_flight -= 1
            state.metrics.in_flight.dec()
            if p.auth_s is None and p.t_auth is not None:  # refused inside the auth decision
                p.auth_s = time.perf_counter() - p.t_auth
            self.observer.finished(
                request, started=started, route_id=p.route_id, status=status, reason=reason,
                decision=p.decision, interaction_id=fapi_id, auth_s=p.auth_s, upstream_status=up_status,
                upstream_s=up_s, refused_token=p.refused_token, limit=p.limit, signature=p.signature,
            )


def refusal_response(exc: GatewayError, p: Progress, fapi_id: str) -> web.Response:
    """The refusal as the client gets it: ``error_response`` plus the route's CORS headers."""
    if isinstance(exc, RateLimitedError):  # for the access log: which limit, and whom it throttled
        p.limit = exc.limit_id
        p.decision = exc.decision or p.decision
    resp = error_response(exc, p.challenge, fapi_id)
    if p.rt is not None and p.rt.headers.server_header is not None:  # proxy.server_header
        resp.headers["Server"] = p.rt.headers.server_header
    debug = debug_reason(p.rt.route.config if p.rt is not None else None, exc)
    if debug is not None:  # sandboxes only (issue #19): refused by check-config under fapi
        resp.headers[debug[0]] = debug[1]
    if p.cors_origin is not None and p.rt is not None and p.rt.cors is not None:
        p.rt.cors.add_response_headers(resp.headers, p.cors_origin)
    return resp


def build_handler(
    cfg: GatewayConfig,
    *,
    state: GatewayState | None = None,
    metrics: Metrics | None = None,
    observer: Observer | None = None,
) -> GatewayHandler:
    """The public listener's handler for ``cfg`` (TLS is applied by the server that runs it)."""
    holder = StateHolder(state or build_state(cfg, metrics))
    handler = GatewayHandler(holder, observer or Observer(holder.current.metrics))
    if cfg.observability.tracing.enabled:  # request spans (issue #19); a no-op until set up
        from .observability.tracing import traced_handler

        handler = traced_handler(handler)
    return handler
