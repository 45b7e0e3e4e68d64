"""The listener's SSLContext, built in one place so that it can be rebuilt on reload.

FAPI profile (checklist TLS-01..03): TLS 1.2 limited to the suites that satisfy every FAPI
edition, i.e. FAPI 1.0 Advanced §8.5's list intersected with BCP 195 (RFC 9325): the ECDHE
AES-GCM suites; TLS 1.3 allowed with OpenSSL's defaults (all AEAD); TLS 1.0/1.1 refused; no
renegotiation; no compression.

Python's ``ssl`` only accepts a client certificate it can verify, so self-signed client
certificates (RFC 8705 §2.2) must be passed in as extra trust anchors. Client certificates are
verified with ``VERIFY_X509_STRICT`` (RFC 5280 rules OpenSSL otherwise relaxes): above all, an
issuer must carry ``basicConstraints cA=TRUE``, so a trust anchor without it (a registered
self-signed certificate, a v1 or keyCertSign-only legacy root) can never vouch for another
certificate. ``client_certs.x509_strict: false`` turns that off for legacy PKIs (logged).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable

from ..config import ListenerTls

__all__ = ("FAPI_TLS12_CIPHERS", "build_server_context")

# ECDSA variants only ever negotiate with an ECDSA server key, RSA ones with an RSA key.
FAPI_TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
    )
)

_VERIFY = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
}


def build_server_context(
    tls: ListenerTls, *, extra_trust_anchors_pem: Iterable[str] = (), x509_strict: bool = True
) -> ssl.SSLContext:
    """A server context for ``tls``; raises ``ssl.SSLError``/``OSError`` on unusable files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.profile == "fapi":
        ctx.set_ciphers(FAPI_TLS12_CIPHERS)
    else:
        ctx.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!MD5:!DSS")
    ctx.load_cert_chain(tls.cert, tls.key)
    ctx.verify_mode = _VERIFY[tls.client_auth]
    if tls.client_auth != "none":
        if x509_strict:
            ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        for bundle in tls.client_ca:
            ctx.load_verify_locations(cafile=bundle)
        anchors = "\n".join(extra_trust_anchors_pem)
        if anchors.strip():
            ctx.load_verify_locations(cadata=anchors)
    # Session tickets would let a resumed session skip client-cert verification against a
    # reloaded trust store; full handshakes keep the binding to the current anchors.
    ctx.options |= ssl.OP_NO_TICKET
    return ctx
