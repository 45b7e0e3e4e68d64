"""Which route a request belongs to: exact path beats prefix, longest prefix wins.

Prefixes match on segment boundaries (``/accounts`` matches ``/accounts`` and ``/accounts/1``,
not ``/accountsX``). The path matched is the canonical one (``gateway.canonical``: dot segments,
``//``, ``;`` and ambiguous escapes already refused), the same one the upstream receives; by
default ASCII case is ignored (``paths.case_sensitive``), so ``/API/x`` is an ``/api`` request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .config import GatewayConfig, RouteConfig, UpstreamConfig
from .errors import MethodNotAllowedError, RouteNotFoundError

__all__ = ("Route", "Router")

log = logging.getLogger("gateway")


@dataclass(frozen=True, slots=True)
class Route:
    config: RouteConfig
    upstream: UpstreamConfig
    # Sort key: exact paths first, then longer prefixes, then host-specific before any-host.
    rank: tuple[int, int, int]
    # The configured path or prefix as compared (lower-cased unless routes are case-sensitive).
    key: str

    @property
    def id(self) -> str:
        return self.config.id

    def matches_path(self, host: str, path: str) -> bool:
        m = self.config.match
        if m.host is not None and m.host.lower() != host:
            return False
        if m.path is not None:
            return path == self.key
        prefix = self.key
        if prefix.endswith("/"):
            return path.startswith(prefix) or path == prefix[:-1]
        return path == prefix or path.startswith(prefix + "/")


class Router:
    def __init__(self, cfg: GatewayConfig) -> None:
        self.fold_case = not cfg.paths.case_sensitive
        # Weaker than the default: say so at every load (issue #13 finding 9).
        if cfg.paths.case_sensitive:
            log.warning("paths.case_sensitive: true: /API/x does not match an /api route; safe only if "
                        "every upstream is case-sensitive too")
        if cfg.paths.allow_trailing_dot:
            log.warning("paths.allow_trailing_dot: true: /api./x is accepted and can miss the /api route; "
                        "unsafe in front of IIS/ASP.NET or Windows file systems")
        routes = []
        for rc in cfg.routes:
            m = rc.match
            exact = 1 if m.path is not None else 0
            key = m.path or m.path_prefix or ""
            routes.append(Route(rc, cfg.upstream_for(rc), (exact, len(key), 1 if m.host else 0),
                                key.lower() if self.fold_case else key))
        self.routes: tuple[Route, ...] = tuple(sorted(routes, key=lambda r: r.rank, reverse=True))

    def match(self, method: str, host: str, path: str) -> Route:
        """The route for this request; ``host`` is the validated Host name (lower case), ``path``
        the canonical path (``gateway.canonical``)."""
        if self.fold_case:
            path = path.lower()
        path_matched = False
        for route in self.routes:
            if not route.matches_path(host, path):
                continue
            methods = route.config.match.methods
            if not methods or method in methods or (method == "HEAD" and "GET" in methods):
                return route
            path_matched = True
        if path_matched:
            raise MethodNotAllowedError("method not allowed on this route", reason="method_not_allowed")
        raise RouteNotFoundError("no route for this path", reason="no_route")
