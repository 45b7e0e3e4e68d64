"""Property tests (hypothesis) of the parsers that had none (issue #14, hostile input).

Each says: any input gives a parsed value or the documented refusal (400 ``InvalidRequestError``,
``JwkError``, ``FetchError``, ``ConfigError``), never another exception; and where a parser has an
algebra (one certificate in any header format, an authority's round trip), that it holds.
Companions of the atheris targets in ``benchmarks/fuzz`` (which run far more inputs).
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from benchmarks.fuzz.keys import ec_jwk, ed_jwk
from gateway.bind.jwk import JwkError, jwk_thumbprint, parse_public_jwk
from gateway.canonical import parse_authority
from gateway.config.loader import parse_config
from gateway.config.mtls import FrontProxyConfig
from gateway.config.schema import GatewayConfig
from gateway.errors import ConfigError, InvalidRequestError
from gateway.model import b64url
from gateway.tls.front_proxy import FrontProxy
from gateway.verify.fetch import FetchError
from gateway.verify.jwks import parse_jwks

ROOT = Path(__file__).resolve().parents[2]
FORMATS = ("rfc9440", "xfcc", "nginx", "pem", "der_b64", "aws_alb")

SCALAR = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=16)
JSON = st.recursive(SCALAR, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                    max_leaves=8)
JWK_MEMBERS = ("kty", "crv", "x", "y", "n", "e", "alg", "kid", "use", "key_ops", "d", "k")


def _jwk_like() -> st.SearchStrategy[dict[str, Any]]:
    """Real keys with members replaced or added, and dicts of JWK member names with any values."""
    real = st.sampled_from([ed_jwk(), ec_jwk()])
    changed = st.tuples(real, st.dictionaries(st.sampled_from(JWK_MEMBERS), JSON, max_size=3)).map(
        lambda t: {**t[0], **t[1]})
    return changed | st.dictionaries(st.sampled_from(JWK_MEMBERS), JSON, max_size=6)


@settings(max_examples=300, deadline=None)
@given(jwk=_jwk_like())
def test_dpop_jwk_parses_or_is_a_jwk_error(jwk: dict[str, Any]) -> None:
    try:
        parsed = parse_public_jwk(jwk)
    except JwkError:
        return
    assert parsed.thumbprint == jwk_thumbprint(jwk)


@settings(max_examples=300, deadline=None)
@given(doc=st.one_of(JSON, st.fixed_dictionaries({"keys": st.lists(_jwk_like() | JSON, max_size=4)})))
def test_jwks_documents_give_usable_keys_or_a_fetch_error(doc: Any) -> None:
    try:
        keys = parse_jwks(doc, source="test")
    except FetchError:
        assert not isinstance(doc, dict) or not isinstance(doc.get("keys"), list)
        return
    for key in keys.keys:  # only public signature keys of a known type survive
        assert key.fingerprint and (key.kid is None or isinstance(key.kid, str))


def _proxy(fmt: str) -> FrontProxy:
    return FrontProxy(FrontProxyConfig.model_validate({"format": fmt, "trusted_cidrs": ["10.0.0.0/8"]}))


PROXIES = {fmt: _proxy(fmt) for fmt in FORMATS}


def _read(fmt: str, value: str) -> Any:
    proxy = PROXIES[fmt]
    return proxy.certificate(CIMultiDictProxy(CIMultiDict({proxy.header: value})))


@settings(max_examples=200, deadline=None)
@given(fmt=st.sampled_from(FORMATS), value=st.text(max_size=200)
       | st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=:;,\"%-_ ", max_size=200))
def test_any_certificate_header_is_a_certificate_or_a_400(fmt: str, value: str) -> None:
    try:
        facts = _read(fmt, value)
    except InvalidRequestError as exc:
        assert exc.status == 400
        return
    assert facts is not None


_PEM = (ROOT / "certs" / "dev" / "client-a.pem").read_text()
_DER = base64.b64decode("".join(_PEM.strip().splitlines()[1:-1]))
_X5T = b64url(hashlib.sha256(_DER).digest())


@settings(max_examples=100, deadline=None)
@given(fmt=st.sampled_from(FORMATS), width=st.integers(min_value=4, max_value=128),
       fold=st.sampled_from(["\n", " ", "\t", "\r\n"]))
def test_one_certificate_in_any_format_and_folding_is_the_same_certificate(fmt: str, width: int, fold: str) -> None:
    b64 = base64.b64encode(_DER).decode()
    body = fold.join(b64[i:i + width] for i in range(0, len(b64), width))
    pem = f"-----BEGIN CERTIFICATE-----{fold}{body}{fold}-----END CERTIFICATE-----{fold}"
    value = {
        "rfc9440": f":{b64}:", "xfcc": f'Hash={hashlib.sha256(_DER).hexdigest()};Cert="{quote(pem)}"',
        "nginx": quote(pem), "pem": pem.replace("\r\n", " ").replace("\n", " "), "der_b64": body.replace("\r\n", " "),
        "aws_alb": quote(pem, safe=""),
    }[fmt]
    facts = _read(fmt, value)
    assert facts.peer.x5t_s256 == _X5T


@settings(max_examples=500, deadline=None)
@given(value=st.text(max_size=40) | st.from_regex(r"\[?[0-9a-fA-F:.]{0,20}\]?(:[0-9]{0,6})?", fullmatch=True)
       | st.from_regex(r"[A-Za-z0-9._-]{1,30}(:[0-9]{0,6})?", fullmatch=True))
def test_host_parses_to_a_round_tripping_authority_or_a_400(value: str) -> None:
    try:
        authority = parse_authority(value)
    except InvalidRequestError as exc:
        assert exc.status == 400 and exc.reason == "bad_host"
        return
    assert parse_authority(str(authority)) == authority
    assert authority.name == authority.name.lower()
    assert authority.port is None or 0 < authority.port <= 65535


_VALID_YAML = """
listen: {host: 127.0.0.1, port: 8080}
routes:
  - id: open
    match: {path_prefix: /}
    upstream: http://127.0.0.1:9
    auth: none
"""


@settings(max_examples=150, deadline=None)
@given(doc=st.dictionaries(st.sampled_from(["listen", "routes", "issuers", "dpop", "admin", "x"]), JSON, max_size=4)
       | st.text(max_size=120))
def test_any_config_is_a_config_or_a_config_error(doc: Any) -> None:
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc)
    try:
        cfg = parse_config(text, source="prop.yaml")
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return
    assert isinstance(cfg, GatewayConfig)


@pytest.mark.parametrize("line", range(1, 7))
@settings(max_examples=20, deadline=None)
@given(junk=st.text(alphabet="&*!|>[]{}:,#-? \"'%@`", min_size=1, max_size=12))
def test_a_valid_config_with_yaml_junk_on_one_line_is_a_config_or_a_config_error(line: int, junk: str) -> None:
    lines = _VALID_YAML.splitlines()
    lines[line] = lines[line] + junk
    try:
        cfg = parse_config("\n".join(lines), source="prop.yaml")
    except ConfigError as exc:
        assert exc.problems
    else:
        assert isinstance(cfg, GatewayConfig)
