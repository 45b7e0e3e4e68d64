"""A CRL past its nextUpdate fails closed by default (issue #13 finding 20; RFC 5280 §5.1.2.5).

A stale CRL can no longer say whether a certificate was revoked since it was issued: by default the
gateway answers 503 (it cannot decide, like an unreachable AS) for certificates from that issuer;
``client_certs.on_stale_crl: warn`` accepts them and logs. Real CRLs signed by the test CA.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import aiohttp
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gateway.errors import DependencyError, InvalidTokenError
from gateway.model import sha256_b64url
from gateway.tls.checks import CertificateChecker, parse_cert_facts
from gateway.tls.crl import CrlStore
from tests.conftest import GatewayFactory, Upstream
from tests.conftest import Pki as GwPki

from .conftest import UTC, Pki, leaf_der, serial_of
from .test_e2e import AUD, ISSUER, Issuer

pytestmark = pytest.mark.timeout(60)


def crl_pem(ca: trustme.CA, serials: list[int], *, next_update: dt.datetime) -> bytes:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(next_update - dt.timedelta(days=1))
        .next_update(next_update)
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(
                next_update - dt.timedelta(days=1)).build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def outcome(checker: CertificateChecker, der: bytes) -> tuple[int, str] | None:
    try:
        checker.check(parse_cert_facts(der, ca_depth=1))
    except (InvalidTokenError, DependencyError) as exc:
        return exc.status, exc.reason
    return None


def test_stale_crl_refuses_its_issuers_certificates_by_default(mpki: Pki, tmp_path: Path) -> None:
    now = dt.datetime.now(UTC)
    crl = tmp_path / "ca.crl"
    crl.write_bytes(crl_pem(mpki.ca, [serial_of(mpki.client_b)], next_update=now + dt.timedelta(hours=1)))
    store = CrlStore([str(crl)])
    fresh = CertificateChecker(crl=store)
    assert outcome(fresh, leaf_der(mpki.client_a)) is None
    # The same CRL once its nextUpdate has passed (no file change needed: time moves on).
    later = (now + dt.timedelta(hours=2)).timestamp()
    stale = CertificateChecker(crl=store, clock=lambda: later)
    assert outcome(stale, leaf_der(mpki.client_a)) == (503, "client_cert_crl_stale")
    # A certificate the stale CRL does revoke is still refused as revoked (401).
    assert outcome(stale, leaf_der(mpki.client_b)) == (401, "client_cert_revoked")
    # Another issuer's certificates are not concerned by this issuer's CRL.
    other = trustme.CA().issue_cert("x@example.com")
    assert outcome(stale, leaf_der(other)) is None


def test_on_stale_crl_warn_accepts_and_logs(mpki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    crl = tmp_path / "ca.crl"
    crl.write_bytes(crl_pem(mpki.ca, [], next_update=dt.datetime.now(UTC) - dt.timedelta(minutes=1)))
    checker = CertificateChecker(crl=CrlStore([str(crl)]), on_stale_crl="warn")
    caplog.set_level(logging.WARNING)
    assert outcome(checker, leaf_der(mpki.client_a)) is None
    assert "nextUpdate" in caplog.text


def test_newest_crl_of_an_issuer_decides_freshness(mpki: Pki, tmp_path: Path) -> None:
    """An old CRL left next to its replacement does not make the issuer stale."""
    now = dt.datetime.now(UTC)
    old, new = tmp_path / "old.crl", tmp_path / "new.crl"
    old.write_bytes(crl_pem(mpki.ca, [], next_update=now - dt.timedelta(days=1)))
    new.write_bytes(crl_pem(mpki.ca, [], next_update=now + dt.timedelta(days=1)))
    checker = CertificateChecker(crl=CrlStore([str(old), str(new)]))
    assert outcome(checker, leaf_der(mpki.client_a)) is None


def _yaml(issuer: Issuer, upstream: Upstream, client_certs: str) -> str:
    return f"""
issuers:
  - name: bank-as
    issuer: {ISSUER}
    jwks_file: {issuer.jwks_file}
routes:
  - id: accounts
    match: {{path_prefix: /accounts}}
    upstream: {upstream.url}
    auth: {{issuers: [bank-as], audience: {AUD}, scopes: [accounts], sender_constraint: mtls}}
client_certs: {client_certs}
"""


async def test_stale_crl_through_the_gateway(
    gateway: GatewayFactory, pki: GwPki, upstream: Upstream, tmp_path: Path
) -> None:
    """Default: 503 + Retry-After, nothing reaches the upstream; ``warn``: the request goes through."""
    issuer = Issuer(tmp_path)
    crl = tmp_path / "ca.crl"
    crl.write_bytes(crl_pem(pki.ca, [], next_update=dt.datetime.now(UTC) - dt.timedelta(minutes=5)))
    token_a = issuer.token(sha256_b64url(pki.client_a.der))
    expected = {"": 503, ", on_stale_crl: refuse": 503, ", on_stale_crl: warn": 200}
    for setting, status in expected.items():
        gw = await gateway(_yaml(issuer, upstream, f"{{crl_files: [{crl}]{setting}}}"))
        async with aiohttp.ClientSession() as s, s.get(
            f"https://localhost:{gw.port}/accounts/1", ssl=pki.client_context(pki.client_a),
            headers={"Authorization": f"Bearer {token_a}"},
        ) as r:
            assert r.status == status, setting
            if status == 503:
                assert "Retry-After" in r.headers
                assert "WWW-Authenticate" not in r.headers
                assert json.loads(await r.read())["error"] == "client_cert_crl_stale"
    assert len(upstream.requests) == 1
