"""Config validation for ``clients:`` / ``http_signatures:``, the decision fronts' refusal of
signed routes, and malformed signature fields (fuzzed): always a clean 401, never an exception."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import parse_config
from gateway.config.signatures import HttpSignaturesConfig
from gateway.errors import ConfigError, HttpSignatureError
from gateway.signatures import decision_refusal
from gateway.signatures.keys import ClientKeys
from gateway.signatures.verify import RequestVerifier
from tests.dpop.e2e_support import AsKey

from .conftest import Keys
from .support import config_body, content_digest, sign


def test_example_config_parses(as_key: AsKey, keys: Keys) -> None:
    cfg = parse_config(config_body(as_key, "http://127.0.0.1:1", keys.jwks1, keys.jwks2, keys.gw_key), source="t")
    route = cfg.routes[0]
    assert route.http_signatures.request == "required"
    # A decision front cannot check the body nor sign the answer: refused, never allowed.
    refusal = decision_refusal(route)
    assert refusal is not None and refusal.status == 403


@pytest.mark.parametrize(("change", "message"), [
    (("request: required, response: \"on\"", "request: required"), None),
    (("active_key: gw-1", "active_key: gw-2"), "active_key"),
    (("alg: ES256}", "alg: PS256}"), "is not a PS256 key"),
    (("  - client_id: tpp-2", "  - client_id: tpp-1"), "duplicate"),
])
def test_config_errors_name_the_field(as_key: AsKey, keys: Keys, change: tuple[str, str],
                                      message: str | None) -> None:
    text = config_body(as_key, "http://127.0.0.1:1", keys.jwks1, keys.jwks2, keys.gw_key)
    assert change[0] in text
    text = text.replace(change[0], change[1])
    if message is None:
        parse_config(text, source="t")
        return
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="t")
    assert message in str(err.value)


def test_signed_route_needs_an_authenticated_client(as_key: AsKey, keys: Keys) -> None:
    extra = ("  - id: open\n    match: {path_prefix: /open}\n    upstream: http://127.0.0.1:1\n"
             "    auth: none\n    http_signatures: {request: required}\n")
    with pytest.raises(ConfigError) as err:
        parse_config(config_body(as_key, "http://127.0.0.1:1", keys.jwks1, keys.jwks2, keys.gw_key,
                                 extra_route=extra), source="t")
    assert "routes[1].http_signatures.request: needs an authenticated route" in str(err.value)


def test_signing_key_that_is_not_a_key(as_key: AsKey, keys: Keys, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    text = config_body(as_key, "http://127.0.0.1:1", keys.jwks1, keys.jwks2, junk)
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="t")
    assert "signing_keys" in str(err.value) and "not a usable" in str(err.value)


_ALPHABET = ['"', "(", ")", ";", "=", ":", ",", " ", "@", "sig", "created", "keyid", "tag", "fapi-2-request",
             "1", "-", "*", "?", "\\", "\t", "é", "%", "a", "ZZZ=", "[", "]"]


async def test_fuzzed_signature_fields_are_clean_refusals(keys: Keys) -> None:
    clients = ClientKeys(parse_config(
        f"routes: []\nclients: [{{client_id: tpp-1, jwks_file: {keys.jwks1}}}]", source="t").clients)
    await clients.start()
    verifier = RequestVerifier(HttpSignaturesConfig(), clients, None)
    rng = random.Random(17)
    base = sign(keys.es, "POST", "https://api.bank.example/payments",
                {"Authorization": "DPoP x", "Content-Digest": content_digest(b"{}"), "Content-Length": "2"})
    try:
        for n in range(3000):
            headers: dict[str, Any] = dict(base)
            field = rng.choice(["Signature-Input", "Signature"])
            if n % 2:  # mutate the valid field
                value = list(headers[field])
                for _ in range(rng.randint(1, 4)):
                    pos = rng.randrange(len(value))
                    value[pos:pos + rng.randint(0, 3)] = rng.choice(_ALPHABET)
                headers[field] = "".join(value)
            else:  # or make one up
                headers[field] = "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 40)))
            try:
                await verifier.verify("POST", "https://api.bank.example/payments",
                                      CIMultiDictProxy(CIMultiDict(headers)), "tpp-1", required=True)
            except HttpSignatureError as exc:
                assert exc.status == 401 and exc.accept_signature
    finally:
        await clients.close()
    # And the untouched request verifies (the fuzz loop would otherwise prove nothing).
    result = await RequestVerifier(HttpSignaturesConfig(max_age_s=600), clients, None).verify(
        "POST", "https://api.bank.example/payments", CIMultiDictProxy(CIMultiDict(base)), "tpp-1", required=True)
    assert result is not None and result.keyid == keys.es.kid
    assert time.time() > 0


def test_example_file_loads(keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pki: Any) -> None:
    from gateway.config import load_config

    example = Path(__file__).resolve().parents[2] / "config" / "examples" / "fapi-payments-signatures.yaml"
    env = {"GATEWAY_TLS_CERT": pki.server_cert, "GATEWAY_TLS_KEY": pki.server_key, "CLIENT_CA": pki.ca_pem,
           "PUBLIC_ORIGIN": "https://api.bank.example", "AS_ISSUER": "https://as.bank.example",
           "AS_JWKS_URI": "https://as.bank.example/jwks", "UPSTREAM_URL": "http://payments:8080",
           "TPP1_JWKS_URI": "https://tpp-1.example/jwks.json", "GATEWAY_SIGNING_KEY": keys.gw_key,
           "REDIS_URL": "redis://redis:6379/0"}
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    cfg = load_config(example)
    route = cfg.routes[0]
    assert (route.http_signatures.request, route.http_signatures.response) == ("required", "on")
    assert cfg.http_signatures.active_key == "gw-sig-2026-12" and cfg.clients[0].client_id == "tpp-1"


async def test_decision_front_denies_a_signed_route_even_when_the_request_is_valid(
    as_key: AsKey, keys: Keys, pki: Any
) -> None:
    """ext_authz / auth_request / forwardAuth see neither the body nor the response: a correctly
    signed request to a signed route is denied (403 signatures_need_proxy), never allowed."""
    from gateway.app import build_state
    from gateway.decision.core import OriginalRequest, check
    from tests.conftest import gateway_yaml

    from .test_e2e import BODY, request_headers

    body = config_body(as_key, "http://127.0.0.1:9", keys.jwks1, keys.jwks2, keys.gw_key)
    fronts = ("decision: {enabled: true, grpc: {host: 127.0.0.1, port: 0},\n"
              "           http: {host: 127.0.0.1, port: 0}}\n")
    text = gateway_yaml(pki, body + fronts)
    state = build_state(parse_config(text, source="t"))
    await state.start()
    try:
        for mode in ("ext_authz_grpc", "ext_authz_http", "auth_request", "forward_auth"):
            headers = request_headers(keys, as_key, body=BODY)  # a fresh DPoP proof each time
            original = OriginalRequest.build(
                mode,  # type: ignore[arg-type]
                method="POST", scheme="https", authority="api.bank.example", raw_path="/payments",
                headers=list(headers.items()), remote="127.0.0.1",
            )
            verdict = await check(state, original)
            assert not verdict.allowed and verdict.status == 403, mode
            assert verdict.reason == "signatures_need_proxy", mode
    finally:
        await state.close()
