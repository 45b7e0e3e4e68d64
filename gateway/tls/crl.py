"""Certificate revocation lists from files (RFC 5280 §5), reloaded when the files change.

Revocation is checked per request (see ``gateway.tls.checks``), not in the handshake: OpenSSL's
CRL check fails every certificate whose issuer has no CRL loaded (self-signed anchors, bundles
without a CRL), its flags are fixed when the listener starts, and a connection kept alive past
a revocation would never be re-checked. A dict lookup per request costs next to nothing.

The files are operator-provided, so a CRL can only refuse more; a file that stops parsing keeps
the last good revocations (and is logged) rather than silently un-revoking everything.

Freshness (RFC 5280 §5.1.2.5): past its ``nextUpdate`` a CRL no longer tells whether a certificate
has been revoked since. By default (``client_certs.on_stale_crl: refuse``) a certificate whose
issuer's newest CRL is stale is refused with 503 + Retry-After: the gateway cannot decide, as when
the AS is down, and the client is not to blame. ``warn`` accepts it and logs (rate-limited); it
trades a revocation gap for availability. A CRL without ``nextUpdate`` (non-conforming) counts as
stale. There is no grace period, as in OpenSSL's own CRL check (``X509_V_ERR_CRL_HAS_EXPIRED``).
Staleness is judged per request against the clock, so a CRL goes stale without any file change.

What the gateway does not do, and why: it never fetches CRL distribution points (CDP) or asks
OCSP responders. Both would put a network call to the CA on the request path (latency, and an
outage of the CA's responder would become ours), would disclose which clients connect to the CA,
and OCSP stapling does not exist for client certificates. Revocation data is instead delivered as
files by the platform (a CronJob or sidecar that downloads the CDP's CRL, verifies it, and writes
it atomically, e.g. a Kubernetes Secret); the gateway reloads them on change, and a broken
delivery shows up as 503s with reason ``client_cert_crl_stale`` instead of silently accepting
revoked certificates. CRL signatures are not checked against the CA here (the files are the
operator's), and an issuer with no CRL file at all is not checked for revocation.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Sequence

from cryptography import x509

from ..tasks import stop_tasks

__all__ = ("CrlStore", "FileStamp", "file_stamp", "load_crls")

log = logging.getLogger(__name__)

_PEM_CRL = b"-----BEGIN X509 CRL-----"

# (mtime_ns, size, inode) of each file; a Kubernetes secret update swaps a symlink, which
# changes all three of the file it resolves to.
FileStamp = tuple[int, int, int] | None


def file_stamp(path: str) -> FileStamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def load_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    """Every CRL in a PEM file (several allowed) or the single CRL of a DER file."""
    if _PEM_CRL in data:
        return [x509.load_pem_x509_crl(block) for block in _pem_blocks(data)]
    return [x509.load_der_x509_crl(data)]


def _pem_blocks(data: bytes) -> list[bytes]:
    end = b"-----END X509 CRL-----"
    out: list[bytes] = []
    start = data.find(_PEM_CRL)
    while start != -1:
        stop = data.find(end, start)
        if stop == -1:
            raise ValueError("unterminated PEM CRL block")
        out.append(data[start : stop + len(end)] + b"\n")
        start = data.find(_PEM_CRL, stop)
    return out


def _index(paths: Sequence[str]) -> tuple[dict[str, frozenset[int]], dict[str, float]]:
    """issuer DN (RFC 4514) -> revoked serials, and issuer DN -> the newest of its CRLs' nextUpdate
    (-inf for a CRL without one: no freshness promise)."""
    revoked: dict[str, set[int]] = {}
    fresh_until: dict[str, float] = {}
    for path in paths:
        with open(path, "rb") as fh:
            crls = load_crls(fh.read())
        for crl in crls:
            issuer = crl.issuer.rfc4514_string()
            serials = revoked.setdefault(issuer, set())
            serials.update(entry.serial_number for entry in crl)
            nu = crl.next_update_utc
            ts = nu.timestamp() if nu is not None else -math.inf
            # An old CRL left next to its replacement must not make the issuer stale.
            fresh_until[issuer] = max(fresh_until.get(issuer, -math.inf), ts)
    return {k: frozenset(v) for k, v in revoked.items()}, fresh_until


def _log_stale(fresh_until: dict[str, float], now: float) -> None:
    stale = [issuer for issuer, until in fresh_until.items() if now > until]
    if stale:
        # Issuer DNs are CA names, not client identities.
        log.error("CRL past its nextUpdate for %d issuer(s) (%s): their certificates are refused "
                  "unless client_certs.on_stale_crl is warn", len(stale), "; ".join(sorted(stale)[:5]))


class CrlStore:
    """Revoked (issuer, serial) pairs from ``paths``. ``refresh()`` reloads changed files."""

    def __init__(self, paths: Sequence[str], *, interval_s: float = 5.0) -> None:
        self._paths = tuple(paths)
        self._interval_s = interval_s
        self._stamps = [file_stamp(p) for p in self._paths]
        # Start-up: an unreadable CRL is a configuration error, raised to the caller.
        self._revoked, self._fresh_until = _index(self._paths) if self._paths else ({}, {})
        _log_stale(self._fresh_until, time.time())
        self.generation = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._paths)

    def is_revoked(self, issuer: str, serial: int) -> bool:
        serials = self._revoked.get(issuer)
        return serials is not None and serial in serials

    def is_stale(self, issuer: str, now: float) -> bool:
        """True when ``issuer`` has CRLs and the newest is past its nextUpdate at ``now``."""
        until = self._fresh_until.get(issuer)
        return until is not None and now > until

    def refresh_sync(self) -> bool:
        """Reload if any file changed; True when the revocations were replaced."""
        stamps = [file_stamp(p) for p in self._paths]
        if stamps == self._stamps:
            return False
        try:
            revoked, fresh_until = _index(self._paths)
        except (OSError, ValueError) as exc:
            # Mid-rotation (half-written file) or a broken file: keep the last good set.
            log.error("CRL reload failed, keeping the previous revocations: %s", exc)
            return False
        self._stamps = stamps
        self._revoked, self._fresh_until = revoked, fresh_until
        self.generation += 1
        log.info("CRLs reloaded: %d issuers, %d revoked serials",
                 len(revoked), sum(len(v) for v in revoked.values()))
        _log_stale(fresh_until, time.time())
        return True

    async def refresh(self) -> bool:
        return await asyncio.to_thread(self.refresh_sync)

    async def start(self) -> None:
        if self._paths and self._task is None:
            self._task = asyncio.create_task(self._poll(), name="crl-reload")

    async def close(self) -> None:
        await stop_tasks(self._task)
        self._task = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.refresh()
            except Exception:  # never let the watcher die
                log.exception("CRL watcher error")
