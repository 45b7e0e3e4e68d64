"""The authz stage (issue #16 items 2-5): RFC 9396 authorization_details keys, consent binding,
CEL rules, the refusal and its challenge. Unit level: real config parsing, real CEL."""

from __future__ import annotations

import time
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.authz import check_authz
from gateway.challenge import ChallengeSettings, render_challenges
from gateway.config import parse_config
from gateway.config.authz import AuthzConfig
from gateway.errors import ConfigError, InsufficientAuthorizationDetailsError, InsufficientScopeError
from gateway.model import AuthRequest, Binding, Decision, PeerCertificate, VerifiedToken

AUD = "https://api.bank.example"
ACCOUNT = {
    "type": "account_information", "actions": ["read"], "locations": [AUD],
    "datatypes": ["balances", "transactions"], "identifier": "acc-1",
    "accounts": ["acc-1", "acc-2"], "consentId": "c-77",
}
PAYMENT = {
    "type": "payment_initiation", "actions": ["initiate"], "locations": [AUD],
    "instructedAmount": {"currency": "EUR", "amount": "123.50"},
    "creditorAccount": {"iban": "DE02100100109307118603"},
}


def authz(block: dict[str, Any]) -> AuthzConfig:
    return AuthzConfig.model_validate(block)


def token(details: object = None, **claims: Any) -> VerifiedToken:
    kept: dict[str, Any] = {"sub": "cust-1", **claims}
    if details is not None:
        kept["authorization_details"] = details
    return VerifiedToken(
        issuer="https://as.bank.example", subject="cust-1", client_id="tpp-1", audience=(AUD,),
        scopes=frozenset({"accounts"}), expires_at=time.time() + 300, jti="j", cnf_jkt="jkt",
        cnf_x5t_s256=None, source="jwt", claims=MappingProxyType(kept),
    )


def req(method: str = "GET", path: str = "/accounts/acc-1", params: dict[str, Any] | None = None,
        headers: dict[str, str] | list[tuple[str, str]] | None = None, query: str = "") -> AuthRequest:
    h = CIMultiDict({"Authorization": "DPoP x"})
    for k, v in (headers.items() if isinstance(headers, dict) else headers or []):
        h.add(k, v)
    return AuthRequest(method, AUD + path, path, query, CIMultiDictProxy(h), PeerCertificate(b"cert-der"),
                       path_params=params if params is not None else {"account_id": "acc-1"})


def run(cfg: AuthzConfig, tok: VerifiedToken, request: AuthRequest | None = None, body: object = None) -> None:
    check_authz(request or req(), Decision(tok, Binding("dpop", "jkt")), cfg, "accounts", body)


def refused(cfg: AuthzConfig, tok: VerifiedToken, request: AuthRequest | None = None, body: object = None) -> str:
    with pytest.raises((InsufficientAuthorizationDetailsError, InsufficientScopeError)) as info:
        run(cfg, tok, request, body)
    assert info.value.status == 403
    return info.value.reason


ACCOUNT_RULE = authz({"rules": [{"id": "account_read", "authorization_details": {
    "types": ["account_information"], "actions": ["read"], "locations": [AUD], "datatypes": ["balances"],
    "identifier": {"path": "account_id"}}}]})


def test_matching_entry_allows() -> None:
    run(ACCOUNT_RULE, token([PAYMENT, ACCOUNT]))


@pytest.mark.parametrize(
    "entry",
    [
        {**ACCOUNT, "identifier": "acc-2"},  # another account
        {**ACCOUNT, "identifier": "ACC-1"},  # no case folding
        {**ACCOUNT, "identifier": " acc-1"},  # no trimming
        {**ACCOUNT, "type": "payment_initiation"},
        {**ACCOUNT, "actions": ["list"]},
        {**ACCOUNT, "actions": "read"},  # type confusion: string where a list is expected
        {**ACCOUNT, "actions": [["read"]]},
        {**ACCOUNT, "datatypes": ["transactions"]},
        {**ACCOUNT, "locations": ["https://other.example"]},
        {**ACCOUNT, "locations": AUD},
        {**ACCOUNT, "identifier": ["acc-1"]},
        {**ACCOUNT, "identifier": None},
        {**ACCOUNT, "type": ["account_information"]},
        {k: v for k, v in ACCOUNT.items() if k != "identifier"},
    ],
)
def test_entry_that_does_not_grant(entry: dict[str, Any]) -> None:
    assert refused(ACCOUNT_RULE, token([entry])) == "authz_account_read"


@pytest.mark.parametrize(
    "details",
    ["absent", {"type": "account_information"}, "account_information", [], [ACCOUNT, "x"], [None],
     [ACCOUNT] * 65, 1, True],
)
def test_absent_or_malformed_claim_refuses(details: object) -> None:
    refused(ACCOUNT_RULE, token(None if details == "absent" else details))


def test_conditions_must_hold_in_one_entry() -> None:
    """Actions from one entry and the identifier from another do not add up."""
    a = {**ACCOUNT, "actions": ["list"]}
    b = {**ACCOUNT, "identifier": "acc-9"}
    refused(ACCOUNT_RULE, token([a, b]))


def test_fields_header_and_lists() -> None:
    cfg = authz({"rules": [{"id": "fields", "authorization_details": {"types": ["account_information"], "fields": [
        {"field": "accounts", "path": "account_id"}, {"field": "consentId", "header": "X-Consent-Id"}]}}]})
    run(cfg, token([ACCOUNT]), req(params={"account_id": "acc-2"}, headers={"x-consent-id": "c-77"}))
    refused(cfg, token([ACCOUNT]), req(params={"account_id": "acc-3"}, headers={"x-consent-id": "c-77"}))
    refused(cfg, token([ACCOUNT]), req(headers={"x-consent-id": "c-78"}))
    refused(cfg, token([ACCOUNT]), req())  # header absent
    refused(cfg, token([ACCOUNT]), req(headers=[("x-consent-id", "c-77"), ("x-consent-id", "c-77")]))  # twice
    nested = authz({"rules": [{"id": "creditor", "authorization_details": {"types": ["payment_initiation"],
                                "fields": [{"field": "creditorAccount.iban", "header": "x-iban"}]}}]})
    run(nested, token([PAYMENT]), req(headers={"x-iban": "DE02100100109307118603"}))
    refused(nested, token([PAYMENT]), req(headers={"x-iban": "DE02100100109307118604"}))


def test_int_parameter_matches_json_integer_not_boolean() -> None:
    cfg = authz({"rules": [{"id": "n", "authorization_details": {"types": ["t"], "identifier": {"path": "n"}}}]})
    run(cfg, token([{"type": "t", "identifier": 1}]), req(params={"n": 1}))
    run(cfg, token([{"type": "t", "identifier": "1"}]), req(params={"n": 1}))
    refused(cfg, token([{"type": "t", "identifier": True}]), req(params={"n": 1}))
    refused(cfg, token([{"type": "t", "identifier": 1.0}]), req(params={"n": 1}))


def test_consent_binding() -> None:
    cfg = authz({"rules": [{"id": "intent", "consent": {"claim": "openbanking_intent_id", "path": "account_id"}}]})
    run(cfg, token(openbanking_intent_id="acc-1"))
    assert refused(cfg, token(openbanking_intent_id="acc-2")) == "authz_intent"
    refused(cfg, token())
    refused(cfg, token(openbanking_intent_id=["acc-1"]))
    by_header = authz({"rules": [{"id": "consent", "consent": {"claim": "consent_id", "header": "x-consent-id"}}]})
    run(by_header, token(consent_id="urn:bank:c1"), req(headers={"X-Consent-Id": "urn:bank:c1"}))
    refused(by_header, token(consent_id="urn:bank:c1"), req(headers={"X-Consent-Id": "urn:bank:c2"}))
    refused(by_header, token(consent_id="urn:bank:c1"), req(headers={"X-Consent-Id": ""}))


def test_rules_apply_per_method() -> None:
    cfg = authz({"rules": [
        {"id": "read", "methods": ["GET"], "consent": {"claim": "consent_id", "path": "account_id"}},
        {"id": "write", "methods": ["POST"], "expression": "false"},
    ]})
    run(cfg, token(consent_id="acc-1"), req("GET"))
    run(cfg, token(consent_id="acc-1"), req("HEAD"))  # HEAD follows GET
    assert refused(cfg, token(consent_id="acc-1"), req("POST")) == "authz_write"
    run(cfg, token(), req("DELETE"))  # no rule for DELETE: the scopes alone decide


PAYMENT_EXPR = (
    'double(request.body.instructedAmount.amount) <= double(token.authorization_details.filter(d, '
    'd.type == "payment_initiation")[0].instructedAmount.amount) && request.body.creditorAccount.iban == '
    'token.authorization_details.filter(d, d.type == "payment_initiation")[0].creditorAccount.iban'
)


@pytest.mark.parametrize(
    ("body", "ok"),
    [
        ({"instructedAmount": {"amount": "100.00"}, "creditorAccount": {"iban": "DE02100100109307118603"}}, True),
        ({"instructedAmount": {"amount": "123.50"}, "creditorAccount": {"iban": "DE02100100109307118603"}}, True),
        ({"instructedAmount": {"amount": "123.51"}, "creditorAccount": {"iban": "DE02100100109307118603"}}, False),
        ({"instructedAmount": {"amount": "1e9"}, "creditorAccount": {"iban": "DE02100100109307118603"}}, False),
        ({"instructedAmount": {"amount": "100.00"}, "creditorAccount": {"iban": "GB00"}}, False),
        ({"instructedAmount": {"amount": 100}, "creditorAccount": {"iban": "DE02100100109307118603"}}, True),
        ({"instructedAmount": {"amount": "abc"}, "creditorAccount": {"iban": "DE02100100109307118603"}}, False),
        ({"creditorAccount": {"iban": "DE02100100109307118603"}}, False),
        (None, False),
        ([1], False),
    ],
)
def test_cel_payment_amount_rule(body: object, ok: bool) -> None:
    cfg = authz({"body": {}, "rules": [{"id": "amount", "methods": ["POST"], "expression": PAYMENT_EXPR}]})
    if ok:
        run(cfg, token([ACCOUNT, PAYMENT]), req("POST"), body)
    else:
        assert refused(cfg, token([ACCOUNT, PAYMENT]), req("POST"), body) == "authz_amount"
    refused(cfg, token([ACCOUNT]), req("POST"), body)  # no payment entry: index error, refused


@pytest.mark.parametrize(
    ("expression", "ok"),
    [
        ('request.params.account_id in token.authorization_details.map(d, d.identifier)', True),
        ('request.headers["x-fapi-customer-ip-address"] == "10.0.0.1"', True),
        ('request.query.limit == "10"', True),
        ('client.client_id == "tpp-1" && client.jkt == "jkt" && route.id == "accounts"', True),
        ('client.cert_thumbprint != ""', True),
        ('token.sub == "cust-1" && "accounts" in token.scope && token.aud[0] == "https://api.bank.example"', True),
        ('request.method == "GET" && request.path == "/accounts/acc-1"', True),
        ('token.missing == 1', False),  # no such field: evaluation error
        ('request.params.account_id + 1 == 2', False),  # type error
        ('1 / 0 == 1', False),
        ('"yes"', False),  # not a boolean
        ('request.headers["x-absent"] == "x"', False),
        ('token.authorization_details[7].identifier == "acc-1"', False),
    ],
)
def test_cel_variables_and_fail_closed(expression: str, ok: bool) -> None:
    cfg = authz({"rules": [{"id": "expr", "expression": expression}]})
    request = req(headers={"X-FAPI-Customer-IP-Address": "10.0.0.1"}, query="limit=10&limit=20")
    if ok:
        run(cfg, token([ACCOUNT]), request)
    else:
        refused(cfg, token([ACCOUNT]), request)


def test_refusal_challenge_and_selectable_error() -> None:
    tok = token([{**ACCOUNT, "identifier": "other"}])
    with pytest.raises(InsufficientAuthorizationDetailsError) as info:
        run(ACCOUNT_RULE, tok)
    err = info.value
    err.scheme = "DPoP"
    header = render_challenges(err, ChallengeSettings(schemes=("DPoP",), realm="bank"))
    assert 'error="insufficient_authorization_details"' in header
    assert "rule account_read" in header and "other" not in header and "acc-1" not in header
    legacy = AuthzConfig.model_validate({**ACCOUNT_RULE.model_dump(), "error": "insufficient_scope"})
    with pytest.raises(InsufficientScopeError) as scope_info:
        run(legacy, tok)
    assert scope_info.value.error == "insufficient_scope" and scope_info.value.reason == "authz_account_read"


ISSUER = """issuers:
  - {name: as, issuer: "https://as.bank.example", jwks_uri: "https://as.bank.example/jwks"}
listen: {external_origin: "https://api.bank.example"}
"""


def config(authz_yaml: str, match: str = '{path: "/accounts/{account_id}"}', extra: str = "") -> str:
    return ISSUER + extra + f"""routes:
  - id: accounts
    match: {match}
    upstream: http://127.0.0.1:9
    auth:
      issuers: [as]
      audience: {AUD}
      scopes: [accounts]
      authz:
{authz_yaml}
"""


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ('        rules:\n          - {id: a, consent: {claim: c, path: acct}}',
         "test.yaml:14: routes[0].auth.authz.rules[0].consent.path: 'acct' is not a parameter of this route's match"),
        ('        rules:\n          - {id: a, consent: {claim: c, path: account_id, header: x}}',
         "routes[0].auth.authz.rules[0].consent: set exactly one of path"),
        ('        rules:\n          - {id: a}', "at least one of authorization_details, consent or expression"),
        ('        rules:\n          - {id: Bad-Id, expression: "true"}', "routes[0].auth.authz.rules[0].id"),
        ('        rules:\n          - {id: a, expression: "true"}\n          - {id: a, expression: "true"}',
         "duplicate rule id"),
        ('        rules:\n          - id: a\n            expression: "request.params.x =="',
         "test.yaml:15: routes[0].auth.authz.rules[0].expression: CEL syntax error"),
        ('        rules:\n          - {id: a, expression: "tokens.x == 1"}', "unknown variable 'tokens'"),
        ('        rules:\n          - {id: a, expression: "system(1)"}', "unknown function 'system'"),
        ('        rules:\n          - {id: a, expression: "request.body.x == 1"}',
         "opt in with routes[0].auth.authz.body"),
        ('        rules:\n          - {id: a, authorization_details: {types: []}}', "types"),
        ('        rules:\n          - {id: a, methods: [DELETE], expression: "true"}', "the rule never applies"),
    ],
)
def test_config_errors_name_the_field(block: str, message: str) -> None:
    match = '{path: "/accounts/{account_id}"' + (", methods: [GET]}" if "DELETE" in block else "}")
    with pytest.raises(ConfigError) as info:
        parse_config(config(block, match), source="test.yaml")
    assert message in str(info.value), str(info.value)


def test_body_rules_refused_on_decision_fronts() -> None:
    fronts = "decision: {enabled: true, http: {host: 127.0.0.1, port: 0}}\n"
    block = '        body: {max_bytes: 1024}\n        rules:\n          - {id: a, expression: "request.body.x == 1"}'
    with pytest.raises(ConfigError) as info:
        parse_config(config(block, extra=fronts), source="test.yaml")
    assert "routes[0].auth.authz.body: the decision fronts" in str(info.value)
    parse_config(config(block), source="test.yaml")  # proxy only: fine


def test_cached_results_are_per_token_path_and_client() -> None:
    """Expressions that read no header, query or body are kept per (token, path, client): the
    cache never answers for another path, token, certificate or expression."""
    cfg = authz({"rules": [{"id": "expr", "expression": 'request.params.account_id == "acc-1"'}]})
    tok = token([ACCOUNT])
    for _ in range(3):
        run(cfg, tok, req(path="/accounts/acc-1", params={"account_id": "acc-1"}))
        refused(cfg, tok, req(path="/accounts/acc-2", params={"account_id": "acc-2"}))
    other = authz({"rules": [{"id": "expr", "expression": 'request.params.account_id == "acc-2"'}]})
    refused(other, tok, req(path="/accounts/acc-1", params={"account_id": "acc-1"}))
    by_cert = authz({"rules": [{"id": "cert", "expression": 'client.cert_thumbprint.startsWith("NBjn")'}]})
    run(by_cert, tok)
    no_cert = AuthRequest("GET", AUD + "/accounts/acc-1", "/accounts/acc-1", "", req().headers, None,
                          path_params={"account_id": "acc-1"})
    refused(by_cert, tok, no_cert)
    by_header = authz({"rules": [{"id": "hdr", "expression": 'request.headers["x-a"] == "1"'}]})
    run(by_header, tok, req(headers={"x-a": "1"}))
    refused(by_header, tok, req(headers={"x-a": "2"}))  # headers: never cached


def _remediation(header: str) -> dict[str, Any]:
    import base64
    import json
    import re

    m = re.search(r'authorization_remediation="([A-Za-z0-9_-]+)"', header)
    assert m is not None, header
    raw = m.group(1)
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    return decoded


def test_draft_06_insufficient_authorization_with_remediation() -> None:
    """authz.error: insufficient_authorization (draft-zehavi-oauth-rar-metadata-05/-06): 401 and
    the details to ask for, built from the rule and the request, never from the token."""
    from gateway.errors import InsufficientAuthorizationError

    cfg = authz({"error": "insufficient_authorization", "rules": [{"id": "account_read", "authorization_details": {
        "types": ["account_information"], "actions": ["read"], "locations": [AUD], "datatypes": ["balances"],
        "identifier": {"path": "account_id"}, "fields": [{"field": "consent.id", "header": "x-consent-id"}]}}]})
    tok = token([{**ACCOUNT, "identifier": "acc-9", "secret": "token-only"}])
    request = req(params={"account_id": "acc-1"}, headers={"x-consent-id": "c-1"})
    with pytest.raises(InsufficientAuthorizationError) as info:
        run(cfg, tok, request)
    err = info.value
    assert err.status == 401 and err.reason == "authz_account_read"
    err.scheme = "DPoP"
    header = render_challenges(err, ChallengeSettings(schemes=("DPoP",)))
    assert 'DPoP error="insufficient_authorization"' in header
    got = _remediation(header)
    assert got["authorization_details"] == [{
        "type": "account_information", "actions": ["read"], "locations": [AUD], "datatypes": ["balances"],
        "identifier": "acc-1", "consent": {"id": "c-1"}}]
    assert "acc-9" not in header and "token-only" not in json_text(got)
    # Same request, same details: the same reference (clients match tokens by it).
    with pytest.raises(InsufficientAuthorizationError) as again:
        run(cfg, tok, request)
    assert again.value.remediation == err.remediation and len(got["authorization_reference"]) == 22
    # A consent or CEL rule has nothing a client could ask for: the error code only.
    consent = authz({"error": "insufficient_authorization",
                     "rules": [{"id": "c", "consent": {"claim": "consent_id", "path": "account_id"}}]})
    with pytest.raises(InsufficientAuthorizationError) as plain:
        run(consent, tok)
    assert plain.value.remediation == ""


def json_text(value: object) -> str:
    import json

    return json.dumps(value)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
ENTRY = st.fixed_dictionaries({"type": st.sampled_from(["payment_initiation", "account_information", 1])},
                              optional={"actions": JSON, "identifier": JSON, "instructedAmount": JSON,
                                        "creditorAccount": JSON, "locations": JSON})


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSON, st.lists(ENTRY, max_size=3)), JSON)
def test_property_any_token_or_body_is_allowed_or_refused_never_an_error(details: object, body: object) -> None:
    """Whatever JSON the token's authorization_details and the body hold, the stage either allows or
    refuses with the route's error: never another exception (which would be a 500)."""
    cfg = authz({"body": {}, "rules": [
        {"id": "rar", "authorization_details": {"types": ["payment_initiation", "account_information"],
                                                "identifier": {"path": "account_id"}}},
        {"id": "amount", "methods": ["POST"], "expression": PAYMENT_EXPR},
    ]})
    try:
        run(cfg, token(details), req("POST"), body)
    except InsufficientAuthorizationDetailsError as exc:
        assert exc.reason in ("authz_rar", "authz_amount")


def test_long_request_values_are_checked_but_not_cached() -> None:
    from gateway.authz import stage

    long_id = "c-" + "x" * 300
    cfg = authz({"rules": [{"id": "fields", "authorization_details": {"types": ["account_information"], "fields": [
        {"field": "consentId", "header": "x-consent-id"}]}}]})
    tok = token([{**ACCOUNT, "consentId": long_id}])
    before = len(stage._rar_results)
    run(cfg, tok, req(headers={"x-consent-id": long_id}))
    refused(cfg, tok, req(headers={"x-consent-id": long_id + "y"}))
    assert not any(long_id in str(key) for key in stage._rar_results) and len(stage._rar_results) == before
