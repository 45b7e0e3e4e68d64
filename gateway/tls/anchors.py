"""Registered self-signed client certificates as TLS trust anchors (RFC 8705 §2.2).

``self_signed_tls_client_auth`` clients register their certificate in their JWKS (``x5c``, RFC 7517
§4.7: standard base64 DER, the first one is the key's certificate) or the operator drops PEM
files in a directory. Python's ``ssl`` only accepts a client certificate it can verify, so each
one becomes a trust anchor of the listener's context.

Only self-signed, non-CA certificates are accepted as anchors: a CA certificate in a client's
JWKS would otherwise let that client mint certificates our handshake trusts.
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

__all__ = ("TrustAnchorSet", "self_signed_leaf")

log = logging.getLogger(__name__)

_PEM_SUFFIXES = (".pem", ".crt", ".cer")
_MAX_FILE_BYTES = 1024 * 1024


def self_signed_leaf(der: bytes) -> x509.Certificate | None:
    """The certificate if it is self-signed (signature checked) and not a CA, else None."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    if cert.issuer != cert.subject:
        return None
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        pass
    else:
        if bc.ca:
            return None
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError):
        return None
    return cert


def _accept(ders: Iterable[bytes], where: str, into: dict[str, bytes]) -> None:
    for der in ders:
        if self_signed_leaf(der) is None:
            log.warning("%s: skipped a certificate that is not a self-signed end-entity certificate", where)
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
