"""CEL implementations compared on the rules gateway.authz runs: ``python -m benchmarks.cel_compare``.

Measures, for ``common-expression-language`` (Rust ``cel`` crate bindings, the one the gateway
uses) and ``cel-python`` (pure Python, ``celpy``) when importable: compile time per expression
and evaluation time per call of a compiled program with the variables the authz stage builds
(token claims with authorization_details, request with params/headers/body). Best and median of
repeated timed loops, µs per call. cel-python is not a dependency of the gateway: run this with an
interpreter that has both (see benchmarks/RESULTS-authz.md for the exact commands).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

AUD = "https://api.bank.example"
VARS: dict[str, Any] = {
    "token": {
        "sub": "cust-1", "client_id": "tpp-1", "aud": [AUD], "scope": ["accounts", "payments"],
        "authorization_details": [
            {"type": "account_information", "actions": ["read"], "locations": [AUD], "identifier": "acc-1",
             "datatypes": ["balances", "transactions"]},
            {"type": "payment_initiation", "actions": ["initiate"], "locations": [AUD],
             "instructedAmount": {"currency": "EUR", "amount": "123.50"},
             "creditorAccount": {"iban": "DE02100100109307118603"}},
        ],
    },
    "request": {
        "method": "POST", "path": "/payments", "params": {"account_id": "acc-1"},
        "headers": {"x-fapi-interaction-id": "c770aef3-6784-41f7-8e0e-ff5f97bddb3a"},
        "body": {"instructedAmount": {"currency": "EUR", "amount": "100.00"},
                 "creditorAccount": {"iban": "DE02100100109307118603"}},
    },
    "client": {"client_id": "tpp-1", "jkt": "jkt", "cert_thumbprint": ""},
    "route": {"id": "payments"},
}
EXPRESSIONS = {
    "simple": 'token.client_id == "tpp-1" && request.method == "POST"',
    "membership": ('token.authorization_details.exists(d, d.type == "account_information" '
                  '&& d.identifier == request.params.account_id && "read" in d.actions)'),
    "payment": 'double(request.body.instructedAmount.amount) <= double(token.authorization_details.filter(d, '
               'd.type == "payment_initiation")[0].instructedAmount.amount) && request.body.creditorAccount.iban '
               '== token.authorization_details.filter(d, d.type == "payment_initiation")[0].creditorAccount.iban',
}


def timed(fn: Callable[[], object], n: int, repeats: int = 7) -> tuple[float, float]:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return min(runs), statistics.median(runs)


def bench_rust() -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    import cel

    out = {}
    for name, src in EXPRESSIONS.items():
        prog = cel.compile(src)
        assert prog.execute(VARS) is True, name
        out[name] = (timed(lambda src=src: cel.compile(src), 200), timed(lambda prog=prog: prog.execute(VARS), 2000))
    return out


def bench_celpy() -> dict[str, tuple[tuple[float, float], tuple[float, float]]] | None:
    try:
        import celpy
    except ImportError:
        return None
    env = celpy.Environment()
    out = {}
    for name, src in EXPRESSIONS.items():
        prog = env.program(env.compile(src))

        def run(prog: Any = prog) -> object:
            # The JSON -> CEL conversion is part of each call: the variables differ per request.
            return prog.evaluate({k: celpy.json_to_cel(v) for k, v in VARS.items()})

        assert bool(run()) is True, name
        out[name] = (timed(lambda src=src: env.program(env.compile(src)), 20), timed(run, 200))
    return out


def main() -> None:
    rows = [("common-expression-language", bench_rust()), ("cel-python", bench_celpy())]
    print("| implementation | expression | compile µs (best / median) | evaluate µs (best / median) |")
    print("|---|---|---|---|")
    for impl, res in rows:
        if res is None:
            print(f"| {impl} | (not installed) | | |")
            continue
        for name, ((cb, cm), (eb, em)) in res.items():
            print(f"| {impl} | {name} | {cb:.1f} / {cm:.1f} | {eb:.1f} / {em:.1f} |")


if __name__ == "__main__":
    main()
