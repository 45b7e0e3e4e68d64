"""Regression tests for what the fuzzers found (issue #14). Each input is the minimized crash,
committed as found; each failed (an exception other than the documented refusal) before its fix."""

from __future__ import annotations

import base64
import json
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from benchmarks.fuzz.keys import ed_jwk
from gateway.config.loader import parse_config
from gateway.config.mtls import FrontProxyConfig
from gateway.errors import ConfigError, InvalidRequestError, InvalidTokenError
from gateway.tls.front_proxy import FrontProxy
from gateway.verify.claims import to_verified_token
from gateway.verify.jose import loads_strict
from gateway.verify.jwks import parse_jwks

ROOT = Path(__file__).resolve().parents[2]

# --- JWKS: a non-string kty (unhashable) raised TypeError out of the key loader (a 500 on the
# request that triggered the refresh). Found by benchmarks.fuzz.jwks, minimized input:
JWKS_UNHASHABLE_KTY = b'{"keys": [{"kty": ["verify"]}, {"kty": "AB"}]}'


def test_jwks_member_of_wrong_type_is_skipped_not_a_crash() -> None:
    assert parse_jwks(loads_strict(JWKS_UNHASHABLE_KTY)).keys == ()
    for bad in ({"kty": ["RSA"]}, {"kty": {"a": 1}}, {"kty": "EC", "crv": ["P-256"]}, {"kty": "OKP", "use": []}):
        doc = {"keys": [bad, {**ed_jwk(), "kid": "good"}]}
        keys = parse_jwks(doc)
        assert [k.kid for k in keys.keys] == ["good"], bad


# --- Claims: an integer NumericDate beyond a float's range raised OverflowError (a 500 for a JWT
# signed by the issuer, or an introspection answer). Found by benchmarks.fuzz.jose (signed mode).
@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", [10**400, -(10**400)], ids=["huge", "huge-negative"])
def test_huge_integer_dates_are_malformed_not_a_crash(name: str, value: int) -> None:
    claims = {"iss": "https://as.example", "exp": 1_780_000_300, name: value}
    with pytest.raises(InvalidTokenError) as info:
        to_verified_token(
            claims, issuer="https://as.example", source="jwt", now=1_780_000_000.0, leeway_s=0,
            required=(), require_exp=True, max_lifetime_s=None, default_expiry=1_780_000_000.0,
        )
    assert info.value.reason == "token_malformed"
    assert str(value) not in info.value.description


def _cfg(body: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(body), source="fuzz.yaml")
    return info.value


# --- Config loader: YAML aliases and nesting. Found by benchmarks.fuzz.config, minimized input:
CONFIG_RECURSIVE_ALIAS = "a: &a [*a, *a]\n"


def test_recursive_alias_is_a_config_error() -> None:
    err = _cfg(CONFIG_RECURSIVE_ALIAS)
    assert any("alias" in p for p in err.problems), err.problems


def test_alias_expansion_is_bounded() -> None:
    # "Billion laughs": 9 levels of 9 aliases would expand to ~387 million nodes.
    levels = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    err = _cfg("\n".join(levels) + "\n")
    assert any("alias" in p for p in err.problems), err.problems


@pytest.mark.parametrize("text", ["[" * 5000, "a: " + "[" * 2000 + "]" * 2000, "a:\n" + "".join(
    f"{'  ' * (i + 1)}k{i}:\n" for i in range(400))], ids=["flow", "closed-flow", "block"])
def test_deep_nesting_is_a_config_error(text: str) -> None:
    err = _cfg(text)
    assert any("nested" in p or "not valid YAML" in p for p in err.problems), err.problems


@pytest.mark.parametrize("text", [
    "a: !!python/object:os.system x\n",
    "listen: !!binary '*'\n",
    "listen: {port: !!int abc}\n",
    "listen: {port: !!timestamp 2020-99-99}\n",
    "? [a, b]\n: c\n",
])
def test_bad_scalars_and_tags_are_config_errors(text: str) -> None:
    err = _cfg(text)
    assert err.problems


def test_bad_yaml_from_an_environment_default_is_a_config_error() -> None:
    err = _cfg("listen:\n  port: ${FUZZ_UNSET_VAR_X:-[}\nroutes: []\n")
    assert any("listen.port" in p for p in err.problems), err.problems


def test_regression_inputs_are_kept_as_valid_json() -> None:
    json.loads(JWKS_UNHASHABLE_KTY)  # the committed crash input is what the fuzzer produced


# --- Front-proxy certificate headers: a certificate whose version field is not v1-v3 raised
# cryptography's InvalidVersion (not a ValueError) out of the header parser: a 500 for a header a
# trusted proxy forwarded. Found by benchmarks.fuzz.front_proxy (der_b64 format; one bit flipped
# in the version of certs/dev/client-a.pem). The crash input as found, without its format byte:
FRONT_PROXY_INVALID_VERSION = (Path(__file__).parent / "crashes" / "front_proxy-invalid-version.txt").read_text()


def _certificate_header(fmt: str, value: str) -> Any:
    proxy = FrontProxy(FrontProxyConfig.model_validate({"format": fmt, "trusted_cidrs": ["10.0.0.0/8"]}))
    return proxy.certificate(CIMultiDictProxy(CIMultiDict({proxy.header: value})))


def test_found_front_proxy_input_is_a_400() -> None:
    with pytest.raises(InvalidRequestError) as info:
        _certificate_header("der_b64", FRONT_PROXY_INVALID_VERSION)
    assert info.value.status == 400 and info.value.reason == "client_cert_header_malformed"


@pytest.mark.parametrize("fmt", ["rfc9440", "xfcc", "nginx", "pem", "der_b64", "aws_alb"])
def test_unparseable_certificate_versions_are_a_400_in_every_format(fmt: str) -> None:
    pem = (ROOT / "certs" / "dev" / "client-a.pem").read_text()
    der = base64.b64decode("".join(pem.strip().splitlines()[1:-1]))
    assert b"\xa0\x03\x02\x01\x02" in der  # [0] EXPLICIT INTEGER 2 (v3)
    bad = der.replace(b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x03", 1)  # "v4"
    b64 = base64.b64encode(bad).decode()
    bad_pem = "-----BEGIN CERTIFICATE-----\n" + b64 + "\n-----END CERTIFICATE-----\n"
    value = {
        "rfc9440": f":{b64}:", "xfcc": f'Cert="{quote(bad_pem)}"', "nginx": quote(bad_pem),
        "pem": bad_pem.replace("\n", " "), "der_b64": b64, "aws_alb": quote(bad_pem, safe=""),
    }[fmt]
    with pytest.raises(InvalidRequestError) as info:
        _certificate_header(fmt, value)
    assert info.value.status == 400
