"""The ``RateLimit-Policy`` and ``RateLimit`` response fields, per draft-ietf-httpapi-ratelimit-headers-09.

Both are Structured Field Lists (RFC 9651) of one Item per limit: the policy name as an sf-string
with parameters ``q`` (quota), ``w`` (window, seconds) for the policy, and ``r`` (remaining) and
``t`` (seconds until the quota is restored) for the current state:

    RateLimit-Policy: "tpp-burst";q=40;w=2, "tpp-daily";q=10000;w=86400
    RateLimit: "tpp-daily";r=0;t=3600

On a 429 only the limit that refused is named in ``RateLimit`` (the draft: the field SHOULD
describe the policy closest to exhaustion), next to ``Retry-After`` (RFC 9110 §10.2.3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..config.ratelimit import LimitConfig
from .store import Outcome

__all__ = ("DRAFT", "policy_field", "state_field")

DRAFT = "draft-ietf-httpapi-ratelimit-headers-09"


def _seconds(value: float) -> int:
    return max(0, math.ceil(value - 1e-6))


def policy_field(limits: Sequence[LimitConfig]) -> str:
    # Limit ids are [A-Za-z0-9_.-]: valid sf-string content as they are.
    return ", ".join(f'"{lim.id}";q={lim.capacity};w={_seconds(lim.window)}' for lim in limits)


def state_field(outcome: Outcome) -> str:
    return f'"{outcome.limit.id}";r={outcome.remaining};t={_seconds(outcome.reset_s)}'


def tightest(outcomes: Sequence[Outcome]) -> Outcome:
    """The refusing limit that frees up last; when all allow, the one with the fewest left."""
    if len(outcomes) == 1:
        return outcomes[0]
    refused = [o for o in outcomes if not o.allowed]
    if refused:
        return max(refused, key=lambda o: o.retry_after_s)
    return min(outcomes, key=lambda o: (o.remaining / max(1, o.limit.capacity), -o.reset_s))
