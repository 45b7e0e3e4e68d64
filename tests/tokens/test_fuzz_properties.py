"""Property tests (hypothesis) of step 3 against the real AS fixture (issue #14, hostile input).

Whatever the claims of a token the issuer really signed, whatever follows a valid JWS, whatever
an introspection answer says ``active`` is: the outcome is a verified token or a 401 refusal,
never another exception (a 500). Companion of the atheris target ``benchmarks/fuzz/jose.py``.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from jwt.algorithms import get_default_algorithms

from gateway.errors import GatewayError, InvalidTokenError
from gateway.verify import AccessTokenVerifier

from .authserver import AuthServer, b64
from .conftest import IssuerFactory, introspection_block, policy

pytestmark = pytest.mark.timeout(120)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# JSON values, with numbers that break float conversion (10**400) and deep-ish nesting.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300, max_value=10**420)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=10,
)
CLAIM_NAMES = st.sampled_from(["iss", "aud", "exp", "nbf", "iat", "scope", "sub", "client_id", "jti", "cnf", "x"])
_counter = itertools.count()


def _signed(auth_server: AuthServer, header: bytes, payload: bytes) -> str:
    """A compact JWS over exactly these bytes (duplicate members and all), signed by the AS's key."""
    key = auth_server.keys[0]
    signing_input = f"{b64(header)}.{b64(payload)}"
    sig = get_default_algorithms()[key.alg].sign(signing_input.encode(), key.private)
    return f"{signing_input}.{b64(sig)}"


async def _outcome(v: AccessTokenVerifier, token: str) -> Any:
    try:
        return await v.verify(token, policy())
    except GatewayError as exc:
        assert exc.status == 401, (exc.status, exc.reason)
        return exc


@FAST
@given(over=st.dictionaries(CLAIM_NAMES, JSON, max_size=4))
async def test_any_claims_the_issuer_signs_verify_or_401(
    auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any, over: dict[str, Any]
) -> None:
    v = await make_verifier(issuer_cfg())
    key = auth_server.keys[0]
    header = json.dumps({"typ": "at+jwt", "alg": key.alg, "kid": key.kid}).encode()
    got = await _outcome(v, _signed(auth_server, header, json.dumps({**auth_server.claims(), **over}).encode()))
    if not isinstance(got, GatewayError):
        assert got.issuer == auth_server.issuer and got.expires_at > auth_server.clock()


@FAST
@given(junk=st.text(min_size=1, max_size=40), where=st.sampled_from(["suffix", "prefix", "segment"]))
async def test_anything_around_a_valid_jws_is_refused(
    auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any, junk: str, where: str
) -> None:
    v = await make_verifier(issuer_cfg())
    token = auth_server.token()
    assert not isinstance(await _outcome(v, token), GatewayError)  # the unmodified token is valid
    bad = {"suffix": token + junk, "prefix": junk + token, "segment": f"{token}.{junk}"}[where]
    assert isinstance(await _outcome(v, bad), InvalidTokenError)


@pytest.mark.parametrize("part", ["header", "payload"])
@FAST
@given(member=st.sampled_from([0, 1, 2]), value=JSON)
async def test_duplicate_members_are_refused_even_when_signed(
    auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any, part: str, member: int, value: Any
) -> None:
    """JWT-14: a member given twice (even with the same value) is refused, whichever one a parser keeps."""
    name = (("alg", "typ", "kid") if part == "header" else ("iss", "exp", "aud"))[member]
    v = await make_verifier(issuer_cfg())
    key = auth_server.keys[0]
    header = json.dumps({"typ": "at+jwt", "alg": key.alg, "kid": key.kid})
    payload = json.dumps(auth_server.claims())
    dup = f', "{name}": {json.dumps(value)}}}'
    header, payload = (header[:-1] + dup, payload) if part == "header" else (header, payload[:-1] + dup)
    got = await _outcome(v, _signed(auth_server, header.encode(), payload.encode()))
    assert isinstance(got, InvalidTokenError) and got.reason == "token_malformed", got


@FAST
@given(active=JSON | st.sampled_from(["true", "True", "yes", 1, 1.0, [True], {"value": True}]))
async def test_only_json_true_is_active(
    auth_server: AuthServer, issuer_cfg: IssuerFactory, make_verifier: Any, active: Any
) -> None:
    assume(active is not True)
    cfg = issuer_cfg(mode="introspection", jwks_uri=None, introspection=introspection_block(auth_server))
    v = await make_verifier(cfg)
    token = f"opaque-{next(_counter):06d}-Kz8mXK1EalYznwH-LC-1fBAo"
    auth_server.tokens[token] = {"active": active, "exp": int(auth_server.clock()) + 300, "scope": "accounts",
                                 "aud": auth_server.audience}
    got = await _outcome(v, token)
    assert isinstance(got, InvalidTokenError) and got.reason == "token_inactive", (active, got)
