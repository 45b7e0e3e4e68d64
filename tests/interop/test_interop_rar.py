"""Issue #16 against a real AS: node-oidc-provider issues DPoP-bound tokens carrying RFC 9396
authorization_details (features.richAuthorizationRequests, client_credentials with the
``authorization_details`` parameter) to a real client (requests-oauth2client), and the gateway,
running config/examples/open-banking-rar.yaml, lets through exactly the requests inside them.

JWT access tokens carry the details as a claim (RFC 9396 §9.1); opaque ones get them from the
introspection response (§9.2); the same rules apply to both."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import requests
from requests_oauth2client.dpop import DPoPKey, DPoPToken, InvalidUseDPoPNonceResponse

from .harness import Gw, GwFactory, blocking
from .interop_as import API_SCOPES, RS_JWT, RS_OPAQUE, AuthServer

RAR_EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "open-banking-rar.yaml"
IBAN = "DE02100100109307118603"


def details(location: str, *, identifier: object = "acc-1", amount: str = "100.00") -> list[dict[str, Any]]:
    return [
        {"type": "account_information", "actions": ["read"], "locations": [location],
         "datatypes": ["balances"], "identifier": identifier, "consentId": "c-42"},
        {"type": "payment_initiation", "actions": ["initiate"], "locations": [location],
         "instructedAmount": {"currency": "EUR", "amount": amount}, "creditorAccount": {"iban": IBAN}},
    ]


def rar_token(auth: AuthServer, resource: str, authorization_details: list[dict[str, Any]] | None) -> DPoPToken:
    extra = {} if authorization_details is None else {"authorization_details": json.dumps(authorization_details)}
    token = auth.dpop_client().client_credentials(
        scope=API_SCOPES, resource=resource, dpop=True, dpop_key=DPoPKey.generate(alg="ES256"), **extra
    )
    assert isinstance(token, DPoPToken)
    return token


def call(gw: Gw, method: str, path: str, token: DPoPToken, headers: dict[str, str] | None = None,
         body: object = None) -> requests.Response:
    try:
        return gw.session().request(method, gw.url(path), auth=token, headers=headers or {},
                                    data=json.dumps(body) if body is not None else None, timeout=15)
    except InvalidUseDPoPNonceResponse as exc:
        return exc.response


@pytest.fixture
async def gw(gw_factory: GwFactory) -> Gw:
    return await gw_factory(lambda _text: RAR_EXAMPLE.read_text())


@pytest.mark.parametrize("resource", [RS_JWT, RS_OPAQUE])
async def test_account_information_inside_the_consent_only(gw: Gw, resource: str) -> None:
    token = await blocking(rar_token, gw.auth, resource, details(RS_JWT))
    if resource == RS_JWT:
        # The token really carries the details (and the gateway is not just reading a header).
        payload = str(token.access_token).split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert claims["authorization_details"][0]["identifier"] == "acc-1"
    consent = {"x-consent-id": "c-42"}
    ok = await blocking(call, gw, "GET", "/accounts/acc-1/balances", token, consent)
    assert ok.status_code == 200, (ok.status_code, ok.headers.get("WWW-Authenticate"))
    assert [r.raw_path for r in gw.upstream.requests] == ["/accounts/acc-1/balances"]
    refused = [
        ("/accounts/acc-2/balances", consent),  # another account
        ("/accounts/acc-1/transactions", consent),  # a data cluster not granted
        ("/accounts/acc-1/balances", {"x-consent-id": "c-43"}),  # another consent
        ("/accounts/acc-1/balances", {}),  # consent id missing
    ]
    for path, headers in refused:
        resp = await blocking(call, gw, "GET", path, token, headers)
        assert resp.status_code == 403, path
        challenge = resp.headers["WWW-Authenticate"]
        assert 'error="insufficient_authorization_details"' in challenge and "c-42" not in challenge
    for path in ["/accounts/acc-2%2F..%2Facc-1/balances", "/accounts/acc-2/..%2Facc-1/balances",
                 "/accounts/%2e%2e/acc-1/balances"]:
        # requests would normalise a literal "..": these are sent as written.
        resp = await blocking(call, gw, "GET", path, token, consent)
        assert resp.status_code in (400, 403), path
    assert len(gw.upstream.requests) == 1


@pytest.mark.parametrize(
    ("amount", "currency", "iban", "status"),
    [("99.99", "EUR", IBAN, 200), ("100.00", "EUR", IBAN, 200), ("100.01", "EUR", IBAN, 403),
     ("10.00", "USD", IBAN, 403), ("10.00", "EUR", "GB33BUKB20201555555555", 403)],
)
async def test_payment_initiation_within_the_consented_amount(gw: Gw, amount: str, currency: str, iban: str,
                                                              status: int) -> None:
    token = await blocking(rar_token, gw.auth, RS_JWT, details(RS_JWT))
    body = {"instructedAmount": {"currency": currency, "amount": amount}, "creditorAccount": {"iban": iban}}
    resp = await blocking(call, gw, "POST", "/payments", token, {"content-type": "application/json"}, body)
    assert resp.status_code == status, (resp.status_code, resp.headers.get("WWW-Authenticate"))
    assert len(gw.upstream.requests) == (1 if status == 200 else 0)
    if status == 200:
        assert gw.upstream.last.body_bytes == len(json.dumps(body))


@pytest.mark.parametrize("case", ["absent", "consent_number", "identifier_case", "other_location"])
async def test_absent_or_confused_details_refused(gw: Gw, case: str) -> None:
    """The AS normalises actions/locations/datatypes/identifier to strings; what it leaves alone
    (other members) can still be of another JSON type than the header it is compared with."""
    consent = "c-42"
    if case == "absent":
        token = await blocking(rar_token, gw.auth, RS_JWT, None)
    elif case == "consent_number":
        d = details(RS_JWT)
        d[0]["consentId"] = 42  # a number where the header's string is expected: no coercion
        token, consent = await blocking(rar_token, gw.auth, RS_JWT, d), "42"
    elif case == "identifier_case":
        token = await blocking(rar_token, gw.auth, RS_JWT, details(RS_JWT, identifier="ACC-1"))
    else:
        token = await blocking(rar_token, gw.auth, RS_JWT, details("https://other-api.bank.test"))
    resp = await blocking(call, gw, "GET", "/accounts/acc-1/balances", token, {"x-consent-id": consent})
    assert resp.status_code == 403 and not gw.upstream.requests
