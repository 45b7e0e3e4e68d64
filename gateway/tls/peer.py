"""The client certificate from our own TLS handshake (RFC 8705 §3: "from its TLS implementation layer").

``getpeercert(binary_form=True)`` is the leaf exactly as sent, so the RFC 8705 §3.1 thumbprint is
computed over those bytes (MTLS-10). The certificate cannot change during a connection (no
renegotiation, no post-handshake auth: MTLS-09), so it is parsed and hashed once per connection
and kept on the connection's ``SSLObject`` itself (an attribute; a ``WeakKeyDictionary`` if that
ever fails): it lives exactly as long as the connection, so the cache is bounded by the number of
open connections and needs no TTL.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, cast

from aiohttp import web

from ..errors import InvalidTokenError
from ..model import PeerCertificate, sha256_b64url
from .checks import CertFacts, parse_cert_facts

__all__ = ("peer_certificate", "per_connection", "presented_chain", "tls_peer_facts")

log = logging.getLogger(__name__)

# A connection without a client certificate is cached too (as None).
_ATTR = "_gateway_peer_facts"
_MISSING: Any = object()
_by_connection: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
T = TypeVar("T")
_ENCODING_DER = 2  # _ssl.ENCODING_DER (not exported by ``ssl``)


def _chain_ders(ssl_object: Any, name: str) -> list[bytes] | None:
    """``get_verified_chain``/``get_unverified_chain`` as DER (public from Python 3.13, on
    ``_sslobj`` before; 3.13 returns bytes, 3.10-3.12 ``_ssl.Certificate`` objects). None when
    the TLS layer cannot tell (e.g. no verified chain on a resumed session)."""
    getter = getattr(ssl_object, name, None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), name, None)
    if getter is None:
        return None
    try:
        chain = getter()
        return [c if isinstance(c, bytes) else c.public_bytes(_ENCODING_DER) for c in chain] if chain else None
    except (ValueError, AttributeError, TypeError):
        return None


def presented_chain(ssl_object: Any) -> list[bytes]:
    """The certificates the client sent, leaf first (kept in the session, so also when resumed)."""
    return _chain_ders(ssl_object, "get_unverified_chain") or []


def _chain(ssl_object: Any) -> tuple[int | None, str | None]:
    """(CA certificates above the leaf, x5t#S256 of the trust anchor) of the chain OpenSSL verified
    (Python has no verify depth); (None, None) when the TLS layer cannot tell."""
    chain = _chain_ders(ssl_object, "get_verified_chain")
    if not chain:
        return None, None
    return len(chain) - 1, sha256_b64url(chain[-1])


def per_connection(ssl_object: Any, attr: str, compute: Callable[[], T]) -> T:
    """``compute()`` once per TLS connection, kept on the connection's ``SSLObject``."""
    value: T = getattr(ssl_object, attr, _MISSING)
    if value is not _MISSING:
        return value
    memo = _by_connection.get(ssl_object)
    if memo is not None and attr in memo:
        return cast(T, memo[attr])
    value = compute()
    try:
        setattr(ssl_object, attr, value)
    except AttributeError:  # an SSL object with __slots__: fall back to the weak mapping
        _by_connection.setdefault(ssl_object, {})[attr] = value
    return value


def _facts_for(ssl_object: Any) -> CertFacts | None:
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    ca_depth, anchor_x5t = _chain(ssl_object)
    try:
        return parse_cert_facts(der, ca_depth=ca_depth, anchor_x5t=anchor_x5t)
    except ValueError:
        # OpenSSL accepted it but cryptography cannot parse it: refuse rather than guess.
        log.warning("client certificate from the handshake could not be parsed")
        raise InvalidTokenError("client certificate not accepted", reason="client_cert_unparseable") from None


def tls_peer_facts(request: web.BaseRequest) -> CertFacts | None:
    """Facts about the handshake's client certificate, computed once per connection."""
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    return per_connection(ssl_object, _ATTR, lambda: _facts_for(ssl_object))


def peer_certificate(request: web.BaseRequest) -> PeerCertificate | None:
    """The handshake's client certificate, unchecked. Prefer ``ClientCertificates.peer_certificate``."""
    facts = tls_peer_facts(request)
    return facts.peer if facts is not None else None
