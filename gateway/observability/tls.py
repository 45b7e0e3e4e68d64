"""Count refused TLS handshakes by reason.

asyncio (and uvloop) swallow handshake failures: ``ssl.SSLError`` is an ``OSError``, which the
event loop only logs at debug level, and the application protocol is never told. The one hook
both loops share is ``SSLContext.wrap_bio``, which builds ``SSLContext.sslobject_class`` (a
documented, overridable attribute), so ``count_handshake_failures`` installs a subclass whose
``do_handshake`` reports each failure before re-raising it. The handshake itself is untouched.

Reasons are a closed set (a metric label), derived from OpenSSL's reason and verify codes.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Final

__all__ = ("classify_handshake_error", "count_handshake_failures")

# OpenSSL X509_V_ERR_* codes for the verify result of the client's certificate.
_VERIFY_CODES: Final[dict[int, str]] = {
    9: "client_cert_not_yet_valid",
    10: "client_cert_expired",
    2: "client_cert_unknown_ca",
    18: "client_cert_unknown_ca",  # self-signed, not a trust anchor
    19: "client_cert_unknown_ca",  # self-signed in chain
    20: "client_cert_unknown_ca",  # unable to get local issuer
    21: "client_cert_unknown_ca",
    23: "client_cert_revoked",
    26: "client_cert_bad_purpose",
    # Under VERIFY_X509_STRICT (gateway.tls.context): an issuer without cA=TRUE (e.g. a leaf minted
    # by a registered self-signed certificate), and the other RFC 5280 rules strict mode adds (80-94).
    37: "client_cert_invalid_ca",  # X509_V_ERR_INVALID_NON_CA
    79: "client_cert_invalid_ca",  # X509_V_ERR_INVALID_CA
    **dict.fromkeys(range(80, 95), "client_cert_not_rfc5280"),
}

_REASONS: Final[dict[str, str]] = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "client_cert_missing",
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "NO_CIPHERS_AVAILABLE": "no_shared_cipher",
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "WRONG_VERSION_NUMBER": "protocol_version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
    "VERSION_TOO_LOW": "protocol_version",
    "HTTP_REQUEST": "plain_http",
    "HTTPS_PROXY_REQUEST": "plain_http",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "no_shared_signature_algorithm",
    "NO_SHARED_SIGNATURE_ALGORITHMS": "no_shared_signature_algorithm",
    "UNSAFE_LEGACY_RENEGOTIATION_DISABLED": "renegotiation",
    "CERTIFICATE_VERIFY_FAILED": "client_cert_invalid",
}


def classify_handshake_error(exc: ssl.SSLError) -> str:
    """A stable, low-cardinality reason for a refused handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_CODES.get(exc.verify_code, "client_cert_invalid")
    reason = exc.reason or ""
    mapped = _REASONS.get(reason)
    if mapped is not None:
        return mapped
    if reason.startswith(("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")):
        # The client refused us (e.g. it does not trust our certificate).
        return "client_alert"
    return "other"


def count_handshake_failures(ctx: ssl.SSLContext, on_failure: Callable[[str], None]) -> None:
    """Make every server-side handshake on ``ctx`` that fails call ``on_failure(reason)``.

    Typical use: ``count_handshake_failures(ctx, metrics.tls_handshake_failed)``.
    """

    class _CountingSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise  # not a failure: the handshake needs more bytes
            except ssl.SSLError as exc:
                on_failure(classify_handshake_error(exc))
                raise

    ctx.sslobject_class = _CountingSSLObject
