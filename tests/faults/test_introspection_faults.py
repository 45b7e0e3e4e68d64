"""RFC 7662 introspection faults through the real gateway: each fault is answered, closed, in bound,
counted and logged with its reason, and the gateway recovers without a restart.

The AS is the token tests' real TLS server; a ``FaultProxy`` in front of it injects transport
faults (refused, reset, hung, slow, TLS handshake failure, a certificate from a foreign CA) and
the AS itself answers 500, a garbage body, a non-JSON media type or ``"active": "true"``.
"""

from __future__ import annotations

import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from tests.conftest import GatewayFactory, Pki, Upstream
from tests.tokens.authserver import AuthServer
from tests.tokens.conftest import AUD

from .conftest import access_logged, metric, reason_count, timed_call
from .faultproxy import FaultProxy

pytestmark = pytest.mark.timeout(60)

TIMEOUT_S = 0.5
# Answered within the configured timeout plus slack for scheduling on a loaded 2-core machine:
# an outcome bound (it is answered at all, not left hanging), not a performance assertion.
BOUND_S = TIMEOUT_S + 3.0


def gateway_body(auth_server: AuthServer, proxy: FaultProxy, pki: Pki, upstream: Upstream, access_log: Path) -> str:
    return f"""
    observability:
      access_log: {{destination: file, file: "{access_log}"}}
    issuers:
      - name: bank-as
        issuer: {auth_server.issuer}
        ca: {pki.ca_pem}
        mode: introspection
        http_timeout_s: {TIMEOUT_S}
        introspection:
          endpoint: https://127.0.0.1:{proxy.port}/introspect
          timeout_s: {TIMEOUT_S}
          client_auth: {{method: client_secret_basic, client_id: gateway, client_secret: "s3cret:+/="}}
    routes:
      - id: accounts
        match: {{path_prefix: /accounts}}
        upstream: {upstream.url}
        auth: {{issuers: [bank-as], audience: {AUD}, sender_constraint: none, realm: bank}}
    """


@pytest.fixture
async def proxy(auth_server: AuthServer) -> AsyncIterator[FaultProxy]:
    port = int(auth_server.url.rsplit(":", 1)[1])
    async with FaultProxy(("127.0.0.1", port), delay_s=TIMEOUT_S * 4) as p:
        yield p


@pytest.fixture
async def foreign_as(auth_server: AuthServer) -> AsyncIterator[int]:
    """The same AS behind a certificate from a CA the gateway does not trust."""
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    runner = web.AppRunner(auth_server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await runner.cleanup()


def active(auth_server: AuthServer, **over: Any) -> str:
    token = f"opaque-{uuid.uuid4().hex}"
    auth_server.tokens[token] = {"active": True, "aud": AUD, "scope": "accounts", "sub": "cust-1",
                                 "client_id": "tpp-1", "exp": int(time.time()) + 300, **over}
    return token


# fault -> (status, reason code, what the log says)
FAULTS: dict[str, tuple[int, str, str]] = {
    "slow": (503, "introspection_unavailable", "introspection failed"),
    "hung": (503, "introspection_unavailable", "introspection failed"),
    "refused": (503, "introspection_unavailable", "introspection failed"),
    "reset": (503, "introspection_unavailable", "introspection failed"),
    "tls_handshake": (503, "introspection_unavailable", "introspection failed"),
    "tls_foreign_ca": (503, "introspection_unavailable", "introspection failed"),
    "http_500": (503, "introspection_http_error", "introspection answered HTTP 500"),
    "garbage_body": (503, "introspection_bad_response", "introspection answered a body that is not JSON"),
    "not_json": (503, "introspection_bad_response", "not application/json"),
    "active_string_true": (401, "token_inactive", "without a JSON boolean active member"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_introspection_fault_then_recovery(
    fault: str, gateway: GatewayFactory, auth_server: AuthServer, proxy: FaultProxy, foreign_as: int,
    pki: Pki, upstream: Upstream, caplog: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    access_log = tmp_path / "access.log"
    gw = await gateway(gateway_body(auth_server, proxy, pki, upstream, access_log))
    status_expected, reason, logged = FAULTS[fault]
    ok = active(auth_server)
    status, *_ = await timed_call(gw, pki, "/accounts", {"Authorization": f"Bearer {ok}"})
    assert status == 200

    token = active(auth_server)
    if fault == "slow":
        await proxy.set_mode("slow")
    elif fault == "hung":
        await proxy.set_mode("blackhole")
    elif fault == "refused":
        await proxy.set_mode("refuse")
    elif fault == "reset":
        await proxy.set_mode("reset")
    elif fault == "tls_handshake":
        await proxy.set_mode("garbage")
    elif fault == "tls_foreign_ca":
        await proxy.set_mode("forward", target=("127.0.0.1", foreign_as))
    elif fault == "http_500":
        auth_server.introspection_mode = "error"
    elif fault == "garbage_body":
        auth_server.introspection_mode = "garbage"
    elif fault == "not_json":
        auth_server.introspection_mode = "html"
    elif fault == "active_string_true":
        auth_server.tokens[token]["active"] = "true"  # RFC 7662 §2.2: a JSON boolean, nothing else

    errors_before = metric(gw, 'gateway_introspection_requests_total{issuer="bank-as",outcome="error"}')
    with caplog.at_level(logging.INFO):
        status, headers, body, took = await timed_call(gw, pki, "/accounts", {"Authorization": f"Bearer {token}"})
    assert status == status_expected, body
    assert took < BOUND_S, f"{fault}: answered after {took:.2f}s"
    assert reason_count(gw, status=status_expected, reason=reason, route="accounts") == 1
    assert len(upstream.requests) == 1  # nothing forwarded on a fault
    assert token.encode() not in body and token not in caplog.text
    if status_expected == 503:
        assert headers.get("Retry-After")
        assert metric(gw, 'gateway_introspection_requests_total{issuer="bank-as",outcome="error"}') == errors_before + 1
    assert any(logged in r.getMessage() for r in caplog.records), caplog.text
    await access_logged(access_log, reason)

    # Recovery, no restart: the AS is healthy again and a new token goes through.
    auth_server.introspection_mode = "ok"
    await proxy.set_mode("forward", target=("127.0.0.1", int(auth_server.url.rsplit(":", 1)[1])))
    fresh = active(auth_server)
    status, *_ = await timed_call(gw, pki, "/accounts", {"Authorization": f"Bearer {fresh}"})
    assert status == 200
    assert len(upstream.requests) == 2
