"""Route policy: audience, scopes, clients, claims, identity headers (JWT-07, JWT-13, AUTHZ-01/02/04, HDR-12)."""

from __future__ import annotations

import time
from types import MappingProxyType
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.challenge import ChallengeSettings, render_challenges
from gateway.config.auth import AuthPolicy
from gateway.errors import InsufficientScopeError, InvalidTokenError
from gateway.model import AuthRequest, Binding, VerifiedToken
from gateway.policy import check_policy, identity_header_names

from .conftest import AUD, policy


def token(**kw: Any) -> VerifiedToken:
    base: dict[str, Any] = dict(
        issuer="https://as.bank.example", subject="cust-123", client_id="tpp-1", audience=(AUD,),
        scopes=frozenset({"accounts"}), expires_at=time.time() + 300, jti="j-1", cnf_jkt="jkt", cnf_x5t_s256=None,
        source="jwt", claims=MappingProxyType({"acr": "urn:sca"}),
    )
    base.update(kw)
    return VerifiedToken(**base)


def req(method: str = "GET", scheme: str = "DPoP") -> AuthRequest:
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": f"{scheme} x"}))
    return AuthRequest(method, "https://api.bank.example/p", "/p", "", headers, None)


DPOP = Binding("dpop", "jkt", response_headers=(("DPoP-Nonce", "n-1"),))


def test_allowed_with_identity_headers() -> None:
    d = check_policy(req(), token(), DPOP, policy(scopes=["accounts"]))
    assert dict(d.upstream_headers) == {
        "X-Auth-Subject": "cust-123", "X-Auth-Client-Id": "tpp-1", "X-Auth-Scope": "accounts",
        "X-Auth-Issuer": "https://as.bank.example", "X-Auth-Binding": "dpop", "X-Auth-Cnf-Thumbprint": "jkt",
        "X-Auth-Token-Id": "j-1",
    }
    assert d.response_headers == (("DPoP-Nonce", "n-1"),) and d.token is not None


@pytest.mark.parametrize(
    "aud",
    [(), ("https://other-rs.example",), (AUD + "/",), (AUD + ".evil",)],
)
def test_audience_refused(aud: tuple[str, ...]) -> None:
    """JWT-07a/b/d/e, AUTHZ-01: 401 invalid_token in the challenge of the scheme used."""
    with pytest.raises(InvalidTokenError) as info:
        check_policy(req(), token(audience=aud), DPOP, policy())
    assert info.value.reason == "wrong_audience" and info.value.scheme == "DPoP"


def test_audience_contains() -> None:
    """JWT-07c; and any one of several route audiences."""
    check_policy(req(), token(audience=("https://other.example", AUD)), DPOP, policy())
    check_policy(req(), token(audience=("urn:b",)), DPOP, policy(audience=["urn:a", "urn:b"]))


@pytest.mark.parametrize(
    ("scopes", "ok"),
    [
        ({"accounts", "payments:read"}, False),  # JWT-13a
        ({"Payments"}, False),  # JWT-13b
        ({"accounts", "payments"}, True),
        (set(), False),  # JWT-13e
    ],
)
def test_scope_all_required(scopes: set[str], ok: bool) -> None:
    pol = policy(scopes=["payments"])
    if ok:
        check_policy(req("POST"), token(scopes=frozenset(scopes)), DPOP, pol)
        return
    with pytest.raises(InsufficientScopeError) as info:
        check_policy(req("POST", "Bearer"), token(scopes=frozenset(scopes)), DPOP, pol)
    assert info.value.status == 403 and info.value.scope == "payments" and info.value.scheme == "Bearer"
    rendered = render_challenges(info.value, ChallengeSettings(schemes=("Bearer", "DPoP")))
    assert rendered.startswith('Bearer error="insufficient_scope", error_description=')  # HDR-12
    assert 'scope="payments"' in rendered


def test_method_scopes_and_any_of() -> None:
    """AUTHZ-02: GET needs accounts:read, POST payments:write; any_of adds one-of."""
    pol = policy(method_scopes={"GET": ["accounts:read"], "POST": ["payments:write"]},
                 any_of=["tier:gold", "tier:silver"])
    check_policy(req("GET"), token(scopes=frozenset({"accounts:read", "tier:gold"})), DPOP, pol)
    check_policy(req("HEAD"), token(scopes=frozenset({"accounts:read", "tier:silver"})), DPOP, pol)
    with pytest.raises(InsufficientScopeError) as info:
        check_policy(req("POST"), token(scopes=frozenset({"accounts:read", "tier:gold"})), DPOP, pol)
    assert info.value.scope == "payments:write"
    with pytest.raises(InsufficientScopeError) as info:
        check_policy(req("GET"), token(scopes=frozenset({"accounts:read"})), DPOP, pol)
    assert info.value.scope == "accounts:read tier:gold tier:silver"


def test_client_ids_and_required_claims() -> None:
    pol = policy(client_ids=["tpp-1"], required_claims={"acr": ["urn:sca", "urn:sca2"]})
    check_policy(req(), token(), DPOP, pol)
    with pytest.raises(InsufficientScopeError) as info:
        check_policy(req(), token(client_id="tpp-2"), DPOP, pol)
    assert info.value.reason == "client_not_allowed"
    with pytest.raises(InsufficientScopeError) as info:
        check_policy(req(), token(claims=MappingProxyType({"acr": "urn:weak"})), DPOP, pol)
    assert info.value.reason == "required_claim_missing"
    # JSON true is not 1.
    with pytest.raises(InsufficientScopeError):
        check_policy(req(), token(claims=MappingProxyType({"lvl": True})), DPOP, policy(required_claims={"lvl": 1}))


def test_header_values_cannot_inject() -> None:
    d = check_policy(req(), token(subject="a\r\nX-Evil: 1", client_id="ünï"), DPOP, policy())
    values = dict(d.upstream_headers)
    assert values["X-Auth-Subject"] == "a%0D%0AX-Evil: 1" and values["X-Auth-Client-Id"] == "%C3%BCn%C3%AF"


def test_configurable_and_disabled_headers() -> None:
    pol = policy(identity_headers={"subject": "X-GW-Subject", "jti": None})
    d = check_policy(req(), token(), Binding("mtls", "x5t"), pol)
    names = [n for n, _ in d.upstream_headers]
    assert "X-GW-Subject" in names and "X-Auth-Token-Id" not in names and "X-Auth-Subject" not in names
    assert identity_header_names([pol, "none"]) >= {"x-gw-subject", "x-auth-subject", "x-auth-token-id"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"issuers": [], "audience": AUD}, "issuers"),
        ({"issuers": ["a"]}, "audience"),
        ({"issuers": ["a"], "audience": AUD, "scopes": ["bad scope"]}, "scope token"),
        ({"issuers": ["a"], "audience": AUD, "method_scopes": {"get": ["x"]}}, "upper-case"),
        ({"issuers": ["a"], "audience": AUD, "required_claims": {"aud": ["x"]}}, "audience"),
        ({"issuers": ["a"], "audience": AUD, "identity_headers": {"subject": "X Bad"}}, "header name"),
        ({"issuers": ["a"], "audience": AUD, "unknown": 1}, "Extra inputs"),
    ],
)
def test_policy_validation(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AuthPolicy.model_validate(data)
