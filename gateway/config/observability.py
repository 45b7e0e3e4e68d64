"""``observability:`` — process log level, the JSON access log and metrics (issue: operations).

    observability:
      log_level: info                 # debug | info | warning | error
      access_log:
        enabled: true
        destination: stdout           # stdout | stderr | file
        file: /var/log/gateway/access.log   # only with destination: file
        fields: [time, route, method, path, status, latency_ms, reason, interaction_id]
        include_query: false          # true appends ?query to path, credentials redacted
      metrics:
        enabled: true                 # /metrics on the admin port
        latency_histograms: true      # false drops the three latency histograms (cheaper)
      tracing:                        # OpenTelemetry traces over OTLP/HTTP (off: zero cost)
        enabled: false
        endpoint: http://otel-collector:4318/v1/traces   # unset: OTEL_EXPORTER_OTLP_* variables
        service_name: fapi-gateway    # unset: OTEL_SERVICE_NAME, else fapi-gateway
        sample_ratio: 0.1             # parent-based; unset: OTEL_TRACES_SAMPLER(_ARG), else 1.0
        incoming_context: trusted_proxies   # whose traceparent is continued: none | trusted_proxies | any

The access log can only name fields from a closed list: none of them can hold a token, a
proof, a secret or a PEM (OPS-01), whatever the configuration says.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Final, Literal, get_args

from pydantic import AfterValidator, Field, ValidationInfo, model_validator

from .base import Model, check_files, resolve_path

AccessLogField = Literal[
    "time",
    "route",
    "method",
    "path",
    "status",
    "latency_ms",
    "reason",
    "client_id",
    "binding",
    "thumbprint",
    "interaction_id",
    "upstream_status",
    "upstream_latency_ms",
    "mode",  # proxy, or the decision front that asked (issue #15)
    "remote",
    "jti",
    "sub",  # the token's subject: personal data in many deployments, so opt-in
    "would_refuse",  # report-only routes: the reason code not enforced (issue #19)
    "limit",  # the rate limit that refused the request (issue #18)
    "signature_keyid",  # the verified HTTP message signature's keyid and label (gateway.signatures)
    "signature_label",
]

# Every field except the client address and the token id, which a deployment opts into.
DEFAULT_ACCESS_LOG_FIELDS: Final[tuple[AccessLogField, ...]] = tuple(
    f for f in get_args(AccessLogField)
    if f not in ("remote", "jti", "sub", "limit", "signature_keyid", "signature_label")
)


class AccessLogConfig(Model):
    enabled: bool = True
    destination: Literal["stdout", "stderr", "file"] = "stdout"
    file: Annotated[str, AfterValidator(resolve_path)] | None = None
    fields: Annotated[tuple[AccessLogField, ...], Field(min_length=1)] = DEFAULT_ACCESS_LOG_FIELDS
    include_query: bool = False
    # Lines waiting for the writer thread; beyond this, lines are dropped (and counted), never
    # blocking the event loop on a slow disk or a stalled stdout pipe.
    queue_size: Annotated[int, Field(ge=100, le=1_000_000)] = 10_000

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> AccessLogConfig:
        if len(set(self.fields)) != len(self.fields):
            raise ValueError("fields: each field may appear only once")
        if self.destination == "file":
            if not self.file:
                raise ValueError("destination: file needs file: /path/to/access.log")
            parent = Path(self.file).parent
            if not check_files(info):
                pass  # check-config --no-files: the directory is on another machine
            elif not parent.is_dir():
                raise ValueError(f"file: directory {str(parent)!r} does not exist")
            if not os.access(parent, os.W_OK):
                raise ValueError(f"file: directory {str(parent)!r} is not writable")
        elif self.file:
            raise ValueError(f"file is set but destination is {self.destination}")
        return self


class MetricsConfig(Model):
    enabled: bool = True
    latency_histograms: bool = True


class TracingConfig(Model):
    """OpenTelemetry tracing (gateway/observability/tracing.py). A setting left unset here falls
    back to the standard ``OTEL_*`` environment variable, then to the SDK's default; a setting
    written here wins over the environment (the file is what check-config and review see)."""

    enabled: bool = False
    # OTLP/HTTP (protobuf) traces endpoint, e.g. http://otel-collector:4318/v1/traces.
    endpoint: Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2048)] | None = None
    service_name: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    # Fraction of new traces recorded (parent-based: a continued trace keeps its caller's choice).
    sample_ratio: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    # Whose W3C traceparent starts our span as a child: a client on the internet choosing our
    # trace ids and sampling decision is not something an edge gateway should accept by default.
    incoming_context: Literal["none", "trusted_proxies", "any"] = "trusted_proxies"
    # Spans waiting for the exporter thread; beyond this they are dropped (never blocking).
    max_queue_size: Annotated[int, Field(ge=64, le=100_000)] = 2048
    export_timeout_s: Annotated[float, Field(gt=0, le=60)] = 10.0


class ObservabilityConfig(Model):
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: AccessLogConfig = AccessLogConfig()
    metrics: MetricsConfig = MetricsConfig()
    tracing: TracingConfig = TracingConfig()
