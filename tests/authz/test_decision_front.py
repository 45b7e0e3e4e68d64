"""The authz rules hold on the decision fronts too (one implementation: ``app.authorize``):
Traefik forwardAuth checks for a template route with an RFC 9396 rule; the rule's refusal is the
answer the proxy relays (403, the draft's error, the rule id)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.server import GatewayServer
from tests.decision_http.conftest import TRAEFIK_EXAMPLE, gateway_config, http_port, start_gateway
from tests.decision_http.test_fronts import ORIGIN, call, proof, traefik_check
from tests.dpop.e2e_support import AsKey
from tests.dpop.proofs import Signer, es256

ACCOUNT = {"type": "account_information", "actions": ["read"], "identifier": "acc-1"}


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[tuple[GatewayServer, AsKey]]:
    as_key = AsKey(tmp_path)
    cfg = gateway_config(TRAEFIK_EXAMPLE, as_key, origin=ORIGIN, trusted=["127.0.0.1/32"])
    accounts = next(r for r in cfg["routes"] if r["id"] == "accounts")
    accounts["match"] = {"path": "/accounts/{account_id}"}
    accounts["auth"]["authz"] = {"rules": [{"id": "account_read", "authorization_details": {
        "types": ["account_information"], "actions": ["read"], "identifier": {"path": "account_id"}}}]}
    server = await start_gateway(cfg)
    yield server, as_key
    await server.stop()


async def test_forward_auth_applies_the_rules(gw: tuple[GatewayServer, AsKey]) -> None:
    server, as_key = gw
    k: Signer = es256()
    token = as_key.token(jkt=k.jkt, authorization_details=[ACCOUNT])
    port = http_port(server)

    def check(path: str) -> list[tuple[str, str]]:
        return traefik_check(path, extra=[("Authorization", f"DPoP {token}"), ("DPoP", proof(k, token, path=path))])

    status, _, body = await call(port, "/forward_auth", check("/accounts/acc-1"))
    assert status == 200, body
    status, resp, body = await call(port, "/forward_auth", check("/accounts/acc-2"))
    assert status == 403 and 'error="insufficient_authorization_details"' in resp["WWW-Authenticate"]
    assert json.loads(body)["error"] == "insufficient_authorization_details"
    assert "rule account_read" in resp["WWW-Authenticate"]
    status, _, _ = await call(port, "/forward_auth", check("/accounts/acc-2%2F..%2Facc-1"))
    assert status == 400
