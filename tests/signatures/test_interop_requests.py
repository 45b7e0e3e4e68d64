"""A real Python client: ``requests`` with ``requests-http-signature`` signs FAPI 2.0 requests
against the running gateway and verifies the gateway's signed responses with the published JWKS.

It builds on the same ``http-message-signatures`` library the gateway uses, so it proves the
client side of the profile works with an off-the-shelf client, not independence (the npm package
does that: ``test_interop_node.py``). Here the origin is the one the client really connects to
(no ``external_origin``: the listener's allowed hosts), so ``@target-uri`` is the client's URL."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import requests
from http_message_signatures import HTTPSignatureKeyResolver, algorithms
from requests_http_signature import HTTPSignatureAuth

from gateway.bind.jwk import parse_public_jwk
from tests.conftest import Pki
from tests.dpop.e2e_support import AsKey
from tests.dpop.proofs import ath

from .conftest import BodyUpstream, Keys
from .support import JWKS_PATH, ClientKey, config_body, content_digest

BODY = b'{"instructedAmount":{"amount":"42.00","currency":"EUR"}}'
REQUIRED = ("@status", "content-digest", "content-type", '"@method";req', '"@target-uri";req', '"authorization";req',
            '"dpop";req', '"content-digest";req')


class _Keys(HTTPSignatureKeyResolver):
    def __init__(self, private: dict[str, Any] | None = None, public: dict[str, Any] | None = None) -> None:
        self.private, self.public = private or {}, public or {}

    def resolve_private_key(self, key_id: str) -> Any:
        return self.private[key_id]

    def resolve_public_key(self, key_id: str) -> Any:
        return self.public[key_id]


def _call(pki: Pki, keys: Keys, as_key: AsKey, key: ClientKey, base: str, *, tamper: bool = False,
          ) -> tuple[requests.Response, dict[str, Any]]:
    url = f"{base}/payments"
    token = as_key.token(jkt=keys.dpop.jkt)
    headers = {"Authorization": f"DPoP {token}", "DPoP": keys.dpop.proof(htm="POST", htu=url, ath=ath(token)),
               "Content-Type": "application/json", "Content-Digest": content_digest(BODY)}
    auth = HTTPSignatureAuth(
        signature_algorithm=key.algorithm, key_id=key.kid, key_resolver=_Keys({key.kid: key.key}),
        covered_component_ids=("@method", "@target-uri", "authorization", "dpop", "content-digest"),
        label="sig", tag="fapi-2-request", include_alg=False, use_existing_digest=True,
    )
    ca = str(pki.ca_pem)  # per call: REQUESTS_CA_BUNDLE in the environment would override a session's
    with requests.Session() as s:
        prepared = s.prepare_request(requests.Request("POST", url, headers=headers, data=BODY, auth=auth))
        if tamper:
            prepared.body = BODY.replace(b"42.00", b"4200.00")
            prepared.headers["Content-Length"] = str(len(prepared.body))
        resp = s.send(prepared, verify=ca)
        jwks = s.get(f"{base}{JWKS_PATH}", verify=ca).json()
    return resp, jwks


async def test_requests_client_signs_and_verifies(
    gateway: Any, pki: Pki, body_upstream: BodyUpstream, as_key: AsKey, keys: Keys
) -> None:
    text = config_body(as_key, body_upstream.url, keys.jwks1, keys.jwks2, keys.gw_key).replace(
        "    external_origin: https://api.bank.example\n", "")
    gw = await gateway(text)
    base = f"https://127.0.0.1:{gw.port}"
    for key in (keys.es, keys.ed, keys.ps):
        resp, jwks = await asyncio.to_thread(_call, pki, keys, as_key, key, base)
        assert resp.status_code == 200, resp.text
        public = {k["kid"]: parse_public_jwk(k).key for k in jwks["keys"]}
        result = HTTPSignatureAuth.verify(resp, signature_algorithm=algorithms.ECDSA_P256_SHA256,
                                          key_resolver=_Keys(public=public), expect_tag="fapi-2-response",
                                          require_components=REQUIRED)
        assert result.parameters["keyid"] == "gw-1" and result.body == resp.content
    assert body_upstream.bodies == [BODY] * 3
    # The body changed after signing: refused before the upstream sees it.
    resp, _ = await asyncio.to_thread(_call, pki, keys, as_key, keys.es, base, tamper=True)
    assert resp.status_code == 400 and json.loads(resp.content)["error"] == "digest_mismatch"
    assert len(body_upstream.bodies) == 3
