"""Checks on a client certificate, whichever way it arrived (RFC 5280 §4.1.2.5, §4.2.1.3, §4.2.1.12).

Where each check runs, and why:

* Chain to a configured CA or registered self-signed anchor: in the handshake (OpenSSL; RFC 8705
  §7.5 says to use an established X.509 library). OpenSSL also checks validity dates and, for a
  server, the ``ssl_client`` purpose (EKU clientAuth when present) there.
* Validity period, EKU/KeyUsage, chain depth, revocation: per request, against facts parsed once
  per connection (or once per header value). Per request because a keep-alive connection can
  outlive the certificate's notAfter or a CRL update, because a certificate from a front-proxy
  header never went through our handshake, and because Python's ``ssl`` has no verify-depth
  setting. The per-request cost is two float compares and a dict lookup.

Any failure refuses the request with 401 ``invalid_token`` (the certificate cannot back a
binding, and a connection we would have refused at the handshake must not get through either),
except an unknown revocation status (the issuer's CRL is past nextUpdate, ``gateway.tls.crl``):
503, not the client's fault, unless ``on_stale_crl: warn``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..errors import InvalidTokenError, RevocationDataStaleError
from ..model import PeerCertificate
from .crl import CrlStore

__all__ = ("CertFacts", "CertificateChecker", "parse_cert_facts")

log = logging.getLogger(__name__)

_REJECTED = "client certificate not accepted"
_STALE_LOG_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class CertFacts:
    """What the per-request checks need, extracted once from the certificate."""

    peer: PeerCertificate
    not_before: float
    not_after: float
    subject: str  # RFC 4514
    issuer: str  # RFC 4514, the CRL index key
    serial: int
    usage_ok: bool
    # CA certificates above the leaf in the verified (or forwarded) chain; None when unknown.
    ca_depth: int | None
    # x5t#S256 of the trust anchor our handshake's verified chain ended at (the leaf itself when it
    # is directly trusted); None when unknown or not from our handshake. See ``gateway.tls.pinning``.
    anchor_x5t: str | None = None


def _usage_ok(cert: x509.Certificate) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        allowed = (ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE)
        if not any(oid in eku for oid in allowed):
            return False
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    # A TLS client proves possession by signing (CertificateVerify).
    return ku.digital_signature


def parse_cert_facts(
    der: bytes,
    *,
    ca_depth: int | None,
    source: str = "tls",
    cert: x509.Certificate | None = None,
    anchor_x5t: str | None = None,
) -> CertFacts:
    """Parse a DER certificate (raises ``ValueError`` when it is not one)."""
    try:
        if cert is None:
            cert = x509.load_der_x509_certificate(der)
        peer = PeerCertificate(der=der, source="header" if source == "header" else "tls")
        return CertFacts(
            peer=peer,
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            serial=cert.serial_number,
            usage_ok=_usage_ok(cert),
            ca_depth=ca_depth,
            anchor_x5t=anchor_x5t,
        )
    except (x509.InvalidVersion, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        # cryptography's parse errors that are not ValueErrors (issue #14: a "v4" certificate in
        # a front proxy's header was a 500): the callers refuse on ValueError.
        raise ValueError("unusable certificate") from None


class CertificateChecker:
    """The per-request checks; configured once."""

    def __init__(
        self,
        *,
        crl: CrlStore | None = None,
        max_chain_depth: int = 4,
        require_client_auth_usage: bool = True,
        on_stale_crl: Literal["refuse", "warn"] = "refuse",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._crl = crl if crl is not None and crl.enabled else None
        self._max_depth = max_chain_depth
        self._require_usage = require_client_auth_usage
        self._refuse_stale = on_stale_crl == "refuse"
        self._clock = clock
        self._last_stale_log = -math.inf

    def check(self, facts: CertFacts) -> PeerCertificate:
        now = self._clock()
        if now < facts.not_before:
            raise InvalidTokenError(_REJECTED, reason="client_cert_not_yet_valid")
        if now > facts.not_after:
            raise InvalidTokenError(_REJECTED, reason="client_cert_expired")
        if self._require_usage and not facts.usage_ok:
            raise InvalidTokenError(_REJECTED, reason="client_cert_usage")
        if facts.ca_depth is not None and facts.ca_depth > self._max_depth:
            raise InvalidTokenError(_REJECTED, reason="client_cert_chain_too_long")
        if self._crl is not None:
            if self._crl.is_revoked(facts.issuer, facts.serial):
                raise InvalidTokenError(_REJECTED, reason="client_cert_revoked")
            if self._crl.is_stale(facts.issuer, now):
                self._stale(facts.issuer)
        return facts.peer

    def _stale(self, issuer: str) -> None:
        mono = time.monotonic()
        if mono - self._last_stale_log >= _STALE_LOG_EVERY_S:
            self._last_stale_log = mono
            log.log(logging.ERROR if self._refuse_stale else logging.WARNING,
                    "client certificate %s: its issuer's CRL is past nextUpdate (%s)",
                    "refused" if self._refuse_stale else "accepted (on_stale_crl: warn)", issuer)
        if self._refuse_stale:
            raise RevocationDataStaleError("revocation status unavailable")
