"""Registered self-signed certificates are pinned leaves, never issuers (issue #13 finding 1; MTLS-07 a).

The attack: a TPP registers a self-signed certificate that OpenSSL will treat as a CA when it sits in
the trust store (no BasicConstraints but ``keyUsage: keyCertSign``, or an X.509 v1 certificate),
then mints client certificates with any subject under it. Everything here runs over real TLS with
certificates built by ``cryptography``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import ssl
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.model import sha256_b64url
from gateway.observability.tls import count_handshake_failures
from gateway.tls.anchors import self_signed_leaf
from gateway.tls.checks import parse_cert_facts
from gateway.tls.clientcerts import ClientCertificates
from gateway.tls.context import build_server_context
from tests.conftest import GatewayFactory, Upstream
from tests.conftest import Pki as GwPki

from .conftest import (
    UTC,
    Pki,
    SelfSigned,
    certs_app,
    connect,
    gateway_config,
    handshake_fails,
    leaf_der,
    make_self_signed,
    serve,
)
from .test_e2e import AUD, ISSUER, Issuer

pytestmark = pytest.mark.timeout(60)


# --- certificates ----------------------------------------------------------------------------

def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> SelfSigned:
    return SelfSigned(
        cert=cert,
        key=key,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = dt.datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )


def _cn(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def key_cert_sign_registration(cn: str) -> SelfSigned:
    """Self-signed, no BasicConstraints, keyUsage keyCertSign: OpenSSL's X509_check_ca says 4 (a CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(_cn(cn), _cn(cn), key)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pem(cert, key)


# Minimal DER, only to turn a v3 certificate into a v1 one (cryptography only builds v3).
def _tlv_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _tlv_len(len(body)) + body


def _children(der: bytes) -> list[bytes]:
    """The elements inside the outer SEQUENCE of ``der``."""
    def header(buf: bytes, at: int) -> tuple[int, int]:
        first = buf[at + 1]
        if first < 0x80:
            return at + 2, first
        n = first & 0x7F
        return at + 2 + n, int.from_bytes(buf[at + 2 : at + 2 + n], "big")

    start, length = header(der, 0)
    out, at = [], start
    while at < start + length:
        body, n = header(der, at)
        out.append(der[at : body + n])
        at = body + n
    return out


def v1_registration(cn: str) -> SelfSigned:
    """A self-signed X.509 v1 certificate (no version field, no extensions): OpenSSL's "V1 root"."""
    key = ec.generate_private_key(ec.SECP256R1())
    v3 = _builder(_cn(cn), _cn(cn), key).sign(key, hashes.SHA256())
    tbs = [part for part in _children(v3.tbs_certificate_bytes) if part[0] not in (0xA0, 0xA3)]
    tbs_der = _tlv(0x30, b"".join(tbs))
    sig_alg = _children(v3.public_bytes(serialization.Encoding.DER))[1]
    signature = key.sign(tbs_der, ec.ECDSA(hashes.SHA256()))
    der = _tlv(0x30, tbs_der + sig_alg + _tlv(0x03, b"\x00" + signature))
    cert = x509.load_der_x509_certificate(der)
    assert cert.version == x509.Version.v1
    return _pem(cert, key)


def mint(issuer: SelfSigned, cn: str) -> SelfSigned:
    """A client certificate signed by ``issuer``'s key, subject of the minter's choosing; well-formed
    (key identifiers included), so that only the issuer's lack of cA=TRUE can get it refused."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(_cn(cn), issuer.cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    return _pem(cert, key)


BAD_REGISTRATIONS = {"keyCertSign_without_basicConstraints": key_cert_sign_registration, "x509_v1": v1_registration}


# --- through the real gateway ------------------------------------------------------------------

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
client_certs:
{textwrap.indent(textwrap.dedent(client_certs).strip(), "  ")}
"""


async def _call(port: int, pki: GwPki, cert: SelfSigned, tmp: Path, headers: dict[str, str]) -> int | None:
    """The status, or None when the TLS handshake refused the certificate."""
    ctx = pki.client_context()
    cert.configure_cert(ctx, tmp)
    try:
        async with aiohttp.ClientSession() as s, s.get(
            f"https://localhost:{port}/accounts/1", ssl=ctx, headers=headers
        ) as r:
            return r.status
    except (aiohttp.ClientConnectionError, ssl.SSLError):
        return None


@pytest.mark.parametrize("kind", sorted(BAD_REGISTRATIONS))
@pytest.mark.parametrize("x509_strict", [True, False])
async def test_leaf_minted_by_a_registered_self_signed_cert_cannot_authenticate(
    gateway: GatewayFactory, pki: GwPki, upstream: Upstream, tmp_path: Path, kind: str, x509_strict: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A registration that OpenSSL would treat as an issuer is refused as a registration, so a
    certificate it signs never completes an authenticated request; a well-formed registration works.
    Holds with and without ``x509_strict`` (the registration filter does not depend on it)."""
    issuer = Issuer(tmp_path)
    anchors = tmp_path / "anchors"
    anchors.mkdir()
    rogue = BAD_REGISTRATIONS[kind]("tpp-rogue")
    good = make_self_signed("tpp-good")
    (anchors / "rogue.pem").write_bytes(rogue.cert_pem)
    (anchors / "good.pem").write_bytes(good.cert_pem)
    minted = mint(rogue, "client-a")  # any subject: here, another TPP's name

    caplog.set_level(logging.WARNING, logger="gateway.tls.anchors")
    gw = await gateway(_yaml(issuer, upstream, f"""
        x509_strict: {str(x509_strict).lower()}
        self_signed: {{directory: {anchors}}}
    """))
    assert "can act as a CA" in caplog.text and "rogue.pem" in caplog.text

    minted_x5t = sha256_b64url(minted.cert.public_bytes(serialization.Encoding.DER))
    status = await _call(gw.port, pki, minted, tmp_path, {"Authorization": f"Bearer {issuer.token(minted_x5t)}"})
    assert status in (None, 401), status
    assert upstream.requests == []

    good_token = issuer.token(sha256_b64url(good.der))
    status = await _call(gw.port, pki, good, tmp_path, {"Authorization": f"Bearer {good_token}"})
    assert status == 200
    assert len(upstream.requests) == 1


def test_registration_filter() -> None:
    """Only a self-signed v3 end-entity certificate that cannot sign certificates is a registration."""
    assert self_signed_leaf(make_self_signed("ok").der) is not None
    assert self_signed_leaf(make_self_signed("ca", ca=True).der) is None
    for build in BAD_REGISTRATIONS.values():
        assert self_signed_leaf(build("x").cert.public_bytes(serialization.Encoding.DER)) is None


async def test_strict_verification_refuses_a_leaf_minted_by_any_keycertsign_anchor(mpki: Pki, tmp_path: Path) -> None:
    """Defence in depth (VERIFY_X509_STRICT): even if such a certificate reached the trust store,
    OpenSSL refuses to chain a leaf to it."""
    rogue = key_cert_sign_registration("rogue")
    minted = mint(rogue, "anyone")
    ctx = build_server_context(mpki.listener(), extra_trust_anchors_pem=[rogue.cert_pem.decode()])
    assert ctx.verify_flags & ssl.VERIFY_X509_STRICT
    refused: list[str] = []
    count_handshake_failures(ctx, refused.append)
    certs = ClientCertificates(gateway_config({}, {"tls": {"cert": str(mpki.server_cert), "key": str(mpki.server_key),
                                                           "client_ca": [str(mpki.ca_file)]}}))
    async with serve(certs_app(certs), ctx) as port:
        client = mpki.client_ctx()
        minted.configure_cert(client, tmp_path)
        assert await handshake_fails(port, client)
        # CA-issued clients are unaffected by strict mode.
        assert not await handshake_fails(port, mpki.client_ctx(mpki.client_a))
    # The refusal has its own metric reason (X509_V_ERR_INVALID_CA), not the generic one.
    assert refused == ["client_cert_invalid_ca"]


def test_post_handshake_pin_check(mpki: Pki) -> None:
    """A chain that ends at a registered self-signed certificate must be that certificate; without
    a verified chain (a resumed session) the presented chain decides."""
    from gateway.tls.pinning import NO_PINS, Pins, pin_violation

    good = make_self_signed("tpp")
    pins = Pins({sha256_b64url(good.der): good.der})
    minted = mint(good, "anyone")  # signed with the registration's key (OpenSSL would refuse it)
    minted_der = minted.cert.public_bytes(serialization.Encoding.DER)
    other_der = leaf_der(mpki.client_a)
    ca_der = x509.load_pem_x509_certificate(mpki.ca.cert_pem.bytes()).public_bytes(serialization.Encoding.DER)

    def nothing() -> list[bytes]:
        raise AssertionError("the presented chain is only read when the verified one is unknown")

    def verdict(der: bytes, anchor: bytes | None, presented: Any = nothing, p: Pins = pins) -> str | None:
        facts = parse_cert_facts(der, ca_depth=None, anchor_x5t=sha256_b64url(anchor) if anchor else None)
        return pin_violation(facts, p, presented)

    # Verified chain known: the registration itself, a CA-issued certificate, anything ending at a pin.
    assert verdict(good.der, good.der) is None
    assert verdict(other_der, ca_der) is None
    assert verdict(minted_der, good.der) == "client_cert_not_pinned"
    # No registrations: nothing to check.
    assert verdict(minted_der, good.der, p=NO_PINS) is None
    # Resumed session (no verified chain): decided on the presented chain.
    assert verdict(good.der, None) is None
    assert verdict(other_der, None, lambda: [other_der]) is None
    assert verdict(minted_der, None, lambda: [minted_der]) == "client_cert_not_pinned"
    assert verdict(other_der, None, lambda: [other_der, good.der]) == "client_cert_not_pinned"
    assert verdict(other_der, None, lambda: []) == "client_cert_chain_unknown"


async def test_handshake_facts_carry_the_chain_anchor(mpki: Pki, tmp_path: Path) -> None:
    """Facts from a real handshake name the trust anchor the verified chain ended at: the
    registration itself for a self-signed client, the CA for a CA-issued one."""
    from aiohttp import web

    from gateway.tls.peer import tls_peer_facts

    anchors = tmp_path / "anchors"
    anchors.mkdir()
    good = make_self_signed("tpp")
    (anchors / "tpp.pem").write_bytes(good.cert_pem)
    certs = ClientCertificates(gateway_config(
        {"self_signed": {"directory": str(anchors)}},
        {"tls": {"cert": str(mpki.server_cert), "key": str(mpki.server_key), "client_ca": [str(mpki.ca_file)]}},
    ))

    async def handler(request: web.Request) -> web.Response:
        certs.peer_certificate(request)  # the pin check passes for both
        facts = tls_peer_facts(request)
        assert facts is not None
        return web.json_response({"anchor": facts.anchor_x5t, "depth": facts.ca_depth})

    app = web.Application()
    app.router.add_get("/", handler)
    ca_der = x509.load_pem_x509_certificate(mpki.ca.cert_pem.bytes()).public_bytes(serialization.Encoding.DER)
    async with serve(app, certs.listening_context) as port:
        ctx = mpki.client_ctx()
        good.configure_cert(ctx, tmp_path)
        for client, anchor, depth in ((ctx, sha256_b64url(good.der), 0),
                                      (mpki.client_ctx(mpki.client_a), sha256_b64url(ca_der), 1)):
            conn = await connect(port, client)
            status, body = await conn.get()
            assert status == 200 and json.loads(body) == {"anchor": anchor, "depth": depth}
            await conn.close()


# --- front proxy trusted by DN -------------------------------------------------------------------

def _rfc9440(der: bytes) -> str:
    return ":" + base64.b64encode(der).decode() + ":"


async def test_self_signed_registration_cannot_pose_as_a_dn_trusted_front_proxy(
    gateway: GatewayFactory, pki: GwPki, upstream: Upstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A TPP registers a self-signed certificate whose subject is the ingress's DN: anyone can write
    any DN into a self-signed certificate, so DN trust only counts for CA-issued proxy certificates."""
    issuer = Issuer(tmp_path)
    ingress_dn = "CN=ingress,O=Bank"
    anchors = tmp_path / "anchors"
    anchors.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name.from_rfc4514_string(ingress_dn)
    cert = (
        _builder(name, name, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    poser = _pem(cert, key)
    assert cert.subject.rfc4514_string() == ingress_dn
    (anchors / "poser.pem").write_bytes(poser.cert_pem)

    caplog.set_level(logging.WARNING)
    gw = await gateway(_yaml(issuer, upstream, f"""
        self_signed: {{directory: {anchors}}}
        front_proxy: {{format: rfc9440, trusted_identities: [{{subject: "{ingress_dn}"}}]}}
    """))
    assert "trusted_identities" in caplog.text and "subject" in caplog.text  # DN trust is warned at load

    token_a = issuer.token(sha256_b64url(pki.client_a.der))
    headers: dict[str, Any] = {"Authorization": f"Bearer {token_a}", "Client-Cert": _rfc9440(pki.client_a.der)}
    status = await _call(gw.port, pki, poser, tmp_path, headers)
    assert status == 401  # its header is ignored; its own certificate does not match the token
    assert upstream.requests == []


async def test_front_proxy_trusted_by_thumbprint_and_ca_issued_dn(
    gateway: GatewayFactory, pki: GwPki, upstream: Upstream, tmp_path: Path
) -> None:
    """The ingress's own certificate, by SHA-256 thumbprint (recommended) or by DN when a CA issued it."""
    issuer = Issuer(tmp_path)
    ingress = pki.ca.issue_cert("ingress.bank.internal", common_name="ingress")
    ingress_pem = ingress.cert_chain_pems[0].bytes()
    ingress_cert = x509.load_pem_x509_certificate(ingress_pem)
    ingress_der = ingress_cert.public_bytes(serialization.Encoding.DER)
    ingress_ss = SelfSigned(cert=ingress_cert, key=serialization.load_pem_private_key(  # type: ignore[arg-type]
        ingress.private_key_pem.bytes(), None), cert_pem=ingress_pem, key_pem=ingress.private_key_pem.bytes())
    token_a = issuer.token(sha256_b64url(pki.client_a.der))
    headers = {"Authorization": f"Bearer {token_a}", "Client-Cert": _rfc9440(pki.client_a.der)}
    for identity in (f'{{x5t_s256: "{sha256_b64url(ingress_der)}"}}',
                     f'{{subject: "{ingress_cert.subject.rfc4514_string()}"}}'):
        gw = await gateway(_yaml(issuer, upstream, f"""
            front_proxy: {{format: rfc9440, trusted_identities: [{identity}]}}
        """))
        assert await _call(gw.port, pki, ingress_ss, tmp_path, headers) == 200, identity


# --- strict verification and the shipped dev PKI ----------------------------------------------------

@pytest.mark.parametrize("fresh", [False, True])
async def test_dev_client_certificates_pass_strict_verification(tmp_path: Path, fresh: bool) -> None:
    """The demo's client certificates (committed, and as ``gateway dev-certs`` makes them) carry
    what VERIFY_X509_STRICT needs (authorityKeyIdentifier)."""
    from aiohttp import web

    from gateway.config.schema import ListenerTls
    from gateway.devcerts import make_dev_certs

    dev = Path(__file__).resolve().parents[2] / "certs" / "dev"
    if fresh:
        make_dev_certs(tmp_path / "dev")
        dev = tmp_path / "dev"
    listener = ListenerTls(cert=str(dev / "server.pem"), key=str(dev / "server-key.pem"),
                           client_ca=(str(dev / "ca.pem"),), client_auth="required")
    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    async with serve(app, build_server_context(listener)) as port:
        for name in ("client-a", "client-b"):
            ctx = ssl.create_default_context(cafile=str(dev / "ca.pem"))
            ctx.load_cert_chain(str(dev / f"{name}.pem"), str(dev / f"{name}-key.pem"))
            assert not await handshake_fails(port, ctx), name


async def test_revoked_front_proxy_certificate_is_not_trusted(
    gateway: GatewayFactory, pki: GwPki, upstream: Upstream, tmp_path: Path
) -> None:
    """The ingress's own certificate goes through the same checks as a client's (here: the CRL):
    a revoked ingress certificate cannot assert client certificates any more."""
    from .conftest import make_crl

    issuer = Issuer(tmp_path)
    ingress = pki.ca.issue_cert("ingress.bank.internal", common_name="ingress")
    ingress_pem = ingress.cert_chain_pems[0].bytes()
    ingress_cert = x509.load_pem_x509_certificate(ingress_pem)
    ingress_ss = SelfSigned(cert=ingress_cert, key=serialization.load_pem_private_key(  # type: ignore[arg-type]
        ingress.private_key_pem.bytes(), None), cert_pem=ingress_pem, key_pem=ingress.private_key_pem.bytes())
    x5t = sha256_b64url(ingress_cert.public_bytes(serialization.Encoding.DER))
    crl = tmp_path / "ca.crl"
    crl.write_bytes(make_crl(pki.ca, [ingress_cert.serial_number]))
    gw = await gateway(_yaml(issuer, upstream, f"""
        crl_files: [{crl}]
        front_proxy: {{format: rfc9440, trusted_identities: [{{x5t_s256: "{x5t}"}}]}}
    """))
    token_a = issuer.token(sha256_b64url(pki.client_a.der))
    headers = {"Authorization": f"Bearer {token_a}", "Client-Cert": _rfc9440(pki.client_a.der)}
    assert await _call(gw.port, pki, ingress_ss, tmp_path, headers) == 401
    assert upstream.requests == []


# --- resumed TLS sessions ------------------------------------------------------------------------------

def _blocking_get(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None) -> tuple[int, bytes, Any, bool]:
    """One request on a fresh connection that offers ``session`` for resumption (blocking; run in a thread)."""
    import socket

    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body, s.session, s.session_reused


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_resumed_sessions_keep_working_with_registrations(
    mpki: Pki, tmp_path: Path, version: ssl.TLSVersion
) -> None:
    """A resumed session has no verified chain (OpenSSL does not re-verify): the pin rule is then
    decided from the chain the client presented, so CA-issued and registered clients both resume."""
    import asyncio

    anchors = tmp_path / "anchors"
    anchors.mkdir()
    good = make_self_signed("tpp")
    (anchors / "tpp.pem").write_bytes(good.cert_pem)
    certs = ClientCertificates(gateway_config(
        {"self_signed": {"directory": str(anchors)}},
        {"tls": {"cert": str(mpki.server_cert), "key": str(mpki.server_key), "client_ca": [str(mpki.ca_file)]}},
    ))
    ss_ctx = mpki.client_ctx()
    good.configure_cert(ss_ctx, tmp_path)
    clients = {sha256_b64url(leaf_der(mpki.client_a)): mpki.client_ctx(mpki.client_a), sha256_b64url(good.der): ss_ctx}
    async with serve(certs_app(certs), certs.listening_context) as port:
        for x5t, ctx in clients.items():
            ctx.maximum_version = version
            session = None
            for attempt in range(2):
                status, body, session, reused = await asyncio.to_thread(_blocking_get, port, ctx, session)
                assert status == 200, (attempt, body)
                assert json.loads(body)["x5t"] == x5t
                assert reused == (attempt == 1)



def test_dn_trust_without_a_verified_chain(mpki: Pki) -> None:
    """On a resumed session the verified chain is unknown: DN trust still holds for a CA-issued
    proxy certificate and never for a self-signed one."""
    from gateway.config.mtls import FrontProxyConfig
    from gateway.tls.front_proxy import FrontProxy

    ingress = mpki.ca.issue_cert("ingress.bank.internal", common_name="ingress")
    ingress_der = leaf_der(ingress)
    subject = x509.load_der_x509_certificate(ingress_der).subject
    key = ec.generate_private_key(ec.SECP256R1())
    poser = _builder(subject, subject, key).sign(key, hashes.SHA256())
    front = FrontProxy(FrontProxyConfig.model_validate(
        {"trusted_identities": [{"subject": subject.rfc4514_string()}]}))
    for depth in (None, 1):
        assert front.is_trusted("127.0.0.1", parse_cert_facts(ingress_der, ca_depth=depth))
    for depth in (None, 0):
        poser_facts = parse_cert_facts(poser.public_bytes(serialization.Encoding.DER), ca_depth=depth)
        assert not front.is_trusted("127.0.0.1", poser_facts)
