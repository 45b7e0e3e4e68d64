"""Configs for the rate-limit tests: the DPoP route of tests/dpop plus a ``rate_limits:`` section."""

from __future__ import annotations

from tests.dpop.e2e_support import AsKey, config_body


def limited_body(as_key: AsKey, upstream_url: str, redis_url: str, prefix: str, limits: str,
                 backend: str = "redis") -> str:
    dpop = f'  replay: {{backend: redis, redis: {{url: "{redis_url}", key_prefix: "{prefix}jti:"}}}}'
    return config_body(as_key, upstream_url, dpop=dpop) + f"""
rate_limits:
  backend: {backend}
  key_prefix: "{prefix}rl:"
{limits}
"""
