"""Fuzz target: every client-certificate header format a trusted front proxy may send
(``gateway.tls.front_proxy``): RFC 9440 ``Client-Cert`` (+ ``Client-Cert-Chain``), Envoy XFCC,
NGINX escaped PEM, folded PEM, base64 DER, AWS ALB. A malformed header must be a 400
(``InvalidRequestError``), never a 500.

Input: byte 0 picks the format; then ``header value NUL chain header value`` (chain: rfc9440 only).
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from urllib.parse import quote

from multidict import CIMultiDict, CIMultiDictProxy

from ._harness import instrumented, run, split, text

with instrumented():
    from gateway.config.mtls import FrontProxyConfig
    from gateway.errors import GatewayError
    from gateway.tls.front_proxy import FrontProxy

FORMATS = ("rfc9440", "xfcc", "nginx", "pem", "der_b64", "aws_alb")
PROXIES = [
    FrontProxy(FrontProxyConfig.model_validate({
        "format": f, "trusted_cidrs": ["10.0.0.0/8"],
        **({"chain_header": "Client-Cert-Chain"} if f == "rfc9440" else {}),
    }))
    for f in FORMATS
]
_CERTS = Path(__file__).resolve().parents[2] / "certs" / "dev"


def one(data: bytes) -> None:
    if not data:
        return
    proxy = PROXIES[data[0] % len(PROXIES)]
    value, chain = split(data[1:], 2)
    headers: CIMultiDict[str] = CIMultiDict()
    headers.add(proxy.header, text(value))
    if chain and proxy.chain_header:
        headers.add(proxy.chain_header, text(chain))
    facts = proxy.certificate(CIMultiDictProxy(headers))
    assert facts is not None and (facts.peer.der or facts.peer.x5t_s256)


def seeds() -> list[bytes]:
    pems = [(_CERTS / n).read_text() for n in ("client-a.pem", "ca.pem")]
    ders = [base64.b64decode("".join(p.strip().splitlines()[1:-1])) for p in pems]
    sf = [b":" + base64.b64encode(d) + b":" for d in ders]
    leaf_pem, ca_pem = pems
    xfcc = (f'Hash={hashlib.sha256(ders[0]).hexdigest()};Cert="{quote(leaf_pem)}";'
            f'Chain="{quote(leaf_pem + ca_pem)}";Subject="CN=a,O=b";URI=spiffe://x').encode()
    return [
        b"\x00" + sf[0],
        b"\x00" + sf[0] + b"\x00" + sf[1],
        b"\x01" + xfcc,
        b"\x01Hash=" + hashlib.sha256(ders[0]).hexdigest().encode(),
        b"\x02" + quote(leaf_pem + ca_pem).encode(),
        b"\x03" + leaf_pem.replace("\n", " ").encode(),
        b"\x04" + base64.b64encode(ders[0]),
        b"\x05" + quote(leaf_pem, safe="").encode(),
    ]


if __name__ == "__main__":
    run("front_proxy", one, (GatewayError,), seeds, max_len=8192)
