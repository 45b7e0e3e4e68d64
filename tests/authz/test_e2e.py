"""Fine-grained authorization through the real gateway (issue #16): real TLS, real signed JWTs
carrying RFC 9396 authorization_details, DPoP proofs, a recording upstream. Exactly the requests
inside the consent reach the upstream; the rest are 403 with the draft's error code, the rule id in
the description, the metrics and the access log, and no token content anywhere."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.conftest import GatewayFactory, Pki, Upstream
from tests.dpop.proofs import ath, es256
from tests.tokens.authserver import AuthServer
from tests.tokens.conftest import AUD

pytestmark = pytest.mark.timeout(60)

ACCOUNT = {"type": "account_information", "actions": ["read"], "locations": [AUD],
           "datatypes": ["balances"], "identifier": "acc-1"}
PAYMENT = {"type": "payment_initiation", "actions": ["initiate"], "locations": [AUD],
           "instructedAmount": {"currency": "EUR", "amount": "100.00"},
           "creditorAccount": {"iban": "DE02100100109307118603"}}


def config(auth_server: AuthServer, pki: Pki, upstream: Upstream) -> str:
    return f"""
    issuers:
      - name: bank-as
        issuer: {auth_server.issuer}
        jwks_uri: {auth_server.url}/jwks
        ca: {pki.ca_pem}
    routes:
      - id: balances
        match: {{path: "/accounts/{{account_id}}/balances", methods: [GET]}}
        upstream: {upstream.url}
        auth:
          issuers: [bank-as]
          audience: {AUD}
          scopes: [accounts]
          sender_constraint: dpop
          authz:
            rules:
              - id: account_read
                authorization_details:
                  types: [account_information]
                  actions: [read]
                  locations: [{AUD}]
                  datatypes: [balances]
                  identifier: {{path: account_id}}
              - id: intent
                consent: {{claim: openbanking_intent_id, header: x-intent-id}}
      - id: payments
        match: {{path: /payments, methods: [POST]}}
        upstream: {upstream.url}
        auth:
          issuers: [bank-as]
          audience: {AUD}
          scopes: [payments]
          sender_constraint: dpop
          authz:
            error: insufficient_scope
            body: {{max_bytes: 4096}}
            rules:
              - id: payment_amount
                authorization_details: {{types: [payment_initiation], actions: [initiate]}}
                expression: >-
                  double(request.body.instructedAmount.amount) <= double(token.authorization_details
                  .filter(d, d.type == "payment_initiation")[0].instructedAmount.amount)
                  && request.body.creditorAccount.iban == token.authorization_details
                  .filter(d, d.type == "payment_initiation")[0].creditorAccount.iban
    """


@pytest.fixture
async def gw(gateway: GatewayFactory, auth_server: AuthServer, pki: Pki, upstream: Upstream) -> Any:
    return await gateway(config(auth_server, pki, upstream))


async def call(gw: Any, pki: Pki, method: str, path: str, token: str, signer: Any,
               headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, Any, str]:
    # The proof's htu is the URL as sent; the gateway compares it with the canonical path.
    proof = signer.proof(htm=method, htu=f"https://localhost:{gw.port}{path.split('?')[0]}", ath=ath(token),
                         iat=int(time.time()))
    all_headers = {"Authorization": f"DPoP {token}", "DPoP": proof, **(headers or {})}
    async with aiohttp.ClientSession() as s, s.request(
        method, URL(f"https://localhost:{gw.port}{path}", encoded=True), ssl=pki.client_context(None),
        headers=all_headers,
        data=raw, expect100=bool(headers and "Expect" in headers),
    ) as r:
        return r.status, r.headers, await r.text()


async def test_account_access_exactly_inside_the_consent(gw: Any, auth_server: AuthServer, pki: Pki,
                                                         upstream: Upstream) -> None:
    signer = es256()
    tok = auth_server.token("ec-1", cnf={"jkt": signer.jkt}, authorization_details=[ACCOUNT],
                            openbanking_intent_id="intent-1")
    intent = {"x-intent-id": "intent-1"}
    status, _, _ = await call(gw, pki, "GET", "/accounts/acc-1/balances", tok, signer, intent)
    assert status == 200 and upstream.last.raw_path == "/accounts/acc-1/balances"
    forwarded = len(upstream.requests)
    for path, headers in [
        ("/accounts/acc-2/balances", intent),  # another account
        ("/accounts/ACC-1/balances", intent),  # ids are case-sensitive
        ("/accounts/acc-1/balances", {"x-intent-id": "intent-2"}),  # consent id mismatch
        ("/accounts/acc-1/balances", {}),  # consent header missing
    ]:
        status, h, text = await call(gw, pki, "GET", path, tok, signer, headers)
        assert status == 403, path
        challenge = h["WWW-Authenticate"]
        assert challenge.startswith("DPoP ") and 'error="insufficient_authorization_details"' in challenge
        assert "intent-1" not in challenge + text and "acc-1" not in challenge
    for path in ["/accounts/acc-2%2F..%2Facc-1/balances", "/accounts/x/../acc-1/balances",
                 "/accounts/%2e%2e/acc-1/balances", "/accounts/acc-1;x/balances"]:
        status, _, _ = await call(gw, pki, "GET", path, tok, signer, intent)
        assert status == 400, path
    # Percent-encoding the allowed id reaches the same account: decoded, same decision.
    status, _, _ = await call(gw, pki, "GET", "/accounts/%61cc-1/balances", tok, signer, intent)
    assert status == 200
    assert len(upstream.requests) == forwarded + 1
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r:
        metrics = await r.text()
    assert 'reason="authz_account_read"' in metrics and 'reason="authz_intent"' in metrics


@pytest.mark.parametrize(
    "details",
    [None, "account_information", {"type": "account_information"}, [{**ACCOUNT, "actions": "read"}],
     [{**ACCOUNT, "datatypes": ["transactions"]}], [{**ACCOUNT, "locations": ["https://other.example"]}]],
)
async def test_missing_or_malformed_details_refused(gw: Any, auth_server: AuthServer, pki: Pki,
                                                    upstream: Upstream, details: object) -> None:
    signer = es256()
    tok = auth_server.token("ec-1", cnf={"jkt": signer.jkt}, authorization_details=details,
                            openbanking_intent_id="intent-1")
    status, h, _ = await call(gw, pki, "GET", "/accounts/acc-1/balances", tok, signer, {"x-intent-id": "intent-1"})
    assert status == 403 and "authz_account_read" not in h["WWW-Authenticate"]  # the id is in the description
    assert "rule account_read" in h["WWW-Authenticate"] and not upstream.requests


IBAN = "DE02100100109307118603"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (json.dumps({"instructedAmount": {"amount": "99.99"}, "creditorAccount": {"iban": IBAN}}), 200),
        (json.dumps({"instructedAmount": {"amount": "100.00"}, "creditorAccount": {"iban": IBAN}}), 200),
        (json.dumps({"instructedAmount": {"amount": "100.01"}, "creditorAccount": {"iban": IBAN}}), 403),
        (json.dumps({"instructedAmount": {"amount": "5.00"}, "creditorAccount": {"iban": "GB33BUKB20201555555555"}}),
         403),
        # Two parsers could read a duplicate member differently: not JSON here, so refused.
        ('{"instructedAmount": {"amount": "1.00"}, "instructedAmount": {"amount": "1000.00"}, '
         f'"creditorAccount": {{"iban": "{IBAN}"}}}}', 403),
        ("not json", 403),
        ("[1, 2]", 403),
        ("", 403),
        (json.dumps({"pad": "x" * 5000, "instructedAmount": {"amount": "1.00"}}), 413),  # over max_bytes
    ],
)
async def test_payment_amount_and_creditor_from_the_body(gw: Any, auth_server: AuthServer, pki: Pki,
                                                         upstream: Upstream, body: str, status: int) -> None:
    """Bounded JSON body inspection: the CEL rule compares the body with the consented payment;
    an allowed body reaches the upstream byte for byte, a refused one never does."""
    signer = es256()
    tok = auth_server.token("ec-1", cnf={"jkt": signer.jkt}, authorization_details=[PAYMENT])
    got, h, _ = await call(gw, pki, "POST", "/payments", tok, signer, {"content-type": "application/json"},
                           raw=body.encode())
    assert got == status
    if status == 200:
        assert len(upstream.requests) == 1 and upstream.last.body_bytes == len(body.encode())
    else:
        assert not upstream.requests
    if status == 403:
        # The route selected RFC 6750's error for clients that only know it.
        assert 'error="insufficient_scope"' in h["WWW-Authenticate"] and "rule payment_amount" in h["WWW-Authenticate"]


async def test_payment_without_payment_entry_refused(gw: Any, auth_server: AuthServer, pki: Pki,
                                                     upstream: Upstream) -> None:
    signer = es256()
    tok = auth_server.token("ec-1", cnf={"jkt": signer.jkt}, authorization_details=[ACCOUNT])
    body = json.dumps({"instructedAmount": {"amount": "1.00"}, "creditorAccount": {"iban": IBAN}}).encode()
    status, _, _ = await call(gw, pki, "POST", "/payments", tok, signer, {"content-type": "application/json"}, raw=body)
    assert status == 403 and not upstream.requests


async def test_expect_continue_with_body_inspection(gw: Any, auth_server: AuthServer, pki: Pki,
                                                    upstream: Upstream) -> None:
    """A client that waits for 100 Continue gets it before the body is read for inspection."""
    signer = es256()
    tok = auth_server.token("ec-1", cnf={"jkt": signer.jkt}, authorization_details=[PAYMENT])
    body = json.dumps({"instructedAmount": {"amount": "1.00"}, "creditorAccount": {"iban": IBAN}}).encode()
    status, _, _ = await call(gw, pki, "POST", "/payments", tok, signer,
                              {"content-type": "application/json", "Expect": "100-continue"}, raw=body)
    assert status == 200 and upstream.last.body_bytes == len(body)


async def test_draft_06_signalling_through_the_gateway(gateway: GatewayFactory, auth_server: AuthServer, pki: Pki,
                                                       upstream: Upstream) -> None:
    """authz.error: insufficient_authorization: 401 with the DPoP challenge carrying
    authorization_remediation (base64url JSON of the details to ask for)."""
    import base64
    import re

    text = config(auth_server, pki, upstream).replace(
        "          authz:\n            rules:\n              - id: account_read",
        "          authz:\n            error: insufficient_authorization\n            rules:\n"
        "              - id: account_read", 1)
    assert "error: insufficient_authorization\n" in text
    gw = await gateway(text)
    signer = es256()
    tok = auth_server.token("ec-1", cnf={"jkt": signer.jkt}, authorization_details=[ACCOUNT],
                            openbanking_intent_id="intent-1")
    status, h, _ = await call(gw, pki, "GET", "/accounts/acc-2/balances", tok, signer, {"x-intent-id": "intent-1"})
    assert status == 401 and not upstream.requests
    challenge = h["WWW-Authenticate"]
    assert challenge.startswith("DPoP ") and 'error="insufficient_authorization"' in challenge
    m = re.search(r'authorization_remediation="([A-Za-z0-9_-]+)"', challenge)
    assert m is not None
    raw = m.group(1)
    got = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    assert got["authorization_details"][0]["identifier"] == "acc-2"
    assert got["authorization_details"][0]["type"] == "account_information"
