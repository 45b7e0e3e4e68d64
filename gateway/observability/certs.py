"""Certificate expiry as metrics (issues #19, #21): the listener's certificate and every CA bundle.

    gateway_certificate_not_after_timestamp_seconds{kind="listener", file="/etc/gateway/tls/tls.crt"}
    gateway_certificate_not_after_timestamp_seconds{kind="client_ca", file="/etc/gateway/ca/ob.pem"}

One series per configured file: for a bundle, the earliest ``notAfter`` of its certificates (the
first one to break something). ``kind``: ``listener``, ``client_ca``, ``decision_listener``,
``decision_client_ca``, ``upstream_ca``, ``upstream_client_cert``, ``issuer_ca``,
``issuer_client_cert``, ``jwks_ca``. A file that cannot be read or holds no certificate shows as
``gateway_certificate_read_errors`` = 1 for that file rather than disappearing silently.

Read at scrape time from the running configuration's files, so a hot-reloaded certificate is seen
at once; each file is parsed again only when its size, inode or mtime changed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from cryptography import x509
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..config import GatewayConfig

__all__ = ("CertificateExpiry", "certificate_files")

_BEGIN = b"-----BEGIN CERTIFICATE-----"


def certificate_files(cfg: GatewayConfig) -> list[tuple[str, str]]:
    """``(kind, path)`` of every certificate or CA bundle the configuration names."""
    out: list[tuple[str, str]] = []
    tls = cfg.listen.tls
    if tls is not None:
        out.append(("listener", tls.cert))
        out.extend(("client_ca", ca) for ca in tls.client_ca)
    dtls = cfg.decision.tls
    if dtls is not None:
        out.append(("decision_listener", dtls.cert))
        out.extend(("decision_client_ca", ca) for ca in dtls.client_ca)
    for up in cfg.upstreams.values():
        if up.ca:
            out.append(("upstream_ca", up.ca))
        if up.client_cert:
            out.append(("upstream_client_cert", up.client_cert))
    for iss in cfg.issuers:
        if iss.ca:
            out.append(("issuer_ca", iss.ca))
        auth = iss.introspection.client_auth if iss.introspection else None
        if auth is not None and auth.tls_cert:
            out.append(("issuer_client_cert", auth.tls_cert))
    self_signed = cfg.client_certs.self_signed
    if self_signed is not None and self_signed.jwks_ca:
        out.append(("jwks_ca", self_signed.jwks_ca))
    return list(dict.fromkeys(out))  # a file named twice for one purpose is one series


def _earliest_not_after(path: str) -> float | None:
    """The earliest notAfter (Unix time) of the PEM certificates in ``path``; None: none found."""
    with open(path, "rb") as fh:
        data = fh.read(16 * 1024 * 1024)  # a CA bundle, not a disk image
    if _BEGIN not in data:
        return None
    certs = x509.load_pem_x509_certificates(data)
    return min(c.not_valid_after_utc.timestamp() for c in certs) if certs else None


class CertificateExpiry(Collector):
    """Prometheus collector over ``files()`` (re-evaluated at each scrape: reloads are followed)."""

    def __init__(self, files: Callable[[], list[tuple[str, str]]]) -> None:
        self.files = files
        # path -> (stat fingerprint, earliest notAfter or None when unreadable / no certificate)
        self._cache: dict[str, tuple[tuple[int, int, int, int], float | None]] = {}

    def _not_after(self, path: str) -> float | None:
        try:
            st = os.stat(path)
        except OSError:
            self._cache.pop(path, None)
            return None
        fp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == fp:
            return cached[1]
        try:
            value = _earliest_not_after(path)
        except (OSError, ValueError):
            value = None
        self._cache[path] = (fp, value)
        return value

    def collect(self) -> Iterator[Metric]:
        expiry = GaugeMetricFamily(
            "gateway_certificate_not_after_timestamp_seconds",
            "Earliest notAfter (Unix time) of the certificates in each configured certificate or CA "
            "bundle file, by kind (listener, client_ca, upstream_ca, issuer_ca, ...) and file.",
            labels=("kind", "file"),
        )
        errors = GaugeMetricFamily(
            "gateway_certificate_read_errors",
            "1 for a configured certificate file that cannot be read or holds no PEM certificate.",
            labels=("kind", "file"),
        )
        files = self.files()
        for kind, path in files:
            value = self._not_after(path)
            if value is None:
                errors.add_metric((kind, path), 1.0)
            else:
                expiry.add_metric((kind, path), value)
                errors.add_metric((kind, path), 0.0)
        live = {p for _, p in files}
        for stale in [p for p in self._cache if p not in live]:
            del self._cache[stale]
        yield expiry
        yield errors
