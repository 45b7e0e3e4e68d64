"""Step 1 in one object: which client certificate a request carries, and what goes upstream.

    ClientCertificates(cfg)            built once from the whole config
      .listening_context               SSLContext for the public listener (hot-reloaded), or None
      .peer_certificate(request)       PeerCertificate | None, after every check (raises 400/401)
      .upstream_header(peer)           (name, value) to inject toward the upstream, or None
      .start() / .close()              reload watchers (TLS files, JWKS anchors, CRLs)

Source of the certificate (RFC 8705 §3, §6.5; RFC 9700 §4.13):
* the request comes from the configured trusted front proxy -> only its header counts (the TLS
  certificate on that connection is the proxy's own and is never taken for the client's);
* anyone else -> our own handshake; a certificate header they send is ignored, logged (rate
  limited) and reported through ``on_untrusted_header(header_name)`` for the metric
  ``gateway_untrusted_client_cert_headers_total{header}``; the proxy stage strips it.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from typing import Final

from aiohttp import web
from multidict import istr

from ..config.mtls import ClientCertConfig
from ..config.schema import GatewayConfig
from ..errors import ClientCertificateRefusedError, InvalidTokenError
from ..model import PeerCertificate
from .checks import CertFacts, CertificateChecker
from .crl import CrlStore
from .front_proxy import FrontProxy
from .peer import per_connection, presented_chain, tls_peer_facts
from .pinning import pin_violation
from .reload import ContextBuilder, TlsContextManager
from .upstream import upstream_cert_header

__all__ = ("CERT_HEADERS", "UNTRUSTED_HEADER_METRIC", "ClientCertificates")

log = logging.getLogger(__name__)

UNTRUSTED_HEADER_METRIC: Final = "gateway_untrusted_client_cert_headers_total"

# Certificate-carrying headers watched for on untrusted requests (a closed set: metric label).
CERT_HEADERS: Final = (
    "X-Forwarded-Client-Cert",
    "Client-Cert",
    "Client-Cert-Chain",
    "X-Client-Cert",
    "X-SSL-Client-Cert",
    "Ssl-Client-Cert",
    "X-Amzn-Mtls-Clientcert",
    "X-Forwarded-Tls-Client-Cert",
)

_LOG_EVERY_S = 10.0


class ClientCertificates:
    def __init__(
        self,
        cfg: GatewayConfig,
        *,
        on_untrusted_header: Callable[[str], None] | None = None,
        build_context: ContextBuilder | None = None,
    ) -> None:
        certs: ClientCertConfig = cfg.client_certs
        self._cfg = certs
        self.crl = CrlStore(certs.crl_files, interval_s=certs.watch_interval_s)
        self.checker = CertificateChecker(
            crl=self.crl,
            max_chain_depth=certs.max_chain_depth,
            require_client_auth_usage=certs.require_client_auth_usage,
            on_stale_crl=certs.on_stale_crl,
        )
        if certs.crl_files and certs.on_stale_crl == "warn":
            log.warning("client_certs.on_stale_crl is warn: certificates are accepted on CRLs past "
                        "their nextUpdate (revocations published since are missed)")
        self.front = FrontProxy(certs.front_proxy) if certs.front_proxy else None
        watched = list(CERT_HEADERS)
        if self.front is not None:
            watched.append(self.front.header)
            if self.front.chain_header:
                watched.append(self.front.chain_header)
        # istr: CIMultiDict lookups skip re-folding the case of the name.
        self._watched = tuple(istr(n) for n in dict.fromkeys(watched))
        self._on_untrusted = on_untrusted_header
        self._last_log = 0.0
        tls = cfg.listen.tls
        # Also without client auth: server certificate rotation still needs the reloader.
        self.tls = TlsContextManager(tls, certs, build=build_context) if tls is not None else None
        self._pinning = self.tls is not None and certs.self_signed is not None

    @property
    def listening_context(self) -> ssl.SSLContext | None:
        """For ``web.TCPSite(ssl_context=...)``; None when the listener is plain HTTP."""
        return self.tls.listening_context if self.tls is not None else None

    def peer_certificate(self, request: web.BaseRequest, *, authenticates: bool = True) -> PeerCertificate | None:
        """The client certificate to bind tokens to, or None. Raises 400 (malformed trusted header),
        503 (CRL past nextUpdate) or 401 ``invalid_token`` (expired, revoked, wrong usage, chain too
        long, not a registration's own), which is 403 on a route that does not ``authenticate``.

        A refused certificate is refused on every route, as the handshake would have refused it;
        a route without auth has no challenge for a 401, so it answers 403 (RFC 9110 §15.5.2/4)."""
        try:
            return self._peer_certificate(request)
        except InvalidTokenError as exc:
            if authenticates:
                raise
            raise ClientCertificateRefusedError(exc.description, reason=exc.reason) from None

    def _peer_certificate(self, request: web.BaseRequest) -> PeerCertificate | None:
        tls = tls_peer_facts(request)
        if tls is not None and self._pinning:
            # Before the front-proxy decision: the proxy's own certificate is held to it too.
            self._check_pinned(request, tls)
        front = self.front
        if front is not None and front.is_trusted(request.remote, tls):
            if tls is not None:
                # The proxy's own certificate passes the same checks: a revoked or expired ingress
                # certificate vouches for no one.
                self.checker.check(tls)
            facts = front.certificate(request.headers)
            return self.checker.check(facts) if facts is not None else None
        headers = request.headers
        for name in self._watched:
            if name in headers:
                self._untrusted(name, request.remote)
                break
        return self.checker.check(tls) if tls is not None else None

    def _check_pinned(self, request: web.BaseRequest, facts: CertFacts) -> None:
        tls = self.tls
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if tls is None or ssl_object is None:
            return  # no handshake of ours, so no facts either

        def verdict() -> str | None:
            return pin_violation(facts, tls.pins_for(ssl_object.context), lambda: presented_chain(ssl_object))

        reason = per_connection(ssl_object, "_gateway_pin_violation", verdict)
        if reason is not None:
            raise InvalidTokenError("client certificate not accepted", reason=reason)

    def _untrusted(self, header: str, remote: str | None) -> None:
        if self._on_untrusted is not None:
            self._on_untrusted(header)
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY_S:
            self._last_log = now
            log.warning("ignored client-certificate header %s from untrusted peer %s", header, remote)

    def upstream_header(self, peer: PeerCertificate | None) -> tuple[str, str] | None:
        return upstream_cert_header(self._cfg, peer)

    async def start(self) -> None:
        await self.crl.start()
        if self.tls is not None:
            await self.tls.start()

    async def close(self) -> None:
        if self.tls is not None:
            await self.tls.close()
        await self.crl.close()
