"""End to end: a real gateway process exports its traces over OTLP/HTTP (protobuf) to a real
receiver this test starts, which decodes every export request with the OTLP protobuf schema."""

from __future__ import annotations

import http.server
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.ops.gwproc import GatewayProcess, ThreadedUpstream
from tests.ops.test_observability_e2e import Tokens, call, config

pytestmark = pytest.mark.timeout(90)


class OtlpReceiver:
    """POST /v1/traces with application/x-protobuf, as an OpenTelemetry Collector takes it."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.content_types: list[str] = []
        self.changed = threading.Condition()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)  # raises on anything that is not an OTLP export
                with outer.changed:
                    outer.requests.append(req)
                    outer.content_types.append(self.headers.get("Content-Type", ""))
                    outer.changed.notify_all()
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) for every span received."""
        out = []
        with self.changed:
            for req in self.requests:
                for rs in req.resource_spans:
                    res = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        out.extend((res, s) for s in ss.spans)
        return out

    def wait_for(self, pred: Any, timeout: float = 20.0) -> list[tuple[dict[str, Any], Any]]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not pred(self._unlocked_spans()):
                left = deadline - time.monotonic()
                assert left > 0, f"spans received: {[s.name for _, s in self._unlocked_spans()]}"
                self.changed.wait(min(left, 0.2))
        return self.spans()

    def _unlocked_spans(self) -> list[tuple[dict[str, Any], Any]]:
        return [(None, s) for req in self.requests for rs in req.resource_spans for ss in rs.scope_spans
                for s in ss.spans]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


def test_traces_reach_a_real_otlp_receiver(
    tmp_path: Path, receiver: OtlpReceiver, threaded_upstream: ThreadedUpstream, gateway_process: Any
) -> None:
    tokens = Tokens(tmp_path)
    cfg = config(tmp_path, threaded_upstream.url, tokens)
    text = cfg.read_text().replace(
        "observability:\n",
        f"observability:\n  tracing: {{enabled: true, endpoint: \"{receiver.url}\", sample_ratio: 1.0}}\n", 1)
    cfg.write_text(text)
    # The standard variables still apply where the file is silent: the service name, and the batch
    # processor's delay (short here, so the test does not wait for the 5 s default).
    gw: GatewayProcess = gateway_process(cfg, env={"OTEL_SERVICE_NAME": "edge-gw-test",
                                                   "OTEL_BSP_SCHEDULE_DELAY": "100"}).started()
    token = tokens.access_token()
    assert call(gw.base + "/accounts/1", {"Authorization": f"Bearer {token}",
                                          "x-fapi-interaction-id": "5f1c9a52-0000-4000-8000-00000000e2e0"}) == 200
    assert call(gw.base + "/accounts/2") == 401

    def done(spans: list[tuple[Any, Any]]) -> bool:
        names = {s.name for _, s in spans}
        return {"GET accounts", "token_verify", "upstream", "credentials", "policy", "binding"} <= names and sum(
            s.name == "GET accounts" for _, s in spans) >= 2

    spans = receiver.wait_for(done)
    assert all(ct == "application/x-protobuf" for ct in receiver.content_types)
    assert {res["service.name"] for res, _ in spans} == {"edge-gw-test"}
    roots = [s for _, s in spans if s.name == "GET accounts"]
    ok = next(s for s in roots if any(a.key == "fapi.interaction_id" for a in s.attributes))
    attrs = {a.key: a.value for a in ok.attributes}
    assert attrs["fapi.interaction_id"].string_value == "5f1c9a52-0000-4000-8000-00000000e2e0"
    assert attrs["http.response.status_code"].int_value == 200
    children = {s.name for _, s in spans if s.trace_id == ok.trace_id and s.parent_span_id == ok.span_id}
    assert {"tls_peer", "credentials", "token_verify", "binding", "policy", "upstream"} <= children
    refused = next(s for s in roots if s is not ok)
    assert refused.status.message == "missing_credentials"
    # The upstream saw the same trace.
    (_, _, headers), *_ = threaded_upstream.requests
    sent = {k.lower(): v for k, v in headers.items()}["traceparent"]
    assert sent.split("-")[1] == ok.trace_id.hex()
    # No token material anywhere in what was exported.
    exported = b"".join(r.SerializeToString() for r in receiver.requests)
    for part in token.split("."):
        assert part.encode() not in exported
    gw.signal(signal.SIGTERM)
    assert gw.wait(30) == 0
