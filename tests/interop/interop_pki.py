"""Keys and certificates for the interop suite, made in the test session (nothing is committed).

One private CA (``trustme``) signs the AS's and the gateway's server certificates and the PKI
clients' certificates (RFC 8705 ``tls_client_auth``); self-signed client certificates
(``self_signed_tls_client_auth``) and the AS's signing keys come from ``cryptography``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def x5t_s256(cert_der: bytes) -> str:
    """RFC 8705 §3.1 certificate thumbprint."""
    return b64u(hashlib.sha256(cert_der).digest())


@dataclass(frozen=True)
class ClientCert:
    """A client certificate on disk (for ``requests``' ``cert=``) and its thumbprint."""

    cert_path: Path
    key_path: Path
    der: bytes

    @property
    def pair(self) -> tuple[str, str]:
        return (str(self.cert_path), str(self.key_path))

    @property
    def x5t(self) -> str:
        return x5t_s256(self.der)


@dataclass
class Pki:
    """One private CA for the AS's server certificate and the PKI clients' certificates."""

    root: Path
    ca: trustme.CA = field(default_factory=trustme.CA)

    @property
    def ca_path(self) -> Path:
        path = self.root / "ca.pem"
        if not path.exists():
            self.ca.cert_pem.write_to_path(str(path))
        return path

    def server_pem(self, *hosts: str) -> tuple[str, str]:
        leaf = self.ca.issue_cert(*hosts)
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems).decode()
        return chain, leaf.private_key_pem.bytes().decode()

    def server_files(self, name: str, *hosts: str) -> tuple[Path, Path]:
        """Certificate and key files for a TLS server (the gateway's listener)."""
        chain, key = self.server_pem(*hosts)
        cert_path, key_path = self.root / f"{name}-server.crt", self.root / f"{name}-server.key"
        cert_path.write_text(chain)
        key_path.write_text(key)
        return cert_path, key_path

    def client_cert(self, name: str, dns: str) -> ClientCert:
        leaf = self.ca.issue_cert(dns, common_name=name)
        cert_path, key_path = self.root / f"{name}.crt", self.root / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert_path))
        leaf.private_key_pem.write_to_path(str(key_path))
        der = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(serialization.Encoding.DER)
        return ClientCert(cert_path, key_path, der)

    def self_signed_cert(self, name: str) -> tuple[ClientCert, dict[str, Any]]:
        """A self-signed client certificate and the public JWK (with ``x5c``) to register it."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, hashes.SHA256())
        )
        cert_path, key_path = self.root / f"{name}.crt", self.root / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        der = cert.public_bytes(serialization.Encoding.DER)
        jwk: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwk.pop("key_ops", None)
        jwk.update(kid=f"{name}-cert", use="sig", x5c=[base64.b64encode(der).decode()])
        return ClientCert(cert_path, key_path, der), jwk


def new_signing_jwk(kid: str, kty: str = "RSA") -> dict[str, Any]:
    """A private JWK for the AS: RSA (PS256, the FAPI choice), EC P-256 (ES256) or OKP (EdDSA)."""
    if kty == "RSA":
        jwk: dict[str, Any] = json.loads(
            jwt.algorithms.RSAAlgorithm.to_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        )
    elif kty == "EC":
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1())))
    else:
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(ed25519.Ed25519PrivateKey.generate()))
    # pyjwt adds key_ops ["sign"], which the AS would publish on the public key too, and a
    # verifier rightly skips a key whose key_ops exclude "verify" (RFC 7517 §4.3). ASs
    # generate keys without key_ops; so do we.
    jwk.pop("key_ops", None)
    jwk.update(kid=kid, use="sig")
    return jwk
