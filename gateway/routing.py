"""Which route a request belongs to: exact path beats prefix, longest prefix wins.

Prefixes match on segment boundaries (``/accounts`` matches ``/accounts`` and ``/accounts/1``,
not ``/accountsX``). Requests whose path holds dot segments are refused before matching, so that
``/public/../accounts`` cannot match an open route and reach a protected upstream path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .config import GatewayConfig, RouteConfig, UpstreamConfig
from .errors import InvalidRequestError, MethodNotAllowedError, RouteNotFoundError

__all__ = ("Route", "Router", "check_path")

# A dot segment, literal or percent-encoded (%2e), or an encoded slash/backslash that an upstream
# might decode into a segment separator.
_DOT_SEGMENT = re.compile(r"(?:^|/)(?:\.|%2e){1,2}(?:/|$)|%2f|%5c|\\", re.IGNORECASE)


def check_path(raw_path: str) -> None:
    """Refuse paths that a later decoder could read differently from our route matcher."""
    path = raw_path.split("?", 1)[0]
    if not path.startswith("/") or _DOT_SEGMENT.search(path):
        raise InvalidRequestError("unsupported request path", reason="bad_path")


@dataclass(frozen=True, slots=True)
class Route:
    config: RouteConfig
    upstream: UpstreamConfig
    # Sort key: exact paths first, then longer prefixes, then host-specific before any-host.
    rank: tuple[int, int, int]

    @property
    def id(self) -> str:
        return self.config.id

    def matches_path(self, host: str, path: str) -> bool:
        m = self.config.match
        if m.host is not None and m.host.lower() != host:
            return False
        if m.path is not None:
            return path == m.path
        prefix = m.path_prefix
        assert prefix is not None
        if prefix.endswith("/"):
            return path.startswith(prefix) or path == prefix[:-1]
        return path == prefix or path.startswith(prefix + "/")


class Router:
    def __init__(self, cfg: GatewayConfig) -> None:
        routes = []
        for rc in cfg.routes:
            m = rc.match
            exact = 1 if m.path is not None else 0
            length = len(m.path or m.path_prefix or "")
            routes.append(Route(rc, cfg.upstream_for(rc), (exact, length, 1 if m.host else 0)))
        self.routes: tuple[Route, ...] = tuple(sorted(routes, key=lambda r: r.rank, reverse=True))

    def match(self, method: str, host: str, path: str) -> Route:
        """The route for this request; ``host`` is the Host header without port, lower case."""
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
