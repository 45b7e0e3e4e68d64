"""Fixtures for the DPoP stage tests: real keys, a frozen clock, a Binder with its stores."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.bind import Binder
from gateway.bind.replay import MemoryReplayStore
from gateway.config.auth import AuthPolicy
from gateway.config.dpop import DpopConfig
from gateway.model import AuthRequest, Credentials, PeerCertificate, VerifiedToken

from .e2e_support import AsKey, Send
from .proofs import TOKEN, URL, Signer, ed25519_signer, es256, rsa_signer

# redis_url / redis_key_prefix / own_redis come from tests/redis_fixture.py (registered in tests/conftest.py).


class Clock:
    """A settable clock injected into the verifier (never real sleeps in unit tests)."""

    def __init__(self, now: float | None = None) -> None:
        self.now = float(now if now is not None else int(time.time()))

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="session")
def k1() -> Signer:
    return es256()


@pytest.fixture(scope="session")
def k2() -> Signer:
    return es256()


@pytest.fixture(scope="session")
def ps256() -> Signer:
    return rsa_signer("PS256")


@pytest.fixture(scope="session")
def eddsa() -> Signer:
    return ed25519_signer()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def token_for(jkt: str | None = None, x5t: str | None = None) -> VerifiedToken:
    return VerifiedToken(
        issuer="https://as.bank.example",
        subject="cust-123",
        client_id="tpp-1",
        audience=("https://api.bank.example",),
        scopes=frozenset({"accounts"}),
        expires_at=time.time() + 300,
        jti="at-1",
        cnf_jkt=jkt,
        cnf_x5t_s256=x5t,
        source="jwt",
    )


def policy(**over: Any) -> AuthPolicy:
    base: dict[str, Any] = {"issuers": ["as"], "audience": ["https://api.bank.example"], "sender_constraint": "dpop"}
    base.update(over)
    return AuthPolicy.model_validate(base)


def request(
    method: str = "GET",
    url: str = URL,
    *,
    proofs: tuple[str, ...] = (),
    peer: PeerCertificate | None = None,
) -> AuthRequest:
    headers = CIMultiDict[str]()
    for p in proofs:
        headers.add("DPoP", p)
    path = "/" + url.split("://", 1)[1].split("/", 1)[1] if "/" in url.split("://", 1)[1] else "/"
    return AuthRequest(
        method=method, url=url, path=path, query_string="", headers=CIMultiDictProxy(headers), peer_cert=peer
    )


def dpop_creds(proof: str | None, token: str = TOKEN) -> Credentials:
    return Credentials(scheme="DPoP", token=token, dpop_proof=proof)


MakeBinder = Callable[..., Binder]


@pytest.fixture
def make_binder(clock: Clock) -> MakeBinder:
    def make(**cfg: Any) -> Binder:
        dpop = DpopConfig.model_validate(cfg)
        # These tests judge one proof at a time: the memory store's memory began well before their
        # proofs (the store epoch has tests of its own, test_replay_epoch.py).
        replay = None
        if dpop.replay.backend == "memory":
            replay = MemoryReplayStore(max_entries=dpop.replay.max_entries, began=clock.now - 3600)
        return Binder(dpop, clock=clock, replay=replay)

    return make


@pytest.fixture
def binder(make_binder: MakeBinder) -> Binder:
    return make_binder()


@pytest.fixture(scope="module")
def as_key(tmp_path_factory: pytest.TempPathFactory) -> AsKey:
    return AsKey(tmp_path_factory.mktemp("as"))


@pytest.fixture
async def send(pki: Any) -> Send:
    async def go(port: int, *, method: str = "GET", path: str = "/accounts",
                 headers: list[tuple[str, str]] = ()) -> tuple[int, dict[str, list[str]], str]:  # type: ignore[assignment]
        conn = aiohttp.TCPConnector(ssl=pki.client_context())
        async with aiohttp.ClientSession(connector=conn) as s, s.request(
            method, f"https://127.0.0.1:{port}{path}", headers=list(headers)
        ) as r:
            body = await r.text()
            out: dict[str, list[str]] = {}
            for k, v in r.headers.items():
                out.setdefault(k.lower(), []).append(v)
            return r.status, out, body

    return go
