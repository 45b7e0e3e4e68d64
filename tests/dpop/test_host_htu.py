"""Issue #13 finding 2: the client must not choose the URL its DPoP proof's ``htu`` is compared
with. Attacks from the black-box probe, end to end (TLS listener, real proofs, recording upstream);
the route has no ``external_origin``, so the listener's Host allowlist is what applies (DPOP-14)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.foundation.rawhttp import raw_request

from .e2e_support import AUD, ISS, AsKey, proof_for
from .proofs import Signer


def body(as_key: AsKey, upstream_url: str) -> str:
    return f"""
issuers:
  - name: bank-as
    issuer: {ISS}
    jwks_file: {as_key.jwks}
dpop:
  algorithms: [PS256, ES256, EdDSA]
routes:
  - id: accounts
    match: {{path_prefix: /accounts}}
    upstream: {upstream_url}
    auth: {{issuers: [bank-as], audience: [{AUD}], scopes: [accounts], sender_constraint: dpop}}
"""


@pytest.mark.parametrize(
    ("host", "htu"),
    [
        # A proof made for /accounts/other passes on /accounts/x when Host carries the path.
        ("localhost:{port}/accounts/other?", "https://localhost:{port}/accounts/other"),
        # A proof made for / passes on any path.
        ("localhost:{port}?", "https://localhost:{port}/"),
        # A proof made for another port.
        ("localhost:1", "https://localhost:1/accounts/x"),
        ("localhost:{port}#", "https://localhost:{port}/"),
        ("localhost:{port}/", "https://localhost:{port}//accounts/x"),
        # No port: the default one (RFC 3986 §6.2.3), which is not this listener's: a proof for
        # another service on the same host name must not pass here.
        ("localhost", "https://localhost/accounts/x"),
    ],
)
async def test_host_cannot_choose_the_htu(
    gateway: Any, upstream: Any, as_key: AsKey, k1: Signer, pki: Any, host: str, htu: str
) -> None:
    gw = await gateway(body(as_key, upstream.url))
    token = as_key.token(jkt=k1.jkt)
    proof = proof_for(k1, token, htu=htu.format(port=gw.port))
    status, out = await raw_request(
        gw.port, pki.client_context(), "/accounts/x", host=host.format(port=gw.port),
        headers=[("Authorization", f"DPoP {token}"), ("DPoP", proof)],
    )
    assert status in (400, 401, 421), out[:300]
    assert upstream.requests == []


async def test_proof_for_the_real_url_passes(
    gateway: Any, upstream: Any, as_key: AsKey, k1: Signer, pki: Any
) -> None:
    gw = await gateway(body(as_key, upstream.url))
    token = as_key.token(jkt=k1.jkt)
    for host in (f"localhost:{gw.port}", f"LocalHost:{gw.port}"):
        proof = proof_for(k1, token, htu=f"https://localhost:{gw.port}/accounts/x")
        status, out = await raw_request(
            gw.port, pki.client_context(), "/accounts/x?from=1", host=host,
            headers=[("Authorization", f"DPoP {token}"), ("DPoP", proof)],
        )
        assert status == 200, out[:400]
    assert len(upstream.requests) == 2


@pytest.mark.parametrize(
    ("target", "htu_path"),
    [
        ("/accounts/a%3Ab%40c", "/accounts/a%3Ab%40c"),  # signed as sent
        ("/accounts/a%3Ab%40c", "/accounts/a:b@c"),  # signed in canonical form
        ("/accounts/a:b", "/accounts/a%3ab"),
        ("/accounts/%7Eme", "/accounts/~me"),
        ("/accounts/caf%c3%a9", "/accounts/caf%C3%A9"),
    ],
)
async def test_htu_matches_the_canonical_target(
    gateway: Any, upstream: Any, as_key: AsKey, k1: Signer, pki: Any, target: str, htu_path: str
) -> None:
    """The htu path is compared with the canonical path the route was chosen on and that is
    forwarded, under the same equivalences (gateway.canonical), so a client that signs the path it
    sends is never refused for an escape the gateway decoded."""
    gw = await gateway(body(as_key, upstream.url))
    token = as_key.token(jkt=k1.jkt)
    proof = proof_for(k1, token, htu=f"https://localhost:{gw.port}{htu_path}")
    status, out = await raw_request(gw.port, pki.client_context(), target,
                                    headers=[("Authorization", f"DPoP {token}"), ("DPoP", proof)])
    assert status == 200, out[:400]
