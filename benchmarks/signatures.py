"""Cost of FAPI 2.0 HTTP message signatures (issue #17): the gateway's CPU per request on a DPoP
route, plain against signed (request verified, Content-Digest checked, response signed).

    .venv/bin/python -m benchmarks.signatures [--n 1500] [--rounds 3] [--out benchmarks/RESULTS-signatures.md]

Processes: the gateway runs in this process (uvloop, the production loop) and nothing else does;
a child process is the upstream (small JSON answer), another child the client: keep-alive TLS
connections (8 in parallel) replaying pre-made requests, each with its own DPoP proof (unique
jti) and, on the signed route, its own ES256 request signature (so no cache ever helps). The
gateway's CPU per request is this process's ``time.process_time()`` over the timed phase ÷
requests. Scenarios are interleaved per round (plain and signed back to back); figures are
medians over the rounds.

The floor: what the profile cannot do without, measured alone in this process with the same
keys: one ES256 signature verification (the request), one ES256 signature (the response), the
request body's SHA-256 (POST) and the response body's SHA-256.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCENARIOS = ("GET", "POST 1 KB", "POST 64 KB")
CONCURRENCY = 8


def _body(size: int) -> bytes:
    if size == 0:
        return b""
    item = b'{"instructedAmount":{"amount":"10.00","currency":"EUR"},"ref":"0123456789"},'
    raw = b'{"payments":[' + item * (size // len(item) + 1)
    return raw[: size - 2] + b"]}"


# --- child processes -------------------------------------------------------------------------

async def _upstream_main() -> None:
    from aiohttp import web

    answer = json.dumps({"status": "AcceptedSettlementInProcess", "id": "p-1"}).encode()

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=answer, content_type="application/json")

    app = web.Application(client_max_size=1 << 20)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
    await asyncio.Event().wait()


async def _client_main(job_file: str) -> None:
    import ssl

    import aiohttp
    from yarl import URL

    job = pickle.loads(Path(job_file).read_bytes())
    ctx = ssl.create_default_context(cafile=job["ca"])
    conn = aiohttp.TCPConnector(ssl=ctx, limit=CONCURRENCY)
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession(connector=conn) as s:
        async def one(req: tuple[str, str, dict[str, str], bytes | None]) -> None:
            method, path, headers, body = req
            async with s.request(method, URL(f"https://127.0.0.1:{job['port']}{path}", encoded=True),
                                 headers=headers, data=body) as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1

        async def worker(reqs: list[Any]) -> None:
            for req in reqs:
                await one(req)

        # warm-up: the connections, outside the timed phase (the parent reads "ready")
        await asyncio.gather(*(worker(job["warmup"][i::CONCURRENCY]) for i in range(CONCURRENCY)))
        print("ready", flush=True)
        sys.stdin.readline()
        reqs = job["requests"]
        await asyncio.gather(*(worker(reqs[i::CONCURRENCY]) for i in range(CONCURRENCY)))
    print(json.dumps(statuses), flush=True)


# --- the measurement -------------------------------------------------------------------------

class Bench:
    def __init__(self, tmp: Path) -> None:
        import trustme
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        from tests.dpop.e2e_support import AsKey
        from tests.dpop.proofs import es256
        from tests.signatures.support import ClientKey, write_jwks

        self.tmp = tmp
        ca = trustme.CA()
        server = ca.issue_cert("localhost", "127.0.0.1")
        self.ca = tmp / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        server.cert_chain_pems[0].write_to_path(str(tmp / "server.pem"))
        server.private_key_pem.write_to_path(str(tmp / "server-key.pem"))
        self.as_key = AsKey(tmp)
        self.client = ClientKey("ES256", "tpp1-es")
        self.jwks = write_jwks(tmp / "tpp1.json", self.client)
        gw = ec.generate_private_key(ec.SECP256R1())
        self.gw_private = gw
        (tmp / "gw.pem").write_bytes(gw.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
        self.dpop = es256()
        self.token = self.as_key.token(jkt=self.dpop.jkt, scope="accounts payments", exp=int(time.time()) + 7200)

    def config(self, upstream: str) -> str:
        from tests.dpop.e2e_support import AUD, ISS, ORIGIN

        auth = f"{{issuers: [bank-as], audience: [{AUD}], scopes: [payments], sender_constraint: dpop}}"
        return f"""
listen:
  host: 127.0.0.1
  port: 0
  tls: {{cert: {self.tmp}/server.pem, key: {self.tmp}/server-key.pem, client_auth: none}}
  allowed_hosts: [127.0.0.1]
observability: {{access_log: {{enabled: false}}}}
issuers:
  - {{name: bank-as, issuer: {ISS}, jwks_file: {self.as_key.jwks}}}
dpop: {{algorithms: [ES256]}}
clients:
  - {{client_id: tpp-1, jwks_file: {self.jwks}}}
http_signatures:
  signing_keys: [{{kid: gw-1, file: {self.tmp}/gw.pem, alg: ES256}}]
  active_key: gw-1
routes:
  - {{id: plain, match: {{path_prefix: /plain}}, upstream: {upstream}, external_origin: {ORIGIN}, auth: {auth}}}
  - id: signed
    match: {{path_prefix: /signed}}
    upstream: {upstream}
    external_origin: {ORIGIN}
    auth: {auth}
    http_signatures: {{request: required, response: "on"}}
"""

    def requests(self, scenario: str, signed: bool, n: int) -> list[tuple[str, str, dict[str, str], bytes | None]]:
        from tests.dpop.e2e_support import ORIGIN
        from tests.dpop.proofs import ath
        from tests.signatures.support import content_digest, sign

        method = scenario.split()[0]
        size = {"GET": 0, "POST 1 KB": 1024, "POST 64 KB": 65536}[scenario]
        body = _body(size) if size else None
        path = "/signed/payments" if signed else "/plain/payments"
        token_ath = ath(self.token)
        out = []
        for _ in range(n):
            headers = {"Authorization": f"DPoP {self.token}",
                       "DPoP": self.dpop.proof(htm=method, htu=ORIGIN + path, ath=token_ath)}
            if body is not None:
                headers["Content-Type"] = "application/json"
                if signed:
                    headers["Content-Digest"] = content_digest(body)
            if signed:
                headers = sign(self.client, method, ORIGIN + path, headers)
            out.append((method, path, headers, body))
        return out


def _us(fn: Callable[[], object], n: int = 2000, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        times.append((time.process_time() - t0) / n * 1e6)
    return statistics.median(times)


def floor(bench: Bench) -> dict[str, float]:
    """The crypto and hashing the profile needs, alone."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = bench.client.key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    msg = b"x" * 600  # about the size of a FAPI signature base (token + proof inside)
    sig = key.sign(msg, ec.ECDSA(hashes.SHA256()))
    pub = key.public_key()
    out = {
        "ES256 verify": _us(lambda: pub.verify(sig, msg, ec.ECDSA(hashes.SHA256()))),
        "ES256 sign": _us(lambda: bench.gw_private.sign(msg, ec.ECDSA(hashes.SHA256()))),
    }
    for label, size in (("1 KB", 1024), ("64 KB", 65536)):
        data = _body(size)
        out[f"SHA-256 {label}"] = _us(lambda d=data: hashlib.sha256(d).digest())  # type: ignore[misc]
    out["SHA-256 response"] = _us(lambda: hashlib.sha256(b"x" * 60).digest())
    return out


def stages(bench: Bench) -> dict[str, float]:
    """Where the time goes: the stage's parts, alone, µs per call."""
    from multidict import CIMultiDict, CIMultiDictProxy

    from gateway.config import parse_config
    from gateway.config.signatures import HttpSignaturesConfig
    from gateway.signatures.digest import check_content_digest
    from gateway.signatures.keys import ClientKeys, SigningKeys
    from gateway.signatures.sign import ResponseSigner, SignedRequestView
    from gateway.signatures.verify import REQUEST_TAG, RequestVerifier, signature_verifies

    cfg = parse_config(bench.config("http://127.0.0.1:9"), source="bench")
    loop = asyncio.new_event_loop()
    clients = ClientKeys(cfg.clients)
    loop.run_until_complete(clients.start())
    verifier = RequestVerifier(HttpSignaturesConfig(max_age_s=600), clients, None)
    (method, path, headers, body) = bench.requests("POST 1 KB", True, 1)[0]
    url = "https://api.bank.example" + path
    hdrs = CIMultiDictProxy(CIMultiDict(headers))
    out: dict[str, float] = {}
    out["verify: whole step (parse, checks, key lookup, base, ES256)"] = _us(
        lambda: loop.run_until_complete(verifier.verify(method, url, hdrs, "tpp-1", required=True)), n=500)
    key = bench.client.key.public_key()
    from http_message_signatures import algorithms

    out["verify: fields parsed again + signature base + ES256 verify (signature_verifies)"] = _us(
        lambda: signature_verifies(method, url, hdrs, key, algorithms.ECDSA_P256_SHA256, label="sig",
                                   tag=REQUEST_TAG), n=500)
    from gateway.signatures import base
    from gateway.signatures.verify import _dictionary

    _, (members, params) = next(iter(_dictionary(hdrs["Signature-Input"]).items()))
    items = base.components(members)
    view = base.MessageView(method, url, base.field_lines(hdrs, base.field_names(items, req=False)))
    out["verify: signature base alone (library _build_signature_base)"] = _us(
        lambda: base.signature_base(view, items, params, algorithms.ECDSA_P256_SHA256), n=500)
    assert body is not None
    out["digest check 1 KB"] = _us(lambda: check_content_digest(headers["Content-Digest"], body))
    signer = ResponseSigner(SigningKeys(cfg.http_signatures).keys[0])
    view = SignedRequestView(method, url, hdrs)
    resp_headers = CIMultiDict({"Content-Type": "application/json"})
    out["sign: response (digest, base, ES256)"] = _us(
        lambda: signer.headers_for(200, resp_headers, b'{"status":"ok"}', view), n=500)
    loop.run_until_complete(clients.close())
    loop.close()
    return out


async def _phase(bench: Bench, port: int, reqs: list[Any], warm: list[Any]) -> tuple[float, dict[str, int]]:
    job = Path(tempfile.mktemp(dir=bench.tmp, suffix=".job"))
    job.write_bytes(pickle.dumps({"ca": str(bench.ca), "port": port, "requests": reqs, "warmup": warm}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.signatures", "--client", str(job),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert (await proc.stdout.readline()).strip() == b"ready"
    t0 = time.process_time()
    proc.stdin.write(b"go\n")
    await proc.stdin.drain()
    line = await proc.stdout.readline()
    cpu = time.process_time() - t0
    await proc.wait()
    return cpu / len(reqs) * 1e6, {int(k): v for k, v in json.loads(line).items()}


async def main_async(args: argparse.Namespace) -> tuple[Bench, dict[tuple[str, bool], list[float]]]:
    from gateway.config import parse_config
    from gateway.server import GatewayServer

    tmp = Path(tempfile.mkdtemp(prefix="bench-sig-"))
    bench = Bench(tmp)
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.signatures", "--upstream", stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert up.stdout is not None
    results: dict[tuple[str, bool], list[float]] = {}
    server: GatewayServer | None = None
    try:
        port = int((await up.stdout.readline()).strip())
        server = GatewayServer(parse_config(bench.config(f"http://127.0.0.1:{port}"), source="bench"))
        await server.start()
        for rnd in range(args.rounds):
            for scenario in SCENARIOS:
                for signed in (False, True):
                    reqs = bench.requests(scenario, signed, args.n)
                    warm = bench.requests(scenario, signed, 200)
                    us, statuses = await asyncio.wait_for(_phase(bench, server.port, reqs, warm), 600)
                    if set(statuses) != {200}:
                        raise SystemExit(f"non-200 answers in {scenario} signed={signed}: {statuses}")
                    results.setdefault((scenario, signed), []).append(us)
                    print(f"round {rnd + 1} {scenario:10} {'signed' if signed else 'plain '} {us:7.1f} CPU-µs/req",
                          flush=True)
    finally:
        if server is not None:
            await server.stop()
        up.kill()
        await up.wait()
    return bench, results


def run(args: argparse.Namespace) -> str:
    import uvloop

    bench, results = uvloop.run(main_async(args))
    # Off the gateway's loop: the parts alone, in this process.
    return render(args, results, floor(bench), stages(bench))


def render(args: argparse.Namespace, results: dict[tuple[str, bool], list[float]], fl: dict[str, float],
           parts: dict[str, float]) -> str:
    lines = [
        "# HTTP message signatures: cost per request (issue #17)",
        "",
        f"Generated by `.venv/bin/python -m benchmarks.signatures --n {args.n} --rounds {args.rounds}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Method: module docstring of "
        "`benchmarks/signatures.py` (gateway CPU only, in-process `process_time`, client and upstream in "
        "other processes; every request a fresh DPoP proof and a fresh ES256 request signature).",
        "",
        "| scenario | DPoP route, CPU-µs/req (min / med / max) | DPoP + signatures, CPU-µs/req (min / med / max) "
        "| added (med) | floor | added ÷ floor |",
        "|---|---|---|---|---|---|",
    ]
    sign_floor = fl["ES256 verify"] + fl["ES256 sign"] + fl["SHA-256 response"]
    for scenario in SCENARIOS:
        plain, signed = results[(scenario, False)], results[(scenario, True)]
        extra = fl.get(f"SHA-256 {scenario.split(' ', 1)[1]}", 0.0) if scenario != "GET" else 0.0
        flo = sign_floor + extra
        added = statistics.median(signed) - statistics.median(plain)
        lines.append(
            f"| {scenario} | {min(plain):.0f} / {statistics.median(plain):.0f} / {max(plain):.0f} "
            f"| {min(signed):.0f} / {statistics.median(signed):.0f} / {max(signed):.0f} "
            f"| {added:.0f} | {flo:.0f} | {added / flo:.2f} |"
        )
    lines += ["", "Floor parts (µs per call, median of 5 timed loops, this process):", ""]
    lines += [f"- {k}: {v:.1f}" for k, v in fl.items()]
    lines += ["", "Where the time goes (the stage's parts alone, µs per call):", ""]
    lines += [f"- {k}: {v:.1f}" for k, v in parts.items()]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        asyncio.run(_upstream_main())
        return
    if args.client:
        asyncio.run(_client_main(args.client))
        return
    text = run(args)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
