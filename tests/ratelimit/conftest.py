"""Fixtures for the rate-limit tests: the DPoP end-to-end helpers (a real AS key, real proofs)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.dpop.e2e_support import AsKey, Send
from tests.dpop.proofs import Signer, es256


@pytest.fixture(scope="session")
def k1() -> Signer:
    return es256()


@pytest.fixture(scope="session")
def k2() -> Signer:
    return es256()


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
