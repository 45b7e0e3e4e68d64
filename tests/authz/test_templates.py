"""Path templates in routes (issue #16 item 1): precompiled, exact > template > prefix, typed and
percent-decoded parameters that never span '/' nor survive dot-segment or encoding tricks."""

from __future__ import annotations

import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.canonical import canonical_path
from gateway.config import parse_config
from gateway.errors import ConfigError, InvalidRequestError, MethodNotAllowedError, RouteNotFoundError
from gateway.routing import Router


def router(routes: str, *, case_sensitive: bool = False) -> Router:
    text = f"paths: {{case_sensitive: {str(case_sensitive).lower()}}}\nroutes:\n{routes}"
    return Router(parse_config(text, source="t.yaml"))


ROUTES = """
  - {id: me, match: {path: /accounts/me}, upstream: http://u, auth: none}
  - {id: tx, match: {path: "/accounts/{account_id}/transactions"}, upstream: http://u, auth: none}
  - {id: by_number, match: {path: "/accounts/{n:int}"}, upstream: http://u, auth: none}
  - {id: by_uuid, match: {path: "/accounts/{u:uuid}"}, upstream: http://u, auth: none}
  - {id: account, match: {path: "/accounts/{account_id}"}, upstream: http://u, auth: none}
  - {id: account_tree, match: {path_prefix: "/accounts/{account_id}"}, upstream: http://u, auth: none}
  - {id: literal_first, match: {path: "/a/b/{x}"}, upstream: http://u, auth: none}
  - {id: param_first, match: {path: "/a/{x}/c"}, upstream: http://u, auth: none}
  - {id: payments, match: {path: "/payments/{payment_id}", methods: [GET]}, upstream: http://u, auth: none}
  - {id: accounts_prefix, match: {path_prefix: /accounts}, upstream: http://u, auth: none}
"""


@pytest.mark.parametrize(
    ("path", "route", "params"),
    [
        ("/accounts/me", "me", {}),  # exact beats template
        ("/accounts/12", "by_number", {"n": 12}),  # typed beats text
        ("/accounts/012", "by_number", {"n": 12}),
        ("/accounts/0f8fad5b-d9cb-469f-a165-70867728950E", "by_uuid", {"u": "0f8fad5b-d9cb-469f-a165-70867728950e"}),
        ("/accounts/Acc-1", "account", {"account_id": "Acc-1"}),  # value keeps its case
        ("/accounts/A%C3%A4%20b/transactions", "tx", {"account_id": "A\u00e4 b"}),  # percent-decoded
        ("/ACCOUNTS/X1/Transactions", "tx", {"account_id": "X1"}),  # literals ignore case by default
        ("/accounts/x/y/z", "account_tree", {"account_id": "x"}),  # prefix template
        ("/accounts/x/", "account_tree", {"account_id": "x"}),
        ("/accounts", "accounts_prefix", {}),
        ("/accounts/", "accounts_prefix", {}),  # an empty segment is no parameter
        ("/a/b/c", "literal_first", {"x": "c"}),  # first differing segment literal wins
        ("/a/z/c", "param_first", {"x": "z"}),
    ],
)
def test_resolution_order_and_values(path: str, route: str, params: dict[str, object]) -> None:
    found = router(ROUTES).resolve("GET", "h", canonical_path(path))
    assert (found.route.id, dict(found.params)) == (route, params)


def test_case_sensitive_literals() -> None:
    r = router(ROUTES, case_sensitive=True)
    with pytest.raises(RouteNotFoundError):
        r.resolve("GET", "h", "/ACCOUNTS/X1/transactions")
    assert r.resolve("GET", "h", "/accounts/X1/transactions").params == {"account_id": "X1"}


def test_method_not_allowed_on_a_template() -> None:
    with pytest.raises(MethodNotAllowedError):
        router(ROUTES).resolve("POST", "h", "/payments/p1")


@pytest.mark.parametrize(
    "target",
    [
        "/accounts/x%2F..%2Fy/transactions", "/accounts/..%2fother/transactions", "/accounts/%2e%2e/transactions",
        "/accounts/./transactions", "/accounts/a/../b/transactions", "/accounts/a;b/transactions",
        "/accounts/%252F/transactions", "/accounts/a%5cb/transactions", "/accounts//transactions",
        "/accounts/%C0%AF/transactions", "/accounts/a%00/transactions",
    ],
)
def test_tricks_never_reach_a_parameter(target: str) -> None:
    """The canonical path refuses them (400) before any template is tried."""
    with pytest.raises(InvalidRequestError):
        canonical_path(target)


@pytest.mark.parametrize(
    ("match", "message"),
    [
        ('{path: "/a/{x"}', "whole segment"),
        ('{path: "/a/x{y}"}', "whole segment"),
        ('{path: "/a/{x:float}"}', "unknown parameter type"),
        ('{path: "/a/{x}/{x}"}', "appears twice"),
        ('{path: "/a/{1x}"}', "whole segment"),
        ('{path: "/a/../{x}"}', "dot segment"),
    ],
)
def test_bad_templates_are_config_errors(match: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"routes:\n  - {{id: r, match: {match}, upstream: http://u, auth: none}}\n", source="t.yaml")
    assert message in str(info.value) and "t.yaml:2: routes[0].match.path" in str(info.value)


def test_same_shape_templates_conflict() -> None:
    text = """routes:
  - {id: a, match: {path: "/accounts/{account_id}"}, upstream: http://u, auth: none}
  - {id: b, match: {path: "/Accounts/{other}"}, upstream: http://u, auth: none}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="t.yaml")
    assert "routes[1].match: same match as routes[0]" in str(info.value)


SEGMENT_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,=:@%/;?#\\ " + "\u00e4"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=SEGMENT_CHARS, max_size=30))
def test_property_parameter_never_spans_a_separator(tail: str) -> None:
    """For any path: either the canonical form refuses it, or every captured parameter is one
    decoded segment that holds no '/', and is not '.' or '..'."""
    r = router(ROUTES)
    try:
        path = canonical_path("/accounts/" + tail)
    except InvalidRequestError:
        return
    try:
        found = r.resolve("GET", "h", path)
    except RouteNotFoundError:
        return
    for value in found.params.values():
        text = str(value)
        assert "/" not in text and text not in ("", ".", "..")
    if found.route.id in ("tx", "account"):
        raw = path.split("/")[2]
        assert "%2F" not in raw.upper() and "%25" not in raw


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=SEGMENT_CHARS, min_size=1, max_size=20))
def test_property_encoding_never_changes_which_account(raw: str) -> None:
    """Percent-encoding any characters of a segment either is refused or yields the same account id
    as the plain form: encoding can never turn one account into another."""
    r = router(ROUTES)
    encoded = "".join(f"%{b:02X}" for b in raw.encode())
    try:
        enc = r.resolve("GET", "h", canonical_path(f"/accounts/{encoded}/transactions"))
    except (InvalidRequestError, RouteNotFoundError):
        return
    if enc.route.id != "tx":
        return
    assert enc.params["account_id"] == raw
    try:
        plain = r.resolve("GET", "h", canonical_path(f"/accounts/{raw}/transactions"))
    except (InvalidRequestError, RouteNotFoundError):
        return
    if plain.route.id == "tx":
        assert plain.params["account_id"] == raw


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=SEGMENT_CHARS, min_size=1, max_size=12), st.booleans())
@example("acc-1", True)
@example("acc-1", False)
@example("%61cc-1", False)
@example("acc-1%2F..", False)
@example("ACC-1", False)
@example("acc-1 ", True)
def test_property_encoding_never_turns_a_refusal_into_an_allow(raw: str, encode_all: bool) -> None:
    """Router + authz stage: a token granting account "acc-1" allows a path exactly when its
    decoded account id is "acc-1", however the client encodes it."""
    import time
    from types import MappingProxyType

    from multidict import CIMultiDict, CIMultiDictProxy

    from gateway.authz import check_authz
    from gateway.config.authz import AuthzConfig
    from gateway.errors import InsufficientAuthorizationDetailsError
    from gateway.model import AuthRequest, Binding, Decision, VerifiedToken

    cfg = AuthzConfig.model_validate({"rules": [{"id": "acc", "authorization_details": {
        "types": ["account_information"], "identifier": {"path": "account_id"}}}]})
    tok = VerifiedToken("https://as", "s", "c", ("aud",), frozenset(), time.time() + 60, "j", None, None, "jwt",
                        MappingProxyType({"authorization_details": [{"type": "account_information",
                                                                      "identifier": "acc-1"}]}))
    segment = "".join(f"%{b:02X}" for b in raw.encode()) if encode_all else raw
    try:
        path = canonical_path(f"/accounts/{segment}/transactions")
        found = router(ROUTES).resolve("GET", "h", path)
    except (InvalidRequestError, RouteNotFoundError):
        return
    if found.route.id != "tx":
        return
    req = AuthRequest("GET", "https://h" + path, path, "", CIMultiDictProxy(CIMultiDict()), None,
                      path_params=found.params)
    try:
        check_authz(req, Decision(tok, Binding("none")), cfg, "tx")
        allowed = True
    except InsufficientAuthorizationDetailsError:
        allowed = False
    assert allowed == (found.params["account_id"] == "acc-1")
    if allowed:
        assert raw == "acc-1" or (not encode_all and canonical_path(f"/{raw}") == "/acc-1")
