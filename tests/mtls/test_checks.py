"""Certificate checks: validity, EKU, chain depth, CRL (issue 4 "Certificate checks"; MTLS-07 c)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from pathlib import Path

import aiohttp
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.errors import InvalidTokenError
from gateway.model import sha256_b64url
from gateway.tls.checks import CertificateChecker, parse_cert_facts
from gateway.tls.clientcerts import ClientCertificates
from gateway.tls.crl import CrlStore

from .conftest import (
    UTC,
    Pki,
    certs_app,
    connect,
    gateway_config,
    leaf_der,
    make_crl,
    make_self_signed,
    serial_of,
    serve,
)


def reason(checker: CertificateChecker, der: bytes, ca_depth: int | None = None) -> str | None:
    try:
        checker.check(parse_cert_facts(der, ca_depth=ca_depth))
    except InvalidTokenError as exc:
        assert exc.status == 401 and exc.error == "invalid_token"
        assert exc.description == "client certificate not accepted"
        return exc.reason
    return None


def test_validity_period(mpki: Pki) -> None:
    der = leaf_der(mpki.client_a)
    facts = parse_cert_facts(der, ca_depth=0)
    assert reason(CertificateChecker(), der) is None
    after = CertificateChecker(clock=lambda: facts.not_after + 1)
    before = CertificateChecker(clock=lambda: facts.not_before - 1)
    assert reason(after, der) == "client_cert_expired"
    assert reason(before, der) == "client_cert_not_yet_valid"


def test_extended_key_usage() -> None:
    server_only = make_self_signed("s", eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    client = make_self_signed("c", eku=(ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH))
    any_eku = make_self_signed("a", eku=(ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,))
    no_eku = make_self_signed("n", eku=None)
    checker = CertificateChecker()
    assert reason(checker, server_only.der) == "client_cert_usage"
    assert reason(checker, client.der) is None
    assert reason(checker, any_eku.der) is None
    assert reason(checker, no_eku.der) is None  # no extension: no restriction
    assert reason(CertificateChecker(require_client_auth_usage=False), server_only.der) is None


def test_chain_depth_limit(mpki: Pki) -> None:
    der = leaf_der(mpki.client_a)
    assert reason(CertificateChecker(max_chain_depth=1), der, ca_depth=1) is None
    assert reason(CertificateChecker(max_chain_depth=1), der, ca_depth=2) == "client_cert_chain_too_long"
    assert reason(CertificateChecker(max_chain_depth=0), der, ca_depth=None) is None  # unknown: OpenSSL's call


def test_crl_revokes_and_reloads(mpki: Pki, tmp_path: Path) -> None:
    crl_file = tmp_path / "ca.crl"
    crl_file.write_bytes(make_crl(mpki.ca, [12345]))
    store = CrlStore([str(crl_file)])
    checker = CertificateChecker(crl=store)
    assert reason(checker, leaf_der(mpki.client_a)) is None
    assert store.refresh_sync() is False

    crl_file.write_bytes(make_crl(mpki.ca, [serial_of(mpki.client_a)]) + make_crl(mpki.ca, [1]))
    os.utime(crl_file, ns=(1, 1))  # a different mtime even within the same clock tick
    assert store.refresh_sync() is True
    assert reason(checker, leaf_der(mpki.client_a)) == "client_cert_revoked"
    assert reason(checker, leaf_der(mpki.client_b)) is None
    # Another CA's certificate with the same serial is not revoked by this CA's CRL.
    other = trustme.CA()
    assert not store.is_revoked(
        parse_cert_facts(leaf_der(other.issue_cert("x@y")), ca_depth=0).issuer, serial_of(mpki.client_a)
    )

    # A broken file mid-rotation keeps the previous revocations.
    crl_file.write_bytes(b"-----BEGIN X509 CRL-----\ngarbage")
    assert store.refresh_sync() is False
    assert reason(checker, leaf_der(mpki.client_a)) == "client_cert_revoked"


def test_crl_der_file(mpki: Pki, tmp_path: Path) -> None:
    pem = make_crl(mpki.ca, [serial_of(mpki.client_b)])
    crl_file = tmp_path / "ca.der"
    crl_file.write_bytes(x509.load_pem_x509_crl(pem).public_bytes(Encoding.DER))
    checker = CertificateChecker(crl=CrlStore([str(crl_file)]))
    assert reason(checker, leaf_der(mpki.client_b)) == "client_cert_revoked"


def listen(mpki: Pki) -> dict[str, object]:
    return {"tls": {"cert": str(mpki.server_cert), "key": str(mpki.server_key),
                    "client_ca": [str(mpki.ca_file)], "client_auth": "optional"}}


async def test_revoked_certificate_refused_over_a_real_handshake(mpki: Pki, tmp_path: Path) -> None:
    """A CRL update applies to the next request, even on a connection opened before it."""
    crl_file = tmp_path / "ca.crl"
    crl_file.write_bytes(make_crl(mpki.ca, []))
    certs = ClientCertificates(gateway_config({"crl_files": [str(crl_file)]}, listen(mpki)))
    async with serve(certs_app(certs), certs.listening_context) as port:
        conn = await connect(port, mpki.client_ctx(mpki.client_a))
        status, body = await conn.get()
        assert status == 200 and json.loads(body)["x5t"] == sha256_b64url(leaf_der(mpki.client_a))

        crl_file.write_bytes(make_crl(mpki.ca, [serial_of(mpki.client_a)]))
        os.utime(crl_file, ns=(2, 2))
        assert await certs.crl.refresh()
        status, body = await conn.get()
        assert status == 401 and json.loads(body)["reason"] == "client_cert_revoked"
        await conn.close()
        conn = await connect(port, mpki.client_ctx(mpki.client_a))
        assert (await conn.get())[0] == 401
        await conn.close()
        conn = await connect(port, mpki.client_ctx(mpki.client_b))
        assert (await conn.get())[0] == 200
        await conn.close()


async def test_chain_depth_over_a_real_handshake(mpki: Pki, tmp_path: Path) -> None:
    """Leaf <- intermediate <- root: 2 CA certificates above the leaf (Python's ssl has no verify depth)."""
    intermediate = mpki.ca.create_child_ca()
    deep = intermediate.issue_cert("deep@example.com")
    for depth, expected in ((2, 200), (1, 401)):
        certs = ClientCertificates(gateway_config({"max_chain_depth": depth}, listen(mpki)))
        async with serve(certs_app(certs), certs.listening_context) as port:
            conn = await connect(port, mpki.client_ctx(deep))
            status, body = await conn.get()
            assert status == expected, body
            if expected == 401:
                assert json.loads(body)["reason"] == "client_cert_chain_too_long"
            await conn.close()


async def test_expired_certificate_from_front_proxy_refused(mpki: Pki) -> None:
    """The proxy terminated TLS, so our handshake never saw the dates: checked per request."""
    expired = mpki.ca.issue_cert(
        "old@example.com",
        not_before=dt.datetime.now(UTC) - dt.timedelta(days=10),
        not_after=dt.datetime.now(UTC) - dt.timedelta(days=1),
    )
    certs = ClientCertificates(gateway_config({"front_proxy": {"trusted_cidrs": ["127.0.0.1"]}}))
    async with serve(certs_app(certs), None) as port, aiohttp.ClientSession() as s:
        for leaf, status, why in ((expired, 401, "client_cert_expired"), (mpki.client_a, 200, None)):
            value = ":" + base64.b64encode(leaf_der(leaf)).decode() + ":"
            async with s.get(f"http://127.0.0.1:{port}/", headers={"Client-Cert": value}) as resp:
                assert resp.status == status
                if why:
                    assert (await resp.json())["reason"] == why


def test_unreadable_crl_at_startup_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.crl"
    bad.write_bytes(b"not a crl")
    with pytest.raises(ValueError):
        CrlStore([str(bad)])
