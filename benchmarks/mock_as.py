"""A tiny test authorization server for the benchmark: JWKS, metadata and RFC 7662 introspection.

Serves the key material written by ``benchmarks.material``; plain HTTP on 127.0.0.1 only.
Run: ``python -m benchmarks.mock_as --port P --issuer URL --jwks FILE --opaque-db FILE``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from aiohttp import web


def build_app(issuer: str, jwks: bytes, opaque: dict[str, dict[str, object]]) -> web.Application:
    metadata = {
        "issuer": issuer,
        "jwks_uri": issuer + "/jwks.json",
        "introspection_endpoint": issuer + "/introspect",
        "dpop_signing_alg_values_supported": ["ES256"],
    }

    async def get_jwks(_: web.Request) -> web.Response:
        return web.Response(body=jwks, content_type="application/json")

    async def get_metadata(_: web.Request) -> web.Response:
        return web.json_response(metadata)

    async def introspect(request: web.Request) -> web.Response:
        # Client authentication is not what is measured: any caller of this local test AS is accepted.
        form = await request.post()
        token = form.get("token")
        claims = opaque.get(token) if isinstance(token, str) else None
        if claims is None or float(claims.get("exp", 0)) < time.time():  # type: ignore[arg-type]
            return web.json_response({"active": False})
        return web.json_response(claims)

    app = web.Application()
    app.router.add_get("/jwks.json", get_jwks)
    app.router.add_get("/.well-known/oauth-authorization-server", get_metadata)
    app.router.add_get("/.well-known/openid-configuration", get_metadata)
    app.router.add_post("/introspect", introspect)
    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--issuer", required=True)
    ap.add_argument("--jwks", type=Path, required=True)
    ap.add_argument("--opaque-db", type=Path, required=True)
    args = ap.parse_args()
    opaque = json.loads(args.opaque_db.read_text())
    app = build_app(args.issuer, args.jwks.read_bytes(), opaque)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
