"""Target 6 offline: what does the auth pipeline keep in memory as proofs and tokens go by?

    .venv/bin/python -m benchmarks.memsoak --valid 300000 --garbage 100000 --tracemalloc

No sockets: the pipeline is built from a benchmark gateway config (``benchmarks/gateway/dpop.yaml``
by default, its ``jwks_uri`` swapped for the JWKS file) with the same stages as
``gateway.app.build_pipeline``, and ``AuthPipeline.decide`` is called directly with requests shaped
like the load generator's: a fresh ES256 proof (unique ``jti``) for each, tokens cycling through
``--clients`` distinct DPoP-bound JWTs, then ``--garbage`` JWT-shaped tokens with bad signatures.

Time is simulated (``--rate`` requests per second, the rate the socket soak reaches), so the
replay store and the caches age as they would in the gateway at that rate, not at the much higher
rate of this loop. After every chunk it prints RSS, the sizes of the pipeline's bounded
structures, and with ``--tracemalloc`` the traced heap and the allocation sites that grew.
``--entry-costs`` measures what one entry of each structure costs (Python heap and native).

RSS figures are meaningful without ``--tracemalloc`` only (tracemalloc adds ~40 B per live block).
The script's own start (material, 10k client signing keys) is in the first reading: the
pipeline's share is the ``+`` column. ``malloc ... free`` is memory glibc holds but no one uses
(fragmentation); ``--mmap-threshold 131072`` shows what a fixed mmap threshold does to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import hashlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from multidict import CIMultiDict, CIMultiDictProxy

from .material import AUDIENCE, b64url, make_material
from .servers import BENCH, PATH

ORIGIN = "https://127.0.0.1:8443"
URL = ORIGIN + PATH
_KEEP_FRAMES = 1


class SimClock:
    """Seconds since the epoch, advanced by one request's share of a second per ``tick``."""

    def __init__(self, rate: float) -> None:
        self.now = time.time()
        self.step = 1.0 / rate if rate > 0 else 0.0
        self.real = rate <= 0

    def __call__(self) -> float:
        return time.time() if self.real else self.now

    def tick(self) -> None:
        self.now += self.step


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


def _libc_mallinfo() -> Callable[[], _Mallinfo2] | None:
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _Mallinfo2
    return fn


_MALLINFO = _libc_mallinfo()


def malloc_kb() -> tuple[int, int]:
    """glibc malloc (KiB in use, KiB held free): objects > 512 B, OpenSSL/Rust allocations,
    not pymalloc arenas. Free-but-held memory still counts in RSS until trimmed."""
    if _MALLINFO is None:
        return -1, -1
    mi = _MALLINFO()
    return int((mi.uordblks + mi.hblkhd) // 1024), int(mi.fordblks // 1024)


def _mallopt_mmap_threshold(size: int) -> None:
    """glibc: a fixed mmap threshold (no dynamic raise), so big blocks are returned when freed."""
    m_mmap_threshold = -3
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(m_mmap_threshold, size)


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def pymalloc_arenas() -> tuple[int, int]:
    """(arenas in use, KiB in allocated pymalloc blocks), from ``sys._debugmallocstats``."""
    r, w = os.pipe()
    saved = os.dup(2)
    try:
        os.dup2(w, 2)
        os.close(w)
        sys._debugmallocstats()
        os.dup2(saved, 2)
    finally:
        os.close(saved)
    text = b""
    while chunk := os.read(r, 65536):
        text += chunk
    os.close(r)
    arenas = used = 0
    for line in text.decode(errors="replace").splitlines():
        key, _, value = line.partition("=")
        value = value.strip().replace(",", "")
        if key.strip() == "# arenas allocated current":
            arenas = int(value)
        elif key.strip() == "# bytes in allocated blocks":
            used = int(value) // 1024
    return arenas, used


@dataclass
class Client:
    key: ec.EllipticCurvePrivateKey
    token: str
    header_seg: str
    ath: str


def load_clients(rows: list[dict[str, str]]) -> list[Client]:
    out = []
    for row in rows:
        d = int.from_bytes(_b64d(row["d"]), "big")
        key = ec.derive_private_key(d, ec.SECP256R1())
        jwk = {"kty": "EC", "crv": "P-256", "x": row["x"], "y": row["y"]}
        # Same header for every proof of a client, as the Go load generator sends it.
        header = json.dumps({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}, separators=(",", ":"))
        ath = b64url(hashlib.sha256(row["token"].encode()).digest())
        out.append(Client(key, row["token"], b64url(header.encode()), ath))
    return out


def _b64d(s: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


_ECDSA = ec.ECDSA(hashes.SHA256())


def proof(c: Client, iat: int) -> str:
    payload = (f'{{"jti":"{b64url(secrets.token_bytes(16))}","htm":"GET","htu":"{URL}",'
               f'"iat":{iat},"ath":"{c.ath}"}}')
    signing = c.header_seg + "." + b64url(payload.encode())
    r, s = decode_dss_signature(c.key.sign(signing.encode(), _ECDSA))
    return signing + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def garbage_token(issuer: str, now: int) -> str:
    """Like the load generator's: JWT-shaped, an accepted iss, a random (invalid) signature."""
    hdr = b64url(b'{"alg":"ES256","typ":"at+jwt","kid":"bench-as-1"}')
    payload = (f'{{"iss":"{issuer}","sub":"x","aud":"{AUDIENCE}","client_id":"x","iat":{now},'
               f'"exp":{now + 3600},"jti":"{b64url(secrets.token_bytes(12))}"}}')
    return hdr + "." + b64url(payload.encode()) + "." + b64url(secrets.token_bytes(64))


def request(headers: dict[str, str]) -> Any:
    from gateway.model import AuthRequest

    return AuthRequest(method="GET", url=URL, path=PATH, query_string="",
                       headers=CIMultiDictProxy(CIMultiDict(headers)), peer_cert=None, remote="127.0.0.1")


def load_bench_config(name: str, m: Any) -> Any:
    """A benchmarks/gateway/*.yaml config, with the JWKS read from the file instead of the test AS."""
    from gateway.config import parse_config

    text = (BENCH / "gateway" / name).read_text()
    text = text.replace("jwks_uri: ${BENCH_JWKS_URI}", f"jwks_file: {m.jwks}")
    env = {"BENCH_PORT": "8443", "BENCH_ADMIN_PORT": "8444", "BENCH_CERT": str(m.server_cert),
           "BENCH_KEY": str(m.server_key), "BENCH_CA": str(m.ca), "BENCH_UPSTREAM": "http://127.0.0.1:9",
           "BENCH_ISSUER": m.issuer, "BENCH_AUDIENCE": AUDIENCE}
    os.environ.update(env)
    return parse_config(text, source=name)


@dataclass
class Pipeline:
    decide: Callable[[Any, Any], Any]
    route: Any
    verifier: Any
    binder: Any

    def sizes(self) -> dict[str, int]:
        dpop = self.binder.dpop
        out = {
            "tokens": len(self.verifier.token_cache),
            "headers": len(dpop._headers),
            "jwks": len(dpop._keys),
        }
        if hasattr(self.binder.replay, "__len__"):
            out["jtis"] = len(self.binder.replay)
        return out


async def build(cfg: Any, clock: SimClock) -> Pipeline:
    """The stages of ``gateway.app.build_pipeline``, with the simulated clock injected."""
    from gateway.bind import Binder
    from gateway.bind.replay import MemoryReplayStore
    from gateway.credentials import extract_credentials
    from gateway.pipeline import AuthPipeline
    from gateway.policy import check_policy
    from gateway.verify import AccessTokenVerifier

    replay = None
    if cfg.dpop.replay.backend == "memory":
        replay = MemoryReplayStore(max_entries=cfg.dpop.replay.max_entries, clock=clock, began=clock())
    binder = Binder(cfg.dpop, replay=replay, clock=clock)
    verifier = AccessTokenVerifier(cfg.issuers, clock=clock)
    await binder.start()
    await verifier.start()
    pipeline = AuthPipeline(extract=extract_credentials, tokens=verifier, binder=binder, policy=check_policy)
    return Pipeline(pipeline.decide, cfg.routes[0], verifier, binder)


def _site(stat: Any) -> str:
    frame = stat.traceback[0]
    name = frame.filename
    for marker in ("/site-packages/", "/work/main/", "/lib/python3"):
        if marker in name:
            name = name.split(marker, 1)[1]
            break
    return f"{name}:{frame.lineno}"


_FILTERS = [
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
]


def top_growth(new: Any, old: Any, n: int, indent: str = "    ") -> None:
    stats = new.filter_traces(_FILTERS).compare_to(old.filter_traces(_FILTERS), "lineno")
    stats = [s for s in stats if s.size_diff > 0][:n]
    for s in stats:
        print(f"{indent}{s.size_diff / 1024:+9.1f} KiB {s.count_diff:+8d} blocks  "
              f"(now {s.size / 1024:9.1f} KiB)  {_site(s)}")


class Meter:
    def __init__(self, args: argparse.Namespace, p: Pipeline) -> None:
        self.args = args
        self.p = p
        self.rows: list[dict[str, Any]] = []
        self.first: Any = None
        self.prev: Any = None
        self.base_rss = rss_kb()

    def point(self, kind: str, done: int, sim_s: float, wall_s: float) -> None:
        used, free = malloc_kb()
        row: dict[str, Any] = {"kind": kind, "done": done, "sim_s": round(sim_s, 1), "rss_kb": rss_kb(),
                               "malloc_kb": used, "malloc_free_kb": free, **self.p.sizes()}
        arenas, blocks_kb = pymalloc_arenas()
        row.update(arenas=arenas, pymalloc_used_kb=blocks_kb)
        snap = None
        if tracemalloc.is_tracing():
            gc.collect()  # count what is reachable, not garbage waiting for the collector
            row["traced_kb"] = tracemalloc.get_traced_memory()[0] // 1024
            snap = tracemalloc.take_snapshot()
        self.rows.append(row)
        sizes = "  ".join(f"{k} {row[k]:>7,}" for k in ("tokens", "headers", "jwks", "jtis") if k in row)
        traced = f"  traced {row['traced_kb'] / 1024:6.1f} MB" if "traced_kb" in row else ""
        print(f"{kind:8} {done:>9,}  t={sim_s:7.1f}s  RSS {row['rss_kb'] / 1024:6.1f} MB "
              f"(+{(row['rss_kb'] - self.base_rss) / 1024:5.1f}){traced}  "
              f"malloc {used / 1024:5.1f} MB + {free / 1024:4.1f} free  "
              f"pymalloc {arenas} arenas / {blocks_kb / 1024:5.1f} MB used  {sizes}  [{wall_s:5.1f} s]",
              flush=True)
        if snap is not None:
            if self.prev is not None:
                top_growth(snap, self.prev, self.args.top)
            self.prev = snap
            if self.first is None:
                self.first = snap


async def soak(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.mmap_threshold:
        _mallopt_mmap_threshold(args.mmap_threshold)
    tmp = Path(tempfile.mkdtemp(prefix="memsoak-", dir=BENCH / "out"))
    try:
        t0 = time.monotonic()
        m = make_material(tmp, "https://as.bench.example", args.clients)
        rows = json.loads(m.clients_dpop.read_text())
        clients = load_clients(rows)
        del rows
        print(f"material: {args.clients} clients in {time.monotonic() - t0:.1f} s", flush=True)
        cfg = load_bench_config(args.config, m)
        clock = SimClock(args.rate)
        p = await build(cfg, clock)
        gc.collect()
        gc.freeze()  # as gateway.server._tune_gc does after start-up
        gc.set_threshold(20_000, 20, 20)
        if args.tracemalloc:
            tracemalloc.start(_KEEP_FRAMES)
        meter = Meter(args, p)
        print(f"config {args.config}: token_cache_size {cfg.issuers[0].token_cache_size}, "
              f"token_cache_ttl_s {cfg.issuers[0].token_cache_ttl_s}, dpop key_cache_size "
              f"{cfg.dpop.key_cache_size}, replay {cfg.dpop.replay.backend} max {cfg.dpop.replay.max_entries} "
              f"ttl {cfg.dpop.replay_ttl_s}s, simulated rate {args.rate:g}/s", flush=True)
        meter.point("start", 0, 0.0, 0.0)
        start_sim = clock()
        t0 = time.monotonic()
        from gateway.errors import GatewayError

        failures = 0
        n = len(clients)
        for i in range(args.valid):
            c = clients[(i + args.offset) % n]
            req = request({"Authorization": "DPoP " + c.token, "DPoP": proof(c, int(clock()))})
            try:
                await p.decide(req, p.route)
            except GatewayError as exc:
                failures += 1
                if failures <= 3:
                    print(f"  refused: {exc!r}", flush=True)
            clock.tick()
            if (i + 1) % args.chunk == 0 or i + 1 == args.valid:
                meter.point("valid", i + 1, clock() - start_sim, time.monotonic() - t0)
        if args.valid:
            print(f"valid: {failures} refused", flush=True)
            # Warm: the replay store holds a full window and every client went through the caches.
            warm_n = max(args.clients, int(args.rate * (cfg.dpop.replay_ttl_s + 5)))
            valid = [r for r in meter.rows if r["kind"] == "valid"]
            warm = next((r for r in valid if r["done"] >= warm_n), None)
            if warm is not None and warm is not valid[-1]:
                last = valid[-1]
                print(f"valid: RSS {warm['rss_kb'] / 1024:.1f} MB after warm-up ({warm['done']:,} proofs) -> "
                      f"{last['rss_kb'] / 1024:.1f} MB after {last['done']:,} "
                      f"({100 * (last['rss_kb'] - warm['rss_kb']) / warm['rss_kb']:+.1f} %)", flush=True)
        if meter.first is not None and meter.prev is not meter.first:
            print("  growth over the whole valid phase:")
            top_growth(meter.prev, meter.first, args.top)
        mark = meter.prev
        refused = 0
        for i in range(args.garbage):
            req = request({"Authorization": "Bearer " + garbage_token(m.issuer, int(clock()))})
            try:
                await p.decide(req, p.route)
            except GatewayError:
                refused += 1
            clock.tick()
            if (i + 1) % args.garbage_chunk == 0 or i + 1 == args.garbage:
                meter.point("garbage", i + 1, clock() - start_sim, time.monotonic() - t0)
        if args.garbage:
            print(f"garbage: {refused} of {args.garbage} refused", flush=True)
            if mark is not None and meter.prev is not mark:
                print("  growth over the whole garbage phase:")
                top_growth(meter.prev, mark, args.top)
        # What of the RSS is free memory the allocators hold (fragmentation), not live data.
        gc.collect()
        _malloc_trim()
        meter.point("trimmed", args.valid + args.garbage, clock() - start_sim, time.monotonic() - t0)
        await p.binder.close()
        await p.verifier.close()
        return meter.rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def entry_costs(args: argparse.Namespace) -> None:
    """Bytes per entry of each bounded structure: Python heap (tracemalloc) and RSS.

    Two passes on fresh objects: RSS without tracemalloc (it adds its own bookkeeping per block),
    then the traced heap. RSS - heap is native memory (OpenSSL/Rust key objects) plus allocator slack.
    """
    from gateway.bind.jwk import parse_public_jwk
    from gateway.bind.replay import MemoryReplayStore, replay_key

    n = args.entry_n
    tmp = Path(tempfile.mkdtemp(prefix="memsoak-", dir=BENCH / "out"))
    try:
        m = make_material(tmp, "https://as.bench.example", 2 * n)
        all_clients = load_clients(json.loads(m.clients_dpop.read_text()))
        cfg = load_bench_config(args.config, m)
        results: dict[str, dict[str, float]] = {}
        for mode, clients in (("rss", all_clients[:n]), ("heap", all_clients[n:])):
            if mode == "heap":
                tracemalloc.start(1)
            clock = SimClock(1000.0)
            p = await build(cfg, clock)
            jwks = [{"kty": "EC", "crv": "P-256", **_xy(c.key)} for c in clients]
            keys = [replay_key(secrets.token_urlsafe(32), secrets.token_urlsafe(16)) for _ in range(n)]
            reqs = [request({"Authorization": "DPoP " + c.token, "DPoP": proof(c, int(clock()))})
                    for c in clients]
            store = MemoryReplayStore(max_entries=10 * n, clock=clock)
            kept: list[Any] = []

            async def tokens(p: Pipeline = p, clients: list[Client] = clients) -> None:
                for c in clients:
                    await p.verifier.verify(c.token, p.route.auth)

            async def replay(store: MemoryReplayStore = store, keys: list[bytes] = keys) -> None:
                for k in keys:
                    store.first_use_sync(k, 75)

            async def parse(jwks: list[dict[str, str]] = jwks, kept: list[Any] = kept) -> None:
                kept.extend(parse_public_jwk(j) for j in jwks)

            async def decide(p: Pipeline = p, reqs: list[Any] = reqs) -> None:
                for r in reqs:
                    await p.decide(r, p.route)

            steps = (
                ("token cache entry (VerifiedToken + TLRUCache slot)", tokens),
                ("replay store entry (16-byte key, expiry, OrderedDict)", replay),
                ("parsed EC P-256 public key (PublicJwk + cryptography key)", parse),
                ("new DPoP client: header + key cache entries + one jti", decide),
            )
            for what, fill in steps:
                gc.collect()
                before = tracemalloc.get_traced_memory()[0] if mode == "heap" else rss_kb() * 1024
                await fill()
                gc.collect()
                after = tracemalloc.get_traced_memory()[0] if mode == "heap" else rss_kb() * 1024
                results.setdefault(what, {})[mode] = (after - before) / n
            if mode == "heap":
                tracemalloc.stop()
            await p.binder.close()
            await p.verifier.close()
        print(f"bytes per entry ({n} entries each; RSS first, on fresh objects, without tracemalloc):")
        for what, r in results.items():
            print(f"  {what:58} RSS {r['rss']:7.0f}   Python heap {r['heap']:7.0f}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _xy(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    nums = key.public_key().public_numbers()
    return {"x": b64url(nums.x.to_bytes(32, "big")), "y": b64url(nums.y.to_bytes(32, "big"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--valid", type=int, default=300_000, help="distinct valid DPoP proofs")
    ap.add_argument("--garbage", type=int, default=100_000, help="distinct garbage tokens")
    ap.add_argument("--clients", type=int, default=10_000, help="distinct clients/tokens cycled through")
    ap.add_argument("--offset", type=int, default=0, help="first client used")
    ap.add_argument("--chunk", type=int, default=20_000, help="valid proofs between readings")
    ap.add_argument("--garbage-chunk", type=int, default=10_000, help="garbage tokens between readings")
    ap.add_argument("--rate", type=float, default=1000.0,
                    help="simulated requests per second (0: real time); gw-dpop does ~1000 on 2 cores")
    ap.add_argument("--config", default="dpop.yaml", help="a file in benchmarks/gateway/")
    ap.add_argument("--tracemalloc", action="store_true", help="trace allocations; print growth by site")
    ap.add_argument("--top", type=int, default=8, help="growth sites shown per reading")
    ap.add_argument("--entry-costs", action="store_true", help="only measure bytes per cache entry")
    ap.add_argument("--entry-n", type=int, default=5000, help="entries for --entry-costs")
    ap.add_argument("--mmap-threshold", type=int, default=0,
                    help="glibc M_MMAP_THRESHOLD in bytes (0: glibc's dynamic default), e.g. 131072")
    ap.add_argument("--json", type=Path, help="write the readings here")
    args = ap.parse_args()
    if args.entry_costs:
        asyncio.run(entry_costs(args))
        return
    rows = asyncio.run(soak(args))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
