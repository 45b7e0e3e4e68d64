"""Per-method scopes never fail open (issue #13 finding 8, AUTHZ-02c).

A route whose ``method_scopes`` names some methods must not let the others through on no scope:
the config is refused at load unless every method the route matches has a rule (or ``scopes:``
gives the default), and at request time a method without a rule is refused (403).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import parse_config
from gateway.config.auth import AuthPolicy
from gateway.errors import ConfigError, InsufficientScopeError
from gateway.model import AuthRequest, Binding, VerifiedToken
from gateway.policy import check_policy

AUD = "https://api.bank.example"
ISSUER = """
issuers:
  - {name: bank-as, issuer: "https://as.bank.example", jwks_uri: "https://as.bank.example/jwks"}
"""


def config(auth: str, match: str = "{path_prefix: /payments}") -> str:
    return ISSUER + f"""
routes:
  - id: payments
    match: {match}
    upstream: http://127.0.0.1:9
    external_origin: https://api.bank.example
    auth: {auth}
"""


def auth_block(rest: str) -> str:
    return "{issuers: [bank-as], audience: " + AUD + ", " + rest + "}"


def token(scopes: set[str]) -> VerifiedToken:
    return VerifiedToken(
        issuer="https://as.bank.example", subject="cust-1", client_id="tpp-1", audience=(AUD,),
        scopes=frozenset(scopes), expires_at=time.time() + 300, jti="j", cnf_jkt="jkt", cnf_x5t_s256=None,
        source="jwt",
    )


def req(method: str) -> AuthRequest:
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": "DPoP x"}))
    return AuthRequest(method, f"{AUD}/payments", "/payments", "", headers, None)


def policy(**kw: Any) -> AuthPolicy:
    return AuthPolicy.model_validate({"issuers": ["bank-as"], "audience": AUD, **kw})


DPOP = Binding("dpop", "jkt")


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_method_without_a_rule_is_refused_at_request_time(method: str) -> None:
    """Before the fix: a token with no scope at all passed GET/PUT/DELETE on a POST-only scope map."""
    pol = policy(method_scopes={"POST": ["payments:write"]})
    with pytest.raises(InsufficientScopeError) as info:
        check_policy(req(method), token(set()), DPOP, pol)
    assert info.value.status == 403 and info.value.reason == "method_not_permitted"
    # Even a token holding every scope the route knows: no rule for the method, no access.
    with pytest.raises(InsufficientScopeError):
        check_policy(req(method), token({"payments:write"}), DPOP, pol)
    check_policy(req("POST"), token({"payments:write"}), DPOP, pol)


def test_scopes_is_the_default_for_methods_without_a_rule() -> None:
    pol = policy(scopes=["accounts:read"], method_scopes={"POST": ["payments:write"]})
    check_policy(req("DELETE"), token({"accounts:read"}), DPOP, pol)
    with pytest.raises(InsufficientScopeError) as info:
        check_policy(req("DELETE"), token(set()), DPOP, pol)
    assert info.value.scope == "accounts:read"
    # HEAD needs what GET needs.
    pol = policy(method_scopes={"GET": ["accounts:read"]}, scopes=["x"])
    with pytest.raises(InsufficientScopeError):
        check_policy(req("HEAD"), token({"x"}), DPOP, pol)


def test_explicit_empty_scopes_is_a_deliberate_default() -> None:
    """``scopes: []`` written out next to method_scopes: other methods need no scope (an opt-in)."""
    pol = policy(scopes=[], method_scopes={"POST": ["payments:write"]})
    check_policy(req("GET"), token(set()), DPOP, pol)


def test_unsafe_route_is_refused_at_load() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config("{issuers: [bank-as], audience: https://api.bank.example, "
                            "method_scopes: {POST: [payments:write]}}"), source="gw.yaml")
    text = str(info.value)
    assert "gw.yaml:" in text and "routes[0].auth.method_scopes" in text
    for method in ("DELETE", "GET", "PATCH", "PUT"):
        assert method in text


@pytest.mark.parametrize(
    ("auth", "match"),
    [
        # Every method the route matches has a rule.
        (auth_block("method_scopes: {POST: [p]}"),
         "{path_prefix: /payments, methods: [POST]}"),
        # HEAD is covered by GET (as the router matches HEAD on a GET route).
        (auth_block("method_scopes: {GET: [r], POST: [p]}"),
         "{path_prefix: /payments, methods: [GET, HEAD, POST]}"),
        # scopes: is the default for the other methods.
        (auth_block("scopes: [r], method_scopes: {POST: [p]}"),
         "{path_prefix: /payments}"),
        # written-out empty default: a deliberate choice.
        (auth_block("scopes: [], method_scopes: {POST: [p]}"),
         "{path_prefix: /payments}"),
    ],
)
def test_covered_routes_load(auth: str, match: str) -> None:
    parse_config(config(auth, match))


def test_route_matching_uncovered_methods_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config(auth_block("method_scopes: {POST: [p]}"),
                            "{path_prefix: /payments, methods: [GET, POST]}"))
    assert "GET" in str(info.value) and "HEAD" not in str(info.value)
