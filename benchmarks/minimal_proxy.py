"""The reference "minimal aiohttp mTLS proxy, no checks, uvloop" that the gateway is measured against.

It does what any aiohttp reverse proxy must (mTLS handshake, parse, forward over a keep-alive pool,
drop hop-by-hop headers, relay the response) and nothing else: no token, proof or policy checks,
no metrics, no access log. Run:
``python -m benchmarks.minimal_proxy --port P --upstream http://127.0.0.1:U --cert --key --ca``.
"""

from __future__ import annotations

import argparse
import gc
import ssl
from collections.abc import Callable

import uvloop
from aiohttp import ClientSession, TCPConnector, web

# RFC 9110 §7.6.1 hop-by-hop fields, plus what aiohttp recomputes itself.
HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
    )
)

SESSION = web.AppKey("session", ClientSession)


def build_app(upstream: str, stream: bool = False,
              check: Callable[[web.Request], bool] | None = None) -> web.Application:
    """``check`` (benchmarks.floor): per-request work before forwarding; False answers 401."""
    app = web.Application()

    async def start(app: web.Application) -> None:
        app[SESSION] = ClientSession(
            connector=TCPConnector(limit=256, keepalive_timeout=60), auto_decompress=False
        )

    async def stop(app: web.Application) -> None:
        await app[SESSION].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        if check is not None and not check(request):
            return web.Response(status=401)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        body = await request.read() if request.body_exists else None
        async with app[SESSION].request(
            request.method, upstream + request.raw_path, headers=headers, data=body, allow_redirects=False
        ) as resp:
            out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP}
            if not stream:
                return web.Response(status=resp.status, body=await resp.read(), headers=out)
            # --stream: relay like a streaming proxy (prepare, write per chunk, write_eof), to
            # measure what streaming small bodies costs against one write.
            sresp = web.StreamResponse(status=resp.status, headers=out)
            if resp.content_length is None:
                sresp.enable_chunked_encoding()
            else:
                sresp.content_length = resp.content_length
            await sresp.prepare(request)
            async for chunk in resp.content.iter_any():
                await sresp.write(chunk)
            await sresp.write_eof()
            return sresp

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def tune_gc() -> None:
    """The gateway's process-level GC setting (gateway/server.py ``_tune_gc``): without it these
    references spend ~4 % of their CPU in the collector (perf, issue 20), which is a runtime
    setting, not a check, and would flatter every ratio to them."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--stream", action="store_true", help="relay with StreamResponse instead of one write")
    args = ap.parse_args()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.load_verify_locations(args.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    uvloop.install()
    tune_gc()
    web.run_app(
        build_app(args.upstream.rstrip("/"), stream=args.stream),
        host="127.0.0.1",
        port=args.port,
        ssl_context=ctx,
        access_log=None,
        print=None,
        keepalive_timeout=120,
    )


if __name__ == "__main__":
    main()
