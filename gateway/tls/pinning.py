"""Registered self-signed client certificates authenticate themselves, never what they sign.

RFC 8705 §2.2 ``self_signed_tls_client_auth`` registers one certificate per client: the gateway
must accept exactly that certificate. Python's ``ssl`` can only let it through as a trust anchor,
and a trust anchor can, in OpenSSL's eyes, be an issuer. ``gateway.tls.anchors`` refuses
registrations that could issue and the listener verifies with ``VERIFY_X509_STRICT``; this check
is the last layer and states the rule directly: after the handshake, a chain that ends at a
registration must be that registration (the leaf's own DER, by its x5t#S256).

The chain is the one OpenSSL verified. A resumed session has none (OpenSSL does not verify
again), so there the chain the client presented (kept in the session) is checked instead: no
certificate in it may be a registration or be signed by one. The verdict is computed once per
connection, against the registrations of the context that connection was made with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from ..model import sha256_b64url
from .checks import CertFacts

__all__ = ("NO_PINS", "Pins", "pin_violation")


class Pins:
    """The registrations one listener context trusts: thumbprints, and certificates by subject."""

    __slots__ = ("_by_subject", "x5ts")

    def __init__(self, ders: Mapping[str, bytes]) -> None:
        """``ders``: x5t#S256 -> DER, as ``TrustAnchorSet.all()`` gives them."""
        self.x5ts = frozenset(ders)
        by_subject: dict[x509.Name, list[x509.Certificate]] = {}
        for der in ders.values():
            cert = x509.load_der_x509_certificate(der)
            by_subject.setdefault(cert.subject, []).append(cert)
        self._by_subject = {name: tuple(certs) for name, certs in by_subject.items()}

    def __bool__(self) -> bool:
        return bool(self.x5ts)

    def signed(self, cert: x509.Certificate) -> bool:
        """True when a registration's key signed ``cert`` (names matched first: cheap for others)."""
        for pin in self._by_subject.get(cert.issuer, ()):
            try:
                cert.verify_directly_issued_by(pin)
            except (InvalidSignature, ValueError, TypeError):
                continue
            return True
        return False


NO_PINS = Pins({})


def pin_violation(facts: CertFacts, pins: Pins, presented: Callable[[], Sequence[bytes]]) -> str | None:
    """The refusal reason when ``facts`` (from our handshake) lean on a registration without being
    it, else None. ``presented``: the client's chain, leaf first (asked only for a resumed session)."""
    if not pins or facts.peer.source != "tls":
        return None
    if facts.peer.x5t_s256 in pins.x5ts:
        return None  # the registration itself: the leaf is its own (and only) anchor
    if facts.anchor_x5t is not None:
        return "client_cert_not_pinned" if facts.anchor_x5t in pins.x5ts else None
    try:
        chain = [x509.load_der_x509_certificate(der) for der in presented()]
    except ValueError:
        chain = []
    if not chain:
        return "client_cert_chain_unknown"  # nothing to decide on: refuse rather than guess
    for cert in chain:
        if pins.signed(cert) or sha256_b64url(cert.public_bytes(Encoding.DER)) in pins.x5ts:
            return "client_cert_not_pinned"
    return None

