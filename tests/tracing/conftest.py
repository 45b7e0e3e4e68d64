"""Fixtures for the tracing tests: the SDK's in-memory exporter wired into a real in-process gateway,
a real TLS authorization server that records the trace context it receives, a real upstream."""

from __future__ import annotations

import asyncio
import http.client
import ssl
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.observability import tracing
from tests.conftest import Pki
from tests.ops.conftest import gateway_process, threaded_upstream  # noqa: F401 - fixtures of the e2e test
from tests.tokens.authserver import AuthServer, ec_key, rsa_key
from tests.tokens.conftest import FakeClock, _serve

AUD = "https://api.bank.example"


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Every span the gateway finishes, synchronously (a simple processor, no export thread)."""
    exporter = InMemorySpanExporter()
    monkeypatch.setattr(tracing, "setup_tracing", partial(tracing.setup_tracing, exporter=exporter))
    yield exporter
    tracing.shutdown_tracing()


@pytest.fixture
async def traced_as(pki: Pki) -> AsyncIterator[tuple[AuthServer, list[str | None]]]:
    """The tokens suite's AS over TLS, plus the ``traceparent`` of every request it got."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    srv = AuthServer(keys=[rsa_key("rsa-1"), ec_key("ec-1")], audience=AUD, clock=FakeClock())
    seen: list[str | None] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(request.headers.get("traceparent"))
        return await handler(request)  # type: ignore[no-any-return]

    app = srv.app()
    app.middlewares.append(record)
    runner, port = await _serve(app, ctx)
    srv.url = f"https://127.0.0.1:{port}"
    yield srv, seen
    await runner.cleanup()


def _get(port: int, path: str, headers: dict[str, str], ctx: ssl.SSLContext) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


async def get(port: int, path: str, pki: Pki, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    """A request from a plain http.client in a thread: not an aiohttp client, so the client
    instrumentation the gateway turns on does not add spans of the test's own."""
    status, hdrs, _ = await asyncio.to_thread(_get, port, path, headers or {}, pki.client_context())
    return status, hdrs
