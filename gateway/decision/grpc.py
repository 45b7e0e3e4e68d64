"""Envoy / Istio ``ext_authz`` over gRPC: ``envoy.service.auth.v3.Authorization/Check`` (issue #15).

    Envoy (ext_authz filter, include_peer_certificate: true, failure_mode_allow: false)
        -- CheckRequest --> GrpcFront.Check -> OriginalRequest -> core.check -> Verdict
        <-- CheckResponse (OkHttpResponse | DeniedHttpResponse) --

The messages are the published ones (``xds-protos``); the server is ``grpc.aio`` on the gateway's
own event loop, so a check shares the proxy's caches, replay store, metrics and access log.

Who may call: ``decision.grpc.trusted_peers`` (source address) and, with ``decision.tls`` and
``client_auth: required``, ``trusted_identities`` (the caller's certificate). Anyone else gets
``PERMISSION_DENIED`` (Envoy then refuses its client: ``status_on_error``), never an allow: the
caller asserts the client's certificate and request, so an untrusted caller could assert anything.

Bounded: ``max_concurrent`` RPCs at once (beyond it gRPC answers RESOURCE_EXHAUSTED: Envoy
refuses), ``max_message_bytes`` per message, a deadline per check (``deadline_s`` or the caller's
own, whichever is sooner: past it the answer is a 503 denial).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

import grpc  # type: ignore[import-untyped]
from envoy.config.core.v3 import base_pb2  # type: ignore[import-untyped]
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc  # type: ignore[import-untyped]
from envoy.type.v3 import http_status_pb2  # type: ignore[import-untyped]
from google.rpc import code_pb2  # type: ignore[import-untyped]

from ..app import StateHolder
from ..config.decision import DecisionConfig, DecisionGrpc
from ..config.schema import ListenerTls
from ..model import b64url
from ..observability.observer import Observer
from ..tls.checks import parse_cert_facts
from ..tls.front_proxy import parse_pem_certs
from .core import OriginalRequest, Verdict, check

__all__ = ("GrpcFront", "check_response", "original_request")

log = logging.getLogger("gateway.decision")

_OVERWRITE: Final = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
# DeniedHttpResponse.status must be a code Envoy's HttpStatus enum defines (PGV defined_only).
_HTTP_CODES: Final = frozenset(http_status_pb2.StatusCode.values())
_LOG_EVERY_S: Final = 10.0


def original_request(req: Any, *, with_attribute_cert: bool) -> OriginalRequest:
    """``CheckRequest`` -> ``OriginalRequest``. ``header_map`` (Envoy's ``encode_raw_headers: true``)
    keeps repeated headers apart; the ``headers`` map joins them with commas (a repeated DPoP
    header then fails as one malformed proof: still refused)."""
    attrs = req.attributes
    http = attrs.request.http
    raw = http.header_map.headers
    headers: Sequence[tuple[str, str]]
    if raw:
        headers = [(h.key, h.raw_value.decode("latin-1") if h.raw_value else h.value) for h in raw]
    else:
        headers = list(http.headers.items())
    address = attrs.source.address.socket_address.address
    cert = attrs.source.certificate if with_attribute_cert else ""
    return OriginalRequest.build(
        "ext_authz_grpc",
        method=http.method,
        scheme=http.scheme,  # always sent by Envoy; missing -> refused (400), never guessed
        authority=http.host,
        raw_path=http.path,
        headers=headers,
        remote=address or None,
        client_cert=cert or None,
        sni=attrs.tls_session.sni or None,
    )


def _add_options(field: Any, pairs: tuple[tuple[str, str], ...]) -> None:
    # Filled in place: building HeaderValue/HeaderValueOption messages apart and handing them to
    # the constructor copies each one again (about half of this function's cost, measured).
    for k, v in pairs:
        opt = field.add()
        opt.header.key = k
        opt.header.value = v
        opt.append_action = _OVERWRITE


def check_response(v: Verdict) -> Any:
    """``Verdict`` -> ``CheckResponse``."""
    resp = external_auth_pb2.CheckResponse()
    if v.allowed:
        ok = resp.ok_response
        _add_options(ok.headers, v.upstream_add)
        ok.headers_to_remove.extend(v.upstream_remove)
        _add_options(ok.response_headers_to_add, v.response_headers)
        resp.status.SetInParent()  # code OK (0): present, as Envoy reads it
        return resp
    code = v.status if v.status in _HTTP_CODES else 403
    # The gRPC status only says "denied"; Envoy answers the client with denied_response.
    resp.status.code = (code_pb2.UNAUTHENTICATED if code == 401 else code_pb2.UNAVAILABLE if code == 503
                        else code_pb2.PERMISSION_DENIED)
    denied = resp.denied_response
    denied.status.code = code
    _add_options(denied.headers, tuple((k, val) for k, val in v.response_headers if k.lower() != "content-length"))
    denied.body = v.body.decode("utf-8", "replace")
    return resp


class _Callers:
    """Whether a gRPC peer may call Check: address in ``trusted_peers`` AND, when configured, its
    TLS certificate among ``trusted_identities`` (the same rules as ``client_certs.front_proxy``)."""

    def __init__(self, cfg: DecisionGrpc) -> None:
        self._nets = tuple(ipaddress.ip_network(c, strict=False) for c in cfg.trusted_peers)
        self._x5ts = frozenset(i.x5t_s256 for i in cfg.trusted_identities if i.x5t_s256)
        self._subjects = frozenset(i.subject for i in cfg.trusted_identities if i.subject)
        self._last_log = 0.0
        self._peers: dict[str, bool] = {}
        self._identities: dict[bytes, bool] = {}

    def allowed(self, context: Any) -> bool:
        if not self._address_ok(context.peer()):
            return False
        if not self._x5ts and not self._subjects:
            return True
        pems = context.auth_context().get("x509_pem_cert") or []
        if not pems:
            return False
        hit = self._identities.get(pems[0])
        if hit is None:
            if len(self._identities) >= 1024:
                self._identities.clear()
            hit = self._identities[pems[0]] = self._identity_ok(pems[0])
        return hit

    def _identity_ok(self, pem: bytes) -> bool:
        try:
            der = parse_pem_certs(pem.decode("ascii"))[0]
        except (ValueError, UnicodeError):
            return False
        if b64url(hashlib.sha256(der).digest()) in self._x5ts:
            return True
        if not self._subjects:
            return False
        facts = parse_cert_facts(der, ca_depth=None, source="header")
        # DN trust only for a CA-issued certificate (as for the front proxy): never a self-signed one.
        return facts.issuer != facts.subject and facts.subject in self._subjects

    def _address_ok(self, peer: str) -> bool:
        # A proxy keeps a few long-lived HTTP/2 connections: one parse per connection (bounded).
        hit = self._peers.get(peer)
        if hit is None:
            if len(self._peers) >= 4096:
                self._peers.clear()
            hit = self._peers[peer] = self._parse_peer(peer)
        return hit

    def _parse_peer(self, peer: str) -> bool:
        # grpc peer strings: "ipv4:127.0.0.1:5555", "ipv6:[::1]:5555", "unix:/path".
        kind, _, rest = peer.partition(":")
        if kind == "ipv4":
            host = rest.rsplit(":", 1)[0]
        elif kind == "ipv6":
            host = rest.rsplit(":", 1)[0].strip("[]")
        else:
            return False
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._nets)

    def refused(self, peer: str) -> None:
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY_S:
            self._last_log = now
            log.warning("decision: ext_authz call from untrusted peer %s refused", peer)


class _Servicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, holder: StateHolder, observer: Observer, cfg: DecisionGrpc,
                 decide: Callable[..., Awaitable[Verdict]] = check) -> None:
        self._holder = holder
        self._decide = decide  # core.check, or its traced wrapper (service.py)
        self._traced = decide is not check  # then the call's metadata may carry Envoy's trace context
        self._observer = observer
        self._callers = _Callers(cfg)
        self._attribute_cert = cfg.client_cert.source == "attribute"

    async def Check(self, request: Any, context: Any) -> Any:  # the RPC's name, as generated
        state = self._holder.current
        if not self._callers.allowed(context):
            peer = context.peer()
            self._callers.refused(peer)
            state.metrics.route(None, "ext_authz_grpc").finished("OTHER", 403, "decision_caller_untrusted", 0.0)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "caller not trusted")
        try:
            original = original_request(request, with_attribute_cert=self._attribute_cert)
        except (ValueError, UnicodeError):
            verdict = Verdict(False, 400, (("Cache-Control", "no-store"),), b'{"error":"invalid_request"}',
                              reason="decision_bad_check_request")
        else:
            kw = {"trace_carrier": dict(context.invocation_metadata() or ())} if self._traced else {}
            verdict = await self._decide(state, original, self._observer, remaining_s=context.time_remaining(), **kw)
        return check_response(verdict)


def _server_credentials(tls: ListenerTls) -> Any:
    """TLS for the decision listener; ``client_auth: required`` authenticates the calling proxy."""
    key, cert = Path(tls.key).read_bytes(), Path(tls.cert).read_bytes()
    roots = b"".join(Path(p).read_bytes() for p in tls.client_ca) or None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=roots, require_client_auth=tls.client_auth == "required"
    )


class GrpcFront:
    """The ext_authz gRPC listener; ``port`` is the bound port after ``start``."""

    def __init__(
        self, holder: StateHolder, observer: Observer, cfg: DecisionConfig, *, reuse_port: bool = False,
        decide: Callable[..., Awaitable[Verdict]] = check,
    ) -> None:
        assert cfg.grpc is not None
        self._decide = decide
        self._reuse_port = reuse_port
        self._cfg = cfg
        self._grpc = cfg.grpc
        self._holder = holder
        self._observer = observer
        self._server: Any = None
        self.port = 0

    async def start(self) -> None:
        g = self._grpc
        server = grpc.aio.server(
            maximum_concurrent_rpcs=g.max_concurrent,
            options=[
                ("grpc.max_receive_message_length", g.max_message_bytes),
                ("grpc.max_send_message_length", g.max_message_bytes),
                # gRPC sets SO_REUSEPORT by default: only worker processes of one gateway share the
                # port (as the public listener does), never an unrelated process.
                ("grpc.so_reuseport", 1 if self._reuse_port else 0),
                # Above max_concurrent: a check over the bound reaches the server and is shed at once
                # (RESOURCE_EXHAUSTED: Envoy answers 503), instead of waiting in the caller's
                # stream queue until its timeout (found by test_concurrent_checks_beyond_the_bound).
                ("grpc.max_concurrent_streams", min(2 * g.max_concurrent + 100, 100_000)),
                # Per-RPC bookkeeping nobody reads here: channelz call counters and trace nodes, and
                # HTTP/2 BDP pings (a proxy on the same host or pod network needs no window probing).
                ("grpc.enable_channelz", 0),
                ("grpc.http2.bdp_probe", 0),
            ],
        )
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
            _Servicer(self._holder, self._observer, g, self._decide), server
        )
        address = f"[{g.host}]:{g.port}" if ":" in g.host else f"{g.host}:{g.port}"
        tls = self._cfg.tls
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            creds = _server_credentials(tls)
            port = server.add_secure_port(address, creds)
        if not port:
            raise OSError(f"decision.grpc: cannot listen on {address}")
        await server.start()
        self._server = server
        self.port = int(port)
        log.info("decision: ext_authz gRPC listening on %s:%d%s", g.host, self.port,
                 " (TLS)" if tls is not None else "")

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def stop(self, grace_s: float | None = None) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace_s)
