"""The decision service's HTTP fronts: one aiohttp listener (``decision.http``), three protocols.

    <original method> /ext_authz/<original path>  Envoy ext_authz, HTTP mode (``http_service``,
                                                   ``path_prefix: /ext_authz``)
    any method        /auth_request                nginx ``auth_request`` subrequest
    any method        /forward_auth                Traefik ``forwardAuth``
    GET               /readyz                      readiness (the admin port's, on this listener)

Each front only translates: its protocol -> ``core.OriginalRequest`` -> ``core.check`` (the
proxy's own ``authorize``: routes, Host, canonical path, policies, caches, replay store, metrics)
-> ``core.Verdict`` -> its protocol. Nothing is forwarded from here and no check exists twice.

Trust. The original method, URI, host, scheme, client address and certificate arrive in headers
anyone could write. A check is answered only for a caller in ``decision.http.trusted_peers`` (and,
over ``decision.tls`` with client auth, presenting a certificate in ``trusted_identities``); anyone
else gets a denial (403 ``untrusted_caller``) whatever it carries, never an answer computed as if
the headers were absent: an allow for a forged request would be an allow. The client certificate
is read from the header ``decision.http.client_cert`` names, in its format (nginx
``$ssl_client_escaped_cert``: ``format: nginx``; Traefik ``passTLSClientCert``: ``format:
traefik``; Envoy ``X-Forwarded-Client-Cert``: ``format: xfcc``), and passes the checks a
handshake's would (dates, usage, chain depth, CRLs).

Answers per protocol:

* Envoy HTTP mode: 200 = allow, with the identity headers to add (``allowed_upstream_headers``),
  ``x-envoy-auth-headers-to-remove`` listing the client's headers the proxy would not forward, and
  the client-side ones (a fresh ``DPoP-Nonce``; ``allowed_client_headers_on_success``). Anything
  else is the denial Envoy relays: status, ``WWW-Authenticate``, ``DPoP-Nonce``, ``Retry-After``,
  body (``allowed_client_headers``).
* nginx: ``auth_request`` knows only 2xx (allow), 401 and 403; anything else becomes a 500 there.
  So 401 and 403 are answered as they are, every other refusal (400, 421, 503, ...) as 403 with the
  real status in ``X-Fapi-Status``, and the JSON body in ``X-Fapi-Body`` (nginx drops subrequest
  bodies); the server block in config/examples/nginx-auth-request/ maps them back with
  ``auth_request_set`` + ``error_page``. Without that mapping nginx still refuses (403).
* Traefik: 2xx = allow (identity headers picked by ``authResponseHeaders``); anything else is
  relayed to the client as it is (status, headers, body).

A denial is never a 2xx (a CORS preflight the gateway would answer itself with 204 is answered 403
here: each proxy would take a 2xx for an allow and forward the preflight).

Bounds: the check needs no body (one announced is refused with 413 unread); the listener has the
public listener's deadlines and connection cap (``gateway/listener.py``); ``core.check`` refuses
with 503 a check not decided within ``decision.http.deadline_s``; ``max_concurrent`` checks run at
once, more get 503 at once.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ..admin import Readiness
from ..app import StateHolder, error_response
from ..challenge import ChallengeSettings
from ..config.decision import DecisionConfig, DecisionHttp
from ..config.mtls import FrontProxyConfig
from ..errors import (
    DecisionBodyNotAllowedError,
    DecisionBusyError,
    GatewayError,
    InvalidRequestError,
    UntrustedCallerError,
)
from ..listener import ConnectionGuard, GuardedServer, GuardedSite
from ..observability.observer import Observer
from ..proxy import interaction_id
from ..tls.context import build_server_context
from ..tls.front_proxy import FrontProxy
from ..tls.peer import tls_peer_facts
from .core import Mode, OriginalRequest, Verdict, check

__all__ = (
    "ENVOY_PREFIX",
    "NGINX_PATH",
    "TRAEFIK_PATH",
    "DecisionHttpFront",
    "Front",
    "read_original",
    "render",
)

log = logging.getLogger("gateway.decision")

ENVOY_PREFIX: Final = "/ext_authz"
NGINX_PATH: Final = "/auth_request"
TRAEFIK_PATH: Final = "/forward_auth"
READY_PATH: Final = "/readyz"

# The real status of an nginx denial that auth_request cannot carry, and its body.
STATUS_HEADER: Final = "X-Fapi-Status"
BODY_HEADER: Final = "X-Fapi-Body"
ENVOY_REMOVE_HEADER: Final = "x-envoy-auth-headers-to-remove"
_MAX_BODY_HEADER = 2048

# Headers a proxy sets about the hop (never the client's to assert): read here, never handed on.
_FORWARDING = ("x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port",
               "x-forwarded-server", "x-forwarded-uri", "x-forwarded-method", "x-forwarded-prefix",
               "x-real-ip", "forwarded", "x-original-method", "x-original-uri", "connection",
               "content-length", "keep-alive")


@dataclass(frozen=True, slots=True)
class Front:
    """One protocol: where it puts the original request, and which headers are its own."""

    mode: Mode
    method_header: str | None  # None: the check request's own method (Envoy HTTP mode)
    uri_header: str | None  # None: the check request's path after ENVOY_PREFIX
    host_header: str  # "Host" for Envoy (the original authority), X-Forwarded-Host otherwise
    # The protocol's own headers (lower-case): not the client's, so neither checked nor removed.
    own: frozenset[str]


NGINX = Front("auth_request", "X-Original-Method", "X-Original-URI", "X-Forwarded-Host", frozenset(_FORWARDING))
TRAEFIK = Front("forward_auth", "X-Forwarded-Method", "X-Forwarded-Uri", "X-Forwarded-Host",
                frozenset((*_FORWARDING, "x-forwarded-tls-client-cert-info")))
ENVOY = Front("ext_authz_http", None, None, "Host",
              frozenset((*_FORWARDING, "x-envoy-expected-rq-timeout-ms", "x-envoy-internal",
                         "x-envoy-decorator-operation", "x-request-id")))


def _bad(what: str) -> InvalidRequestError:
    return InvalidRequestError(what, reason="decision_bad_check")


def _one(headers: CIMultiDictProxy[str], name: str) -> str:
    values = headers.getall(name, ())
    if len(values) != 1 or not values[0]:
        raise _bad(f"the check needs exactly one {name} header")
    return values[0]


def _client_address(headers: CIMultiDictProxy[str]) -> str | None:
    """The client as the calling proxy saw it: the last X-Forwarded-For entry, the one it added
    (nginx ``$remote_addr``, Traefik and Envoy append the peer they accepted)."""
    values = headers.getall("X-Forwarded-For", ())
    if not values:
        return None
    last = values[-1].rsplit(",", 1)[-1].strip()
    return last[:64] or None


def read_original(front: Front, request: web.BaseRequest) -> OriginalRequest:
    """The original request from a check request of ``front``'s protocol; 400 if incomplete."""
    headers = request.headers
    method = request.method if front.method_header is None else _one(headers, front.method_header)
    if front.uri_header is None:
        target = request.raw_path[len(ENVOY_PREFIX):] or "/"
    else:
        target = _one(headers, front.uri_header)
    if not target.startswith("/"):
        raise _bad("the original URI must be a path (origin-form)")
    authority = _one(headers, front.host_header)
    protos = headers.getall("X-Forwarded-Proto", ())
    if len(protos) > 1:
        raise _bad("more than one X-Forwarded-Proto")
    # Each proxy sets it from its own listener; absent, the front is assumed to serve HTTPS.
    scheme = protos[0].split(",", 1)[0].strip().lower() if protos else "https"
    own = front.own
    return OriginalRequest.build(
        front.mode,
        method=method,
        scheme=scheme,
        authority=authority,
        raw_path=target,
        headers=((k, v) for k, v in headers.items() if k.lower() not in own),
        remote=_client_address(headers),
    )


# --- answers ------------------------------------------------------------------------------------

def _deny_status(verdict: Verdict) -> int:
    # Never a 2xx for a denial: every proxy takes a 2xx for "forward it".
    return verdict.status if verdict.status >= 300 else 403


def _headers(pairs: Iterable[tuple[str, str]], skip: frozenset[str] = frozenset()) -> CIMultiDict[str]:
    out = CIMultiDict[str]()
    for name, value in pairs:
        low = name.lower()
        if low in skip:
            continue
        if low in out and low == "x-fapi-interaction-id":
            continue  # in both the upstream and the client headers
        out.add(name, value)
    return out


_ENTITY = frozenset(("content-type", "content-length"))


def render(front: Front, verdict: Verdict) -> web.Response:
    """``verdict`` in ``front``'s protocol."""
    if verdict.allowed:
        headers = _headers((*verdict.upstream_add, *verdict.response_headers), _ENTITY)
        if front.mode == "ext_authz_http":
            # Envoy removes these from the original request after setting the allowed ones, so a
            # name we set (a forged identity header we overwrite) must not be listed.
            setting = {name.lower() for name, _ in verdict.upstream_add}
            remove = [name for name in verdict.upstream_remove if name.lower() not in setting]
            if remove:
                headers[ENVOY_REMOVE_HEADER] = ",".join(remove)
        headers["Cache-Control"] = "no-store"
        return web.Response(status=200, headers=headers)
    status = _deny_status(verdict)
    headers = _headers(verdict.response_headers, _ENTITY)
    body = verdict.body
    if front.mode == "auth_request":
        if status not in (401, 403):
            status = 403
        headers[STATUS_HEADER] = str(_deny_status(verdict))
        # The body nginx drops: JSON without raw control characters (json.dumps escapes them).
        if body and len(body) <= _MAX_BODY_HEADER and body.isascii() and all(32 <= b < 127 for b in body):
            headers[BODY_HEADER] = body.decode("ascii")
    return web.Response(status=status, body=body, headers=headers, content_type="application/json")


def _refusal(front: Front | None, exc: GatewayError, fapi_id: str) -> web.Response:
    """A refusal of the check request itself (untrusted caller, malformed check, body)."""
    resp = error_response(exc, _NO_CHALLENGE, fapi_id)
    body = resp.body if isinstance(resp.body, bytes) else b""
    verdict = Verdict(False, exc.status, tuple(resp.headers.items()), body, reason=exc.reason)
    if front is None:
        return web.Response(status=exc.status, body=body, headers=_headers(verdict.response_headers, _ENTITY),
                            content_type="application/json")
    return render(front, verdict)


_NO_CHALLENGE = ChallengeSettings(schemes=())


# --- the listener -------------------------------------------------------------------------------

class DecisionHttpHandler:
    """The decision HTTP listener's request handler (aiohttp low-level server, no router)."""

    def __init__(self, holder: StateHolder, observer: Observer, front_cfg: DecisionHttp,
                 ready: Readiness | None = None, decide: Callable[..., Awaitable[Verdict]] = check) -> None:
        self.holder = holder
        self.decide = decide  # core.check, or its traced wrapper (service.py)
        self.observer = observer
        self.cfg = front_cfg
        self.ready = ready
        # Address AND (over mTLS) certificate of the caller, as for a trusted front proxy.
        self.trust = FrontProxy(FrontProxyConfig(trusted_cidrs=front_cfg.trusted_peers,
                                                 trusted_identities=front_cfg.trusted_identities))
        self.slots = asyncio.Semaphore(front_cfg.max_concurrent)
        self._last_warning = 0.0

    def _front(self, request: web.BaseRequest) -> Front | None:
        path = request.raw_path.partition("?")[0]
        if path == NGINX_PATH:
            return NGINX
        if path == TRAEFIK_PATH:
            return TRAEFIK
        if path == ENVOY_PREFIX or path.startswith(ENVOY_PREFIX + "/"):
            return ENVOY
        return None

    def _warn_untrusted(self, remote: str | None) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 10.0:
            self._last_warning = now
            log.warning("decision: check refused from untrusted caller %s (decision.http.trusted_peers)", remote)

    def _refused(self, request: web.BaseRequest, front: Front, exc: GatewayError, fapi_id: str,
                 started: float) -> web.Response:
        """A check refused before the decision (caller, shape, body, load): answered in the
        front's protocol and counted like every decision (``mode`` label, access log)."""
        resp = _refusal(front, exc, fapi_id)
        if exc.close_connection:
            resp.force_close()
        self.observer.finished(request, started=started, route_id=None, status=exc.status, reason=exc.reason,
                               decision=None, interaction_id=fapi_id, mode=front.mode)
        return resp

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        fapi_id = interaction_id(request.headers)
        front = self._front(request)
        if front is None:
            if request.method == "GET" and request.raw_path == READY_PATH and self.ready is not None:
                ok, checks = self.ready.status()
                return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)
            return web.json_response({"error": "not_found"}, status=404)
        try:
            if not self.trust.is_trusted(request.remote, tls_peer_facts(request)):
                self._warn_untrusted(request.remote)
                raise UntrustedCallerError("caller not trusted to ask for decisions")
            if request.content_length or request.headers.get("Transfer-Encoding"):
                # The decision needs no body (nginx: proxy_pass_request_body off; Envoy: no
                # with_request_body); one is refused unread.
                raise DecisionBodyNotAllowedError("the check request must not carry a body")
            original = read_original(front, request)
        except GatewayError as exc:
            return self._refused(request, front, exc, fapi_id, started)
        if self.slots.locked():
            # Beyond max_concurrent: shed at once rather than queue behind a slow AS.
            return self._refused(request, front, DecisionBusyError("decision service busy"), fapi_id, started)
        async with self.slots:
            verdict = await self.decide(self.holder.current, original, self.observer, fapi_id=fapi_id)
        return render(front, verdict)


class DecisionHttpFront:
    """The decision HTTP listener (a front of ``service.DecisionService``): same state holder and
    observer as the proxy, the public listener's deadlines and connection cap."""

    def __init__(self, holder: StateHolder, observer: Observer, cfg: DecisionConfig, *,
                 readiness: Readiness | None = None, reuse_port: bool = False,
                 decide: Callable[..., Awaitable[Verdict]] = check) -> None:
        assert cfg.http is not None
        self.front = cfg.http
        self.tls = cfg.tls
        state = holder.current
        # Listener settings are fixed for the process (restart-only), like the public listener's.
        self.limits = state.cfg.listen.limits
        self._metrics = state.metrics
        self.handler = DecisionHttpHandler(holder, observer, cfg.http, readiness, decide)
        self.guard = ConnectionGuard(self.limits, on_close=self._metrics.connection_closed)
        self.reuse_port = reuse_port
        self.grace_s = state.cfg.lifecycle.shutdown_grace_s
        self.port = 0
        self._runner: web.ServerRunner | None = None

    @property
    def serving(self) -> bool:
        return self._runner is not None and bool(self._runner.sites)

    async def start(self) -> None:
        # TLS files are read at start (restart-only, like the gRPC front's credentials).
        ctx: ssl.SSLContext | None = build_server_context(self.tls) if self.tls is not None else None
        self._runner = web.ServerRunner(
            GuardedServer(self.handler, guard=self.guard, on_malformed=self._metrics.malformed_request,
                          access_log=None, max_field_size=16384),
            handle_signals=False, shutdown_timeout=self.grace_s,
        )
        await self._runner.setup()
        site = GuardedSite(self._runner, self.front.host, self.front.port, ssl_context=ctx,
                           reuse_port=self.reuse_port or None, backlog=1024,
                           handshake_timeout_s=self.limits.handshake_timeout_s)
        await site.start()
        server = site._server  # aiohttp has no public accessor for the bound socket
        assert server is not None
        self.port = int(next(iter(getattr(server, "sockets", ()))).getsockname()[1])
        log.info("decision HTTP fronts (ext_authz HTTP, auth_request, forwardAuth) on %s:%d%s",
                 self.front.host, self.port, " (TLS)" if ctx is not None else "")

    async def stop(self, grace_s: float | None = None) -> None:
        """Closes the listening socket, then waits (up to lifecycle.shutdown_grace_s) for running
        checks; ``grace_s`` is that same setting, passed by the service."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
