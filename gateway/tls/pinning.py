"""Registered self-signed client certificates authenticate themselves, never what they sign.

RFC 8705 §2.2 ``self_signed_tls_client_auth`` registers one certificate per client: the gateway
must accept exactly that certificate. Python's ``ssl`` can only let it through as a trust anchor,
and a trust anchor can, in OpenSSL's eyes, be an issuer. ``gateway.tls.anchors`` refuses
registrations that could issue and the listener verifies with ``VERIFY_X509_STRICT``; this check
is the last layer and states the rule directly: after the handshake, a verified chain that ends
at a registration must be that registration (the leaf's own DER, by its x5t#S256).

It runs per request on facts computed once per connection; with no registrations it is one
emptiness test.
"""

from __future__ import annotations

from ..errors import InvalidTokenError
from .checks import CertFacts

__all__ = ("check_pinned",)

_REJECTED = "client certificate not accepted"


def check_pinned(facts: CertFacts, pins: frozenset[str]) -> None:
    """Raise 401 ``invalid_token`` when ``facts`` (from our handshake) chain to a registration in
    ``pins`` without being it, or when the chain is unknown and the leaf is not a registration."""
    if not pins or facts.peer.source != "tls":
        return
    if facts.peer.x5t_s256 in pins:
        return  # the registration itself: the leaf is its own (and only) anchor
    if facts.anchor_x5t is None:
        # The TLS layer did not say where the chain ended: refuse rather than guess.
        raise InvalidTokenError(_REJECTED, reason="client_cert_chain_unknown")
    if facts.anchor_x5t in pins:
        raise InvalidTokenError(_REJECTED, reason="client_cert_not_pinned")
