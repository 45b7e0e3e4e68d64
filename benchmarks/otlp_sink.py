"""A minimal OTLP/HTTP trace receiver for benchmarks/tracing.py: answers every export with an empty
ExportTraceServiceResponse and counts the spans (decoding is this process's CPU, not the gateway's).

    .venv/bin/python -m benchmarks.otlp_sink --port 4318 --counts out/otlp-counts.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_EMPTY = ExportTraceServiceResponse().SerializeToString()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--counts", type=Path, required=True)
    args = ap.parse_args()
    counts = {"exports": 0, "spans": 0}

    async def traces(request: web.Request) -> web.Response:
        req = ExportTraceServiceRequest()
        req.ParseFromString(await request.read())
        counts["exports"] += 1
        counts["spans"] += sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
        args.counts.write_text(json.dumps(counts))
        return web.Response(body=_EMPTY, content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
