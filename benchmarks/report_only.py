"""Cost of report-only enforcement (issue #19 §2) on the decision: ``.venv/bin/python -m
benchmarks.report_only``. No sockets; real keys and signatures (``benchmarks.material``).

A config whose routes all enforce is not wrapped at all (``gateway.report.report_only`` returns the
pipeline unchanged): zero cost. When any route reports, every decision goes through
``ReportOnlyPipeline.decide``: one more coroutine frame and an attribute test for enforcing routes;
on a report route a refusal becomes an allow (a ``Decision``, a counter, a log line). Rows:

* the mTLS-bound hot token (the cheapest full decision, so the wrapper's share is the largest),
  plain vs wrapped, on an enforcing route;
* a refusal (no credentials): raised on an enforcing route vs turned into a would-refuse allow
  on a report route (counter increment and WARNING line included; logging to a null handler).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .micro import Bench, _config_text, _request


async def run(args: argparse.Namespace) -> Bench:
    from gateway.app import build_pipeline
    from gateway.config import parse_config
    from gateway.errors import GatewayError
    from gateway.observability.metrics import Metrics
    from gateway.report import ReportOnlyPipeline

    from .material import make_material

    b = Bench(args.repeats)
    n = args.n
    tmp = Path(tempfile.mkdtemp(prefix="report-only-"))
    m = make_material(tmp, "https://as.bench.example", n_clients=2)
    text = _config_text(m, "mtls")
    plain_cfg = parse_config(text, source="plain")
    report_cfg = parse_config(text + """  - id: watched
    match: {path_prefix: /watched}
    upstream: bank
    auth: {issuers: [bench-as], audience: https://api.bench.example, scopes: [accounts], sender_constraint: mtls,
           enforcement: report}
acknowledge_risks: [report_only_enforcement]
""", source="report")
    assert len(report_cfg.routes) == 2
    logging.getLogger("gateway").handlers[:] = [logging.NullHandler()]
    logging.getLogger("gateway").propagate = False

    plain, plain_lc, _ = build_pipeline(plain_cfg, Metrics())
    wrapped, wrapped_lc, _ = build_pipeline(report_cfg, Metrics())
    assert not isinstance(plain, ReportOnlyPipeline) and isinstance(wrapped, ReportOnlyPipeline)
    for lc in (*plain_lc, *wrapped_lc):
        if type(lc).__name__ != "Revocation":
            await lc.start()
    import json

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from gateway.model import PeerCertificate

    peer = PeerCertificate(
        x509.load_pem_x509_certificate(m.client_cert.read_bytes()).public_bytes(serialization.Encoding.DER))
    token = json.loads(m.clients_mtls.read_text())[0]["token"]
    req = _request({"Authorization": "Bearer " + token}, peer)
    enforce_route, watched = report_cfg.routes[0], report_cfg.routes[1]
    await plain.decide(req, plain_cfg.routes[0])

    await b.coro("decide, mTLS hot token, enforcing route: plain pipeline", n,
                 lambda r: lambda i: plain.decide(req, plain_cfg.routes[0]))
    await b.coro("decide, mTLS hot token, enforcing route: wrapped (a route reports)", n,
                 lambda r: lambda i: wrapped.decide(req, enforce_route))
    anonymous = _request({}, peer)

    async def refused(i: int) -> Any:
        try:
            return await wrapped.decide(anonymous, enforce_route)
        except GatewayError as exc:
            return exc

    await b.coro("decide, no credentials, enforcing route: refused (raise)", n, lambda r: refused)
    await b.coro("decide, no credentials, report route: would-refuse allow", n,
                 lambda r: lambda i: wrapped.decide(anonymous, watched),
                 "counter; WARNING at most every 10 s per route and reason")
    for lc in (*plain_lc, *wrapped_lc):
        await lc.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=5000, help="calls per timed loop")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    b = asyncio.run(run(args))
    print(b.markdown())


if __name__ == "__main__":
    main()
