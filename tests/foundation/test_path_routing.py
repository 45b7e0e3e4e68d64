"""Issue #13 finding 9: routing and the upstream must read the path the same way. Every encoding
of a protected path either reaches the protected route (and its auth) or is refused; the upstream
receives exactly the canonical path the route was chosen on. Real TLS listener, recording upstream."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from tests.conftest import GatewayFactory, Pki, Upstream

from .rawhttp import raw_request
from .test_canonical import protected_encodings


def routes(upstream_url: str, jwks: str) -> str:
    return f"""
    issuers:
      - name: as
        issuer: https://as.example
        jwks_file: {jwks}
    routes:
      - id: payments
        match: {{path_prefix: /payments}}
        upstream: {upstream_url}
        auth: {{issuers: [as], audience: https://api.example, sender_constraint: mtls}}
      - id: api
        match: {{path_prefix: /api}}
        upstream: {upstream_url}
        auth: {{issuers: [as], audience: https://api.example, sender_constraint: mtls}}
      - id: catch-all
        match: {{path_prefix: /}}
        upstream: {upstream_url}
        auth: none
    """


@pytest.fixture
async def gw(gateway: GatewayFactory, upstream: Upstream, pki: Pki) -> int:
    jwks = pki.dir / "empty-jwks.json"
    jwks.write_text('{"keys": []}')
    server = await gateway(routes(upstream.url, str(jwks)))
    return server.port


BYPASSES = [
    "//payments",
    "//payments/1",
    "/payments;x=y",
    "/payments;x=y/1",
    "/payments%3Bx",
    "/payments%3bx/1",
    "/api./x",
    "/api%2e/x",
    "/api%20/x",
    "/api /x",
    "/API/x",
    "/Payments/1",
    "/open/..;/api/x",
    "/open/%252e%252e/api/x",
    "/open/%c0%ae%c0%ae/api/x",
    "/open/..%00/api/x",
    "/open/%2e%2e;/api/x",
    "/open/.%2e/api/x",
    "/open%2f..%2fapi/x",
    "/open/..%5capi/x",
    "/%70ayments/1",  # %70 = p: must route like /payments/1 (and be refused there for lack of a token)
    "/pay%6Dents",
    "/./payments",
    "/payments/../payments",
    "/x/%2e%2e/payments",
    "/payments%00",
    "/payments%",
    "/payments%zz",
    "/payments\\1",
    "/p%C3%A4yments%C0%AF",
]


@pytest.mark.parametrize("target", BYPASSES)
async def test_no_encoding_of_a_protected_path_reaches_the_open_route(
    gw: int, upstream: Upstream, pki: Pki, target: str
) -> None:
    status, out = await raw_request(gw, pki.client_context(), target)
    assert status in (400, 401, 404), out[:300]
    assert upstream.requests == [], f"{target!r} reached the upstream as {upstream.requests[0].raw_path!r}"


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/open/%7Euser", "/open/~user"),  # unreserved characters decoded (RFC 3986 §6.2.2.2)
        ("/open/%41%62c", "/open/Abc"),
        ("/open/caf%c3%a9", "/open/caf%C3%A9"),  # hex upper-cased (§6.2.2.1), UTF-8 kept encoded
        ("/open/a%3ab@c", "/open/a:b@c"),
        ("/open/a%20b?q=%2F&x=1;2", "/open/a%20b?q=%2F&x=1;2"),  # query forwarded as received
        ("/open/", "/open/"),
        ("/open?", "/open?"),
    ],
)
async def test_upstream_receives_exactly_the_canonical_target(
    gw: int, upstream: Upstream, pki: Pki, target: str, forwarded: str
) -> None:
    status, out = await raw_request(gw, pki.client_context(), target)
    assert status == 200, out[:300]
    assert upstream.last.raw_path == forwarded


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=protected_encodings())
async def test_property_end_to_end(gw: int, upstream: Upstream, pki: Pki, raw: str) -> None:
    """The router-level property (test_canonical.py) against the running gateway: any spelling of a
    protected path is refused or meets the protected route's auth; the upstream sees nothing."""
    status, out = await raw_request(gw, pki.client_context(), raw)
    assert status in (0, 400, 401), (raw, out[:200])
    assert upstream.requests == [], (raw, upstream.requests[-1].raw_path)
