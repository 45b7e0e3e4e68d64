"""``client_certs:`` — where client certificates come from besides our own handshake (issue: mTLS).

* ``front_proxy``: a TLS-terminating proxy in front of us forwards the client certificate in a
  header (RFC 9440, Envoy XFCC, NGINX, AWS ALB...). Honoured only from the configured peers.
* ``self_signed``: ``self_signed_tls_client_auth`` certificates (RFC 8705 §2.2) loaded as trust
  anchors from a directory and from client JWKS documents (``x5c``).
* ``crl_files`` (+ ``on_stale_crl``), ``max_chain_depth``, ``require_client_auth_usage``,
  ``x509_strict``: checks on every certificate.
* ``forward``: send the verified certificate to the upstream in a header of our choosing.
* ``strip_headers``: identity headers removed from every request (a client must never speak for
  another identity toward the upstream, RFC 9700 §4.13).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, ValidationInfo, model_validator

from .base import Cidr, FilePath, Model, check_files, resolve_path

__all__ = (
    "DEFAULT_STRIP_HEADERS",
    "ClientCertConfig",
    "ForwardCertConfig",
    "FrontProxyConfig",
    "FrontProxyFormat",
    "SelfSignedAnchorsConfig",
    "TrustedProxyIdentity",
    "UpstreamCertFormat",
)

# How a front proxy encodes the client certificate:
#   rfc9440  ``Client-Cert: :<base64 DER>:`` (+ ``Client-Cert-Chain``), RFC 9440 §2
#   xfcc     Envoy ``X-Forwarded-Client-Cert: Hash=<hex>;Cert="<url-encoded PEM>"``
#   nginx    ``$ssl_client_escaped_cert`` (url-encoded PEM)
#   pem      PEM text (newlines folded to spaces/tabs, as ``$ssl_client_cert`` does)
#   der_b64  base64 of the DER
#   aws_alb  ``X-Amzn-Mtls-Clientcert``: url-encoded PEM, leaf first then the chain
#   traefik  ``X-Forwarded-Tls-Client-Cert`` (passTLSClientCert ``pem: true``): base64 DER per
#            certificate (PEM without armour or newlines), comma-separated, leaf first;
#            URL-escaped by Traefik 2, not by Traefik 3
FrontProxyFormat = Literal["rfc9440", "xfcc", "nginx", "pem", "der_b64", "aws_alb", "traefik"]

# How the verified certificate is sent upstream:
#   xfcc       ``Hash=<hex sha256>;Cert="<url-encoded PEM>"``
#   rfc9440    ``:<base64 DER>:``
#   pem_urlencoded  url-encoded PEM (``$ssl_client_escaped_cert`` style)
#   x5t_s256   the RFC 8705 thumbprint only
UpstreamCertFormat = Literal["xfcc", "rfc9440", "pem_urlencoded", "x5t_s256"]

_DEFAULT_FRONT_HEADER: dict[str, str] = {
    "rfc9440": "Client-Cert",
    "xfcc": "X-Forwarded-Client-Cert",
    "nginx": "X-SSL-Client-Cert",
    "pem": "X-SSL-Client-Cert",
    "der_b64": "X-Client-Cert",
    "aws_alb": "X-Amzn-Mtls-Clientcert",
    "traefik": "X-Forwarded-Tls-Client-Cert",
}

# Headers that carry a client or user identity. Client-sent copies never reach the upstream.
DEFAULT_STRIP_HEADERS: tuple[str, ...] = (
    # client certificate
    "X-Forwarded-Client-Cert",
    "Client-Cert",
    "Client-Cert-Chain",
    "X-Client-Cert",
    "X-Client-Verify",
    "X-Client-DN",
    "X-SSL-Client-Cert",
    "X-SSL-Client-Verify",
    "X-SSL-Client-S-DN",
    "X-SSL-Client-I-DN",
    "X-SSL-Client-Serial",
    "X-SSL-Client-Fingerprint",
    "X-SSL-Client-Escaped-Cert",
    "Ssl-Client-Cert",
    "Ssl-Client-Verify",
    "X-Forwarded-Tls-Client-Cert",
    "X-Forwarded-Tls-Client-Cert-Info",
    "X-Amzn-Mtls-Clientcert",
    "X-Amzn-Mtls-Clientcert-Leaf",
    "X-Amzn-Mtls-Clientcert-Serial-Number",
    "X-Amzn-Mtls-Clientcert-Issuer",
    "X-Amzn-Mtls-Clientcert-Subject",
    "X-Amzn-Mtls-Clientcert-Validity",
    "X-ARR-ClientCert",
    "X-WSO2-Client-Certificate",
    # user identity
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Groups",
    "X-Forwarded-Access-Token",
    "X-Remote-User",
    "X-Remote-Group",
    "Remote-User",
    "Remote-Groups",
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Auth-Request-Preferred-Username",
    "X-Auth-Request-Groups",
    "X-Auth-Request-Access-Token",
    "X-Userinfo",
    "X-User",
    "X-User-Id",
    "X-Authenticated-User",
    "X-Authenticated-Userid",
    "X-Consumer-Id",
    "X-Consumer-Username",
    "X-Credential-Identifier",
    "X-Client-Id",
    "X-Jwt-Assertion",
)

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")  # RFC 9110 §5.6.2 token
_X5T = re.compile(r"^[A-Za-z0-9_-]{43}$")


def _header_name(value: str) -> str:
    if not _HEADER_NAME.match(value):
        raise ValueError(f"not a valid header name: {value!r}")
    return value


def _directory(value: str, info: ValidationInfo) -> str:
    value = resolve_path(value, info)
    if check_files(info) and not Path(value).is_dir():
        raise ValueError(f"directory not found: {value}")
    return value


def _jwks_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme == "https" and parts.hostname:
        return value
    # Plain HTTP would let anyone on the path inject trust anchors; only loopback is tolerated.
    if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "::1", "localhost"):
        return value
    raise ValueError("must be an https:// URL (http:// only for 127.0.0.1/localhost)")


HeaderName = Annotated[str, AfterValidator(_header_name)]


class TrustedProxyIdentity(Model):
    """The front proxy's own TLS client certificate, by thumbprint (recommended) or by exact subject DN.

    ``x5t_s256`` pins one certificate (base64url SHA-256 of its DER, RFC 8705 §3.1; ``openssl x509 -in
    ingress.pem -outform DER | openssl dgst -sha256 -binary | basenc --base64url | tr -d =``). ``subject`` trusts
    any certificate with that DN that a ``listen.tls.client_ca`` CA issued (never a self-signed one:
    anyone can write any DN into those); it is logged as a warning at start-up, because every CA in
    ``client_ca`` can then mint the ingress's identity.
    """

    x5t_s256: str | None = None
    # RFC 4514 string as ``cryptography`` renders it, e.g. ``CN=ingress,O=Bank``.
    subject: str | None = None

    @model_validator(mode="after")
    def _one(self) -> TrustedProxyIdentity:
        if (self.x5t_s256 is None) == (self.subject is None):
            raise ValueError("set exactly one of x5t_s256 or subject")
        if self.x5t_s256 is not None and not _X5T.match(self.x5t_s256):
            raise ValueError("x5t_s256 must be base64url SHA-256 without padding (43 characters)")
        return self


class FrontProxyConfig(Model):
    """A TLS-terminating proxy that forwards the client certificate in a header.

    A request is from the trusted proxy when its source address is in ``trusted_cidrs`` (if any
    are set) AND its own TLS client certificate matches ``trusted_identities`` (if any are set).
    """

    format: FrontProxyFormat = "rfc9440"
    # Default depends on the format (``Client-Cert`` for rfc9440, ``X-Forwarded-Client-Cert`` for xfcc...).
    header: HeaderName | None = None
    # RFC 9440 ``Client-Cert-Chain`` (only used with format rfc9440); enables the chain-depth check.
    chain_header: HeaderName | None = None
    trusted_cidrs: tuple[Cidr, ...] = ()
    trusted_identities: tuple[TrustedProxyIdentity, ...] = ()
    max_header_bytes: Annotated[int, Field(ge=1024, le=262144)] = 32768

    @model_validator(mode="after")
    def _trust_and_defaults(self) -> FrontProxyConfig:
        if not self.trusted_cidrs and not self.trusted_identities:
            raise ValueError(
                "set trusted_cidrs and/or trusted_identities: the header is honoured only from the proxy"
            )
        if self.header is None:
            object.__setattr__(self, "header", _DEFAULT_FRONT_HEADER[self.format])
        if self.chain_header is not None and self.format != "rfc9440":
            raise ValueError("chain_header is only used with format: rfc9440")
        return self

    @property
    def header_name(self) -> str:
        return self.header or _DEFAULT_FRONT_HEADER[self.format]


class SelfSignedAnchorsConfig(Model):
    """Registered self-signed client certificates (RFC 8705 §2.2), trusted for our handshake."""

    # Every *.pem / *.crt file in it (each may hold several certificates).
    directory: Annotated[str, AfterValidator(_directory)] | None = None
    # Client JWKS documents; the first certificate of each key's ``x5c`` is an anchor.
    jwks_urls: tuple[Annotated[str, AfterValidator(_jwks_url)], ...] = ()
    refresh_interval_s: Annotated[float, Field(ge=1, le=86400)] = 300.0
    fetch_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    # CA bundle for https JWKS URLs (default: the system trust store).
    jwks_ca: FilePath | None = None
    max_anchors: Annotated[int, Field(ge=1, le=100000)] = 10000
    max_jwks_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 1024 * 1024

    @model_validator(mode="after")
    def _some_source(self) -> SelfSignedAnchorsConfig:
        if self.directory is None and not self.jwks_urls:
            raise ValueError("set directory and/or jwks_urls")
        return self


class ForwardCertConfig(Model):
    """Send the verified client certificate upstream (any client-sent copy is stripped first)."""

    header: HeaderName = "X-Forwarded-Client-Cert"
    format: UpstreamCertFormat = "xfcc"


class ClientCertConfig(Model):
    front_proxy: FrontProxyConfig | None = None
    self_signed: SelfSignedAnchorsConfig | None = None
    # PEM (one or more CRLs) or DER files; reloaded when they change; revoked certs are refused.
    crl_files: tuple[FilePath, ...] = ()
    # A certificate whose issuer's CRL is past nextUpdate: refuse (503) or warn (accept, logged).
    on_stale_crl: Literal["refuse", "warn"] = "refuse"
    # How often certificate, key, CA bundle, CRL and anchor-directory files are checked for changes.
    watch_interval_s: Annotated[float, Field(ge=0.5, le=3600)] = 5.0
    # CA certificates allowed above the leaf (intermediates + root). 0: only directly trusted certs.
    max_chain_depth: Annotated[int, Field(ge=0, le=16)] = 4
    # When a certificate has ExtendedKeyUsage, it must allow clientAuth (and KeyUsage digitalSignature).
    require_client_auth_usage: bool = True
    # OpenSSL's VERIFY_X509_STRICT for client certificates (issuers must say cA=TRUE, ...). false only
    # for a legacy client PKI that fails it; registered self-signed certificates stay pinned either way.
    x509_strict: bool = True
    forward: ForwardCertConfig | None = None
    # Replaces the default list when set; ``extra_strip_headers`` adds to it. The front-proxy and
    # forward headers are always added (see the validator), so they can never be client-supplied.
    strip_headers: tuple[HeaderName, ...] = DEFAULT_STRIP_HEADERS
    extra_strip_headers: tuple[HeaderName, ...] = ()

    @model_validator(mode="after")
    def _complete_strip_list(self) -> ClientCertConfig:
        names = list(self.strip_headers) + list(self.extra_strip_headers)
        if self.front_proxy is not None:
            names.append(self.front_proxy.header_name)
            if self.front_proxy.chain_header:
                names.append(self.front_proxy.chain_header)
        if self.forward is not None:
            names.append(self.forward.header)
        seen: dict[str, str] = {}
        for name in names:
            seen.setdefault(name.lower(), name)
        object.__setattr__(self, "strip_headers", tuple(seen.values()))
        return self

    @property
    def has_front_proxy(self) -> bool:
        return self.front_proxy is not None
