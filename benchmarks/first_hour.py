"""Per-call cost of what issue #21 put on the request path, without sockets.

    .venv/bin/python -m benchmarks.first_hour              # this tree
    PYTHONPATH=<a checkout of main> python -m benchmarks.first_hour --label main

Measured: ``HeaderPolicy.client_response_headers`` on a typical upstream response (the upstream's
``Server`` header is now dropped by default), and ``Observer.finished`` for a refusal with the
access log on (a refused request now names its verified token). Each figure: µs per call, min and
median over 7 repeats of a timed loop. Results and method: benchmarks/RESULTS-first-hour.md.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable

from multidict import CIMultiDict


def _timed(fn: Callable[[], object], n: int = 20000, repeats: int = 7) -> tuple[float, float]:
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t) / n * 1e6)
    return min(samples), statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", default="this tree")
    args = parser.parse_args()

    from gateway.observability.accesslog import AccessLog
    from gateway.observability.metrics import Metrics
    from gateway.observability.observer import Observer
    from gateway.proxy.headers import HeaderPolicy

    upstream = CIMultiDict([("Content-Type", "application/json"), ("Content-Length", "512"),
                            ("Date", "Sat, 05 Dec 2026 07:30:00 GMT"), ("Server", "nginx/1.25.3"),
                            ("Cache-Control", "no-store"), ("X-Request-Id", "abc")])
    policy = HeaderPolicy()
    rows = [("client_response_headers (6 upstream headers)", _timed(lambda: policy.client_response_headers(upstream)))]

    class Req:
        method, path, query_string, remote = "GET", "/accounts/42", "", "127.0.0.1"

    log = AccessLog(stream=io.StringIO())
    observer = Observer(Metrics(route_ids=["accounts"], issuers=["demo"]), log)
    req = Req()

    def refusal() -> None:
        observer.finished(req, started=time.perf_counter(), route_id="accounts", status=401,
                          reason="binding_mismatch", decision=None, interaction_id="id-1", auth_s=0.0001)

    rows.append(("Observer.finished, a 401 refusal, access log on", _timed(refusal)))
    import inspect

    if "refused_token" in inspect.signature(Observer.finished).parameters:  # not on main
        from gateway.model import VerifiedToken

        token = VerifiedToken(issuer="https://as", subject="s", client_id="c", audience=("a",),
                              scopes=frozenset({"accounts"}), expires_at=0.0, jti="j", cnf_jkt=None,
                              cnf_x5t_s256="x", source="jwt")

        def named() -> None:
            observer.finished(req, started=time.perf_counter(), route_id="accounts", status=401,  # type: ignore[call-arg]
                              reason="binding_mismatch", decision=None, interaction_id="id-1", auth_s=0.0001,
                              refused_token=token)

        rows.append(("the same, naming the refused token", _timed(named)))
    log.close()
    print(f"| {args.label} | " + " | ".join(f"{mn:.2f} / {md:.2f}" for _, (mn, md) in rows) + " |")
    print("columns: " + " | ".join(name for name, _ in rows))


if __name__ == "__main__":
    main()
