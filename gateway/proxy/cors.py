"""CORS for browser clients of DPoP-protected routes (RFC 9449 §8/§9; draft-dpop issue 153).

A browser can only read ``DPoP-Nonce`` and ``WWW-Authenticate`` (needed to retry with a nonce) if
they are listed in ``Access-Control-Expose-Headers``, and may only send ``DPoP`` if the preflight
allows it. Preflights are answered by the gateway itself, without auth, and never forwarded.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict

from ..config.schema import CorsConfig

__all__ = ("CorsPolicy",)

ALWAYS_ALLOWED_HEADERS = ("Authorization", "DPoP", "Content-Type", "x-fapi-interaction-id")
ALWAYS_EXPOSED_HEADERS = ("DPoP-Nonce", "WWW-Authenticate", "x-fapi-interaction-id", "Retry-After")


class CorsPolicy:
    """Precomputed per route from its ``cors:`` block."""

    def __init__(self, cfg: CorsConfig, route_methods: tuple[str, ...]) -> None:
        self._any_origin = "*" in cfg.allowed_origins
        self._origins = frozenset(o.rstrip("/") for o in cfg.allowed_origins if o != "*")
        methods = cfg.allowed_methods or route_methods or ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
        allowed = dict.fromkeys([*ALWAYS_ALLOWED_HEADERS, *cfg.allowed_headers])
        exposed = dict.fromkeys([*ALWAYS_EXPOSED_HEADERS, *cfg.expose_headers])
        self._preflight = {
            "Access-Control-Allow-Methods": ", ".join(methods),
            "Access-Control-Allow-Headers": ", ".join(allowed),
            "Access-Control-Max-Age": str(int(cfg.max_age_s)),
        }
        self._expose = ", ".join(exposed)
        self._credentials = cfg.allow_credentials

    def allowed_origin(self, headers: Mapping[str, str]) -> str | None:
        origin = headers.get("Origin")
        if origin is None:
            return None
        if origin.rstrip("/") in self._origins or (self._any_origin and not self._credentials):
            return origin
        return None

    def is_preflight(self, method: str, headers: Mapping[str, str]) -> bool:
        return method == "OPTIONS" and "Origin" in headers and "Access-Control-Request-Method" in headers

    def preflight_headers(self, origin: str) -> CIMultiDict[str]:
        out = CIMultiDict(self._preflight)
        self._common(out, origin)
        return out

    def add_response_headers(self, out: CIMultiDict[str], origin: str) -> None:
        """On every answer to an allowed origin, errors included: the browser must see the 401."""
        out["Access-Control-Expose-Headers"] = self._expose
        self._common(out, origin)

    def _common(self, out: CIMultiDict[str], origin: str) -> None:
        out["Access-Control-Allow-Origin"] = origin
        out.add("Vary", "Origin")
        if self._credentials:
            out["Access-Control-Allow-Credentials"] = "true"
