"""``decision:`` — the decision service (issue #15): the proxy's auth decision served to another proxy.

    decision:
      enabled: true
      grpc:                       # Envoy / Istio ext_authz (envoy.service.auth.v3.Authorization/Check)
        host: 127.0.0.1
        port: 9191
        trusted_peers: [127.0.0.1/32, ::1/128]   # who may call Check (default: loopback only)
        trusted_identities: []    # with tls.client_auth: required, the caller's own certificate
        client_cert: {source: attribute}         # attributes.source.certificate (include_peer_certificate)
      http:                       # Envoy ext_authz HTTP, nginx auth_request, Traefik forwardAuth
        host: 127.0.0.1
        port: 9192
      tls: {cert: ..., key: ..., client_ca: [...], client_auth: required}   # same shape as listen.tls

Who the caller is: in every mode the caller is the proxy in front (Envoy, nginx, Traefik), and it
asserts the original request's method, host, path, headers and the client certificate. So a front
is believed only from ``trusted_peers`` (source address) AND, when set, ``trusted_identities`` (the
caller's own TLS client certificate on the decision listener: mTLS). Anyone else is refused (gRPC
``PERMISSION_DENIED``: Envoy then answers 403 to its client), never answered with an allow.
Defaults are loopback only: a sidecar Envoy in the same pod. On a pod network, use ``tls`` with
``client_auth: required`` and pin the Envoy's certificate, or at least a NetworkPolicy that lets
only the proxy's pods reach the port (reported at load as a risky setting otherwise).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator

from .base import Cidr, Model
from .mtls import FrontProxyFormat, HeaderName, TrustedProxyIdentity

if TYPE_CHECKING:
    from .schema import ListenerTls

__all__ = ("DecisionCertSource", "DecisionConfig", "DecisionFront", "DecisionGrpc", "DecisionHttp")

_LOOPBACK: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
Port = Annotated[int, Field(ge=0, le=65535)]


class DecisionCertSource(Model):
    """Where the front tells us the client certificate it verified.

    ``attribute``: gRPC only, ``CheckRequest.attributes.source.certificate`` (URL-encoded PEM; Envoy
    sends it with ``include_peer_certificate: true``). ``header``: a header of the original request
    that the front sets itself (Envoy ``X-Forwarded-Client-Cert`` with ``forward_client_cert_details:
    SANITIZE_SET``, nginx ``$ssl_client_escaped_cert``, Traefik ``X-Forwarded-Tls-Client-Cert``), in
    one of the front-proxy formats (``client_certs.front_proxy``). ``none``: no client certificates
    (mTLS-bound routes then refuse every token).
    """

    source: Literal["attribute", "header", "none"] = "attribute"
    header: HeaderName | None = None
    format: FrontProxyFormat = "xfcc"
    max_header_bytes: Annotated[int, Field(ge=1024, le=262144)] = 32768

    @model_validator(mode="after")
    def _header(self) -> DecisionCertSource:
        if self.source == "header" and self.header is None:
            raise ValueError("source: header needs header: (the name the front sets the certificate in)")
        if self.source != "header" and self.header is not None:
            raise ValueError("header: is only used with source: header")
        return self


class DecisionFront(Model):
    """What every front shares: where it listens and whom it believes."""

    host: str = "127.0.0.1"
    # Source addresses allowed to call (and so to assert the original request and certificate).
    trusted_peers: Annotated[tuple[Cidr, ...], Field(min_length=1)] = _LOOPBACK
    # The caller's own TLS certificate on the decision listener (needs decision.tls with client_auth).
    trusted_identities: tuple[TrustedProxyIdentity, ...] = ()
    # Bounds: calls handled at once (more wait in the transport / are refused by the server).
    max_concurrent: Annotated[int, Field(ge=1, le=100_000)] = 1024
    # Per call: a check that has not decided by then is refused (503), never allowed.
    deadline_s: Annotated[float, Field(gt=0, le=60)] = 5.0


class DecisionGrpc(DecisionFront):
    port: Port = 9191
    client_cert: DecisionCertSource = DecisionCertSource()
    # A CheckRequest is the original request's head: headers only (bodies are not sent by default).
    max_message_bytes: Annotated[int, Field(ge=4096, le=16 * 1024 * 1024)] = 256 * 1024


class DecisionHttp(DecisionFront):
    port: Port = 9192
    client_cert: DecisionCertSource = DecisionCertSource(source="none")

    @model_validator(mode="after")
    def _no_attribute(self) -> DecisionHttp:
        if self.client_cert.source == "attribute":
            raise ValueError("client_cert.source: attribute is gRPC only; use source: header")
        return self


class DecisionConfig(Model):
    # ``tls`` is a ``schema.ListenerTls`` (schema.py imports this module; it completes the model).
    enabled: bool = False
    grpc: DecisionGrpc | None = DecisionGrpc()
    http: DecisionHttp | None = None
    # TLS on the decision listeners (same shape as listen.tls); client_auth: required authenticates
    # the calling proxy by its certificate (pin it with trusted_identities).
    tls: ListenerTls | None = None

    @property
    def has_client_certs(self) -> bool:
        """Whether an enabled front passes client certificates (an mTLS-bound route can then work)."""
        return self.enabled and any(
            f is not None and f.client_cert.source != "none" for f in (self.grpc, self.http)
        )

    @model_validator(mode="after")
    def _fronts(self) -> DecisionConfig:
        if self.enabled and self.grpc is None and self.http is None:
            raise ValueError("enabled: true needs grpc: and/or http:")
        for name, front in (("grpc", self.grpc), ("http", self.http)):
            if front is not None and front.trusted_identities and (
                self.tls is None or self.tls.client_auth == "none"
            ):
                raise ValueError(
                    f"{name}.trusted_identities needs tls: with client_auth (the caller's certificate is "
                    "only known over mTLS)"
                )
        if self.grpc is not None and self.http is not None and self.grpc.port == self.http.port != 0 and (
            self.grpc.host == self.http.host
        ):
            raise ValueError("grpc.port and http.port are the same")
        return self

