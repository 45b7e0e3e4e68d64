"""Two gateway *processes* sharing Redis: a proof used at one is refused at the other (DPOP-17b), and a
nonce issued by one is accepted by the other (DPOPN-09). The second gateway is ``python -m gateway run``."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import gateway_yaml
from tests.redis_fixture import _free_port

from .e2e_support import CHALLENGE, AsKey, Send, config_body, dpop_headers, proof_for
from .proofs import Signer

ROOT = Path(__file__).resolve().parents[2]


async def _wait_port(port: int, proc: asyncio.subprocess.Process, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"gateway process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError("gateway process did not listen in time")


@pytest.fixture
async def second_gateway(pki: Any, tmp_path: Path) -> AsyncIterator[Any]:
    procs: list[asyncio.subprocess.Process] = []

    async def start(body: str) -> int:
        port, admin = _free_port(), _free_port()
        text = gateway_yaml(pki, body).replace("  port: 0\n", f"  port: {port}\n", 1)
        text = text.replace("admin: {host: 127.0.0.1, port: 0}", f"admin: {{host: 127.0.0.1, port: {admin}}}")
        cfg = tmp_path / f"gw-{port}.yaml"
        cfg.write_text(text)
        log = (tmp_path / f"gw-{port}.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "--config", str(cfg), cwd=str(ROOT),
            stdout=log, stderr=log,
        )
        procs.append(proc)
        try:
            await _wait_port(port, proc)
        except RuntimeError:
            log.flush()
            pytest.fail(f"second gateway did not start: {(tmp_path / f'gw-{port}.log').read_text()[-2000:]}")
        return port

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@pytest.mark.slow
async def test_two_gateway_processes_share_replay_and_nonces(
    gateway: Any, second_gateway: Any, upstream: Any, as_key: AsKey, send: Send, k1: Signer,
    redis_url: str, redis_key_prefix: str,
) -> None:
    dpop = (f'  nonce: {{secrets: ["{"q" * 40}"]}}\n'
            f'  replay: {{backend: redis, redis: {{url: "{redis_url}", key_prefix: "{redis_key_prefix}2p:"}}}}')
    body = config_body(as_key, upstream.url, dpop=dpop, nonce_route=True)
    a = await gateway(body)
    b_port = await second_gateway(body)
    token = as_key.token(jkt=k1.jkt)
    # nonce from process A ...
    status, h, _ = await send(a.port, headers=dpop_headers(token, proof_for(k1, token)))
    assert status == 401 and CHALLENGE.match(h["www-authenticate"][0])["error"] == "use_dpop_nonce"  # type: ignore[index]
    nonce = h["dpop-nonce"][0]
    # ... accepted by process B
    proof = proof_for(k1, token, nonce=nonce)
    assert (await send(b_port, headers=dpop_headers(token, proof)))[0] == 200
    # the same proof replayed to process A is refused: the jti is in the shared Redis
    status, h, _ = await send(a.port, headers=dpop_headers(token, proof))
    assert status == 401 and "jti replay" in h["www-authenticate"][0]
    assert len(upstream.requests) == 1
