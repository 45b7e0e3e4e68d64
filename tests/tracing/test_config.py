"""Tracing configuration: validated with the field named, off by default without loading
OpenTelemetry at all, the standard OTEL_* variables honoured where the file says nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.config import parse_config
from gateway.config.observability import TracingConfig
from gateway.errors import ConfigError
from gateway.observability import tracing

REPO = Path(__file__).resolve().parents[2]


def assert_loads_no_opentelemetry(script: str) -> None:
    """Run ``script`` (it serves something) in a fresh interpreter; then neither the OpenTelemetry
    SDK nor our tracing module may have been imported."""
    code = script + textwrap.dedent("""
        import sys
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry") or m == "gateway.observability.tracing")
        print("LOADED", loaded)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout, out.stdout


ROUTE = """
routes:
  - id: open
    match: {path_prefix: /}
    upstream: http://127.0.0.1:1
    auth: none
"""


@pytest.mark.parametrize(("snippet", "field"), [
    ("sample_ratio: 1.5", "sample_ratio"),
    ("incoming_context: everyone", "incoming_context"),
    ("endpoint: collector:4318", "endpoint"),
    ("max_queue_size: 1", "max_queue_size"),
    ("sampling: 0.1", "sampling"),
])
def test_bad_tracing_settings_name_the_field(snippet: str, field: str) -> None:
    text = f"observability:\n  tracing:\n    enabled: true\n    {snippet}\n{ROUTE}"
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="gw.yaml")
    assert f"observability.tracing.{field}" in str(err.value) and "gw.yaml:4" in str(err.value)


def test_off_by_default() -> None:
    assert parse_config(ROUTE, source="gw.yaml").observability.tracing.enabled is False


def test_tracing_off_loads_no_opentelemetry_module() -> None:
    """Zero cost when off: a gateway that served a request never imported the SDK or our tracing."""
    code = textwrap.dedent(f"""
        import asyncio, sys
        from gateway.config import parse_config
        from gateway.server import GatewayServer
        cfg = parse_config('''listen: {{host: 127.0.0.1, port: 0}}
        admin: {{host: 127.0.0.1, port: 0}}
        observability: {{access_log: {{enabled: false}}}}
        {ROUTE.replace(chr(10), chr(10) + '        ')}''', source="t.yaml")
        async def main():
            s = GatewayServer(cfg)
            await s.start()
            r, w = await asyncio.open_connection("127.0.0.1", s.port)
            w.write(b"GET / HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n")
            assert (await r.read()).startswith(b"HTTP/1.1 502")
            await s.stop()
        asyncio.run(main())
    """)
    assert_loads_no_opentelemetry(code)


def test_environment_fills_what_the_file_leaves_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-gw-eu1")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=prod")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", "Authorization")
    try:
        provider = tracing.setup_tracing(TracingConfig(enabled=True), exporter=InMemorySpanExporter())
        assert provider is not None
        attrs = provider.resource.attributes
        assert attrs["service.name"] == "edge-gw-eu1" and attrs["deployment.environment.name"] == "prod"
        assert "0.25" in provider.sampler.get_description()
        # Header capture would put the introspection call's client secret into spans: refused.
        import os

        assert "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST" not in os.environ
        # The file wins over the environment.
        provider = tracing.setup_tracing(TracingConfig(enabled=True, service_name="gw", sample_ratio=0.5),
                                         exporter=InMemorySpanExporter())
        assert provider is not None
        assert provider.resource.attributes["service.name"] == "gw"
        active = tracing._ACTIVE
        assert active is not None and active.ratio == 0.5 and active.bound == 1 << 63
        assert "0.5" in provider.sampler.get_description()  # other roots (JWKS refreshes): the same ratio
    finally:
        tracing.shutdown_tracing()
    assert tracing.tracer() is None


def test_otel_sdk_disabled_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.setup_tracing(TracingConfig(enabled=True), exporter=InMemorySpanExporter()) is None
    assert tracing.tracer() is None
