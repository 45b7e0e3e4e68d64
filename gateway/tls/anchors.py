"""Registered self-signed client certificates as TLS trust anchors (RFC 8705 §2.2).

``self_signed_tls_client_auth`` clients register their certificate in their JWKS (``x5c``, RFC 7517
§4.7: standard base64 DER, the first one is the key's certificate) or the operator drops PEM
files in a directory. Python's ``ssl`` only accepts a client certificate it can verify, so each
one becomes a trust anchor of the listener's context.

A registration is a *pinned leaf*: it authenticates itself and nothing it signs. OpenSSL, though,
lets a trust anchor issue whenever ``X509_check_ca`` says it may: not only ``cA=TRUE``, but also a
certificate with no BasicConstraints and ``keyUsage: keyCertSign``, an X.509 v1 certificate, or a
Netscape CA certificate type. Any such registration would let its holder mint client certificates
with any subject that complete our handshake, so only self-signed v3 end-entity certificates that
cannot sign certificates are accepted (each refusal is logged with its reason). Two more layers
hold the line if one ever fails: the listener verifies with ``VERIFY_X509_STRICT`` (an issuer must
say ``cA=TRUE``), and after the handshake a chain that ends at a registration must be exactly that
registration (``gateway.tls.pinning``).
A JWKS that cannot be fetched keeps its last good certificates (a transient outage must not
lock clients out); a JWKS that is fetched and no longer lists a certificate removes it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import ssl
from collections.abc import Iterable
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from ..config.mtls import SelfSignedAnchorsConfig
from ..model import sha256_b64url
from .front_proxy import parse_pem_certs

__all__ = ("TrustAnchorSet", "registration_problem", "self_signed_leaf")

log = logging.getLogger(__name__)

_PEM_SUFFIXES = (".pem", ".crt", ".cer")
_MAX_FILE_BYTES = 1024 * 1024


# Netscape certificate type (legacy): with its CA bits OpenSSL treats the certificate as a CA.
_NETSCAPE_CERT_TYPE = x509.ObjectIdentifier("2.16.840.1.113730.1.1")


def registration_problem(der: bytes) -> tuple[x509.Certificate | None, str | None]:
    """(certificate, None) when ``der`` may be registered, else (certificate or None, why not)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None, "is not a certificate"
    if cert.issuer != cert.subject:
        return cert, "is not self-signed"
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError):
        return cert, "is not self-signed (its signature does not verify with its own key)"
    if cert.version != x509.Version.v3:
        return cert, "can act as a CA (X.509 v1: OpenSSL accepts v1 self-signed certificates as issuers)"
    exts = cert.extensions
    try:
        if exts.get_extension_for_class(x509.BasicConstraints).value.ca:
            return cert, "can act as a CA (basicConstraints cA=TRUE)"
    except x509.ExtensionNotFound:
        pass
    try:
        ku = exts.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        if ku.key_cert_sign or ku.crl_sign:
            return cert, "can act as a CA (keyUsage keyCertSign/cRLSign)"
    if any(ext.oid == _NETSCAPE_CERT_TYPE for ext in exts):
        return cert, "can act as a CA (Netscape certificate type)"
    return cert, None


def self_signed_leaf(der: bytes) -> x509.Certificate | None:
    """The certificate if it is a self-signed v3 end-entity certificate that cannot issue, else None."""
    cert, problem = registration_problem(der)
    return cert if problem is None else None


def _accept(ders: Iterable[bytes], where: str, into: dict[str, bytes]) -> None:
    for der in ders:
        _, problem = registration_problem(der)
        if problem is not None:
            # The thumbprint identifies the refused registration without printing the certificate.
            log.warning("%s: refused a self-signed client certificate registration (x5t#S256 %s) that %s",
                        where, sha256_b64url(der), problem)
            continue
        into[sha256_b64url(der)] = der


class TrustAnchorSet:
    """The current anchors, by thumbprint. ``pem()`` feeds ``build_server_context``."""

    def __init__(self, cfg: SelfSignedAnchorsConfig) -> None:
        self._cfg = cfg
        self._from_dir: dict[str, bytes] = {}
        self._from_jwks: dict[str, dict[str, bytes]] = {url: {} for url in cfg.jwks_urls}
        self._dir_stamp: tuple[tuple[str, int, int], ...] | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- the set --------------------------------------------------------------------------

    def all(self) -> dict[str, bytes]:
        merged: dict[str, bytes] = dict(self._from_dir)
        for per_url in self._from_jwks.values():
            merged.update(per_url)
        if len(merged) > self._cfg.max_anchors:
            log.error("more than %d self-signed anchors; keeping the first by thumbprint",
                      self._cfg.max_anchors)
            merged = dict(sorted(merged.items())[: self._cfg.max_anchors])
        return merged

    def fingerprint(self) -> frozenset[str]:
        return frozenset(self.all())

    def pem(self) -> list[str]:
        """One PEM string per anchor, in a stable order."""
        out = []
        for _, der in sorted(self.all().items()):
            cert = x509.load_der_x509_certificate(der)
            out.append(cert.public_bytes(Encoding.PEM).decode("ascii"))
        return out

    # -- directory ------------------------------------------------------------------------

    def _scan_stamp(self) -> tuple[tuple[str, int, int], ...]:
        directory = self._cfg.directory
        if directory is None:
            return ()
        entries = []
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return ()
        for name in names:
            if not name.lower().endswith(_PEM_SUFFIXES):
                continue
            try:
                st = os.stat(os.path.join(directory, name))
            except OSError:
                continue
            entries.append((name, st.st_mtime_ns, st.st_size))
        return tuple(entries)

    def load_directory(self) -> bool:
        """Blocking (run in a thread): reload the directory if its listing or files changed."""
        stamp = self._scan_stamp()
        if stamp == self._dir_stamp:
            return False
        found: dict[str, bytes] = {}
        directory = self._cfg.directory
        if directory is not None:
            for name, _, size in stamp:
                path = Path(directory, name)
                if size > _MAX_FILE_BYTES:
                    log.warning("%s: larger than %d bytes, skipped", path, _MAX_FILE_BYTES)
                    continue
                try:
                    ders = parse_pem_certs(path.read_text(encoding="ascii"))
                except (OSError, ValueError, binascii.Error) as exc:
                    log.warning("%s: not a PEM certificate file (%s), skipped", path, type(exc).__name__)
                    continue
                _accept(ders, str(path), found)
        self._dir_stamp = stamp
        changed = found != self._from_dir
        self._from_dir = found
        return changed

    # -- JWKS -----------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ctx = ssl.create_default_context(cafile=self._cfg.jwks_ca) if self._cfg.jwks_ca else True
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ctx, limit=8),
                timeout=aiohttp.ClientTimeout(total=self._cfg.fetch_timeout_s),
            )
        return self._session

    async def _fetch(self, url: str) -> dict[str, bytes] | None:
        try:
            async with self._client().get(url, headers={"Accept": "application/json"}) as resp:
                if resp.status != 200:
                    log.warning("client JWKS %s: HTTP %d, keeping the previous anchors", url, resp.status)
                    return None
                body = await resp.content.read(self._cfg.max_jwks_bytes + 1)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("client JWKS %s unreachable (%s), keeping the previous anchors",
                        url, type(exc).__name__)
            return None
        if len(body) > self._cfg.max_jwks_bytes:
            log.warning("client JWKS %s larger than %d bytes, ignored", url, self._cfg.max_jwks_bytes)
            return None
        try:
            doc = json.loads(body)
            keys = doc["keys"]
            if not isinstance(keys, list):
                raise TypeError("keys is not a list")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("client JWKS %s is not a JWK set (%s), keeping the previous anchors", url, exc)
            return None
        found: dict[str, bytes] = {}
        ders: list[bytes] = []
        for key in keys:
            x5c = key.get("x5c") if isinstance(key, dict) else None
            if not isinstance(x5c, list) or not x5c or not isinstance(x5c[0], str):
                continue
            try:
                ders.append(base64.b64decode(x5c[0], validate=True))  # RFC 7517 §4.7: not base64url
            except (binascii.Error, ValueError):
                log.warning("client JWKS %s: a key's x5c is not base64, skipped", url)
        _accept(ders, f"client JWKS {url}", found)
        return found

    async def refresh_jwks(self) -> bool:
        """Fetch every JWKS URL; True when the set of anchors changed."""
        if not self._from_jwks:
            return False
        results = await asyncio.gather(*(self._fetch(url) for url in self._from_jwks))
        changed = False
        for url, found in zip(list(self._from_jwks), results, strict=True):
            if found is not None and found != self._from_jwks[url]:
                self._from_jwks[url] = found
                changed = True
        return changed

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
