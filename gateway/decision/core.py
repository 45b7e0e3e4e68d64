"""One auth decision for a request another proxy received (issue #15).

    front (gRPC ext_authz, HTTP ext_authz, auth_request, forwardAuth)
        -> OriginalRequest -> check(state, original) -> Verdict -> front's answer

``check`` runs ``gateway.app.authorize``: the very code the proxy runs up to and including
``AuthPipeline.decide`` (Host validation, canonical target, routing, header checks, CORS
preflight, htu, the pipeline), so there is no second implementation of any check. Refusals are
rendered by ``gateway.app.error_response`` (the one place that writes ``WWW-Authenticate``).

Fail closed: a refusal is a denial with the proxy's status, headers and body; a dependency that is
down (AS, JWKS, Redis) or a check past its deadline is a 503 denial with ``Retry-After``; any
other exception is a 500 denial, logged once (without the request's headers). Never an allow.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from aiohttp import web
from cachetools import TTLCache
from multidict import CIMultiDict, CIMultiDictProxy

from ..app import GatewayState, Progress, authorize, check_method, error_response, refusal_response
from ..config.decision import DecisionCertSource, DecisionFront
from ..config.mtls import FrontProxyConfig
from ..errors import (
    ClientCertificateRefusedError,
    DependencyError,
    GatewayError,
    InvalidRequestError,
    InvalidTokenError,
)
from ..model import PeerCertificate
from ..observability.observer import CLIENT_CLOSED, Observer
from ..proxy import interaction_id
from ..proxy.headers import HOP_BY_HOP
from ..signatures import decision_refusal
from ..tls.checks import CertFacts, parse_cert_facts
from ..tls.clientcerts import CERT_HEADERS
from ..tls.front_proxy import FrontProxy, parse_url_pem

__all__ = ("Mode", "OriginalRequest", "Verdict", "check", "front_config")

log = logging.getLogger("gateway.decision")

Mode = Literal["ext_authz_grpc", "ext_authz_http", "auth_request", "forward_auth"]

# Headers the calling proxy owns toward its upstream: never asked to remove them (it sets
# X-Forwarded-For/-Proto itself at its edge; hop-by-hop fields are its own business).
_PROXY_OWNED: Final = frozenset(HOP_BY_HOP | {"host", "x-forwarded-for", "x-forwarded-proto", "x-request-id",
                                              "max-forwards", "x-fapi-interaction-id", "content-length"})
_SCHEMES: Final = frozenset(("http", "https"))


@dataclass(frozen=True, slots=True)
class OriginalRequest:
    """The request the calling proxy received, as it tells us.

    ``headers`` holds the original request's headers with ``Host`` set to ``authority`` (pseudo
    headers removed). ``client_cert``: the certificate as the front passed it (Envoy's
    ``attributes.source.certificate``: URL-encoded PEM); a certificate in a header is read from
    ``headers`` when the front's ``client_cert.source`` is ``header``. ``remote``: the client's
    address as the proxy saw it. ``sni``: the TLS server name the client sent the proxy.
    """

    mode: Mode
    method: str
    scheme: str
    authority: str
    raw_path: str
    headers: CIMultiDictProxy[str]
    remote: str | None = None
    client_cert: str | None = None
    sni: str | None = None
    query_string: str = field(init=False)
    path: str = field(init=False)

    def __post_init__(self) -> None:
        path, _, query = self.raw_path.partition("?")
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "query_string", query)

    @property
    def transport(self) -> None:
        return None  # not a connection of ours: no sockname, no SNI, no handshake

    @classmethod
    def build(
        cls,
        mode: Mode,
        *,
        method: str,
        scheme: str,
        authority: str,
        raw_path: str,
        headers: Iterable[tuple[str, str]],
        remote: str | None = None,
        client_cert: str | None = None,
        sni: str | None = None,
    ) -> OriginalRequest:
        out = CIMultiDict[str]()
        for name, value in headers:
            if name.startswith(":") or name.lower() == "host":
                continue  # :authority / Host: the front's authority attribute is the one
            out.add(name, value)
        if authority:
            out["Host"] = authority
        return cls(mode, method.upper(), scheme.lower(), authority, raw_path, CIMultiDictProxy(out),
                   remote, client_cert, sni)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Allow: forward, adding ``upstream_add`` and removing ``upstream_remove`` toward the upstream and
    adding ``response_headers`` toward the client. Deny: answer the client with ``status``,
    ``response_headers`` and ``body`` instead of forwarding (also a 204 preflight answer)."""

    allowed: bool
    status: int
    response_headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    upstream_add: tuple[tuple[str, str], ...] = ()
    upstream_remove: tuple[str, ...] = ()
    reason: str | None = None
    route_id: str | None = None


def front_config(state: GatewayState, mode: Mode) -> DecisionFront:
    dec = state.cfg.decision
    front = dec.grpc if mode == "ext_authz_grpc" else dec.http
    if front is None:
        raise GatewayError("decision front not configured", reason="decision_front_disabled")
    return front


class _Certs:
    """How one front's certificate is read, per state (a reload builds new ones)."""

    def __init__(self, cfg: DecisionCertSource) -> None:
        self.source = cfg.source
        self.header: FrontProxy | None = None
        if cfg.source == "header":
            assert cfg.header is not None
            # The caller is already trusted (front trust is checked before ``check``): the FrontProxy
            # is used for its header parsers and their bounded cache only.
            self.header = FrontProxy(FrontProxyConfig(format=cfg.format, header=cfg.header,
                                                      trusted_cidrs=("0.0.0.0/0", "::/0"),
                                                      max_header_bytes=cfg.max_header_bytes))
        self.max_bytes = cfg.max_header_bytes
        # The proxy parses a client certificate once per TLS connection; a front sends it with every
        # check, so parses are kept (bounded, expiring: the per-request checks still run every time).
        # None: known to be malformed.
        self._parsed: TTLCache[str, CertFacts | None] = TTLCache(maxsize=4096, ttl=300)

    def facts(self, original: OriginalRequest) -> CertFacts | None:
        if self.source == "attribute":
            value = original.client_cert
            if not value:
                return None
            try:
                facts = self._parsed[value]
            except KeyError:
                facts = self._parsed[value] = self._parse(value)
            if facts is None:
                raise InvalidRequestError("malformed client certificate", reason="client_cert_header_malformed")
            return facts
        if self.header is not None:
            return self.header.certificate(original.headers)
        return None

    def _parse(self, value: str) -> CertFacts | None:
        if len(value) > self.max_bytes:
            return None
        try:
            ders = parse_url_pem(value)
            return parse_cert_facts(ders[0], ca_depth=None, source="header")
        except (ValueError, UnicodeError):
            return None


_runtime: weakref.WeakKeyDictionary[GatewayState, dict[str, _Certs]] = weakref.WeakKeyDictionary()


def _certs(state: GatewayState, mode: Mode) -> _Certs:
    per_state = _runtime.get(state)
    if per_state is None:
        per_state = _runtime[state] = {}
    certs = per_state.get(mode)
    if certs is None:
        front = front_config(state, mode)
        certs = per_state[mode] = _Certs(getattr(front, "client_cert", DecisionCertSource(source="none")))
    return certs


def _peer_cert(state: GatewayState, facts: CertFacts | None, authenticates: bool) -> PeerCertificate | None:
    """The same checks (dates, usage, chain depth, CRL) as a front-proxy certificate on the proxy."""
    if facts is None:
        return None
    try:
        return state.client_certs.checker.check(facts)
    except InvalidTokenError as exc:
        if authenticates:
            raise
        raise ClientCertificateRefusedError(exc.description, reason=exc.reason) from None


def _from_response(resp: web.Response, reason: str | None, route_id: str | None) -> Verdict:
    body = resp.body if isinstance(resp.body, bytes) else b""
    return Verdict(False, resp.status, tuple(resp.headers.items()), body, reason=reason, route_id=route_id)


def _removals(original: OriginalRequest, forwards: Callable[[str], bool]) -> tuple[str, ...]:
    """Names of the client's headers the proxy would not forward (identity, override, credentials
    unless the route forwards them...), for the calling proxy to remove."""
    seen: dict[str, None] = {}
    for name in original.headers:
        low = name.lower()
        if low not in _PROXY_OWNED and low not in seen and not forwards(low):
            seen[low] = None
    return tuple(seen)


async def check(
    state: GatewayState,
    original: OriginalRequest,
    observer: Observer | None = None,
    *,
    remaining_s: float | None = None,
    fapi_id: str | None = None,
) -> Verdict:
    """The proxy's decision on ``original``, as a ``Verdict``. Never raises (but CancelledError).

    ``observer``: count and log it like a proxied request (with its mode). ``remaining_s``: the
    caller's own deadline, when it sent one (a gRPC deadline); the front's ``deadline_s`` otherwise.
    ``fapi_id``: the interaction id the front already took from ``original.headers`` (one made
    once per check, not twice)."""
    started = time.perf_counter()
    if fapi_id is None:
        fapi_id = interaction_id(original.headers)
    p = Progress()
    status: int = 500
    reason: str | None = "internal"
    state.in_flight += 1
    state.metrics.in_flight.inc()
    try:
        front = front_config(state, original.mode)
        try:
            deadline = front.deadline_s if remaining_s is None else max(0.0, min(front.deadline_s, remaining_s))
            async with asyncio.timeout(deadline):
                verdict = await _decide(state, original, p, fapi_id)
        except TimeoutError:
            # Not decided in time: refused, never allowed (the caller's own timeout may be shorter).
            raise DependencyError("decision deadline exceeded", reason="decision_timeout") from None
        status, reason = verdict.status, verdict.reason
        return verdict
    except GatewayError as exc:
        status, reason = exc.status, exc.reason
        return _from_response(refusal_response(exc, p, fapi_id), exc.reason, p.route_id)
    except asyncio.CancelledError:
        status, reason = CLIENT_CLOSED, "client_closed"
        raise
    except Exception:
        # A bug, not a refusal: a 500 denial (fail closed); the traceback goes to the log only.
        log.exception("decision: internal error (mode %s, x-fapi-interaction-id %s)", original.mode, fapi_id)
        status, reason = 500, "internal"
        return _from_response(error_response(GatewayError("internal error"), p.challenge, fapi_id), "internal",
                              p.route_id)
    finally:
        state.in_flight -= 1
        state.metrics.in_flight.dec()
        if p.auth_s is None and p.t_auth is not None:
            p.auth_s = time.perf_counter() - p.t_auth
        if observer is not None:
            observer.finished(
                original, started=started, route_id=p.route_id, status=status, reason=reason,
                decision=p.decision, interaction_id=fapi_id, auth_s=p.auth_s, mode=original.mode,
                refused_token=p.refused_token,
                limit=p.limit,
            )


async def _decide(state: GatewayState, original: OriginalRequest, p: Progress, fapi_id: str) -> Verdict:
    check_method(original.method)
    if original.scheme not in _SCHEMES:
        raise InvalidRequestError("invalid scheme", reason="bad_host")
    certs = _certs(state, original.mode)
    # Parsed before routing like the proxy's handshake certificate; checked with the route's 401/403.
    facts = certs.facts(original)
    if certs.header is None:
        # A certificate header the client sent is never read here (the front's attribute is), and
        # is removed toward the upstream; counted as the proxy counts it from untrusted peers.
        for name in CERT_HEADERS:
            if name in original.headers:
                state.metrics.front_proxy_cert_dropped(name)
                break
    ok = await authorize(
        state, original, p, fapi_id, trusted=False, scheme=original.scheme, sni=original.sni,
        peer_cert=lambda authenticates: _peer_cert(state, facts, authenticates),
    )
    if isinstance(ok, web.Response):
        return _from_response(ok, None, p.route_id)
    decision, rt = ok.decision, ok.rt
    # HTTP message signatures need the body and the response, which a front never shows us.
    refusal = decision_refusal(rt.route.config)
    if refusal is not None:
        raise refusal
    add = [*decision.upstream_headers]
    cert_header = state.client_certs.upstream_header(ok.auth_req.peer_cert)
    if cert_header is not None:
        add.append(cert_header)
    add.append(("x-fapi-interaction-id", fapi_id))
    response = [("x-fapi-interaction-id", fapi_id), *decision.response_headers]
    if p.cors_origin is not None and rt.cors is not None:
        cors_headers = CIMultiDict[str]()
        rt.cors.add_response_headers(cors_headers, p.cors_origin)
        response.extend(cors_headers.items())
    added = {name.lower() for name, _ in add}
    return Verdict(
        True, 200, tuple(response), upstream_add=tuple(add),
        # A name we set is overwritten by the proxy (all its values), never also removed: a proxy
        # that removes after adding would drop our value.
        upstream_remove=tuple(n for n in _removals(original, rt.headers.forwards) if n not in added),
        route_id=p.route_id,
    )
