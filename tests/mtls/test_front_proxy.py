"""Client certificates from a trusted front proxy (issue 4; MTLS-02 d, MTLS-13, RFC 9440)."""

from __future__ import annotations

import base64
import hashlib
import json
from urllib.parse import quote

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config.mtls import ClientCertConfig, FrontProxyConfig
from gateway.errors import InvalidRequestError
from gateway.model import sha256_b64url
from gateway.tls.clientcerts import ClientCertificates
from gateway.tls.front_proxy import FrontProxy, parse_xfcc

from .conftest import Pki, certs_app, connect, gateway_config, leaf_der, serve


def headers(**kv: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in kv.items()}))


def proxy(fmt: str, **extra: object) -> FrontProxy:
    return FrontProxy(FrontProxyConfig.model_validate({"format": fmt, "trusted_cidrs": ["127.0.0.1/32"], **extra}))


def encodings(mpki: Pki) -> dict[str, tuple[str, str]]:
    """format -> (header, value) for client A's certificate, as each proxy writes it."""
    der = leaf_der(mpki.client_a)
    pem = mpki.client_a.cert_chain_pems[0].bytes().decode()
    b64 = base64.b64encode(der).decode()
    return {
        "rfc9440": ("Client-Cert", f":{b64}:"),
        "xfcc": (
            "X-Forwarded-Client-Cert",
            f'By=spiffe://bank/gw;Hash={hashlib.sha256(der).hexdigest()};Cert="{quote(pem, safe="")}";'
            'Subject="CN=client-a,O=Test; Inc";URI=',
        ),
        "nginx": ("X-SSL-Client-Cert", quote(pem, safe="")),
        "pem": ("X-SSL-Client-Cert", pem.replace("\n", "\n\t").replace("\n", " ").strip()),
        "der_b64": ("X-Client-Cert", b64),
        "aws_alb": ("X-Amzn-Mtls-Clientcert", quote(pem + mpki.ca.cert_pem.bytes().decode(), safe="+=/")),
    }


def test_every_format_parsed(mpki: Pki) -> None:
    expected = sha256_b64url(leaf_der(mpki.client_a))
    for fmt, (name, value) in encodings(mpki).items():
        fp = proxy(fmt)
        assert fp.header.lower() == name.lower()
        facts = fp.certificate(headers(**{name: value}))
        assert facts is not None, fmt
        assert facts.peer.x5t_s256 == expected and facts.peer.source == "header", fmt
        assert facts.peer.der == leaf_der(mpki.client_a)
    # ALB passthrough forwards the chain after the leaf.
    name, value = encodings(mpki)["aws_alb"]
    assert proxy("aws_alb").certificate(headers(**{name: value})).ca_depth == 1  # type: ignore[union-attr]


def test_variants_accepted(mpki: Pki) -> None:
    der = leaf_der(mpki.client_a)
    expected = sha256_b64url(der)
    b64url = base64.urlsafe_b64encode(der).rstrip(b"=").decode()
    assert proxy("der_b64").certificate(headers(X_Client_Cert=b64url)).peer.x5t_s256 == expected  # type: ignore[union-attr]
    # NGINX's $ssl_client_cert style: newline + tab folding.
    pem = mpki.client_a.cert_chain_pems[0].bytes().decode().replace("\n", "\n\t").rstrip("\t")
    assert proxy("pem").certificate(headers(X_SSL_Client_Cert=pem.replace("\n", ""))) is not None
    # RFC 9440 chain header: one CA above the leaf.
    fp = proxy("rfc9440", chain_header="Client-Cert-Chain")
    ca = x509.load_pem_x509_certificate(mpki.ca.cert_pem.bytes()).public_bytes(Encoding.DER)
    chain = f":{base64.b64encode(ca).decode()}:"
    facts = fp.certificate(headers(Client_Cert=f":{base64.b64encode(der).decode()}:", Client_Cert_Chain=chain))
    assert facts is not None and facts.ca_depth == 1


def test_xfcc_hash_only(mpki: Pki) -> None:
    der = leaf_der(mpki.client_a)
    facts = proxy("xfcc").certificate(headers(X_Forwarded_Client_Cert=f"Hash={hashlib.sha256(der).hexdigest()}"))
    assert facts is not None and facts.peer.der == b"" and facts.peer.x5t_s256 == sha256_b64url(der)


@pytest.mark.parametrize(
    ("fmt", "value"),
    [
        ("rfc9440", "AAAA"),  # not a byte sequence
        ("rfc9440", ":AAAA:"),  # not a certificate
        ("rfc9440", ":not base64!:"),
        ("xfcc", 'Cert="%ZZ"'),
        ("xfcc", "By=x"),  # neither Cert nor Hash
        ("xfcc", "Hash=abc"),
        ("xfcc", 'Hash=00;Cert="x'),  # unterminated quote
        ("nginx", "-----BEGIN%20CERTIFICATE-----%0Aabc%0A-----END%20CERTIFICATE-----"),
        ("pem", "hello"),
        ("der_b64", "////"),
        ("aws_alb", ""),
    ],
)
def test_malformed_header_from_trusted_proxy_is_400(fmt: str, value: str) -> None:
    fp = proxy(fmt)
    with pytest.raises(InvalidRequestError) as info:
        fp.certificate(headers(**{fp.header: value}))
    assert info.value.status == 400 and info.value.reason == "client_cert_header_malformed"


def test_xfcc_hash_must_match_cert_and_one_element_only(mpki: Pki) -> None:
    name, value = encodings(mpki)["xfcc"]
    with pytest.raises(ValueError, match="does not match"):
        parse_xfcc(value.replace(hashlib.sha256(leaf_der(mpki.client_a)).hexdigest(), "0" * 64))
    with pytest.raises(InvalidRequestError):
        proxy("xfcc").certificate(headers(**{name: value + "," + value}))
    # Two copies of the header are refused too.
    fp = proxy("xfcc")
    h = CIMultiDict([(name, value), (name, value)])
    with pytest.raises(InvalidRequestError):
        fp.certificate(CIMultiDictProxy(h))


def test_oversized_header_is_400(mpki: Pki) -> None:
    fp = proxy("rfc9440", max_header_bytes=1024)
    with pytest.raises(InvalidRequestError):
        fp.certificate(headers(Client_Cert=":" + "A" * 2000 + ":"))


def test_trust_decision() -> None:
    cfg = FrontProxyConfig.model_validate({"trusted_cidrs": ["10.1.0.0/16", "fd00::/8"]})
    fp = FrontProxy(cfg)
    assert fp.is_trusted("10.1.2.3", None)
    assert fp.is_trusted("::ffff:10.1.2.3", None)
    assert fp.is_trusted("fd00::1", None)
    assert not fp.is_trusted("10.2.0.1", None)
    assert not fp.is_trusted(None, None)
    assert not fp.is_trusted("not-an-ip", None)


def test_config_requires_a_trusted_peer() -> None:
    with pytest.raises(ValueError, match="trusted_cidrs"):
        FrontProxyConfig.model_validate({"format": "xfcc"})
    cfg = ClientCertConfig.model_validate(
        {"front_proxy": {"format": "rfc9440", "header": "X-Bank-Cert", "chain_header": "X-Bank-Chain",
                         "trusted_cidrs": ["10.0.0.0/8"]}, "forward": {"header": "X-Verified-Cert"}}
    )
    lowered = {h.lower() for h in cfg.strip_headers}
    # Whatever header names are configured, client-sent copies are always stripped.
    assert {"x-bank-cert", "x-bank-chain", "x-verified-cert", "x-forwarded-user", "client-cert"} <= lowered


async def test_xfcc_from_trusted_source_used_from_untrusted_ignored_and_counted(mpki: Pki) -> None:
    """MTLS-02 d: the same header is honoured only from the trusted hop (here: by source address)."""
    name, value = encodings(mpki)["xfcc"]
    seen: list[str] = []
    for cidr, trusted in (("127.0.0.0/8", True), ("10.0.0.0/8", False)):
        cfg = gateway_config({"front_proxy": {"format": "xfcc", "trusted_cidrs": [cidr]}})
        certs = ClientCertificates(cfg, on_untrusted_header=seen.append)
        async with serve(certs_app(certs), None) as port, aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/", headers={name: value}) as resp:
                body = await resp.json()
            assert resp.status == 200
            if trusted:
                assert body["x5t"] == sha256_b64url(leaf_der(mpki.client_a)) and body["source"] == "header"
            else:
                assert body["x5t"] is None
    assert seen == ["X-Forwarded-Client-Cert"]


async def test_trusted_proxy_by_its_own_mtls_identity(mpki: Pki) -> None:
    """The proxy's own TLS cert identifies it; its cert is never taken for the client's."""
    proxy_leaf = mpki.ca.issue_cert("ingress.bank.internal", common_name="ingress")
    name, value = encodings(mpki)["rfc9440"]
    seen: list[str] = []
    cfg = gateway_config(
        {"front_proxy": {"format": "rfc9440",
                         "trusted_identities": [{"x5t_s256": sha256_b64url(leaf_der(proxy_leaf))}]}},
        listen={"tls": {"cert": str(mpki.server_cert), "key": str(mpki.server_key),
                        "client_ca": [str(mpki.ca_file)], "client_auth": "optional"}},
    )
    certs = ClientCertificates(cfg, on_untrusted_header=seen.append)
    assert certs.listening_context is not None
    async with serve(certs_app(certs), certs.listening_context) as port:
        # The proxy forwards client A's certificate: A is the client.
        conn = await connect(port, mpki.client_ctx(proxy_leaf))
        status, body = await conn.get("/", {name: value})
        assert status == 200 and json.loads(body)["x5t"] == sha256_b64url(leaf_der(mpki.client_a))
        # The proxy with no client certificate to forward: no certificate (not the proxy's own).
        status, body = await conn.get("/")
        assert status == 200 and json.loads(body)["x5t"] is None
        # A malformed header from the proxy: 400, not 500.
        status, body = await conn.get("/", {name: ":bm90IGEgY2VydA==:"})
        assert status == 400 and json.loads(body)["reason"] == "client_cert_header_malformed"
        await conn.close()
        # Client B connects directly and tries the same header: its own TLS cert counts.
        conn = await connect(port, mpki.client_ctx(mpki.client_b))
        status, body = await conn.get("/", {name: value})
        assert status == 200 and json.loads(body)["x5t"] == sha256_b64url(leaf_der(mpki.client_b))
        await conn.close()
    assert seen == ["Client-Cert"]
