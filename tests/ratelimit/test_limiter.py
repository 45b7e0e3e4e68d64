"""The stage's own rules (issue #18): key parts, what the source budget counts, its fail modes."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config.dpop import RedisReplayConfig
from gateway.config.ratelimit import RateLimitsConfig
from gateway.errors import InvalidTokenError, MissingCredentialsError, RateLimitedError, UseDpopNonceError
from gateway.model import AuthRequest, Binding, Decision, VerifiedToken
from gateway.ratelimit import RateLimiter
from gateway.ratelimit.store import LocalLimitStore, RedisLimitStore
from tests.redis_fixture import _free_port


def cfg(**over: Any) -> RateLimitsConfig:
    base: dict[str, Any] = {"limits": [{"id": "l", "key": ["client_id"], "rate": 1, "per_s": 60, "burst": 2}],
                            "default": ["l"]}
    base.update(over)
    return RateLimitsConfig.model_validate(base)


def req(remote: str = "198.51.100.7", **headers: str) -> AuthRequest:
    return AuthRequest(method="GET", url="https://api.example/a", path="/a", query_string="",
                       headers=CIMultiDictProxy(CIMultiDict(headers)), peer_cert=None, remote=remote)


def token(**over: Any) -> VerifiedToken:
    base: dict[str, Any] = dict(issuer="i", subject="cust-1", client_id="tpp-1", audience=("a",),
                                scopes=frozenset(), expires_at=time.time() + 60, jti=None, cnf_jkt=None,
                                cnf_x5t_s256=None, source="jwt", claims={"org": "bank-7", "n": True})
    base.update(over)
    return VerifiedToken(**base)


def test_key_parts_come_from_what_was_verified() -> None:
    proxies = (ipaddress.ip_network("10.0.0.0/8"),)
    lim = RateLimiter(cfg(limits=[{"id": "l", "key": ["client_id", "sub", "claim:org", "source_ip"], "rate": 1}]),
                      ["r"], LocalLimitStore(), trusted_proxies=proxies)
    (limit,) = lim.cfg.limits
    assert lim.key_parts(limit, req(), "r", token(), None) == ("tpp-1", "cust-1", "bank-7", "198.51.100.7")
    # Behind a trusted proxy: the client it forwarded for.
    forwarded = lim.key_parts(limit, req("10.1.1.1", **{"X-Forwarded-For": "203.0.113.9"}), "r", token(), None)
    assert forwarded is not None and forwarded[3] == "203.0.113.9"
    # A part the token lacks (a non-string claim, no client_id): the limit does not apply.
    (n_limit,) = cfg(limits=[{"id": "l", "key": ["claim:n"], "rate": 1}]).limits
    assert lim.key_parts(n_limit, req(), "r", token(), None) is None
    assert lim.key_parts(limit, req(), "r", token(client_id=None), None) is None
    (jkt_limit,) = cfg(limits=[{"id": "l", "key": ["jkt"], "rate": 1}]).limits
    assert lim.key_parts(jkt_limit, req(), "r", token(), None) is None
    assert lim.key_parts(jkt_limit, req(), "r", token(), "thumb") == ("thumb",)


def test_header_key_is_read_from_trusted_proxies_only() -> None:
    proxies = (ipaddress.ip_network("10.0.0.0/8"),)
    lim = RateLimiter(cfg(limits=[{"id": "l", "key": ["header:X-Tenant"], "rate": 1}]), ["r"], LocalLimitStore(),
                      trusted_proxies=proxies)
    (limit,) = lim.cfg.limits
    assert lim.key_parts(limit, req("10.2.3.4", **{"X-Tenant": "t1"}), "r", None, None) == ("t1",)
    # From anyone else the header is ignored: the client cannot pick (or spread over) buckets.
    assert lim.key_parts(limit, req("198.51.100.7", **{"X-Tenant": "t1"}), "r", None, None) == ("peer:198.51.100.7",)


async def test_identity_limit_refuses_with_the_limit_and_fields() -> None:
    lim = RateLimiter(cfg(), ["r"], LocalLimitStore())

    class Route:
        id = "r"

    decision = Decision(token=token(), binding=Binding("none"))
    for _ in range(2):
        assert await lim.check(req(), Route(), decision) is decision  # type: ignore[arg-type]
    with pytest.raises(RateLimitedError) as err:
        await lim.check(req(), Route(), decision)  # type: ignore[arg-type]
    assert err.value.limit_id == "l" and err.value.status == 429 and 50 <= err.value.retry_after_s <= 60
    assert dict(err.value.fields)["RateLimit-Policy"] == '"l";q=2;w=120'


async def test_source_budget_counts_refusals_but_not_missing_tokens_or_nonce_requests() -> None:
    lim = RateLimiter(cfg(source_budget={"refused": 3, "window_s": 60}), ["r"], LocalLimitStore())
    for _ in range(10):
        await lim.refused("ip:1.2.3.4", MissingCredentialsError())
        await lim.refused("ip:1.2.3.4", UseDpopNonceError(nonce="n"))
    lim.admit("ip:1.2.3.4")
    for _ in range(3):
        lim.admit("ip:1.2.3.4")
        await lim.refused("ip:1.2.3.4", InvalidTokenError("bad"))
    with pytest.raises(RateLimitedError) as err:
        lim.admit("ip:1.2.3.4")
    assert err.value.reason == "source_budget" and err.value.limit_id == "source_budget"
    lim.admit("ip:5.6.7.8")  # another source


@pytest.mark.parametrize("fail", ["closed", "open"])
async def test_source_budget_without_redis(fail: str) -> None:
    """Redis unreachable: closed keeps the budget, counted per process; open lets everything through."""
    dead = RedisLimitStore(RedisReplayConfig(url=f"redis://127.0.0.1:{_free_port()}/0", connect_timeout_s=0.2,
                                             timeout_s=0.2))
    seen: list[tuple[str, str]] = []
    lim = RateLimiter(cfg(source_budget={"refused": 2, "window_s": 60, "fail": fail}), ["r"], dead,
                      record=lambda limit, outcome: seen.append((limit, outcome)))
    try:
        for _ in range(3):
            await lim.refused("ip:1.2.3.4", InvalidTokenError("bad"))
        if fail == "closed":
            with pytest.raises(RateLimitedError):
                lim.admit("ip:1.2.3.4")
        else:
            lim.admit("ip:1.2.3.4")
        assert seen[0] == ("source_budget", f"fail_{fail}")
    finally:
        await dead.close()
