"""RFC 8705 §3/§3.1 certificate binding (MTLS-03, -04, -05, -06, -12)."""

from __future__ import annotations

import base64
import hashlib
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gateway.bind.mtls import check_certificate_binding, is_x5t_s256
from gateway.errors import InvalidTokenError
from gateway.model import PeerCertificate, VerifiedToken, sha256_b64url

from .conftest import Pki, leaf_der, make_self_signed

RFC8705_EXAMPLE = "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"


def token(x5t: str | None, source: str = "jwt") -> VerifiedToken:
    return VerifiedToken(
        issuer="https://as.example",
        subject="alice",
        client_id="client-a",
        audience=("https://rs.example",),
        scopes=frozenset({"accounts"}),
        expires_at=2_000_000_000.0,
        jti="j1",
        cnf_jkt=None,
        cnf_x5t_s256=x5t,
        source=source,  # type: ignore[arg-type]
    )


def test_rfc8705_example_value_shape() -> None:
    """Vector 0.4-5: 43 base64url characters, no padding; our thumbprints have the same shape."""
    assert len(RFC8705_EXAMPLE) == 43 and is_x5t_s256(RFC8705_EXAMPLE)
    assert is_x5t_s256(sha256_b64url(b"any DER"))
    for bad in (RFC8705_EXAMPLE + "=", RFC8705_EXAMPLE[:-1] + "+", RFC8705_EXAMPLE[:42], " " + RFC8705_EXAMPLE[1:]):
        assert not is_x5t_s256(bad)


def test_rfc8705_example_value_binds_to_a_peer_with_that_thumbprint() -> None:
    peer = PeerCertificate(der=b"", x5t_s256=RFC8705_EXAMPLE)
    assert check_certificate_binding(token(RFC8705_EXAMPLE), peer).thumbprint == RFC8705_EXAMPLE
    with pytest.raises(InvalidTokenError):
        check_certificate_binding(token(RFC8705_EXAMPLE[:-1] + "3"), peer)


def test_thumbprint_matches_the_openssl_pipeline(mpki: Pki) -> None:
    """MTLS-03 c: openssl x509 -outform DER | openssl dgst -sha256 -binary | base64url, no '='."""
    pem = mpki.client_a.cert_chain_pems[0].bytes()
    der = subprocess.run(["openssl", "x509", "-outform", "DER"], input=pem, capture_output=True, check=True).stdout
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-binary"], input=der, capture_output=True, check=True)
    expected = base64.urlsafe_b64encode(digest.stdout).rstrip(b"=").decode()
    assert PeerCertificate(der=leaf_der(mpki.client_a)).x5t_s256 == expected


def test_right_certificate_passes(mpki: Pki) -> None:
    """MTLS-03 a / MTLS-06: from a JWT cnf and from an introspection cnf alike."""
    peer = PeerCertificate(der=leaf_der(mpki.client_a))
    for source in ("jwt", "introspection"):
        binding = check_certificate_binding(token(peer.x5t_s256, source), peer)
        assert binding.type == "mtls" and binding.thumbprint == peer.x5t_s256


def _assert_refused(tok: VerifiedToken, peer: PeerCertificate | None) -> None:
    with pytest.raises(InvalidTokenError) as info:
        check_certificate_binding(tok, peer)
    err = info.value
    assert err.status == 401 and err.error == "invalid_token"
    assert err.reason == "binding_mismatch"
    assert err.description == "certificate binding failed"


def test_other_clients_certificate_refused(mpki: Pki) -> None:
    """MTLS-04: client A's token over client B's certificate."""
    a, b = PeerCertificate(der=leaf_der(mpki.client_a)), PeerCertificate(der=leaf_der(mpki.client_b))
    _assert_refused(token(a.x5t_s256), b)


def test_no_certificate_refused(mpki: Pki) -> None:
    """MTLS-05."""
    _assert_refused(token(sha256_b64url(leaf_der(mpki.client_a))), None)


def test_unbound_token_is_not_a_certificate_binding(mpki: Pki) -> None:
    _assert_refused(token(None), PeerCertificate(der=leaf_der(mpki.client_a)))


def test_wrongly_computed_thumbprints_refused(mpki: Pki) -> None:
    """MTLS-03 b: hex, base64 (not url), padded, SHA-1, over the PEM, over the chain."""
    der = leaf_der(mpki.client_a)
    pem = mpki.client_a.cert_chain_pems[0].bytes()
    digest = hashlib.sha256(der).digest()
    variants = [
        digest.hex(),
        base64.b64encode(digest).decode(),
        base64.urlsafe_b64encode(digest).decode(),  # padded
        base64.urlsafe_b64encode(hashlib.sha1(der).digest()).rstrip(b"=").decode(),
        sha256_b64url(pem),
        sha256_b64url(der + mpki.ca.cert_pem.bytes()),
        "é" * 43,  # non-ASCII claim: still a clean 401, never a TypeError
    ]
    peer = PeerCertificate(der=der)
    for value in variants:
        assert value != peer.x5t_s256
        _assert_refused(token(value), peer)


def test_renewed_certificate_with_same_key_does_not_match() -> None:
    """MTLS-12: same subject and key, new serial -> the old token no longer binds."""
    original = make_self_signed("client")
    renewed = (
        x509.CertificateBuilder()
        .subject_name(original.cert.subject)
        .issuer_name(original.cert.issuer)
        .public_key(original.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(original.cert.not_valid_before_utc)
        .not_valid_after(original.cert.not_valid_after_utc)
        .sign(original.key, hashes.SHA256())
    )
    old = PeerCertificate(der=original.der)
    new = PeerCertificate(der=renewed.public_bytes(serialization.Encoding.DER))
    _assert_refused(token(old.x5t_s256), new)
