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
