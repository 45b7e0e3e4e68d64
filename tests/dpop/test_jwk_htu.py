"""RFC 7638 thumbprints (§0.4 vectors 2-3), JWK parsing, ath (vector 1), RFC 3986 htu normalisation."""

from __future__ import annotations

import pytest

from gateway.bind.htu import compare_htu, normalize_url
from gateway.bind.jwk import JwkCache, JwkError, jwk_thumbprint, parse_public_jwk
from gateway.model import sha256_b64url

from .proofs import Signer, private_jwk

RFC9449_JWK = {
    "kty": "EC",
    "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
    "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
    "crv": "P-256",
}
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
    "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZ"
    "Hzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-"
    "kEgU8awapJzKnqDKgw"
)


def test_rfc9449_jkt_vector() -> None:
    """§0.4-2 (RFC 9449 §6.1)."""
    assert jwk_thumbprint(RFC9449_JWK) == "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
    assert parse_public_jwk(RFC9449_JWK).thumbprint == "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"


def test_rfc7638_rsa_vector_ignores_optional_members() -> None:
    """§0.4-3: the RFC 7638 §3.1 example; alg and kid do not change it."""
    jwk = {"kty": "RSA", "n": RFC7638_N, "e": "AQAB"}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    with_extras = dict(jwk, alg="RS256", kid="2011-04-29")
    assert parse_public_jwk(with_extras).thumbprint == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_ath_vector() -> None:
    """§0.4-1 (RFC 9449 Fig. 14)."""
    expected = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    assert sha256_b64url(b"Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU") == expected


def test_private_members_refused_even_when_cached(k1: Signer) -> None:
    """DPOP-08: the cache never lets a private key through because its public part was seen."""
    cache = JwkCache(maxsize=4, ttl_s=60)
    assert cache.get(k1.jwk).thumbprint == k1.jkt
    with pytest.raises(JwkError, match="private"):
        cache.get(private_jwk(k1.key))


def test_cache_is_bounded(k1: Signer, k2: Signer, eddsa: Signer) -> None:
    cache = JwkCache(maxsize=2, ttl_s=60)
    for s in (k1, k2, eddsa):
        cache.get(s.jwk)
    assert len(cache) == 2
    # the same key with different optional members is one entry
    cache.get(dict(eddsa.jwk, kid="x"))
    assert len(cache) == 2


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "EC", "crv": "P-256", "x": RFC9449_JWK["x"]},  # no y
        {"kty": "EC", "crv": "P-256", "x": RFC9449_JWK["x"] + "=", "y": RFC9449_JWK["y"]},  # padded
        {"kty": "EC", "crv": "P-256", "x": RFC9449_JWK["x"][:-2], "y": RFC9449_JWK["y"]},  # short
        {"kty": "EC", "crv": "P-256", "x": RFC9449_JWK["y"], "y": RFC9449_JWK["x"]},  # not on curve
        {"kty": "EC", "crv": "P-256", "x": 1, "y": 2},
        {"kty": "RSA", "n": "AAEC", "e": "AQAB"},  # leading zero
        {"kty": "OKP", "crv": "X25519", "x": RFC9449_JWK["x"]},
        {"kty": "oct", "k": "AAAA"},
        {"kty": 1},
    ],
)
def test_bad_jwks(jwk: dict[str, object]) -> None:
    with pytest.raises(JwkError):
        parse_public_jwk(jwk)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("HTTPS://API.BANK.EXAMPLE/accounts", "https://api.bank.example/accounts"),
        ("https://api.bank.example:443/accounts", "https://api.bank.example/accounts"),
        ("http://api.bank.example:80/a", "http://api.bank.example/a"),
        ("https://api.bank.example:0443/a", "https://api.bank.example/a"),
        ("https://api.bank.example", "https://api.bank.example/"),
        ("https://api.bank.example/%7euser", "https://api.bank.example/~user"),
        ("https://api.bank.example/a%2fb", "https://api.bank.example/a%2Fb"),
        ("https://api.bank.example/a/./b/../c", "https://api.bank.example/a/c"),
        ("https://api.bank.example/a/b/..", "https://api.bank.example/a/"),
        ("https://api.bank.example/../../a", "https://api.bank.example/a"),
        ("https://[::1]:443/a", "https://[::1]/a"),
        ("https://api.bank.example/a?q=1#f", "https://api.bank.example/a"),
    ],
)
def test_normalisation_equal(a: str, b: str) -> None:
    """DPOP-13 (RFC 3986 §6.2.2/§6.2.3; auth0 node-oauth2-jwt-bearer normalizeUrl cases)."""
    assert normalize_url(a) == normalize_url(b)
    assert compare_htu(a, b) is None


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://api.bank.example/Accounts", "https://api.bank.example/accounts"),
        ("https://api.bank.example/a%2Fb", "https://api.bank.example/a/b"),
        ("https://api.bank.example/accounts/", "https://api.bank.example/accounts"),
        ("https://api.bank.example:8443/a", "https://api.bank.example/a"),
        ("http://api.bank.example/a", "https://api.bank.example/a"),
    ],
)
def test_normalisation_different(a: str, b: str) -> None:
    assert compare_htu(a, b) is not None


@pytest.mark.parametrize(
    "url",
    ["ftp://x/a", "https:///a", "https://u@x/a", "https://x:99999999/a", "https://x/%4", "https://x/ a",
     "https://x/\u00e9", "https://[::1/a", "//x/a", "https://x:ab/a"],
)
def test_unusable_urls(url: str) -> None:
    with pytest.raises(ValueError):
        normalize_url(url)


def test_unusable_request_url_is_a_mismatch_not_an_error() -> None:
    """A request path with raw non-URI characters can never match (and never raises)."""
    assert compare_htu("https://x/a", "https://x/\u00e9") is not None


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(st.text(max_size=80))
def test_normalize_never_raises_anything_but_valueerror(tail: str) -> None:
    """DPOP-24: attacker-controlled htu text is either a URL or a ValueError; normalising is idempotent."""
    for url in (tail, "https://api.bank.example/" + tail):
        try:
            n = normalize_url(url)
        except ValueError:
            continue
        assert normalize_url(str(n)) == n
        assert compare_htu(url, str(n)) is None


@pytest.mark.parametrize(
    ("claimed", "request_url"),
    [
        ("https://x/a%3Ab%40c%21", "https://x/a:b@c!"),  # the gateway's canonical path decodes these
        ("https://x/a%3ab", "https://x/a:b"),
    ],
)
def test_htu_decodes_what_the_canonical_path_decodes(claimed: str, request_url: str) -> None:
    """The request URL is built from gateway.canonical's path; the claim is read the same way."""
    assert compare_htu(claimed, request_url) is None


def test_htu_keeps_structural_escapes_distinct() -> None:
    for claimed in ("https://x/a%3Bb", "https://x/a%2Fb", "https://x/a%3Fb"):
        assert compare_htu(claimed, "https://x/a" + {"%3B": ";", "%2F": "/", "%3F": "?"}[claimed[11:14]] + "b")
