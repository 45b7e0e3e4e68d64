"""Two gateway processes sharing Redis count one quota (issue #18): the limit is global, not per replica.
The second gateway is ``python -m gateway run``, as in tests/dpop/test_two_processes.py."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.dpop.e2e_support import AsKey, Send, dpop_headers, proof_for
from tests.dpop.proofs import Signer
from tests.dpop.test_two_processes import second_gateway  # noqa: F401 - fixture

from .support import limited_body

LIMITS = """
  limits:
    - {id: tpp-daily, key: client_id, quota: 6, window_s: 86400}
  default: [tpp-daily]
"""


@pytest.mark.slow
async def test_two_processes_share_one_quota(
    gateway: Any, second_gateway: Any, upstream: Any, as_key: AsKey, send: Send, k1: Signer, k2: Signer,  # noqa: F811
    redis_url: str, redis_key_prefix: str,
) -> None:
    body = limited_body(as_key, upstream.url, redis_url, f"{redis_key_prefix}{uuid.uuid4().hex[:8]}:", LIMITS)
    a = await gateway(body)
    b_port = await second_gateway(body)
    token = as_key.token(jkt=k1.jkt)
    ports = [a.port, b_port] * 4
    statuses = [(await send(p, headers=dpop_headers(token, proof_for(k1, token))))[0] for p in ports]
    # 6 per day in all: 3 at each process pass, the rest are refused at both.
    assert statuses == [200] * 6 + [429, 429]
    status, h, _ = await send(b_port, headers=dpop_headers(token, proof_for(k1, token)))
    assert status == 429 and 0 < int(h["retry-after"][0]) <= 86400
    assert len(upstream.requests) == 6
    # Another client's quota is its own, at either process.
    other = as_key.token(jkt=k2.jkt, client_id="tpp-2")
    assert (await send(b_port, headers=dpop_headers(other, proof_for(k2, other))))[0] == 200
