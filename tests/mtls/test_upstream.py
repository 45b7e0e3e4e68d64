"""What the upstream gets: the verified certificate in our header only (MTLS-13)."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.config.mtls import DEFAULT_STRIP_HEADERS, ClientCertConfig
from gateway.model import PeerCertificate
from gateway.tls.front_proxy import parse_xfcc
from gateway.tls.upstream import upstream_cert_header

from .conftest import Pki, leaf_der


def cfg(fmt: str, header: str = "X-Client-Cert-Verified") -> ClientCertConfig:
    return ClientCertConfig.model_validate({"forward": {"header": header, "format": fmt}})


def test_not_configured_or_no_cert(mpki: Pki) -> None:
    assert upstream_cert_header(ClientCertConfig(), PeerCertificate(der=leaf_der(mpki.client_a))) is None
    assert upstream_cert_header(cfg("xfcc"), None) is None


def test_each_format_round_trips(mpki: Pki) -> None:
    der = leaf_der(mpki.client_a)
    peer = PeerCertificate(der=der)
    name, value = upstream_cert_header(cfg("xfcc"), peer)  # type: ignore[misc]
    assert name == "X-Client-Cert-Verified"
    assert parse_xfcc(value) == (der, peer.x5t_s256, [])
    _, value = upstream_cert_header(cfg("rfc9440"), peer)  # type: ignore[misc]
    assert value == ":" + base64.b64encode(der).decode() + ":"
    _, value = upstream_cert_header(cfg("pem_urlencoded"), peer)  # type: ignore[misc]
    assert "\n" not in value
    assert x509.load_pem_x509_certificate(unquote(value).encode()).public_bytes(Encoding.DER) == der
    _, value = upstream_cert_header(cfg("x5t_s256"), peer)  # type: ignore[misc]
    assert value == peer.x5t_s256


def test_thumbprint_only_peer(mpki: Pki) -> None:
    der = leaf_der(mpki.client_a)
    peer = PeerCertificate(der=b"", source="header", x5t_s256=PeerCertificate(der=der).x5t_s256)
    assert upstream_cert_header(cfg("xfcc"), peer) == (
        "X-Client-Cert-Verified", "Hash=" + hashlib.sha256(der).hexdigest()
    )
    assert upstream_cert_header(cfg("rfc9440"), peer) is None


def test_forward_header_is_always_stripped_from_clients() -> None:
    c = ClientCertConfig.model_validate({"forward": {"header": "X-Bank-Verified-Cert"}, "strip_headers": ["X-A"]})
    assert [h.lower() for h in c.strip_headers] == ["x-a", "x-bank-verified-cert"]
    defaults = {h.lower() for h in ClientCertConfig().strip_headers}
    for name in ("x-forwarded-client-cert", "client-cert", "client-cert-chain", "x-client-cert",
                 "x-ssl-client-cert", "x-ssl-client-verify", "x-ssl-client-s-dn", "x-ssl-client-i-dn",
                 "ssl-client-cert", "x-amzn-mtls-clientcert", "x-forwarded-user", "x-remote-user",
                 "x-auth-request-user", "x-auth-request-email", "x-userinfo", "x-forwarded-email", "remote-user"):
        assert name in defaults
    assert len(defaults) == len(DEFAULT_STRIP_HEADERS)
