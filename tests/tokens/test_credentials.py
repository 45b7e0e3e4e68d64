"""Authorization / DPoP header extraction (checklist HDR-01..HDR-12)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.challenge import ChallengeSettings, render_challenges
from gateway.credentials import extract_credentials, scheme_of
from gateway.errors import InvalidDpopProofError, InvalidRequestError, MissingCredentialsError, OAuthError
from gateway.model import AuthRequest

from .conftest import policy

TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
BOTH = ChallengeSettings(schemes=("Bearer", "DPoP"), realm="bank")


def req(*headers: tuple[str, str], query: str = "") -> AuthRequest:
    return AuthRequest(
        method="GET", url="https://api.bank.example/accounts", path="/accounts", query_string=query,
        headers=CIMultiDictProxy(CIMultiDict(headers)), peer_cert=None,
    )


def extract(*headers: tuple[str, str], query: str = "") -> object:
    return extract_credentials(req(*headers, query=query), policy())


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "bEARER", "BEARER"])
def test_bearer_scheme_case_insensitive(scheme: str) -> None:
    """HDR-03b."""
    creds = extract_credentials(req(("Authorization", f"{scheme} {TOKEN}")), policy())
    assert creds.scheme == "Bearer" and creds.token == TOKEN and creds.dpop_proof is None


@pytest.mark.parametrize("scheme", ["DPoP", "dPoP", "dpop"])
def test_dpop_scheme_carries_proof(scheme: str) -> None:
    """HDR-03a: the proof is carried as-is for the DPoP stage."""
    creds = extract_credentials(req(("Authorization", f"{scheme} {TOKEN}"), ("DPoP", "a.b.c")), policy())
    assert creds.scheme == "DPoP" and creds.dpop_proof == "a.b.c"


def test_multiple_spaces_allowed() -> None:
    """HDR-04d."""
    assert extract_credentials(req(("Authorization", f"DPoP   {TOKEN}"), ("DPoP", "p")), policy()).token == TOKEN


@pytest.mark.parametrize("token", ["abc==", "a-b.c_d~e+f/g=", "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"])
def test_b64token_syntax_accepted(token: str) -> None:
    assert extract_credentials(req(("Authorization", f"Bearer {token}")), policy()).token == token


@pytest.mark.parametrize(
    ("value", "scheme"),
    [
        ("DPoP", "DPoP"),  # HDR-04a (no token)
        ("DPoP abc def", "DPoP"),  # HDR-04b
        ('Bearer a"b', "Bearer"),  # HDR-04c
        ("Bearer abc=def", "Bearer"),  # HDR-04e
        ("Bearer a\\b", "Bearer"),
        ("Bearer " + "a" * 20000, "Bearer"),
        ("Bearer\ttoken", None),
    ],
)
def test_syntax_violation_is_invalid_request(value: str, scheme: str | None) -> None:
    with pytest.raises(InvalidRequestError) as info:
        extract_credentials(req(("Authorization", value), ("DPoP", "p")), policy())
    assert info.value.status == 400 and info.value.scheme == scheme
    # HDR-10: the response header still parses and carries no client bytes.
    rendered = render_challenges(info.value, BOTH)
    assert 'a"b' not in rendered and "\\" not in rendered


def test_query_token_refused() -> None:
    """HDR-01a/b: ?access_token never authenticates; the description says why."""
    for headers, scheme in (((), None), ((("Authorization", f"DPoP {TOKEN}"), ("DPoP", "p")), "DPoP")):
        with pytest.raises(InvalidRequestError) as info:
            extract(*headers, query=f"x=1&access_token={TOKEN}")
        assert info.value.scheme == scheme and "query" in info.value.description
        assert TOKEN not in info.value.description
    with pytest.raises(InvalidRequestError):
        extract(query="access%5Ftoken=x")  # percent-encoded name
    # A similarly named parameter is not a token.
    assert extract(("Authorization", f"Bearer {TOKEN}"), query="my_access_token=1")


def test_two_authorization_headers() -> None:
    """HDR-05 / RFC 9449 Fig. 19: 400 with invalid_request in both challenges."""
    with pytest.raises(InvalidRequestError) as info:
        extract(("Authorization", f"Bearer {TOKEN}"), ("Authorization", f"DPoP {TOKEN}"))
    assert info.value.scheme is None
    rendered = render_challenges(info.value, BOTH)
    assert rendered.count('error="invalid_request"') == 2


def test_comma_joined_credentials() -> None:
    with pytest.raises(InvalidRequestError) as info:
        extract(("Authorization", f"DPoP {TOKEN}, Bearer {TOKEN}"))
    assert info.value.scheme is None


@pytest.mark.parametrize("headers", [(), (("Authorization", "Basic dXNlcjpwYXNz"),),
                                     (("Proxy-Authorization", f"DPoP {TOKEN}"), ("DPoP", "p"))])
def test_missing_or_unsupported_is_bare_challenge(headers: tuple[tuple[str, str], ...]) -> None:
    """HDR-06 / HDR-07 / HDR-13: no error information in any challenge."""
    with pytest.raises(MissingCredentialsError) as info:
        extract(*headers)
    assert info.value.status == 401
    assert render_challenges(info.value, BOTH) == 'Bearer realm="bank", DPoP realm="bank", algs="ES256 PS256 EdDSA"'


@pytest.mark.parametrize(
    "proofs",
    [(), (("DPoP", "a.b.c"), ("DPoP", "d.e.f")), (("DPoP", "a.b.c, d.e.f"),), (("DPoP", ""),)],
)
def test_dpop_header_count(proofs: tuple[tuple[str, str], ...]) -> None:
    """Exactly one DPoP header with the DPoP scheme (RFC 9449 §4.3 check 1)."""
    with pytest.raises(InvalidDpopProofError) as info:
        extract(("Authorization", f"DPoP {TOKEN}"), *proofs)
    assert info.value.scheme == "DPoP" and info.value.status == 401


def test_bearer_with_two_dpop_headers() -> None:
    with pytest.raises(InvalidDpopProofError):
        extract(("Authorization", f"Bearer {TOKEN}"), ("DPoP", "a"), ("DPoP", "b"))


def test_bearer_carries_single_dpop_header() -> None:
    """A Bearer request with one DPoP header: carried, the binding stage decides (DPOP-20)."""
    assert extract_credentials(req(("Authorization", f"Bearer {TOKEN}"), ("DPoP", "x.y.z")), policy()).dpop_proof


def test_scheme_of() -> None:
    assert scheme_of(req(("Authorization", f"dpop {TOKEN}"))) == "DPoP"
    assert scheme_of(req(("Authorization", "Basic x"))) is None
    assert scheme_of(req()) is None


def test_every_error_is_oauth_error() -> None:
    """HDR-08/09: every refusal here is an OAuthError rendered with a challenge."""
    for headers in ((), (("Authorization", "Bearer a b"),)):
        with pytest.raises(OAuthError) as info:
            extract(*headers)
        assert render_challenges(info.value, BOTH)


@settings(max_examples=300, deadline=None)
@given(
    auth=st.lists(st.text(max_size=60), max_size=2),
    dpop=st.lists(st.text(max_size=20), max_size=2),
    query=st.text(max_size=30),
)
def test_any_input_is_credentials_or_oauth_error(auth: list[str], dpop: list[str], query: str) -> None:
    """Property: whatever the headers, the result is Credentials or an OAuthError whose challenge renders."""
    headers = [("Authorization", a) for a in auth] + [("DPoP", d) for d in dpop]
    try:
        creds = extract_credentials(req(*headers, query=query), policy())
    except OAuthError as exc:
        rendered = render_challenges(exc, BOTH)
        assert "\r" not in rendered and "\n" not in rendered
    else:
        assert creds.scheme in ("Bearer", "DPoP") and creds.token
