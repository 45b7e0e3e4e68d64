"""A/B of the authz stage (issue #16): ``.venv/bin/python -m benchmarks.authz_ab``.

The same DPoP route, ``/accounts/{account_id}/balances``, twice: A without ``auth.authz``, B with
two RFC 9396 checks (an ``authorization_details`` rule with type, actions, locations, datatypes and
identifier = path parameter, and a consent binding to a header) and one CEL rule. Each call is
``AuthPipeline.decide`` in-process: credentials, JWT verification (real ES256), DPoP binding with a
fresh real proof (ES256 verify, jti into the memory replay store), policy, and for B the authz
step. No sockets, so the difference is the stage's own CPU. Two cases:

- hot: one token, one path (the token and the authz results are cached, as for a client polling
  one account);
- first: a new token per call (cold JWT verification, and for B the first evaluation for that
  token: the CEL token context is built and the expression evaluated).

Rounds interleave P, A, R and B (P: the same route as a plain prefix, R: B without the CEL
rule); medians of per-round µs per call. First, the stage alone (``authz_step`` on a decision
already made), which is free of the pipeline's round-to-round noise. Writes nothing; the figures
go into benchmarks/RESULTS-authz.md by hand with the command line used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from multidict import CIMultiDict, CIMultiDictProxy

from .material import dpop_proof, es256_jws, jkt_of, jwk_of

ORIGIN = "https://api.bench.example"
ISSUER = "https://as.bench.example"
AUD = "https://api.bench.example"
PATH = "/accounts/acc-1/balances"

AUTHZ = f"""
          authz:
            rules:
              - id: account_read
                authorization_details:
                  types: [account_information]
                  actions: [read]
                  locations: [{AUD}]
                  datatypes: [balances]
                  identifier: {{path: account_id}}
                consent: {{claim: consent_id, header: x-consent-id}}
              - id: same_client
                expression: >-
                  token.authorization_details.exists(d, d.type == "account_information"
                  && d.identifier == request.params.account_id) && client.jkt != ""
"""


def config(jwks: Path, with_authz: bool | str, match: str = '{path: "/accounts/{account_id}/balances"}') -> str:
    return f"""
listen: {{external_origin: {ORIGIN}}}
issuers:
  - {{name: as, issuer: {ISSUER}, jwks_file: {jwks}, algorithms: [ES256], token_cache_size: 50000}}
dpop: {{algorithms: [ES256]}}
routes:
  - id: balances
    match: {match}
    upstream: http://127.0.0.1:9
    auth:
          issuers: [as]
          audience: {AUD}
          scopes: [accounts]
          sender_constraint: dpop
""" + (AUTHZ.split("              - id: same_client")[0] if with_authz == "rar" else AUTHZ if with_authz else "")


async def main(args: argparse.Namespace) -> None:
    from gateway.app import build_pipeline
    from gateway.config import parse_config
    from gateway.model import AuthRequest
    from gateway.observability.metrics import Metrics
    from gateway.routing import Router

    tmp = Path(tempfile.mkdtemp(prefix="authz-ab-"))
    as_key = ec.generate_private_key(ec.SECP256R1())
    (tmp / "jwks.json").write_text(json.dumps({"keys": [{**jwk_of(as_key), "kid": "k1", "alg": "ES256"}]}))
    client = ec.generate_private_key(ec.SECP256R1())
    jkt = jkt_of(jwk_of(client))
    now = int(time.time())
    details = [{"type": "account_information", "actions": ["read", "list"], "locations": [AUD],
                "datatypes": ["balances", "transactions"], "identifier": "acc-1"},
               {"type": "payment_initiation", "actions": ["initiate"], "locations": [AUD],
                "instructedAmount": {"currency": "EUR", "amount": "10.00"}}]

    def token(n: int) -> str:
        claims = {"iss": ISSUER, "sub": f"u{n}", "aud": AUD, "client_id": "tpp-1", "scope": "accounts",
                  "iat": now, "exp": now + 3600, "jti": f"t{n}", "cnf": {"jkt": jkt},
                  "authorization_details": details, "consent_id": "c-1"}
        return es256_jws(as_key, {"alg": "ES256", "typ": "at+jwt", "kid": "k1"}, claims)

    n, rounds = args.n, args.rounds
    setups = {}
    template = '{path: "/accounts/{account_id}/balances"}'
    variants: tuple[tuple[str, bool | str, str], ...] = (
        ("P", False, "{path_prefix: /accounts}"), ("A", False, template), ("R", "rar", template), ("B", True, template))
    for name, with_authz, match in variants:
        cfg = parse_config(config(tmp / "jwks.json", with_authz, match), source=f"authz-ab-{name}")
        pipeline, lifecycles, _ = build_pipeline(cfg, Metrics())
        for lc in lifecycles:
            await lc.start()
        resolved = Router(cfg).resolve("GET", "api.bench.example", PATH)
        setups[name] = (pipeline, resolved)
    hot = token(0)
    cold_tokens = iter([token(i) for i in range(1, len(variants) * n * rounds + 1)])
    results: dict[tuple[str, str], list[float]] = {}

    async def run(name: str, case: str) -> float:
        pipeline, resolved = setups[name]
        toks = [hot] * n if case == "hot" else [next(cold_tokens) for _ in range(n)]
        reqs = []
        for tok in toks:
            headers = CIMultiDictProxy(CIMultiDict({
                "Authorization": f"DPoP {tok}", "DPoP": dpop_proof(client, "GET", ORIGIN + PATH, tok),
                "x-consent-id": "c-1"}))
            reqs.append(AuthRequest("GET", ORIGIN + PATH, PATH, "", headers, None, "127.0.0.1",
                                    path_params=resolved.params))
        c0 = time.process_time()
        for req in reqs:
            await pipeline.decide(req, resolved.route.config)
        return (time.process_time() - c0) / n * 1e6

    # The stage alone (what B adds to A), on decisions already made: hot (same token object and
    # path: cached results) and first (a new VerifiedToken object per call: nothing cached).
    from dataclasses import replace

    from gateway.authz import authz_step

    pipeline_b, resolved_b = setups["B"]
    cfg_b = resolved_b.route.config
    auth_b = cfg_b.auth
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": f"DPoP {hot}", "x-consent-id": "c-1",
                                            "DPoP": dpop_proof(client, "GET", ORIGIN + PATH, hot)}))
    base_req = AuthRequest("GET", ORIGIN + PATH, PATH, "", headers, None, "127.0.0.1", path_params=resolved_b.params)
    decision = await pipeline_b.decide(base_req, cfg_b)
    assert decision.token is not None and getattr(auth_b, "authz", None) is not None
    stage: dict[str, list[float]] = {"hot": [], "first": []}
    for _ in range(rounds):
        c0 = time.process_time()
        for _ in range(n):
            await authz_step(base_req, decision, auth_b.authz, "balances")  # type: ignore[union-attr]
        stage["hot"].append((time.process_time() - c0) / n * 1e6)
        fresh = [replace(decision, token=replace(decision.token)) for _ in range(n)]
        c0 = time.process_time()
        for d in fresh:
            await authz_step(base_req, d, auth_b.authz, "balances")  # type: ignore[union-attr]
        stage["first"].append((time.process_time() - c0) / n * 1e6)
    print("authz stage alone, CPU-µs per call (median; min-max): " + "  ".join(
        f"{k} {statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})" for k, v in stage.items()))

    names = [v[0] for v in variants]
    for name in names:  # warm-up: JWKS, caches, the hot token
        await run(name, "hot")
    for _ in range(rounds):
        for case in ("hot", "first"):
            for name in names:
                results.setdefault((name, case), []).append(await run(name, case))
    print(f"CPU-µs per decide (median of {rounds} rounds x {n} calls; min-max). P: plain prefix route, "
          "A: template route, R: A + the two RAR checks, B: R + the CEL rule")
    for case in ("hot", "first"):
        med = {x: statistics.median(results[(x, case)]) for x in names}
        spread = " ".join(f"{x} {med[x]:7.1f} ({min(results[(x, case)]):.1f}-{max(results[(x, case)]):.1f})"
                          for x in names)
        print(f"{case:6} {spread}  B-P {med['B'] - med['P']:6.1f} µs  R-P {med['R'] - med['P']:6.1f} µs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    asyncio.run(main(parser.parse_args()))
