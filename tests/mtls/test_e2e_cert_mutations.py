"""End to end, hostile input (issue #14): a VALID request whose client certificate comes from a
trusted front proxy's header (each format), then one mutation of that header, sent byte for byte
through the real gateway to a recording upstream. For every mutation hypothesis makes: never a
5xx or a dropped connection, and the upstream sees the request only if the header still carries
the certificate the token is bound to (its DER, or for XFCC its SHA-256 ``Hash``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.model import sha256_b64url
from tests.conftest import GatewayFactory, Pki, Upstream

from ..dpop.test_e2e_mutations import WIRE, _mutate
from ..foundation.rawhttp import raw_request
from .test_e2e import Issuer, config

pytestmark = pytest.mark.timeout(180)

FORMATS = ("rfc9440", "xfcc", "nginx", "pem", "der_b64", "aws_alb")
HEADER = {"rfc9440": "Client-Cert", "xfcc": "X-Forwarded-Client-Cert", "nginx": "X-SSL-Client-Cert",
          "pem": "X-SSL-Client-Cert", "der_b64": "X-Client-Cert", "aws_alb": "X-Amzn-Mtls-Clientcert"}


def _valid_value(fmt: str, der: bytes, pem: str) -> str:
    b64 = base64.b64encode(der).decode()
    return {
        "rfc9440": f":{b64}:",
        "xfcc": f'Hash={hashlib.sha256(der).hexdigest()};Cert="{quote(pem, safe="")}";Subject="CN=a"',
        "nginx": quote(pem, safe=""),
        "pem": pem.replace("\n", " ").strip(),
        "der_b64": b64,
        "aws_alb": quote(pem, safe="+=/"),
    }[fmt]


def _b64_only(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9+/]", "", text.replace("-", "+").replace("_", "/"))


def _still_carries(value: str, der: bytes) -> bool:
    """An oracle independent of the gateway's parsers: the certificate's base64 (any folding,
    escaping or base64url spelling) or its hex SHA-256 is still in the header."""
    try:
        text = unquote(value, errors="strict")
    except UnicodeDecodeError:
        text = value
    wanted = _b64_only(base64.b64encode(der).decode())
    return wanted in _b64_only(text) or wanted in _b64_only(value) or hashlib.sha256(der).hexdigest() in value.lower()


@pytest.fixture(params=FORMATS)
async def proxied(request: pytest.FixtureRequest, gateway: GatewayFactory, upstream: Upstream,
                  tmp_path: Any) -> tuple[str, Any, Issuer]:
    issuer = Issuer(tmp_path)
    fmt = request.param
    gw = await gateway(config(issuer, upstream, f"client_certs: {{front_proxy: {{format: {fmt}, "
                                                f"trusted_cidrs: [127.0.0.1/32]}}}}"))
    return fmt, gw, issuer


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=st.sampled_from(["replace", "insert", "delete", "truncate", "append", "case"]),
       pos=st.integers(min_value=0, max_value=10_000), length=st.integers(min_value=1, max_value=8),
       text=st.text(WIRE, min_size=1, max_size=6) | st.sampled_from(["A", "=", "%", ":", " ", ";", ",", '"']))
async def test_mutated_certificate_header_is_refused_or_still_the_bound_certificate(
    proxied: tuple[str, Any, Issuer], upstream: Upstream, pki: Pki, op: str, pos: int, length: int, text: str
) -> None:
    fmt, gw, issuer = proxied
    der, pem = pki.client_a.der, pki.client_a.pem.decode()
    token = issuer.token(sha256_b64url(der))
    ctx = pki.client_context()  # no client certificate of its own: the proxy's header is what counts
    header = HEADER[fmt]
    valid = _valid_value(fmt, der, pem)

    before = len(upstream.requests)
    status, _ = await raw_request(gw.port, ctx, "/accounts/1", headers=[("Authorization", f"Bearer {token}"),
                                                                        (header, valid)])
    assert status == 200 and len(upstream.requests) == before + 1

    mutated = _mutate(valid, op, pos, length, text)
    before = len(upstream.requests)
    status, raw = await raw_request(gw.port, ctx, "/accounts/1", headers=[("Authorization", f"Bearer {token}"),
                                                                          (header, mutated)])
    forwarded = len(upstream.requests) > before
    event(f"{fmt}: {'forwarded' if forwarded else f'refused {status}'}")
    assert 0 < status < 500, (fmt, mutated, raw[:300])
    if forwarded:
        assert _still_carries(mutated, der), (fmt, mutated)
        assert status == 200
