"""The verified client certificate toward the upstream, in the configured header and format.

The header name is always in ``client_certs.strip_headers``, so the only copy the upstream sees
is ours (MTLS-13). Rendering is cached by thumbprint (a client's requests all carry the same
cert) in a size-bounded dict; the value is a pure function of the DER, so it never goes stale.
"""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..config.mtls import ClientCertConfig, UpstreamCertFormat
from ..model import PeerCertificate

__all__ = ("render_upstream_cert", "upstream_cert_header")

_MAX_RENDERED = 4096
_rendered: dict[tuple[str, str, bool], str | None] = {}


def _pem(der: bytes) -> str:
    return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM).decode("ascii")


def render_upstream_cert(fmt: UpstreamCertFormat, peer: PeerCertificate) -> str | None:
    """The header value, or None when ``fmt`` needs the DER and only the thumbprint is known."""
    if fmt == "x5t_s256":
        return peer.x5t_s256
    if not peer.der:
        # A Hash-only XFCC from the front proxy: only the thumbprint is known.
        if fmt != "xfcc":
            return None
        padded = peer.x5t_s256 + "=" * (-len(peer.x5t_s256) % 4)
        return "Hash=" + base64.urlsafe_b64decode(padded).hex()
    if fmt == "rfc9440":
        return ":" + base64.b64encode(peer.der).decode("ascii") + ":"
    if fmt == "pem_urlencoded":
        return quote(_pem(peer.der), safe="")
    # Envoy XFCC: Hash is the hex SHA-256 of the DER; Cert the url-encoded PEM, quoted.
    return f'Hash={hashlib.sha256(peer.der).hexdigest()};Cert="{quote(_pem(peer.der), safe="")}"'


def upstream_cert_header(cfg: ClientCertConfig, peer: PeerCertificate | None) -> tuple[str, str] | None:
    """``(header, value)`` to add to the upstream request, or None (not configured / no cert)."""
    forward = cfg.forward
    if forward is None or peer is None:
        return None
    key = (forward.format, peer.x5t_s256, bool(peer.der))
    try:
        value = _rendered[key]
    except KeyError:
        if len(_rendered) >= _MAX_RENDERED:
            _rendered.clear()
        value = _rendered[key] = render_upstream_cert(forward.format, peer)
    return (forward.header, value) if value is not None else None
