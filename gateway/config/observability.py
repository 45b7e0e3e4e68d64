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

The access log can only name fields from a closed list: none of them can hold a token, a
proof, a secret or a PEM (OPS-01), whatever the configuration says.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Final, Literal, get_args

from pydantic import Field, model_validator

from .base import Model

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
    "signature_keyid",  # the verified HTTP message signature's keyid and label (gateway.signatures)
    "signature_label",
]

# Every field except the client address and the token id, which a deployment opts into.
DEFAULT_ACCESS_LOG_FIELDS: Final[tuple[AccessLogField, ...]] = tuple(
    f for f in get_args(AccessLogField) if f not in ("remote", "jti", "signature_keyid", "signature_label")
)


class AccessLogConfig(Model):
    enabled: bool = True
    destination: Literal["stdout", "stderr", "file"] = "stdout"
    file: str | None = None
    fields: Annotated[tuple[AccessLogField, ...], Field(min_length=1)] = DEFAULT_ACCESS_LOG_FIELDS
    include_query: bool = False
    # Lines waiting for the writer thread; beyond this, lines are dropped (and counted), never
    # blocking the event loop on a slow disk or a stalled stdout pipe.
    queue_size: Annotated[int, Field(ge=100, le=1_000_000)] = 10_000

    @model_validator(mode="after")
    def _check(self) -> AccessLogConfig:
        if len(set(self.fields)) != len(self.fields):
            raise ValueError("fields: each field may appear only once")
        if self.destination == "file":
            if not self.file:
                raise ValueError("destination: file needs file: /path/to/access.log")
            parent = Path(self.file).parent
            if not parent.is_dir():
                raise ValueError(f"file: directory {str(parent)!r} does not exist")
            if not os.access(parent, os.W_OK):
                raise ValueError(f"file: directory {str(parent)!r} is not writable")
        elif self.file:
            raise ValueError(f"file is set but destination is {self.destination}")
        return self


class MetricsConfig(Model):
    enabled: bool = True
    latency_histograms: bool = True


class ObservabilityConfig(Model):
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: AccessLogConfig = AccessLogConfig()
    metrics: MetricsConfig = MetricsConfig()
