"""Development certificates: a CA, a server cert for localhost, client certs, a self-signed client.

DEV ONLY. Keys are written unencrypted; never use these outside a laptop or a test.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ("make_dev_certs",)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fapi-gateway DEV ONLY"),
         x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _write_key(path: Path, key: PrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _cert(
    subject: str,
    key: PrivateKey,
    issuer: x509.Name | None,
    issuer_key: PrivateKey,
    *,
    ca: bool = False,
    server_names: tuple[str, ...] = (),
    client: bool = False,
    days: int = 825,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer or _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        # RFC 5280 §4.2.1.1; the listener verifies client chains with VERIFY_X509_STRICT, which needs it.
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
    else:
        usages = []
        if server_names:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            alt: list[x509.GeneralName] = []
            for n in server_names:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    alt.append(x509.DNSName(n))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_dev_certs(out: str | Path) -> list[Path]:
    """Write a complete dev set into ``out``; returns the files written."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("fapi-gateway DEV CA", ca_key, None, ca_key, ca=True, days=3650)
    _write_cert(d / "ca.pem", ca)
    _write_key(d / "ca-key.pem", ca_key)
    written += [d / "ca.pem", d / "ca-key.pem"]

    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = _cert("localhost", server_key, ca.subject, ca_key, server_names=("localhost", "127.0.0.1", "::1"))
    _write_cert(d / "server.pem", server)
    _write_key(d / "server-key.pem", server_key)
    written += [d / "server.pem", d / "server-key.pem"]

    for name in ("client-a", "client-b"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(f"{name} (tpp)", key, ca.subject, ca_key, client=True)
        _write_cert(d / f"{name}.pem", cert)
        _write_key(d / f"{name}-key.pem", key)
        written += [d / f"{name}.pem", d / f"{name}-key.pem"]

    ss_key = ec.generate_private_key(ec.SECP256R1())
    ss = _cert("self-signed client", ss_key, None, ss_key, client=True)
    _write_cert(d / "client-selfsigned.pem", ss)
    _write_key(d / "client-selfsigned-key.pem", ss_key)
    written += [d / "client-selfsigned.pem", d / "client-selfsigned-key.pem"]

    # The demo issuer's token-signing key (ES256).
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    _write_key(d / "issuer-key.pem", issuer_key)
    written.append(d / "issuer-key.pem")

    (d / "README.md").write_text(
        "# DEV ONLY\n\nGenerated by `gateway dev-certs`. These keys are public (they are in git):\n"
        "never trust this CA or use these keys outside local development and tests.\n"
    )
    return written
