"""FAPI 2.0 HTTP message signatures through the real gateway (TLS listener, DPoP-bound tokens,
recording upstream): signed requests verified, bodies checked against Content-Digest before the
upstream sees a byte, responses signed; one refusal per profile rule, nothing forwarded on refusal."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from http_message_signatures import HTTPMessageVerifier, HTTPSignatureKeyResolver, algorithms

from gateway.bind.jwk import parse_public_jwk
from tests.dpop.e2e_support import ORIGIN, AsKey
from tests.dpop.proofs import ath

from .conftest import BodyUpstream, Keys, Send
from .support import JWKS_PATH, ClientKey, config_body, content_digest, sign

BODY = json.dumps({"instructedAmount": {"amount": "10.00", "currency": "EUR"}}).encode()


def request_headers(keys: Keys, as_key: AsKey, method: str = "POST", path: str = "/payments",
                    body: bytes | None = BODY, key: ClientKey | None = None, token: str | None = None,
                    **sign_kw: Any) -> dict[str, str]:
    token = token or as_key.token(jkt=keys.dpop.jkt)
    proof = keys.dpop.proof(htm=method, htu=ORIGIN + path.split("?")[0], ath=ath(token))
    headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
    if body is not None:
        headers["Content-Type"] = "application/json"
        headers["Content-Digest"] = content_digest(body)
    return sign(key or keys.es, method, ORIGIN + path, headers, **sign_kw)


class _GatewayKey(HTTPSignatureKeyResolver):
    def __init__(self, jwks: dict[str, Any]) -> None:
        self.keys = {k["kid"]: parse_public_jwk(k).key for k in jwks["keys"]}

    def resolve_public_key(self, key_id: str) -> Any:
        return self.keys[key_id]

    def resolve_private_key(self, key_id: str) -> Any:
        raise NotImplementedError


class _Req:
    def __init__(self, method: str, url: str, headers: dict[str, str]) -> None:
        self.method, self.url, self.headers = method, url, headers


class _Resp:
    def __init__(self, status: int, headers: dict[str, str], request: _Req) -> None:
        self.status_code, self.headers, self.request = status, headers, request


async def verify_response(send: Send, port: int, status: int, headers: dict[str, str], body: bytes,
                          req: _Req) -> list[Any]:
    """Check the gateway's response signature with its published JWKS, as a client would."""
    jwks_status, _, jwks_body = await send(port, "GET", JWKS_PATH, {})
    assert jwks_status == 200
    jwks = json.loads(jwks_body)
    assert all("d" not in k for k in jwks["keys"])
    assert headers["Content-Digest"] == content_digest(body)
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ECDSA_P256_SHA256,
                                   key_resolver=_GatewayKey(jwks))
    return verifier.verify(_Resp(status, headers, req), expect_tag="fapi-2-response", max_age=timedelta(seconds=60),
                           body=body)


@pytest.mark.parametrize("which", ["es", "ed", "ps"])
async def test_signed_post_is_forwarded_and_the_response_signed(
    gw: Any, send: Send, body_upstream: BodyUpstream, as_key: AsKey, keys: Keys, which: str
) -> None:
    key = getattr(keys, which)
    headers = request_headers(keys, as_key, key=key)
    headers["X-Signature-Key"] = "spoofed"  # the identity header is the gateway's alone
    status, resp_headers, body = await send(gw.port, "POST", "/payments", headers, BODY)
    assert status == 200, body
    assert body_upstream.bodies == [BODY]  # exactly the signed bytes, once
    assert body_upstream.headers[0]["X-Signature-Key"] == f'keyid="{key.kid}", label="sig"'
    results = await verify_response(send, gw.port, status, resp_headers, body,
                                    _Req("POST", ORIGIN + "/payments", headers))
    covered = results[0].covered_components
    for comp in ('"@status"', '"content-digest"', '"content-type"', '"@method";req', '"@target-uri";req',
                 '"authorization";req', '"dpop";req', '"content-digest";req'):
        assert comp in covered
    assert results[0].parameters["keyid"] == "gw-1"


async def test_signed_get_with_query_and_thumbprint_keyid(
    gw: Any, send: Send, body_upstream: BodyUpstream, as_key: AsKey, keys: Keys
) -> None:
    path = "/payments/p-1?fields=status&x=%2F"
    headers = request_headers(keys, as_key, method="GET", path=path, body=None, keyid=keys.es.thumbprint)
    status, resp_headers, body = await send(gw.port, "GET", path, headers)
    assert status == 200, body
    await verify_response(send, gw.port, status, resp_headers, body, _Req("GET", ORIGIN + path, headers))


def _retag(headers: dict[str, str], old: str, new: str) -> dict[str, str]:
    return {k: (v.replace(old, new) if k == "Signature-Input" else v) for k, v in headers.items()}


async def test_refusals(gw: Any, send: Send, body_upstream: BodyUpstream, as_key: AsKey, keys: Keys) -> None:
    now = int(time.time())
    ok = request_headers(keys, as_key)
    second_token = as_key.token(jkt=keys.dpop.jkt)

    def fresh(**kw: Any) -> dict[str, str]:
        return request_headers(keys, as_key, **kw)

    def without(h: dict[str, str], *names: str) -> dict[str, str]:
        return {k: v for k, v in h.items() if k not in names}

    def other_token(h: dict[str, str]) -> dict[str, str]:
        # A valid token and proof of the same client, but not the ones that were signed.
        swapped = dict(h)
        swapped["Authorization"] = f"DPoP {second_token}"
        swapped["DPoP"] = keys.dpop.proof(htm="POST", htu=ORIGIN + "/payments", ath=ath(second_token))
        return swapped

    def other_proof(h: dict[str, str]) -> dict[str, str]:
        token = h["Authorization"].split(" ", 1)[1]
        return {**h, "DPoP": keys.dpop.proof(htm="POST", htu=ORIGIN + "/payments", ath=ath(token))}

    two, dup = fresh(), fresh()
    extra = sign(keys.es, "POST", ORIGIN + "/payments", without(two, "Signature", "Signature-Input"), label="sig2")
    cases: dict[str, tuple[dict[str, str], str, str]] = {
        # name: (headers, path, reason)
        "missing": (without(fresh(), "Signature", "Signature-Input"), "/payments", "signature_missing"),
        "input without signature": (without(fresh(), "Signature"), "/payments", "signature_malformed"),
        "signature without input": (without(fresh(), "Signature-Input"), "/payments", "signature_malformed"),
        "wrong tag": (fresh(tag="fapi-2-response"), "/payments", "signature_missing"),
        "no tag": (fresh(tag=None), "/payments", "signature_missing"),
        "stale created": (fresh(created=now - 3600), "/payments", "signature_expired"),
        "created in the future": (fresh(created=now + 3600), "/payments", "signature_invalid"),
        "expired": (fresh(expires=now - 5), "/payments", "signature_expired"),
        "authorization not covered": (fresh(components=["@method", "@target-uri", "dpop", "content-digest"]),
                                      "/payments", "signature_incomplete"),
        "dpop not covered": (fresh(components=["@method", "@target-uri", "authorization", "content-digest"]),
                             "/payments", "signature_incomplete"),
        "content-digest not covered": (fresh(components=["@method", "@target-uri", "authorization", "dpop"]),
                                       "/payments", "signature_incomplete"),
        "unknown keyid": (fresh(keyid="nobody"), "/payments", "unknown_key"),
        "key of another client": (fresh(key=keys.other), "/payments", "unknown_key"),
        "another client's kid, own key": (fresh(keyid=keys.other.kid), "/payments", "unknown_key"),
        "tampered target-uri (query)": (fresh(path="/payments?a=1"), "/payments?a=2", "signature_invalid"),
        "tampered authorization": (other_token(ok), "/payments", "signature_invalid"),
        "tampered dpop": (other_proof(fresh()), "/payments", "signature_invalid"),
        "two fapi signatures": ({**two, "Signature-Input": f"{two['Signature-Input']}, {extra['Signature-Input']}",
                                 "Signature": f"{two['Signature']}, {extra['Signature']}"},
                                "/payments", "signature_ambiguous"),
        "duplicated label": ({**dup, "Signature-Input": f"{dup['Signature-Input']}, {dup['Signature-Input']}"},
                             "/payments", "signature_malformed"),
        "malformed field": ({**fresh(), "Signature-Input": 'sig=("@method";created=x'}, "/payments",
                            "signature_malformed"),
        "alg of another key type": (_retag(fresh(), ';tag="fapi-2-request"', ';tag="fapi-2-request";alg="ed25519"'),
                                    "/payments", "signature_alg"),
    }
    # "tampered method": signed for PUT, sent as POST (the DPoP proof is for POST).
    put_signed = fresh()
    put = sign(keys.es, "PUT", ORIGIN + "/payments", without(put_signed, "Signature", "Signature-Input"))
    cases["tampered method"] = (put, "/payments", "signature_invalid")
    for name, (headers, path, reason) in cases.items():
        status, resp_headers, body = await send(gw.port, "POST", path, headers, BODY)
        assert status == 401, (name, status, body)
        assert json.loads(body)["error"] == reason, (name, body)
        assert resp_headers["Accept-Signature"].startswith('sig=("@method" "@target-uri" "authorization" "dpop" '
                                                           '"content-digest")'), name
        assert resp_headers["WWW-Authenticate"].startswith("DPoP"), name
    assert body_upstream.bodies == []


async def test_body_not_matching_its_digest_is_400_and_never_forwarded(
    gw: Any, send: Send, body_upstream: BodyUpstream, as_key: AsKey, keys: Keys
) -> None:
    headers = request_headers(keys, as_key)
    tampered = BODY.replace(b"10.00", b"99.00")
    status, _, body = await send(gw.port, "POST", "/payments", headers, tampered)
    assert status == 400 and json.loads(body)["error"] == "digest_mismatch"
    # A signed request with content must have a digest; one sent without a body is checked too.
    status, _, body = await send(gw.port, "POST", "/payments", request_headers(keys, as_key), b"")
    assert status == 400 and json.loads(body)["error"] == "digest_mismatch"
    assert body_upstream.bodies == []


async def test_sha512_digest_and_nonce_replay(
    gw: Any, send: Send, body_upstream: BodyUpstream, as_key: AsKey, keys: Keys
) -> None:
    token = as_key.token(jkt=keys.dpop.jkt)

    def signed(nonce: str) -> dict[str, str]:
        proof = keys.dpop.proof(htm="POST", htu=ORIGIN + "/payments", ath=ath(token))
        h = {"Authorization": f"DPoP {token}", "DPoP": proof, "Content-Type": "application/json",
             "Content-Digest": content_digest(BODY, "sha-512")}
        return sign(keys.ed, "POST", ORIGIN + "/payments", h, nonce=nonce)

    nonce = uuid.uuid4().hex
    status, _, body = await send(gw.port, "POST", "/payments", signed(nonce), BODY)
    assert status == 200, body
    # A new proof, so a new signature, but the same nonce: a replay of the signature's nonce.
    status, _, body = await send(gw.port, "POST", "/payments", signed(nonce), BODY)
    assert status == 401 and json.loads(body)["error"] == "signature_replayed"
    assert len(body_upstream.bodies) == 1


async def test_response_over_the_limit_is_502(
    gateway: Any, send: Send, body_upstream: BodyUpstream, as_key: AsKey, keys: Keys
) -> None:
    gw = await gateway(config_body(as_key, body_upstream.url, keys.jwks1, keys.jwks2, keys.gw_key,
                                   max_response_bytes=1000))
    path = "/payments/big?n=1001"
    status, _, _ = await send(gw.port, "GET", path, request_headers(keys, as_key, method="GET", path=path, body=None))
    assert status == 502
    path = "/payments/big?n=1000"
    status, headers, body = await send(gw.port, "GET", path,
                                       request_headers(keys, as_key, method="GET", path=path, body=None))
    assert status == 200 and len(body) == 1000 and "Signature" in headers


async def test_optional_route_passes_unsigned_requests_but_checks_signed_ones(
    gateway: Any, send: Send, body_upstream: BodyUpstream, as_key: AsKey, keys: Keys
) -> None:
    gw = await gateway(config_body(as_key, body_upstream.url, keys.jwks1, keys.jwks2, keys.gw_key,
                                   request="optional", response="off"))
    unsigned = {k: v for k, v in request_headers(keys, as_key).items() if not k.startswith("Signature")}
    status, headers, _ = await send(gw.port, "POST", "/payments", unsigned, BODY)
    assert status == 200 and "Signature" not in headers
    status, _, _ = await send(gw.port, "POST", "/payments", request_headers(keys, as_key, keyid="nobody"), BODY)
    assert status == 401
    assert body_upstream.bodies == [BODY]


async def test_access_log_names_the_verified_key_and_the_refusal_reason(
    gateway: Any, send: Send, body_upstream: BodyUpstream, as_key: AsKey, keys: Keys, tmp_path: Any
) -> None:
    import asyncio

    log_file = tmp_path / "access.log"
    text = config_body(as_key, body_upstream.url, keys.jwks1, keys.jwks2, keys.gw_key) + f"""
observability:
  access_log:
    destination: file
    file: {log_file}
    fields: [route, status, reason, client_id, signature_keyid, signature_label]
"""
    gw = await gateway(text)
    assert (await send(gw.port, "POST", "/payments", request_headers(keys, as_key), BODY))[0] == 200
    refused = request_headers(keys, as_key, keyid="nobody")
    assert (await send(gw.port, "POST", "/payments", refused, BODY))[0] == 401
    lines: list[dict[str, Any]] = []
    for _ in range(200):  # the writer thread drains every few ms; wait for both lines
        if log_file.exists():
            lines = [json.loads(line) for line in log_file.read_text().splitlines()]
            if len(lines) >= 2:
                break
        await asyncio.sleep(0.05)
    assert lines[0] == {"route": "payments", "status": 200, "reason": None, "client_id": "tpp-1",
                        "signature_keyid": keys.es.kid, "signature_label": "sig"}
    assert lines[1]["reason"] == "unknown_key" and lines[1]["signature_keyid"] is None


async def test_nonce_replay_is_seen_across_gateways_sharing_redis(
    gateway: Any, send: Send, body_upstream: BodyUpstream, as_key: AsKey, keys: Keys, redis_url: str,
    redis_key_prefix: str,
) -> None:
    """The signature nonce lives in the DPoP jti store: with Redis, every replica sees it."""
    replay = (f'  replay: {{backend: redis, redis: {{url: "{redis_url}", '
              f'key_prefix: "{redis_key_prefix}httpsig:"}}}}\n')
    text = config_body(as_key, body_upstream.url, keys.jwks1, keys.jwks2, keys.gw_key).replace(
        "  algorithms: [PS256, ES256, EdDSA]\n", "  algorithms: [PS256, ES256, EdDSA]\n" + replay)
    gw1, gw2 = await gateway(text), await gateway(text)
    nonce = uuid.uuid4().hex
    status, _, body = await send(gw1.port, "POST", "/payments", request_headers(keys, as_key, nonce=nonce), BODY)
    assert status == 200, body
    status, _, body = await send(gw2.port, "POST", "/payments", request_headers(keys, as_key, nonce=nonce), BODY)
    assert status == 401 and json.loads(body)["error"] == "signature_replayed"
    other = uuid.uuid4().hex
    status, _, _ = await send(gw2.port, "POST", "/payments", request_headers(keys, as_key, nonce=other), BODY)
    assert status == 200
