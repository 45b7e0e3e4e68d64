"""An echo service: answers with what it received, so a newcomer sees exactly what the gateway forwards."""

from __future__ import annotations

from aiohttp import web

__all__ = ("build_echo_app",)


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "upstream": "demo-echo",
            "method": request.method,
            "path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_bytes": len(body),
        }
    )


def build_echo_app() -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app
