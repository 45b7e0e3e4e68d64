"""A route with both a signed body (RFC 9530 Content-Digest) and an authz rule that reads the body
(issue #16): the body is read once (one bounded read shared by both stages), the digest is checked
against the bytes the rule saw, and the upstream gets exactly those bytes — or nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.dpop.e2e_support import AsKey

from .conftest import BodyUpstream, Keys, Send
from .support import config_body
from .test_e2e import request_headers

# The payments route's auth policy (flow style in config_body) gains a rule that reads the body.
AUTHZ = ("authz: {body: {max_bytes: 4096}, rules: [{id: small_payments, "
         "expression: 'double(request.body.instructedAmount.amount) <= 100.0'}]}")


@pytest.fixture
async def gw(gateway: Any, body_upstream: BodyUpstream, as_key: AsKey, keys: Keys) -> Any:
    cfg = config_body(as_key, body_upstream.url, keys.jwks1, keys.jwks2, keys.gw_key)
    assert "sender_constraint: dpop}" in cfg
    return await gateway(cfg.replace("sender_constraint: dpop}", f"sender_constraint: dpop, {AUTHZ}}}"))


def _body(amount: str) -> bytes:
    return json.dumps({"instructedAmount": {"amount": amount, "currency": "EUR"}}).encode()


@pytest.mark.parametrize("expect_header", [False, True])
async def test_signed_body_inside_the_rule_is_read_once_and_forwarded(
    gw: Any, send: Send, body_upstream: BodyUpstream, as_key: AsKey, keys: Keys, expect_header: bool
) -> None:
    body = _body("10.00")
    headers = request_headers(keys, as_key, body=body)
    if expect_header:
        headers["Expect"] = "100-continue"
    status, _, resp = await send(gw.port, "POST", "/payments", headers, body)
    assert status == 200, resp
    assert body_upstream.bodies == [body]


async def test_signed_body_outside_the_rule_is_refused_before_the_upstream(
    gw: Any, send: Send, body_upstream: BodyUpstream, as_key: AsKey, keys: Keys
) -> None:
    body = _body("1000.00")
    status, _, _ = await send(gw.port, "POST", "/payments", request_headers(keys, as_key, body=body), body)
    assert status == 403
    assert body_upstream.bodies == []


async def test_body_changed_after_signing_is_refused_even_when_the_rule_allows_it(
    gw: Any, send: Send, body_upstream: BodyUpstream, as_key: AsKey, keys: Keys
) -> None:
    signed, sent = _body("10.00"), _body("20.00")  # same length, both inside the rule
    status, _, _ = await send(gw.port, "POST", "/payments", request_headers(keys, as_key, body=signed), sent)
    assert status == 400
    assert body_upstream.bodies == []
