"""What a verified (and cached) token keeps: the typed fields, and in ``claims`` the scalar members a
route's ``required_claims`` can match. Shared scope sets and audience tuples (target 6, memory)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import InsufficientScopeError
from gateway.model import AuthRequest, Binding
from gateway.policy import check_policy
from gateway.verify.claims import to_verified_token

from .authserver import AuthServer
from .conftest import AUD, IssuerFactory, policy

ISS = "https://as.bank.example"


def verified(**claims: Any) -> Any:
    now = time.time()
    base: dict[str, Any] = {"iss": ISS, "aud": AUD, "sub": "cust-123", "client_id": "tpp-1", "iat": int(now),
                            "exp": int(now) + 300, "jti": "j-1", "scope": "accounts payments"}
    base.update(claims)
    return to_verified_token(base, issuer=ISS, source="jwt", now=now, leeway_s=0, required=(), require_exp=True,
                             max_lifetime_s=None, default_expiry=now)


def test_claims_keep_what_a_route_can_require() -> None:
    tok = verified(acr="urn:sca", level=2, mfa=True, cnf={"jkt": "abc"}, amr=["pwd"], score=0.5, nothing=None)
    assert dict(tok.claims) == {"sub": "cust-123", "iat": tok.claims["iat"], "exp": tok.claims["exp"],
                                "jti": "j-1", "acr": "urn:sca", "level": 2, "mfa": True}
    # What left claims is still in the typed fields.
    assert tok.issuer == ISS and tok.audience == (AUD,) and tok.client_id == "tpp-1"
    assert tok.scopes == frozenset({"accounts", "payments"}) and tok.cnf_jkt == "abc"


def test_scope_sets_and_audiences_are_shared() -> None:
    a, b = verified(), verified(jti="j-2")
    assert a.scopes is b.scopes and a.audience is b.audience
    c = verified(aud=[AUD, "https://other.example"], scope="accounts")
    assert c.audience == (AUD, "https://other.example") and c.scopes == frozenset({"accounts"})


def req() -> AuthRequest:
    return AuthRequest("GET", "https://api.bank.example/p", "/p", "",
                       CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer x"})), None)


@pytest.mark.parametrize(
    ("required", "ok"),
    [
        ({"acr": "urn:sca"}, True),
        ({"acr": "urn:weak"}, False),
        ({"level": 2}, True),
        ({"mfa": True}, True),
        ({"level": True}, False),  # JSON 2 is not true
        ({"sub": "cust-123"}, True),
        ({"amr": "pwd"}, False),  # an array never equals a required value
        ({"missing": "x"}, False),
    ],
)
async def test_required_claims_on_a_verified_token(auth_server: AuthServer, issuer_cfg: IssuerFactory,
                                                   make_verifier: Any, required: dict[str, Any], ok: bool) -> None:
    v = await make_verifier(issuer_cfg())
    tok = await v.verify(auth_server.token(acr="urn:sca", level=2, mfa=True, amr=["pwd"]), policy())
    pol = policy(required_claims=required)
    if ok:
        check_policy(req(), tok, Binding("none"), pol)
    else:
        with pytest.raises(InsufficientScopeError):
            check_policy(req(), tok, Binding("none"), pol)
