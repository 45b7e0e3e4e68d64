"""The admin listener: health, readiness and metrics, never on the public port."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

__all__ = ("Readiness", "build_admin_app")


class Readiness:
    """Ready means: config loaded, listeners up, and every registered check passing."""

    def __init__(self) -> None:
        self.listening = False
        self.draining = False
        self._checks: dict[str, Callable[[], bool]] = {}

    def add_check(self, name: str, check: Callable[[], bool]) -> None:
        self._checks[name] = check

    def status(self) -> tuple[bool, dict[str, bool]]:
        results = {"listening": self.listening, "not_draining": not self.draining}
        for name, check in self._checks.items():
            try:
                results[name] = bool(check())
            except Exception:  # a broken check means not ready, never a crash
                results[name] = False
        return all(results.values()), results


def build_admin_app(readiness: Readiness, render_metrics: Callable[[], bytes]) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ok, checks = readiness.status()
        return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render_metrics(), content_type="text/plain", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
